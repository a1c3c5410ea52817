"""LEAST: learning to stop episodes early (docs/interventions.md, LEAST; Liu et al., ICML 2025) — a RECONSTRUCTION.

Neither the paper text nor its code was available: every equation below is the spec's reconstruction from
secondary summaries, and most constants are placeholders. Report results as "LEAST (reconstructed variant)".

Per env step of each seed (`acting_loop`: `on_env_step`, after the step returns), with `i` the step's index
in its episode and the critic acting now:
  Qhat_i = q_head(Q(s_i, a_i))                        (min | q1 | ensemble_mean over the twin critics)
  G_i    = (Qhat_i - y_i)^2                           (g_signal=td_sq; y_i = the agent's own TD target)
           or |grad_theta (Qhat_i - y_i)^2|_2          (g_signal=grad_norm, one per-sample backward pass)
  eps_i  = nanmedian over the active rows k of B_Q[k, i]   (aggregate=mean: nanmean)
  omega_i = nanmedian_k B_G[k, i] / max(G_i, 1e-12)
  factor = kappa * omega_i (multiply_threshold) | omega_i ** kappa (power) | (1 - kappa) + kappa * omega_i (mix),
           then min(factor, factor_max) (default 1; 0: uncapped, the spec as written)
  stop   iff  n_i >= min_rows  and  Qhat_i < (factor * eps_i if eps_i >= 0 else eps_i / factor)
where n_i counts active rows with a finite value at step i. A stop is only decided after `t_start` env steps,
never on a step that ended its episode anyway, and only for `i < L` (`max_episode_steps`, the table width).

The agent's warm-up [project]: transitions collected in the first `learning_starts` env steps (random actions,
an untrained critic) write NaN (masked like padding), and LEAST neither stops nor adds noise there, whatever
`t_start` says. Recording them would fill the window with the random critic's Q (near 0) and TD errors (orders
of magnitude above a trained critic's) for K episodes: on Pendulum with the laptop finding's t_start below the
warm-up, that made omega ~ 5 on the median step and stopped nearly every episode at its first steps.

One-step delay (this codebase's acting hook): the stop decided after transition i makes the env end the
episode at the seed's NEXT env step (transition i + 1 is stored as a truncation: terminated 0, done 1, so the
learner bootstraps from it), where the spec ends the episode with transition i itself.

Tables ("reflection sets"): `B_Q`, `B_G` float32 [K_max + 1, L], one row per finished episode (however it
ended), FIFO: the running episode writes its values straight into row `write_ptr` (which is not valid), and
when it ends that row becomes valid with length `row_len` and the pointer moves on, invalidating the oldest
row. Entries at or beyond a row's length are padding (NaN in a fresh table, stale values after reuse) and
are masked out, as are non-finite values. So a stopped episode drops out of the later columns (the spec's
table), and their medians come from the episodes that were not stopped, which can raise the threshold there.
`stopped_tail=hold` [project] counts it instead with its last (Qhat, G) (`tail_Q`, `tail_G`) at every step after
its end.
The window is the K most recent valid rows (a mask over the rows:
`active_rows`), so a larger K brings older stored episodes back in. (Per env step this writes two scalars;
rewriting whole rows under `vmap` would copy the tables every step.) Every `entropy_period` env steps the
entropy H of the active `B_Q` values is compared with the running mean `H_ref` of the earlier checks:
H > (1 + gamma_H) H_ref grows K by `K_step` (up to K_max); with `K_can_shrink`, H < (1 - gamma_H) H_ref shrinks
it (never below K_init).

Adaptive exploration noise (`on_act`, after t_start): r = fraction of the last m finished episodes that LEAST
stopped at a decision step < e; sigma_t = sigma_base + (sigma_bar - sigma_base) sigmoid(slope (r - center)).
TD3 already adds N(0, sigma_agent) and clips; LEAST adds independent N(0, sigma_t^2 - sigma_agent^2) noise and
clips again, so before clipping the total std is sigma_t (exact where the agent's own clip was inactive). SAC:
extra N(0, sigma_t^2) on the sampled action, then clipped to [-1, 1].

Both drivers have one env per seed; seeds are vmapped, so each seed has its own tables and stops on its own.
Host driver resume: the episode in flight restarts from a reset there, which this hook notices (the new obs is
not the last next_obs) and drops the partial row instead of misaligning step indices.

Logs: `least/stop_rate` (fraction of the last m episodes stopped), `least/early_stop_rate` (r),
`least/mean_stopped_length` (over those stopped episodes), `least/K`, `least/sigma`, `least/stops` (total),
`least/entropy`, `least/entropy_ref`.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.core import maybe
from plastic.fields import count, nonneg, num, positive, unit, one_of
from plastic.interventions.base import Intervention

OMEGA_FORMS = ("multiply_threshold", "power", "mix")
AGGREGATES = ("median", "mean")
Q_HEADS = ("min", "q1", "ensemble_mean")
G_SIGNALS = ("td_sq", "grad_norm")
TD_TARGETS = ("agent_target", "deterministic")
ENTROPY_ESTIMATORS = ("histogram", "gaussian_per_step")
STOPPED_TAILS = ("nan", "hold")


@dataclass
class LEASTConfig:
    # spec default `least.enabled=false` means opt-in: here opting in is `--intervention least`; false keeps
    # the bookkeeping (tables, K, logs) but never stops and never adds noise
    enabled: bool = True
    K_init: int = num(250, ge=1)      # episodes in the window [secondary, unverified]
    K_max: int = num(500, ge=1)       # table rows [project placeholder]
    K_step: int = nonneg(25, note="0: fixed window")  # h, episodes per window change [project placeholder]
    K_can_shrink: bool = False        # summaries disagree (grow only / grow or shrink) [secondary]
    entropy_period: int = count(10_000, "env steps")  # c, between entropy checks [project placeholder]
    entropy_estimator: str = one_of("histogram", ENTROPY_ESTIMATORS)  # histogram | gaussian_per_step [project]
    entropy_bins: int = num(32, ge=2)  # histogram: equal-width bins over the finite active values [project]
    gamma_H: float = nonneg(0.05)     # range [0, 0.1] [secondary, unverified]
    omega_coef: float = positive(0.5)  # kappa, range [0.3, 0.6] [secondary]; how it enters [reconstructed]
    omega_form: str = one_of("multiply_threshold", OMEGA_FORMS)  # multiply_threshold | power | mix [reconstructed]
    # cap on the factor [project]: 1 keeps the threshold at or below the step's median (a trajectory doing better
    # than recent episodes is never stopped); 0: no cap, the spec's rule as written (an offline replay on Hopper
    # stops 90-94 % of the episodes ~5 steps in, where they cannot differ yet: docs/interventions.md)
    factor_max: float = nonneg(1.0, note="0: no cap (the spec's rule as written)")
    # what a LEAST-stopped episode's row holds at the steps after its end: nan = nothing (the spec's table, so
    # later steps' medians come from the episodes that were not stopped); hold = its last (Qhat, G) [project].
    # Measured live on Hopper: 27 % of the episodes stopped with hold against 34 % with nan (docs/interventions.md)
    stopped_tail: str = one_of("nan", STOPPED_TAILS)
    aggregate: str = one_of("median", AGGREGATES)  # median | mean (ablation) [secondary, unverified]
    q_head: str = one_of("min", Q_HEADS)  # min | q1 | ensemble_mean over the twin critics [project]
    g_signal: str = one_of("td_sq", G_SIGNALS)  # td_sq | grad_norm [secondary, unverified]
    # agent_target (learner's own, with its noise) | deterministic [project]
    td_target: str = one_of("agent_target", TD_TARGETS)
    t_start_frac: float = unit(0.10)  # fraction of run.steps before LEAST acts [secondary] (10-20% MuJoCo)
    # env steps; -1: t_start_frac x run.steps, resolved once by validate and saved in config.yaml (a resume
    # that extends --steps keeps it)
    t_start: int = nonneg(-1, special=(-1,), note="-1: least.t_start_frac x run.steps")
    min_rows: int = num(10, ge=1)     # finished episodes with a value at step i before step i can stop [project]
    stop_as_terminal: bool = False    # only false: a stop is stored as a truncation [project]
    noise_cap: float = nonneg(0.3)    # sigma_bar: TD3 0.3, SAC 0.2 [secondary] ranges [0.25,0.35] / [0.15,0.25]
    noise_base: float = nonneg(0.1)   # sigma_base: TD3 0.1 (its exploration noise), SAC 0.0 [reconstructed]
    noise_window: int = num(20, ge=1)  # m, episodes in the stop-rate window [project placeholder]
    # e, decision step; -1: L // 2 [project placeholder]
    noise_early_step: int = nonneg(-1, special=(-1,), note="-1: half of least.max_episode_steps")
    noise_slope: float = nonneg(10.0)  # alpha_s of the sigmoid [project placeholder]
    noise_center: float = 0.5         # r0 of the sigmoid [project placeholder]
    max_episode_steps: int = num(1000, ge=1)  # L, table width (steps beyond it are neither recorded nor stopped)
                                              # [project]
    g_floor: float = positive(1e-12)  # omega's denominator floor (spec)


def aggregate(values, ok, how: str):
    """nanmedian (or nanmean) of `values` over the entries where `ok`; NaN if there are none."""
    v = jnp.where(ok, values, jnp.nan)
    return jnp.nanmedian(v) if how == "median" else jnp.nanmean(v)


def stop_rule(q, g, col_q, col_g, rows, cfg: LEASTConfig):
    """The stop rule at one step index: `q`, `g` this step's Qhat_i and G_i, `col_q`, `col_g` the tables'
    column i [K_max], `rows` the active-row mask. Returns `(stop, eps, omega, threshold, n)`."""
    ok = rows & jnp.isfinite(col_q) & jnp.isfinite(col_g)
    n = jnp.sum(ok)
    eps = aggregate(col_q, ok, cfg.aggregate)
    omega = aggregate(col_g, ok, cfg.aggregate) / jnp.maximum(g, cfg.g_floor)
    kappa = cfg.omega_coef
    if cfg.omega_form == "multiply_threshold":
        factor = kappa * omega
    elif cfg.omega_form == "power":
        factor = omega ** kappa
    else:
        factor = (1.0 - kappa) + kappa * omega
    if cfg.factor_max > 0:
        factor = jnp.minimum(factor, cfg.factor_max)
    threshold = jnp.where(eps >= 0, factor * eps, eps / factor)
    return (n >= cfg.min_rows) & (q < threshold), eps, omega, threshold, n


def histogram_entropy(values, ok, bins: int):
    """Entropy (nats) of the finite values where `ok`, in `bins` equal-width bins over their range."""
    ok = ok & jnp.isfinite(values)
    n = jnp.sum(ok)
    lo = jnp.min(jnp.where(ok, values, jnp.inf))
    hi = jnp.max(jnp.where(ok, values, -jnp.inf))
    width = jnp.where(n > 0, hi - lo, 0.0)
    v = jnp.where(ok, values, lo)
    idx = jnp.where(width > 0, jnp.floor((v - lo) / jnp.where(width > 0, width, 1.0) * bins), 0.0)
    idx = jnp.clip(idx, 0, bins - 1).astype(jnp.int32)
    counts = jnp.zeros(bins, jnp.float32).at[idx.ravel()].add(ok.ravel().astype(jnp.float32))
    p = counts / jnp.maximum(n, 1)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))


def gaussian_entropy_per_step(table, ok):
    """Mean over step columns with >= 2 finite values of the Gaussian entropy 0.5 log(2 pi e var) (may be < 0)."""
    ok = ok & jnp.isfinite(table)
    cnt = jnp.sum(ok, axis=0)
    mean = jnp.sum(jnp.where(ok, table, 0.0), axis=0) / jnp.maximum(cnt, 1)
    var = jnp.sum(jnp.where(ok, jnp.square(table - mean), 0.0), axis=0) / jnp.maximum(cnt, 1)
    h = 0.5 * jnp.log(2 * jnp.pi * jnp.e * (var + 1e-12))
    cols = cnt >= 2
    return jnp.sum(jnp.where(cols, h, 0.0)) / jnp.maximum(jnp.sum(cols), 1)


class LEAST(Intervention):
    name = "least"
    Config = LEASTConfig
    # actor-critics with a replay buffer: DQN is "not validated" and PPO "not applicable" (docs/interventions.md, LEAST)
    requires = frozenset({"replay", "td_target"})
    resources = {"episode_stops": "own"}
    agent_defaults = {"sac": {"noise_cap": 0.2, "noise_base": 0.0}}

    # ---- setup -------------------------------------------------------------------------------
    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        if c.stop_as_terminal:
            raise ValueError("least.stop_as_terminal=true is not supported: the env stores a LEAST stop as a "
                             "truncation (terminated=0), the recommended default; use false")
        if c.K_max < c.K_init:
            raise ValueError(f"least.K_init and least.K_max must satisfy 1 <= K_init <= K_max, got "
                             f"K_init={c.K_init}, K_max={c.K_max}")
        if c.min_rows > c.K_max:
            raise ValueError(f"least.min_rows must be in [1, least.K_max={c.K_max}] (else it never stops), "
                             f"got {c.min_rows}")
        if c.noise_early_step > c.max_episode_steps:
            raise ValueError(f"least.noise_early_step must be in [0, least.max_episode_steps] (-1: half of it), "
                             f"got {c.noise_early_step}")
        if c.noise_base > c.noise_cap:
            raise ValueError(f"least.noise_base and least.noise_cap must satisfy 0 <= noise_base <= noise_cap, "
                             f"got {c.noise_base} and {c.noise_cap}")
        if self.agent_name == "td3" and agent_cfg is not None and c.noise_base < agent_cfg.exploration_noise:
            raise ValueError(f"least.noise_base={c.noise_base} is below td3.exploration_noise="
                             f"{agent_cfg.exploration_noise}; LEAST only adds noise on top of the agent's, so set "
                             f"least.noise_base >= td3.exploration_noise")
        if run_cfg is not None and c.t_start == -1:
            c.t_start = int(round(c.t_start_frac * run_cfg.steps))  # resolved once: saved with the config

    def start_step(self) -> int:
        if self.cfg.t_start < 0:
            raise ValueError("least.t_start is unresolved: build the config with plastic.config.build (its "
                             "validate sets t_start_frac x run.steps) or set least.t_start")
        return self.cfg.t_start

    def early_step(self) -> int:
        c = self.cfg
        return c.max_episode_steps // 2 if c.noise_early_step == -1 else c.noise_early_step

    def init(self, key, agent, agent_state=None):
        c = self.cfg
        L, K, m = c.max_episode_steps, c.K_max, c.noise_window
        nan = lambda *s: jnp.full(s, jnp.nan, jnp.float32)  # noqa: E731
        i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        return {
            "B_Q": nan(K + 1, L), "B_G": nan(K + 1, L),  # episodes' Qhat and G per step (+1: the running one)
            "row_valid": jnp.zeros(K + 1, bool),         # row holds a finished episode
            "row_len": jnp.zeros(K + 1, jnp.int32),      # its length (capped at L): later entries are padding
            # a stopped episode's last (Qhat, G), read at the steps after its end (stopped_tail=hold); else NaN
            "tail_Q": nan(K + 1), "tail_G": nan(K + 1),
            "write_ptr": i32(0),                         # row of the running episode (FIFO)
            "K": i32(c.K_init),                          # window size (episodes)
            "step": i32(0),                              # within-episode index of the next transition
            "pending": i32(L),                           # decision step of the stop asked last step (L: none)
            "prev_next_obs": jnp.zeros(agent.obs_size, jnp.float32),
            "H_ref": f32(0.0), "H_last": f32(0.0), "H_checks": i32(0),
            "ring_stop": jnp.full(m, L, jnp.int32),      # last m episodes: decision step of the stop, or L
            "ring_len": jnp.zeros(m, jnp.int32),         # ... and their lengths
            "episodes": i32(0), "stops": i32(0),
            "agent_sigma": f32(getattr(agent.cfg, "exploration_noise", 0.0) if self.agent_name == "td3" else 0.0),
            "t_start": i32(self.start_step()),           # env steps before LEAST acts (state, not a constant:
            "key": key,                                  # runs that differ only in it share one program)
            # the agent's warm-up: steps before it are neither recorded nor acted on (an untrained critic)
            "learning_starts": i32(agent.cfg.learning_starts),
        }

    # ---- pieces (pure, one seed) -----------------------------------------------------------------
    def active_rows(self, state):
        """bool [K_max + 1]: the K most recently finished valid rows."""
        R = state["row_valid"].shape[0]
        age = (state["write_ptr"] - 1 - jnp.arange(R)) % R
        return state["row_valid"] & (age < state["K"])

    def active_entries(self, state):
        """bool [K_max + 1, L]: entries of active rows within their episode's length."""
        L = state["B_Q"].shape[1]
        return self.active_rows(state)[:, None] & (jnp.arange(L)[None, :] < state["row_len"][:, None])

    def signals(self, agent, agent_state, transition, key):
        """(Qhat, G) of one transition under the critic acting now."""
        c = self.cfg
        batch = jax.tree.map(lambda x: jnp.asarray(x)[None], transition)
        deterministic = c.td_target == "deterministic"
        y = jax.lax.stop_gradient(agent.td_target(agent_state, batch, key, deterministic=deterministic))
        net = agent.nets[agent.critic_net]
        x = agent.net_inputs(agent_state, batch)[agent.critic_net]

        def head(params):
            q = agent.critic_scalar(net.apply(params, x)[0], batch)  # [2, 1]
            if c.q_head == "min":
                return jnp.min(q, axis=0)[0]
            return q[0, 0] if c.q_head == "q1" else jnp.mean(q, axis=0)[0]

        params = agent_state.nets[agent.critic_net].params
        q = head(params)
        if c.g_signal == "td_sq":
            return q, jnp.square(q - y[0])
        grads = jax.grad(lambda p: jnp.square(head(p) - y[0]))(params)
        return q, jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))

    def column(self, state, i):
        """The tables' column at step index i < L, `(col_Q, col_G)` [K_max + 1]: a row's own value within its
        length, its tail beyond it (a stopped row's last value with stopped_tail=hold, else NaN: padding)."""
        within = i < state["row_len"]
        return (jnp.where(within, state["B_Q"][:, i], state["tail_Q"]),
                jnp.where(within, state["B_G"][:, i], state["tail_G"]))

    def decide(self, state, q, g):
        """Stop rule at the state's current step index (False when i >= L); returns `(stop, eps, omega)`."""
        L = self.cfg.max_episode_steps
        i = state["step"]
        col_q, col_g = self.column(state, jnp.minimum(i, L - 1))
        stop, eps, omega, _, _ = stop_rule(q, g, col_q, col_g, self.active_rows(state), self.cfg)
        return stop & (i < L), eps, omega

    def write_step(self, state, q, g):
        """This step's (Qhat, G) into the running episode's row (not valid, so no decision sees it yet).
        Written before the step's column is read: a table read that XLA may schedule after an independent
        in-place write makes it copy the whole table on every env step."""
        ptr, i = state["write_ptr"], state["step"]
        return {**state, "B_Q": state["B_Q"].at[ptr, i].set(q, mode="drop"),
                "B_G": state["B_G"].at[ptr, i].set(g, mode="drop")}

    def finish(self, state, done, stopped, q, g):
        """Where `done`: the running row becomes a finished episode (length capped at L) and the pointer moves
        to the oldest row, which stops being valid (it is overwritten by the next episode). A row LEAST
        `stopped` keeps its last `(q, g)` as its tail when stopped_tail=hold."""
        ptr, i = state["write_ptr"], state["step"]
        R = state["row_valid"].shape[0]
        new_ptr = jnp.where(done, (ptr + 1) % R, ptr)
        hold = stopped & (self.cfg.stopped_tail == "hold")
        tail_q = jnp.where(hold, q, jnp.nan).astype(jnp.float32)
        tail_g = jnp.where(hold, g, jnp.nan).astype(jnp.float32)
        return {**state, "row_len": state["row_len"].at[ptr].set(jnp.minimum(i + 1, self.cfg.max_episode_steps)),
                "tail_Q": state["tail_Q"].at[ptr].set(jnp.where(done, tail_q, state["tail_Q"][ptr])),
                "tail_G": state["tail_G"].at[ptr].set(jnp.where(done, tail_g, state["tail_G"][ptr])),
                "row_valid": state["row_valid"].at[ptr].set(done).at[new_ptr].set(False),
                "write_ptr": new_ptr}

    def entropy(self, state):
        if self.cfg.entropy_estimator == "histogram":
            return histogram_entropy(state["B_Q"], self.active_entries(state), self.cfg.entropy_bins)
        return gaussian_entropy_per_step(state["B_Q"], self.active_entries(state))

    def entropy_check(self, state):
        """H of the active B_Q values against the running mean of earlier checks: the new
        `(K, H_ref, H_last, H_checks)` (an entropy check without any finite active value changes nothing)."""
        c = self.cfg
        has = jnp.any(self.active_entries(state) & jnp.isfinite(state["B_Q"]))
        H = self.entropy(state)
        ref, n = state["H_ref"], state["H_checks"]
        compare = has & (n > 0)
        grow = compare & (H > (1.0 + c.gamma_H) * ref)
        shrink = compare & (H < (1.0 - c.gamma_H) * ref) if c.K_can_shrink else jnp.zeros((), bool)
        K = jnp.clip(state["K"] + c.K_step * (grow.astype(jnp.int32) - shrink.astype(jnp.int32)), c.K_init, c.K_max)
        return (K.astype(jnp.int32), jnp.where(has, (ref * n + H) / (n + 1), ref).astype(jnp.float32),
                jnp.where(has, H, state["H_last"]).astype(jnp.float32), n + has.astype(jnp.int32))

    def stop_rate(self, state, before=None):
        """Fraction of the last m finished episodes stopped by LEAST (at a decision step < `before`)."""
        m = state["ring_stop"].shape[0]
        filled = jnp.arange(m) < jnp.minimum(state["episodes"], m)
        hit = state["ring_stop"] < (self.cfg.max_episode_steps if before is None else before)
        return jnp.sum(filled & hit) / jnp.maximum(jnp.sum(filled), 1)

    def noise_scale(self, state):
        """sigma_t = base + (cap - base) sigmoid(slope (r - center)), r = early stop rate."""
        c = self.cfg
        r = self.stop_rate(state, self.early_step())
        return c.noise_base + (c.noise_cap - c.noise_base) * jax.nn.sigmoid(c.noise_slope * (r - c.noise_center))

    def _active(self, state, counters):
        t = counters["env_steps"]
        acts = (t >= state["t_start"]) & (t >= state["learning_starts"])
        return acts if self.cfg.enabled else jnp.zeros((), bool)

    # ---- hooks ---------------------------------------------------------------------------------
    def on_env_step(self, state, transition, agent, agent_state, counters):
        c = self.cfg
        L = c.max_episode_steps
        t = counters["env_steps"]
        obs = jnp.asarray(transition["obs"], jnp.float32)
        # an episode start this hook did not see coming (host driver after a resume): drop the partial row
        broken = ~jnp.all(obs == state["prev_next_obs"])
        s = {**state, "step": jnp.where(broken, 0, state["step"]), "pending": jnp.where(broken, L, state["pending"]),
             "prev_next_obs": jnp.asarray(transition["next_obs"], jnp.float32)}
        i = s["step"]
        q, g = self.signals(agent, agent_state, transition, jax.random.fold_in(state["key"], t))
        # the agent's warm-up (random actions, an untrained critic): its Q and TD errors describe nothing, and
        # would stay in the window for K episodes. NaN entries are masked like padding.
        learning = t >= state["learning_starts"]
        q, g = jnp.where(learning, q, jnp.nan), jnp.where(learning, g, jnp.nan)
        done = jnp.asarray(transition["done"]) > 0
        term = jnp.asarray(transition["terminated"]) > 0
        s = self.write_step(s, q, g)
        stop = self.decide(s, q, g)[0] & self._active(s, counters) & ~done

        # the episode ended at this step (naturally, by a time limit, or by last step's stop): it joins the FIFO
        stopped = done & (s["pending"] < L) & ~term
        s = self.finish(s, done, stopped, q, g)
        m = c.noise_window
        slot = s["episodes"] % m
        s = {**s,
             "ring_stop": s["ring_stop"].at[slot].set(jnp.where(done, jnp.where(stopped, s["pending"], L),
                                                                 s["ring_stop"][slot])),
             "ring_len": s["ring_len"].at[slot].set(jnp.where(done, i + 1, s["ring_len"][slot])),
             "episodes": s["episodes"] + done.astype(jnp.int32), "stops": s["stops"] + stopped.astype(jnp.int32),
             "step": jnp.where(done, 0, i + 1), "pending": jnp.where(stop, i, L)}
        # the tables enter the check read-only (from the closure), so the cond does not carry them
        names = ("K", "H_ref", "H_last", "H_checks")
        small = maybe((t + 1) % c.entropy_period == 0, lambda _: self.entropy_check(s),  # unbatched predicate
                      tuple(s[k] for k in names))
        return {**s, **dict(zip(names, small))}, stop

    def on_act(self, state, action, key, counters):
        if not self.cfg.enabled:
            return action
        sigma = self.noise_scale(state)
        if self.agent_name == "td3":  # on top of the agent's own N(0, sigma_agent): total sigma_t before clipping
            std = jnp.sqrt(jnp.maximum(jnp.square(sigma) - jnp.square(state["agent_sigma"]), 0.0))
        else:
            std = sigma
        noisy = jnp.clip(action + std * jax.random.normal(key, action.shape), -1.0, 1.0)
        return jnp.where(self._active(state, counters), noisy, action)

    def logs(self, state):
        L = self.cfg.max_episode_steps
        m = state["ring_stop"].shape[0]
        stopped = (jnp.arange(m) < jnp.minimum(state["episodes"], m)) & (state["ring_stop"] < L)
        mean_len = jnp.sum(jnp.where(stopped, state["ring_len"], 0)) / jnp.maximum(jnp.sum(stopped), 1)
        return {"least/stop_rate": self.stop_rate(state),
                "least/early_stop_rate": self.stop_rate(state, self.early_step()),
                "least/mean_stopped_length": mean_len,
                "least/K": state["K"], "least/sigma": self.noise_scale(state), "least/stops": state["stops"],
                "least/entropy": state["H_last"], "least/entropy_ref": state["H_ref"]}
