"""SAC (Haarnoja et al. 2018) with CleanRL defaults: twin critics (fused), tanh-squashed Gaussian
actor with log-std squashed into [-5, 2], automatic temperature tuning with target entropy -|A| from
α = 1 (`alpha_init`; `alpha` is the temperature when `autotune` is off), weights drawn as PyTorch's
nn.Linear default, which CleanRL's SAC inherits (`init: torch_default`; biases start at zero).

One call of `update` is one critic step and a Polyak update of the critic target; every `policy_delay`
critic steps it also runs `policy_delay` actor (and temperature) steps on the same batch, as CleanRL
does, so actor and critic take the same number of steps on average (after the critic step; before it with
`update_order: actor_first`, SimbaV2's order). The temperature's loss reuses the log-probabilities of the
actor step's own sample, drawn before that step (as SB3 and the authors' SAC do); CleanRL draws a fresh sample
from the updated actor for it, a difference of one actor step in α's trajectory.

`network: simbav2` is SimbaV2 (Lee et al. 2025; docs/interventions.md, SimbaV2): hyperspherical actor and critic
(plastic.networks.SimbaV2) and a categorical critic of `bins` atoms over [-v_max, v_max], trained by cross-entropy
on the projected soft target of the target twin with the lower expected value. Its other parts are switches of
any SAC (`norm_obs`, `norm_reward`, `lr_end`, `target_entropy`, `log_std_min`, `alpha_init`, `actor_hidden`,
`actor_blocks`, `update_order`), set to SimbaV2's values by the preset experiments/configs/sac_simbav2.yaml.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from plastic.agent import AgentState, ContinuousActions, empty_logs, squash_obs_action
from plastic.core import Net, Update, maybe
from plastic.fields import nonneg, num, positive, unit, unit_lt1, unit_pos, one_of
from plastic.networks import (ACTIVATIONS, INITIALIZERS, NORMS, SAC_NETWORKS, adam_options, build_network,
                              check_options, with_injection, with_sphere)
from plastic.normalize import RunningStats
from plastic.optim import adam

LOG_STD_MAX = 2.0
UPDATE_ORDERS = ("critic_first", "actor_first")


def categorical_projection(probs, atoms, v_max: float, bins: int):
    """Masses `probs` [B, N] at positions `atoms` [B, N] projected onto the support of `bins` evenly spaced atoms
    over [-v_max, v_max] (C51, Bellemare et al. 2017): positions clipped to the support, each mass split between
    its two neighbouring atoms in proportion to closeness (all of it on an atom it hits exactly). Returns [B, bins].
    Two scatter-adds (8x faster on CPU than a dense [B, N, bins] interpolation matrix)."""
    b = (jnp.clip(atoms, -v_max, v_max) + v_max) / (2.0 * v_max / (bins - 1))
    lower = jnp.floor(b)
    frac = b - lower                                      # the share of the atom above
    lo = lower.astype(jnp.int32)
    rows = jnp.arange(b.shape[0])[:, None]
    m = jnp.zeros((b.shape[0], bins), probs.dtype).at[rows, lo].add(probs * (1.0 - frac))
    return m.at[rows, jnp.minimum(lo + 1, bins - 1)].add(probs * frac)


@dataclass
class SACConfig:
    hidden: tuple[int, ...] = positive((256, 256))  # mlp: layer widths; simba/bronet: the first is the width d
    # mlp | simba (Lee et al. 2024) | bronet (Nauman et al. 2024) | simbav2 (Lee et al. 2025; categorical critic)
    network: str = one_of("mlp", SAC_NETWORKS)
    norm: str = one_of("none", NORMS)  # none | layer: LayerNorm after every hidden Dense of an mlp (Plasticine's LN)
    blocks: int = num(2, ge=1)        # simba/bronet/simbav2 residual blocks (papers: critic 2, actor 1)
    actor_hidden: tuple[int, ...] = positive(())  # the actor's `hidden` if given (SimbaV2: 128; else `hidden`)
    actor_blocks: int = num(0, ge=0, note="0: blocks")  # the actor's residual blocks (SimbaV2: 1)
    activation: str = one_of("relu", ACTIVATIONS)
    # CleanRL's SAC is PyTorch: U(±1/sqrt(fan_in)) weights. lecun_normal (3x the variance, what flax draws) learns
    # HalfCheetah ~5k steps later (docs/validation/sanity.md)
    init: str = one_of("torch_default", INITIALIZERS)
    actor_lr: float = positive(3e-4)
    critic_lr: float = positive(1e-3)
    alpha_lr: float = positive(1e-3)
    b1: float = unit_lt1(0.9)         # Adam β1 of every network (CBP's LOP setting: 0.99)
    b2: float = unit_lt1(0.999)       # Adam β2 (CBP's LOP setting: 0.99)
    critics: int = num(2, ge=1)       # critic ensemble; targets and actor take its min (SimbaV2 off episodic tasks: 1)
    batch_size: int = positive(256)
    gamma: float = unit(0.99)
    tau: float = unit_pos(0.005)
    policy_delay: int = positive(2)
    autotune: bool = True
    alpha: float = nonneg(0.2)        # the fixed temperature when autotune is off
    # autotune's initial temperature: 1, as CleanRL (log_alpha = 0), SB3 ("auto_1.0") and softlearning start it
    alpha_init: float = positive(1.0)
    log_std_min: float = num(-5.0, lt=LOG_STD_MAX)  # the actor's log-std floor (CleanRL -5, SimbaV2 -10); ceiling 2
    target_entropy: float = -1.0      # per action dimension: the temperature's target is this x |A| (SimbaV2 -0.5)
    bins: int = num(101, ge=2)        # simbav2: the categorical critic's atoms, evenly spaced over [-v_max, v_max]
    v_max: float = positive(5.0)      # simbav2's support bound; with norm_reward also the return bound G_max
    norm_obs: bool = False            # standardise observations by running statistics of every env step (SimbaV2)
    norm_reward: bool = False         # rewards / max(std of the discounted return, max |return| / v_max) (SimbaV2)
    lr_end: float = unit_pos(1.0)     # every lr decays linearly to lr x lr_end over the run (1: constant; SimbaV2 0.5)
    # critic_first (CleanRL) | actor_first: actor and temperature, then the critic's step against them (SimbaV2)
    update_order: str = one_of("critic_first", UPDATE_ORDERS)
    train_frequency: int = positive(1)  # env steps between update rounds
    utd: int = positive(1)
    buffer_size: int = positive(1_000_000)
    learning_starts: int = nonneg(5_000)


class SAC(ContinuousActions):
    name = "sac"
    capabilities = frozenset({"replay", "td_target"})  # what interventions may require (Intervention.requires)
    Config = SACConfig
    roles = {"actor": "actor", "critic": "critic", "alpha": "temperature"}

    def __init__(self, cfg: SACConfig, obs_size: int, action_size: int, probe_point="pre_activation",
                 options: dict | None = None, total_steps: int = 0):
        self.cfg, self.obs_size, self.action_size = cfg, obs_size, action_size
        self.options = opts = check_options(self.name, options, ("actor", "critic"))
        inject = opts.get("inject", ())
        self.categorical = cfg.network == "simbav2"
        actor_cfg = dataclasses.replace(cfg, hidden=cfg.actor_hidden or cfg.hidden, blocks=cfg.actor_blocks or cfg.blocks)
        actor = build_network(actor_cfg, 2 * action_size, probe_point=probe_point, inject="actor" in inject,
                              branches=2 if self.categorical else 1)
        critic = build_network(cfg, cfg.bins if self.categorical else 1, ensemble=cfg.critics, probe_point=probe_point,
                               inject="critic" in inject)
        self.support = np.linspace(-cfg.v_max, cfg.v_max, cfg.bins, dtype=np.float32)
        # lr_end: linear decay over the updates the run's budget allows, warm-up included (SimbaV2's schedule)
        decay = max(1, total_steps // cfg.train_frequency * cfg.utd)
        lr = lambda v: v if cfg.lr_end == 1.0 or not total_steps else optax.linear_schedule(  # noqa: E731
            v, v * cfg.lr_end, decay)

        def opt(v, name, module=None):
            return with_injection(with_sphere(adam(lr(v), b1=cfg.b1, b2=cfg.b2, **adam_options(opts, name)), module),
                                  module)
        self.actor = Net.of("actor", actor, opt(cfg.actor_lr, "actor", actor), cfg.actor_lr)
        self.critic = Net.of("critic", critic, opt(cfg.critic_lr, "critic", critic), cfg.critic_lr)
        self.alpha = Net("alpha", opt(cfg.alpha_lr, "alpha"),
                         init_fn=lambda key: {"log_alpha": jnp.log(jnp.asarray(
                             cfg.alpha_init if cfg.autotune else cfg.alpha, jnp.float32))})
        self.nets = {"actor": self.actor, "critic": self.critic, "alpha": self.alpha}
        self.target_entropy = cfg.target_entropy * float(action_size)

    def role(self, net_name: str) -> str:
        return self.roles[net_name]

    def init(self, key) -> AgentState:
        ka, kc, kt = jax.random.split(key, 3)
        obs = jnp.zeros((1, self.obs_size))
        nets = {"actor": self.actor.init(ka, obs),
                "critic": self.critic.init(kc, squash_obs_action(obs, jnp.zeros((1, self.action_size)))),
                "alpha": self.alpha.init(kt)}
        logs = {**empty_logs(self.actor), **empty_logs(self.critic), "loss/alpha": jnp.zeros(()),
                "alpha": jnp.zeros(()), "entropy": jnp.zeros(()), "q_mean": jnp.zeros(())}
        extra = {}
        if self.cfg.norm_obs:
            extra["obs_rms"] = RunningStats.create((self.obs_size,))
        if self.cfg.norm_reward:
            extra.update(ret=jnp.zeros(()), ret_rms=RunningStats.create(), ret_max=jnp.zeros(()))
        return AgentState(nets=nets, targets={"critic": nets["critic"].params}, logs=logs, extra=extra)

    # ---- SimbaV2's normalisers (off unless norm_obs / norm_reward) -------------------------------------
    def observe(self, state: AgentState, transition) -> AgentState:
        """Stream statistics, updated at every env step (the drivers call this after storing `transition`):
        running mean and variance of the observations acted on, and the discounted return
        `G_t = r_t + γ (1 − done_t) G_{t−1}` (SimbaV2's recursion: the step's own `done`), its running variance
        and its running max |G|."""
        c = self.cfg
        if not (c.norm_obs or c.norm_reward):
            return state
        extra = dict(state.extra)
        if c.norm_obs:
            extra["obs_rms"] = extra["obs_rms"].update(jnp.asarray(transition["obs"], jnp.float32)[None])
        if c.norm_reward:
            g = c.gamma * (1.0 - transition["done"]) * extra["ret"] + transition["reward"]
            extra.update(ret=g, ret_rms=extra["ret_rms"].update(g[None]),
                         ret_max=jnp.maximum(extra["ret_max"], jnp.abs(g)))
        return state.replace(extra=extra)

    def observation(self, state: AgentState, obs):
        """`obs` as the networks see it (standardised with `norm_obs`, no clipping)."""
        return state.extra["obs_rms"].normalize(obs, jnp.inf) if self.cfg.norm_obs else obs

    def prepare(self, state: AgentState, batch):
        """A replay batch as the networks see it: observations standardised (`norm_obs`) and rewards divided by
        `max(sqrt(Var[G] + 1e-8), max|G| / v_max)` (`norm_reward`), both with the current statistics."""
        c = self.cfg
        if c.norm_obs:
            batch = {**batch, "obs": self.observation(state, batch["obs"]),
                     "next_obs": self.observation(state, batch["next_obs"])}
        if c.norm_reward:
            ex = state.extra
            scale = jnp.maximum(jnp.sqrt(ex["ret_rms"].var + 1e-8), ex["ret_max"] / c.v_max)
            batch = {**batch, "reward": batch["reward"] / scale}
        return batch

    def q_values(self, out):
        """The critic's Q-values `[E, B]` from its output: the scalar head, or the categorical head's mean."""
        return jax.nn.softmax(out, axis=-1) @ self.support if self.categorical else out[..., 0]

    def _gaussian(self, y):
        """The actor's output -> (mean, log_std) of the pre-tanh Gaussian (log_std squashed into its range)."""
        mean, log_std = jnp.split(y, 2, axis=-1)
        lo = self.cfg.log_std_min
        return mean, lo + 0.5 * (LOG_STD_MAX - lo) * (jnp.tanh(log_std) + 1.0)

    def policy(self, params, obs, key, probes=None):
        """Sample a squashed action; returns (action, log_prob, activations, deterministic action)."""
        y, acts = self.actor.apply(params, obs, probes)
        mean, log_std = self._gaussian(y)
        std = jnp.exp(log_std)
        x = mean + std * jax.random.normal(key, mean.shape)
        a = jnp.tanh(x)
        logp = jnp.sum(-0.5 * jnp.square((x - mean) / std) - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)
        logp = logp - jnp.sum(jnp.log(1.0 - jnp.square(a) + 1e-6), axis=-1)
        return a, logp, acts, jnp.tanh(mean)

    def act(self, state: AgentState, obs, key, explore: bool = True, step=0):
        a, _, _, greedy = self.policy(state.nets["actor"].params, self.observation(state, obs), key)
        return a if explore else greedy

    def update(self, u: Update, batch, key) -> Update:
        c = self.cfg
        k_next, k_critic, k_actor = jax.random.split(key, 3)
        prepared = self.prepare(u.state, batch)
        obs, action = prepared["obs"], prepared["action"]

        def critic_phase(u):
            y, target = self._targets(u.state, prepared, k_next)

            def critic_loss(params, probes):
                out = self.critic.apply(params, squash_obs_action(obs, action), probes)[0]
                q = self.q_values(out)
                if self.categorical:  # cross-entropy of each twin against the projected target distribution
                    return -jnp.sum(jnp.mean(jnp.sum(target * jax.nn.log_softmax(out, axis=-1), -1), -1)), q.mean()
                return jnp.sum(jnp.mean(jnp.square(q - y), axis=-1)), q.mean()

            u, q_mean = u.step(self.critic, critic_loss, key=k_critic, inputs=squash_obs_action(obs, action))
            return u.polyak(self.critic, c.tau).log(q_mean=q_mean)

        def actor_step(i, u):
            k_pi, k_a, k_t = jax.random.split(jax.random.fold_in(k_actor, i), 3)
            critic_params = u.state.nets["critic"].params
            alpha = jnp.exp(u.state.nets["alpha"].params["log_alpha"])

            def actor_loss(params, probes):
                a, logp, _, _ = self.policy(params, obs, k_pi, probes)
                q = jnp.min(self.q_values(self.critic.apply(critic_params, squash_obs_action(obs, a))[0]), axis=0)
                return jnp.mean(alpha * logp - q), logp

            u, logp = u.step(self.actor, actor_loss, key=k_a, inputs=obs)
            if c.autotune:
                logp = jax.lax.stop_gradient(logp)

                def alpha_loss(params, probes):
                    return -jnp.mean(jnp.exp(params["log_alpha"]) * (logp + self.target_entropy)), None

                u, _ = u.step(self.alpha, alpha_loss, key=k_t)
            return u.log(alpha=jnp.exp(u.state.nets["alpha"].params["log_alpha"]), entropy=-jnp.mean(logp))

        def actor_phase(u):
            return jax.lax.fori_loop(0, c.policy_delay, actor_step, u, unroll=True)

        if c.update_order == "actor_first":  # SimbaV2's release: the critic's target uses the updated actor
            u = maybe(u.counters["critic"] % c.policy_delay == 0, actor_phase, u)
            return critic_phase(u)
        u = critic_phase(u)
        return maybe(u.counters["critic"] % c.policy_delay == 0, actor_phase, u)

    # ---- what the metrics collector (plastic/monitor.py) reads ----------------------------------
    policy_net, critic_net = "actor", "critic"

    def net_inputs(self, state: AgentState, batch):
        obs = self.observation(state, batch["obs"])
        return {"actor": obs, "critic": squash_obs_action(obs, batch["action"])}

    def policy_view(self, out):
        mean, log_std = self._gaussian(out)
        return {"action": jnp.tanh(mean), "mean": mean, "log_std": log_std}

    def critic_scalar(self, out, batch):
        return self.q_values(out)  # [E, B]: every critic

    # ---- what LEAST (plastic/interventions/least.py) reads, besides the above ------------------------
    def td_target(self, state: AgentState, batch, key, deterministic: bool = False):
        """The critic's soft TD target `y` [B] on the replay `batch`, exactly as `update` forms it: next action
        sampled from the current actor with `key`, min of the target twins minus alpha log-prob, bootstrapped unless
        `terminated` (categorical critic: the mean of the projected target distribution). `deterministic`: the
        pre-tanh Gaussian's mean instead of a sample (log-prob at it)."""
        return self.targets(state, batch, key, deterministic)[0]

    def targets(self, state: AgentState, batch, key, deterministic: bool = False):
        """`(y [B], target distribution [B, bins] or None)` on the replay `batch` (see `td_target`). The
        categorical target (SimbaV2) takes the target twin with the lower mean per sample, shifts its atoms to
        `r + γ (1 − terminated) (z − α log π(a'|s'))` and projects them back onto the support."""
        return self._targets(state, self.prepare(state, batch), key, deterministic)

    def _targets(self, state: AgentState, batch, key, deterministic: bool = False):
        """`targets` on a batch already `prepare`d."""
        c = self.cfg
        next_obs = batch["next_obs"]
        alpha = jnp.exp(state.nets["alpha"].params["log_alpha"])
        if deterministic:
            mean, log_std = self._gaussian(self.actor.apply(state.nets["actor"].params, next_obs)[0])
            next_a = jnp.tanh(mean)
            next_logp = (jnp.sum(-log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)
                         - jnp.sum(jnp.log(1.0 - jnp.square(next_a) + 1e-6), axis=-1))
        else:
            next_a, next_logp, _, _ = self.policy(state.nets["actor"].params, next_obs, key)
        out = self.critic.apply(state.targets["critic"], squash_obs_action(next_obs, next_a))[0]
        q_next = self.q_values(out)
        discount = c.gamma * (1.0 - batch["terminated"])
        if not self.categorical:
            return batch["reward"] + discount * (jnp.min(q_next, axis=0) - alpha * next_logp), None
        lower = jnp.argmin(q_next, axis=0)                                    # [B]
        probs = jnp.take_along_axis(jax.nn.softmax(out, axis=-1), lower[None, :, None], axis=0)[0]
        atoms = batch["reward"][:, None] + discount[:, None] * (self.support - alpha * next_logp[:, None])
        target = categorical_projection(probs, atoms, c.v_max, c.bins)
        return target @ self.support, target
