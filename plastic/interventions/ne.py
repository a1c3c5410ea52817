"""Neuroplastic Expansion: masked growth, dormant pruning, experience review
(docs/interventions.md, Neuroplastic Expansion).

Every selected network keeps its full width; a boolean mask per sparsifiable kernel (every Dense / Conv
kernel of the layer map, the output kernel included) says which connections exist. The weights held in
`params` ARE the effective weights: inactive entries are exactly 0 and the loss is differentiated w.r.t.
`params` directly, so `UpdateContext.raw_grads` holds the dense gradient, inactive entries included
(docs/mechanics.md §5.1). Never mask inside the loss.

Hooks (all on the network's own update counter, which is unbatched):
- `grad_transform`: gradients × mask, so inactive entries accumulate no Adam moments and get no update;
- `post_update`: re-mask the parameters; every `period` updates a topology event (`core.maybe`):
  grow phase   n_grow = int(n_init_space · rate(t)), rate = `growth_rate` (constant) or
               zeta/2 · (1 + cos(pi t / t_end)) (cosine); n_init_space = initial_sparsity · N − n_active at
               the layer's first event [authors' code] (or n_final − n_active if larger [project]); at least 1
               while the layer is below its final count and never past it [project];
               n_prune <= floor(prune_cap · n_grow) connections of
               dormant units (activation 0 on the update's batch) or lowest-|w| active weights;
  DST phase    once the network reaches its final density: drop int(n_active · dst_zeta/2 · (1 + cos(pi t /
               t_end))) lowest-|w| active weights and regrow as many (t counted from the switch);
  t_end        events stop once t reaches it; by default the critic's updates in the run (`run_updates`,
               resolved by `validate` from run.steps: the code's max_timesteps − start_timesteps on TD3);
  both         grow the largest dense |grad| among entries inactive after pruning (a pruned entry that is
               regrown keeps its weight, as in the authors' code); newly active weights start at 0
               (`grown_init=zero`: function-preserving) or from the layer's initializer; Adam mu/nu zeroed
               at every entry whose mask bit flipped, the scalar count kept; the optimizer step of the event's
               update is undone (`skip_update_on_topology_step`: params and optimizer state restored from
               `ctx.params_before` / `ctx.opt_state_before`);
- `target_update`: target kernels × mask after every Polyak / hard update;
- `scheduled_event`: at every update round, online and target kernels × mask (idempotent: it applies the
  initial masks before the first update and keeps stale targets (DQN's hard sync) masked after an event);
- `sample` (replay_sampler): experience review — if the critic FAU of the last batch is below `awaken` and a
  uniform draw is >= gate = 1 / (1 + exp(awaken − FAU) · Tamp) (0.4 if that is >= 0.6), the whole batch is
  drawn uniformly from the oldest `review_oldest_frac` of the buffer [authors' code]; `auto_batch` halves
  the batch when FAU < 0.9 · awaken by repeating its first half (static shapes; the batch-mean losses and
  their gradients equal those of the half batch).

Per-layer densities follow the Erdős–Rényi rule (`er_densities`), computed in Python from the kernel
shapes; with `dense_layers=first_and_last` the network's first layer and output head stay dense and count
toward the global density (sparse layers get sparser to compensate, as in RigL / the authors' `sparse_set`):
the first and output kernels of an MLP / conv torso, the input projection `embed` and head `output` of a
residual net (SimBa, BroNet; not in its layer map, so never masked), whose block kernels are then all sparse.

Logs: `ne/density/NET` (active fraction of all the network's kernels, dense ones included),
`ne/density/NET/LAYER`, `ne/grown/NET`, `ne/pruned/NET` (connections switched on / off at the last
topology event), `ne/phase/NET` (0 grow, 1 DST, 2 frozen), `ne/events/NET`; with experience review or
auto_batch: `ne/fau` (critic FAU of the last batch), `ne/review_prob` (probability that the next batch is
reviewed), `ne/review_fraction` (expected fraction of batches reviewed so far), `ne/half_batch_fraction`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import jax
import jax.numpy as jnp

from metrics.activity import active_mask
from metrics.units import unit_magnitude
from plastic.core import NetState, maybe
from plastic.fields import count, num, positive, unit, unit_lt1, unit_pos, one_of
from plastic.interventions.base import Intervention
from plastic.networks import get_path, kernel_initializer, set_path
from plastic.optim import restart_entries

MODES = ("grow", "static_sparse", "dense")
SCHEDULES = ("constant", "cosine")
GROW_SCORES = ("dense_grad_abs", "random")
GROWN_INITS = ("zero", "layer_init")
PRUNE_SCORES = ("dormant_activation", "weight_magnitude")
PRUNE_CONNECTIONS = ("incoming", "incoming_and_outgoing")
TRUNCATIONS = ("random", "lowest_score")
DENSE_LAYERS = ("first_and_last", "none")
INIT_MASKS = ("magnitude", "random")
OPTIMIZER = ("zero_moments_keep_count", "none")
REVIEWS = ("off", "fau_gated_oldest")
GROW, DST, FROZEN = 0, 1, 2
GATE_CAP, GATE_FALLBACK = 0.6, 0.4   # gate >= 0.6 is replaced by 0.4 [authors' code TD3.train]
AUTO_BATCH_FRACTION = 0.9            # halve the batch when FAU < 0.9 · awaken [authors' code]
T_END_UNRESOLVED = 1_000_000         # t_end of an NE never validated against a run (built directly, in unit tests)


@dataclass
class NEConfig:
    # defaults = the `ne_paper` preset (experiments/configs/ne_paper.yaml); `ne_code.yaml` = released code
    # grow | static_sparse | dense; paper grow [reconstructed], code static_sparse
    actor_mode: str = one_of("grow", MODES)
    critic_mode: str = one_of("grow", MODES)  # grow | static_sparse | dense (DQN's Q-net has the role critic)
    initial_sparsity: float = unit_lt1(0.8)  # [authors' code] initial_stl_sparsity
    final_sparsity: float = unit(0.25)     # [authors' code train.py] actor/critic_sparsity
    period: int = count(10_000, "updates")  # Delta, updates of the network; code (TD3/MuJoCo argparse) 100
    # T_end in updates of the network; -1: the critic's updates in the run (code: max_timesteps − start_timesteps),
    # resolved once by validate and saved in config.yaml (a resume that extends --steps keeps it)
    t_end: int = count(-1, "updates", special=(-1,), note="-1: the critic's updates in the run")
    growth_schedule: str = one_of("cosine", SCHEDULES)  # cosine (paper via third party) | constant (code, rate 0.008)
    growth_rate: float = unit_pos(0.008)   # constant schedule: fraction of n_init_space per event [authors' code]
    zeta: float = unit(0.5)                # cosine schedule amplitude [authors' code argparse default]
    grow_score: str = one_of("dense_grad_abs", GROW_SCORES)  # dense_grad_abs | random
    grown_init: str = one_of("zero", GROWN_INITS)  # zero (function-preserving; code) | layer_init
    # dormant_activation (tau = 0, paper) | weight_magnitude (code)
    prune_score: str = one_of("dormant_activation", PRUNE_SCORES)
    # incoming [reconstructed] | incoming_and_outgoing (dormant pruning)
    prune_connections: str = one_of("incoming", PRUNE_CONNECTIONS)
    prune_cap: float = unit_lt1(0.4)       # omega: n_prune <= floor(omega · n_grow) [authors' code]
    prune_truncation: str = one_of("random", TRUNCATIONS)  # random (paper) | lowest_score (lowest |w|; code)
    dense_layers: str = one_of("first_and_last", DENSE_LAYERS)  # first_and_last (paper, after RLx2) | none (code)
    init_mask: str = one_of("magnitude", INIT_MASKS)  # magnitude (largest |w| kept; code weight_sparsify) | random
    skip_update_on_topology_step: bool = True  # [authors' code]
    optimizer_on_topology_change: str = one_of("zero_moments_keep_count", OPTIMIZER)  # | none  [project]
    remask_targets: bool = True            # [authors' code]
    dst_after_growth: bool = True          # [authors' code]: RigL-style swaps at constant density after growth
    dst_zeta: float = unit(0.2)            # [authors' code] zeta after the switch (cosine)
    experience_review: str = one_of("fau_gated_oldest", REVIEWS)  # | off (code default: --recall off)
    review_awaken: float = unit_pos(0.4)   # [authors' code] awaken
    review_tamp: float = positive(0.9)     # [authors' code] Tamp
    review_oldest_frac: float = unit_pos(0.3)  # [authors' code] hist_size
    auto_batch: bool = False               # code default true; not part of the method as described
    grad_accumulation_n: int = num(1, ge=1)  # [authors' code]: dense gradient = mean over the last n updates


@dataclass(frozen=True)
class KernelSpec:
    """One maskable kernel of a network (static)."""
    name: str                      # its module name (hidden_0, conv_1, output): unique within the network
    path: tuple[str, ...]
    ensemble: int                  # 0, or E (twin critics: kernels [E, in, out]; one mask row per member)
    init: Callable
    incoming: str | None           # hidden layer whose units own this kernel's columns (None: output kernel)
    outgoing: tuple = ()           # (layer name, row-mask builder) of hidden layers feeding this kernel


@dataclass
class Plan:
    """Static plan of one network: its sparse kernels with per-member active counts (initial, final)."""
    sparse: tuple[KernelSpec, ...]
    size: dict                     # kernel name -> entries per member
    rows: dict                     # kernel name -> mask rows (E or 1)
    n_init: dict                   # kernel name -> active count per member at the start
    n_final: dict                  # kernel name -> active count per member at the final density
    dense_size: int                # entries of the kernels kept dense (all members)
    mode: str
    densities: dict = field(default_factory=dict)  # kernel name -> (initial, final) ER density (all kernels)


def er_densities(shapes, density: float, dense=(), mult=None):
    """Erdős–Rényi per-layer densities (docs/mechanics.md §5.2; authors' `sparse_set`): density_l =
    eps · sum(shape_l) / prod(shape_l) for sparse layers, 1 for the layers in `dense` and for any layer the
    rule would push above 1 (then eps is re-solved), so that sum_l density_l N_l m_l = density · sum_l N_l m_l
    (`m_l`: members sharing the shape, e.g. 2 twin critics). Returns floats in [0, 1]."""
    n = [math.prod(s) for s in shapes]
    mult = mult or [1] * len(shapes)
    raw = [sum(s) / math.prod(s) for s in shapes]
    dense = set(dense)
    eps = 0.0
    while True:
        sparse = [i for i in range(len(shapes)) if i not in dense]
        if not sparse:
            break
        rhs = sum(density * n[i] * mult[i] for i in sparse) - sum((1 - density) * n[i] * mult[i] for i in dense)
        eps = rhs / sum(raw[i] * n[i] * mult[i] for i in sparse)
        top = max(raw[i] for i in sparse)
        if top * eps > 1:
            dense |= {i for i in sparse if raw[i] == top}
            continue
        break
    return [1.0 if i in dense else min(max(raw[i] * eps, 0.0), 1.0) for i in range(len(shapes))]


def er_counts(shapes, density: float, dense=(), mult=None):
    """Active connections per member of every layer for `er_densities`, rounded so that the total
    sum_l count_l m_l is within max(m)/2 of density · sum_l N_l m_l (one weight for twin critics) and every
    count within 1 of density_l N_l."""
    mult = mult or [1] * len(shapes)
    d = er_densities(shapes, density, dense, mult)
    n = [math.prod(s) for s in shapes]
    counts = [math.floor(di * ni + 1e-9) for di, ni in zip(d, n)]
    target = density * sum(ni * mi for ni, mi in zip(n, mult))
    total = sum(c * m for c, m in zip(counts, mult))
    for i in sorted(range(len(n)), key=lambda i: counts[i] - d[i] * n[i]):  # largest remainder first
        if counts[i] < n[i] and total + mult[i] / 2 <= target:
            counts[i] += 1
            total += mult[i]
    return d, counts


def run_updates(steps: int, agent_cfg) -> int:
    """Gradient updates of the critic in a run of `steps` env steps, the default T_end (docs/interventions.md,
    Neuroplastic Expansion): an off-policy agent runs `utd` updates after every `train_frequency`-th env step
    from `learning_starts` on, utd · (steps // train_frequency − learning_starts // train_frequency) (TD3's
    defaults: steps − learning_starts, the code's max_timesteps − start_timesteps); PPO runs epochs × minibatches
    per rollout of num_envs × num_steps env steps, the last one partial included. At least 1."""
    a = agent_cfg
    if hasattr(a, "num_steps"):
        n = -(-steps // (a.num_envs * a.num_steps)) * a.epochs * a.minibatches
    else:
        every = getattr(a, "train_frequency", 1)
        n = getattr(a, "utd", 1) * (steps // every - getattr(a, "learning_starts", 0) // every)
    return max(n, 1)


def floor_mul(k, frac: Fraction):
    """floor(k · frac) exactly for int32 `k` >= 0 and a non-negative fraction (no int32 overflow)."""
    q, r = k // frac.denominator, k % frac.denominator
    return q * frac.numerator + (r * frac.numerator) // frac.denominator


def top_k(flagged, score, k):
    """Rank mask per row: at most `k[r]` flagged entries of row r, lowest `score` first (ties: lower index)."""
    s = jnp.where(flagged, score, jnp.inf)
    rank = jnp.argsort(jnp.argsort(s, axis=-1, stable=True), axis=-1, stable=True)
    return flagged & (rank < k[:, None])


def _rows(x, ensemble):
    return x.reshape(x.shape[0] if ensemble else 1, -1)


def _where_tree(c, a, b):
    return jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)


class NE(Intervention):
    name = "ne"
    Config = NEConfig
    samples_replay = True   # experience review; with review and auto_batch off it samples uniformly
    # PPO has no replay buffer: experience review and batch halving do not apply
    agent_defaults = {"ppo": {"experience_review": "off", "auto_batch": False}}
    census = {"period": 5, "t_end": 1_000_000}  # t_end past the census's short runs: every due event is live

    @classmethod
    def census_selections(cls, roles):
        """The growing networks: the actor alone, the critic alone, both (the others dense)."""
        units = [r for r in ("actor", "critic") if r in set(roles)]
        one = [{f"{r}_mode": "grow", **{f"{o}_mode": "dense" for o in ("actor", "critic") if o != r}} for r in units]
        return one + ([{"actor_mode": "grow", "critic_mode": "grow"}] if len(units) > 1 else [])

    def expected_events(self, agent, counters):
        """A topology event at every positive multiple of `period` of each growing network's counter, while the
        phase is live (the DST phase after growth included; up to `t_end` updates after the phase started,
        which the census sets beyond its short runs)."""
        return {n: counters[n] // self.cfg.period for n, p in self.plans.items() if p is not None and p.mode == "grow"}

    def __init__(self, cfg, agent_name, roles=None):
        super().__init__(cfg, agent_name, roles)
        self.plans: dict[str, Plan] = {}
        self._fau_net: str | None = None
        self._activation = "relu"

    # ---- setup -------------------------------------------------------------------------------
    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        if c.final_sparsity > c.initial_sparsity:
            raise ValueError(f"ne.final_sparsity must be in [0, ne.initial_sparsity={c.initial_sparsity}] "
                             f"(NE grows: it never ends sparser than it starts), got {c.final_sparsity}")
        if c.grad_accumulation_n >= max(c.period, 2):
            raise ValueError(f"ne.grad_accumulation_n must be in [1, ne.period), got {c.grad_accumulation_n}")
        if run_cfg is not None and c.t_end == -1:
            c.t_end = run_updates(run_cfg.steps, agent_cfg)  # resolved once: saved with the config
        if self.agent_name == "ppo" and c.experience_review != "off":
            raise ValueError("ne.experience_review needs a replay buffer; ppo has none (use ne.experience_review=off)")
        if self.agent_name == "ppo" and c.auto_batch:
            raise ValueError("ne.auto_batch halves replay batches; ppo has none (use ne.auto_batch=false)")
        if c.auto_batch and agent_cfg is not None and getattr(agent_cfg, "batch_size", 2) % 2:
            raise ValueError(f"ne.auto_batch needs an even {self.agent_name}.batch_size (the half batch is "
                             f"repeated twice), got {agent_cfg.batch_size}")

    def horizon(self) -> int:
        """T_end in updates of the network: `t_end` as validate resolved it (the critic's updates in the run,
        also for TD3's actor, whose counter reaches only t_end / policy_delay, as in the authors' code), or
        T_END_UNRESOLVED for an NE whose config never met a run config."""
        return self.cfg.t_end if self.cfg.t_end > 0 else T_END_UNRESOLVED

    def claims(self):
        # the connection masks: a weight outside them must stay exactly 0, which a unit reset would break
        return {**super().claims(), "weight_support": "own"}

    @property
    def _tracks_fau(self) -> bool:
        return self.cfg.experience_review != "off" or self.cfg.auto_batch

    def _mode(self, agent, net) -> str:
        role = agent.role(net.name)
        return {"actor": self.cfg.actor_mode, "critic": self.cfg.critic_mode}.get(role, "dense")

    def plan(self, net, params, mode=None) -> Plan | None:
        """The network's static plan (cached per network name); None if nothing of it is sparse."""
        if net.name in self.plans:
            return self.plans[net.name]
        if not net.layers or mode in (None, "dense"):
            return None
        c = self.cfg
        specs = _kernel_specs(net)
        shapes = [get_path(params, s.path).shape for s in specs]
        member = [sh[1:] if s.ensemble else sh for s, sh in zip(specs, shapes)]
        mult = [s.ensemble or 1 for s in specs]
        dense, ends = set(), []
        if c.dense_layers == "first_and_last":
            # the network's input layer and output head: the first and last listed kernels, or (residual
            # nets) the input projection and head outside the list, dense and counted in the density
            ends = _unlisted_kernels(net, params, specs)
            dense = set(range(len(specs), len(specs) + len(ends))) if ends else {0, len(specs) - 1}
        ens = net.layers[0].ensemble
        member_all = member + [sh[1:] if ens else sh for sh in ends]
        mult_all = mult + [ens or 1] * len(ends)
        d0, n0 = er_counts(member_all, 1.0 - c.initial_sparsity, dense, mult_all)
        d1, n1 = er_counts(member_all, 1.0 - c.final_sparsity, dense, mult_all)
        sparse = [i for i in range(len(specs)) if d0[i] < 1.0 or (mode == "grow" and d1[i] < 1.0)]
        if not sparse:
            self.plans[net.name] = None
            return None
        size = {specs[i].name: math.prod(member[i]) for i in range(len(specs))}
        p = Plan(sparse=tuple(specs[i] for i in sparse), size={specs[i].name: size[specs[i].name] for i in sparse},
                 rows={specs[i].name: mult[i] for i in sparse},
                 n_init={specs[i].name: n0[i] for i in sparse},
                 n_final={specs[i].name: (n1[i] if mode == "grow" else n0[i]) for i in sparse},
                 dense_size=sum(size[specs[i].name] * mult[i] for i in range(len(specs)) if i not in sparse)
                 + sum(math.prod(m) * k for m, k in zip(member_all[len(specs):], mult_all[len(specs):])),
                 mode=mode, densities={specs[i].name: (d0[i], d1[i]) for i in range(len(specs))})
        self.plans[net.name] = p
        return p

    def init(self, key, agent, agent_state=None):
        if agent_state is None:
            agent_state = agent.init(key)
        c = self.cfg
        nets = {}
        for j, net in enumerate(agent.nets.values()):
            mode = self._mode(agent, net)
            p = self.plan(net, agent_state.nets[net.name].params, mode)
            if p is None:
                continue
            params = agent_state.nets[net.name].params
            masks = {}
            for i, k in enumerate(p.sparse):
                w = _rows(get_path(params, k.path), k.ensemble)
                n = jnp.full((p.rows[k.name],), p.n_init[k.name], jnp.int32)
                if c.init_mask == "magnitude":
                    score = -jnp.abs(w)
                else:
                    score = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, j), i), w.shape)
                masks[k.name] = top_k(jnp.ones(w.shape, bool), score, n).reshape(get_path(params, k.path).shape)
            zi = {k.name: jnp.zeros((), jnp.int32) for k in p.sparse}
            st = {"masks": masks, "phase": jnp.asarray(GROW if mode == "grow" else FROZEN, jnp.int32),
                  "phase_start": jnp.zeros((), jnp.int32), "events": jnp.zeros((), jnp.int32),
                  "space": {k.name: -jnp.ones((p.rows[k.name],), jnp.float32) for k in p.sparse},
                  "grown": zi, "pruned": zi}
            if c.grad_accumulation_n > 1 and mode == "grow":
                st["acc"] = {k.name: jnp.zeros(masks[k.name].shape, jnp.float32) for k in p.sparse}
            nets[net.name] = st
        state = {"nets": nets}
        if self._tracks_fau:
            critic = getattr(agent, "critic_net", None)
            self._fau_net = critic if critic in agent.nets and agent.nets[critic].module is not None else None
            if self._fau_net is not None:
                self._activation = _activation(agent.nets[critic].module)
            # FAU starts at 1: no review or halving before the first update has measured it
            state["review"] = {"fau": jnp.ones(()), "prob_sum": jnp.zeros(()), "half_sum": jnp.zeros(()),
                               "n": jnp.zeros(())}
        return state

    # ---- masks -------------------------------------------------------------------------------
    def apply_masks(self, net, params, st):
        """`params` with every masked kernel multiplied by its mask (exact zeros, other leaves untouched)."""
        for k in self.plans[net.name].sparse:
            params = set_path(params, k.path, jnp.where(st["masks"][k.name], get_path(params, k.path), 0.0))
        return params

    def grad_transform(self, net, grads, params, state):
        if net.name not in state["nets"]:
            return grads
        return self.apply_masks(net, grads, state["nets"][net.name])

    def target_update(self, net, target_params, state):
        if not self.cfg.remask_targets or net.name not in state["nets"]:
            return target_params
        return self.apply_masks(net, target_params, state["nets"][net.name])

    def initial_state(self, agent, agent_state, state):
        """The run starts from the masked networks (as the authors' sparse layers are built), so the metrics
        collector's θ₀ (`param_dist_init_rms`) is the network NE trains, not a dense one it never had."""
        return self.scheduled_event(agent, agent_state, state, None, None)[0]

    def scheduled_event(self, agent, agent_state, state, counters, key):
        nets, targets = dict(agent_state.nets), dict(agent_state.targets)
        for name, st in state["nets"].items():
            net = agent.nets[name]
            nets[name] = nets[name].replace(params=self.apply_masks(net, nets[name].params, st))
            if self.cfg.remask_targets and name in targets:
                targets[name] = self.apply_masks(net, targets[name], st)
        return agent_state.replace(nets=nets, targets=targets), state

    # ---- topology ----------------------------------------------------------------------------
    def counts(self, net, st, count):
        """Per sparse kernel: (n_grow, n_prune) per member `[R]` int32 for an event at update `count`, and
        the scheduler state after the phase check. Counts are 0 when the event does nothing."""
        c, p = self.cfg, self.plans[net.name]
        active = {k.name: jnp.sum(_rows(st["masks"][k.name], k.ensemble), axis=-1, dtype=jnp.int32)
                  for k in p.sparse}
        total = sum(jnp.sum(a) for a in active.values())
        reached = total >= sum(p.n_final[k] * p.rows[k] for k in p.n_final)
        switch = (st["phase"] == GROW) & reached
        phase = jnp.where(switch, DST if c.dst_after_growth else FROZEN, st["phase"]).astype(jnp.int32)
        start = jnp.where(switch, count, st["phase_start"]).astype(jnp.int32)
        t, t_end = (count - start).astype(jnp.float32), self.horizon()
        live = (phase != FROZEN) & (count - start < t_end)
        cosine = lambda z: z / 2 * (1 + jnp.cos(jnp.pi * t / t_end))  # noqa: E731
        rate = c.growth_rate if c.growth_schedule == "constant" else cosine(c.zeta)
        omega = Fraction(c.prune_cap).limit_denominator(1000)
        out, space = {}, {}
        for k in p.sparse:
            a = active[k.name]
            # the code's n_init_space, or the room to the final count where that is larger (Erdős–Rényi layers
            # denser than 1 − initial_sparsity, for which the code's formula is <= 0) [project]
            fresh = jnp.maximum(c.initial_sparsity * p.size[k.name], p.n_final[k.name]) - a.astype(jnp.float32)
            fresh = jnp.maximum(fresh, 0.0)
            sp = jnp.where((st["space"][k.name] < 0) & (phase == GROW) & live, fresh, st["space"][k.name])
            room = jnp.maximum(p.n_final[k.name] - a, 0)
            g = jnp.floor(jnp.maximum(sp, 0.0) * rate).astype(jnp.int32)
            g = jnp.minimum(jnp.where(room > 0, jnp.maximum(g, 1), 0), room)
            pr = floor_mul(g, omega)
            swap = jnp.floor(a.astype(jnp.float32) * cosine(c.dst_zeta)).astype(jnp.int32)
            g = jnp.where(phase == GROW, g, swap) * live
            pr = jnp.where(phase == GROW, pr, swap) * live
            out[k.name], space[k.name] = (g, pr), sp
        return out, {**st, "phase": phase, "phase_start": start, "space": space}, live

    def dormant_connections(self, net, params, inputs):
        """Per sparse kernel: bool like the kernel, True on connections of dormant units (activation 0 on every
        sample of `inputs`): their incoming columns, and with `incoming_and_outgoing` their outgoing rows."""
        _, acts = net.apply(params, inputs)
        dormant = {l.name: unit_magnitude(acts[l.name], l.ensemble) <= 0 for l in net.layers}
        out = {}
        for k in self.plans[net.name].sparse:
            shape = get_path(params, k.path).shape
            m = jnp.zeros(shape, bool)
            if k.incoming is not None:
                m = m | jnp.broadcast_to(dormant[k.incoming][..., None, :], shape)
            if self.cfg.prune_connections == "incoming_and_outgoing":
                for layer, rows in k.outgoing:
                    m = m | jnp.broadcast_to(rows(dormant[layer]), shape)
            out[k.name] = m
        return out

    def rewire(self, net, ns: NetState, st, counts, grads, key, dormant=None, phase=None):
        """One topology update of `ns` given per-kernel `(n_grow, n_prune)` counts: prune, grow, initialise the
        new connections, zero the Adam moments of every flipped entry. `grads`: kernel name -> growth gradient;
        `dormant`: kernel name -> candidate connections for dormant pruning (grow phase). Returns
        `(ns, st)` with the new masks and the grown / pruned counts."""
        c, p = self.cfg, self.plans[net.name]
        phase = st["phase"] if phase is None else phase
        params, masks, flipped = ns.params, dict(st["masks"]), {}
        grown, pruned = {}, {}
        for i, k in enumerate(p.sparse):
            kk = jax.random.fold_in(key, i)
            k_prune, k_grow, k_init = jax.random.split(kk, 3)
            w = get_path(params, k.path)
            old = masks[k.name]
            m, wr = _rows(old, k.ensemble), _rows(jnp.abs(w), k.ensemble)
            if c.prune_score == "dormant_activation":  # no dormant map given: nothing to prune
                cand = m & _rows(dormant[k.name], k.ensemble) if dormant is not None else jnp.zeros_like(m)
            else:
                cand = m
            if c.prune_truncation == "random":
                score = jax.random.uniform(k_prune, m.shape)
            else:
                score = wr
            cand = jnp.where(phase == GROW, cand, m)
            score = jnp.where(phase == GROW, score, wr)
            n_grow, n_prune = counts[k.name]
            keep = m & ~top_k(cand, score, n_prune)
            if c.grow_score == "dense_grad_abs":
                g_score = -jnp.abs(_rows(grads[k.name], k.ensemble))
            else:
                g_score = jax.random.uniform(k_grow, m.shape)
            new = (keep | top_k(~keep, g_score, n_grow)).reshape(old.shape)
            born = new & ~old
            if c.grown_init == "zero":
                w_new = jnp.where(new & ~born, w, 0.0)
            else:
                w_new = jnp.where(born, k.init(k_init, w.shape, w.dtype), jnp.where(new, w, 0.0))
            params = set_path(params, k.path, w_new)
            masks[k.name], flipped[k.name] = new, new ^ old
            grown[k.name] = jnp.sum(born, dtype=jnp.int32)
            pruned[k.name] = jnp.sum(old & ~new, dtype=jnp.int32)
        opt_state = ns.opt_state
        if c.optimizer_on_topology_change == "zero_moments_keep_count":
            touched = jax.tree.map(lambda x: jnp.zeros(x.shape, bool), params)
            for k in p.sparse:
                touched = set_path(touched, k.path, flipped[k.name])
            opt_state = restart_entries(net.tx, opt_state, touched, params)
        return NetState(params, opt_state), {**st, "masks": masks, "grown": grown, "pruned": pruned}

    def topology_event(self, net, ns, st, ctx, key):
        """The periodic event at update `ctx.count` (inside `core.maybe`): phase check, counts, undo of this
        update's optimizer step, rewiring."""
        c = self.cfg
        counts, st2, live = self.counts(net, st, ctx.count)
        if c.skip_update_on_topology_step:
            ns = _where_tree(live, NetState(ctx.params_before, ctx.opt_state_before), ns)
        dormant = None
        if c.prune_score == "dormant_activation":
            dormant = self.dormant_connections(net, ns.params, ctx.inputs)
        grads = st2["acc"] if "acc" in st2 else {k.name: get_path(ctx.raw_grads, k.path)
                                                 for k in self.plans[net.name].sparse}
        new_ns, new_st = self.rewire(net, ns, st2, counts, grads, key, dormant)
        # a dead event (frozen, past t_end) keeps the last event's counts on display
        new_st = {**new_st, "grown": _where_tree(live, new_st["grown"], st["grown"]),
                  "pruned": _where_tree(live, new_st["pruned"], st["pruned"]),
                  "events": st["events"] + live.astype(jnp.int32)}
        return new_ns, new_st

    def post_update(self, net, ns, ctx, state, key):
        if self._tracks_fau and net.name == self._fau_net:
            state = {**state, "review": self._track_fau(net, ctx, state["review"])}
        if net.name not in state["nets"]:
            return ns, state
        c, st = self.cfg, state["nets"][net.name]
        ns = ns.replace(params=self.apply_masks(net, ns.params, st))
        if self.plans[net.name].mode != "grow":
            return ns, state
        if "acc" in st:  # mean dense gradient over the n updates ending at the event (authors' IndexMaskHook)
            n = c.grad_accumulation_n
            window = (c.period - (ctx.count - 1) % c.period) <= n
            st = {**st, "acc": {k.name: jnp.where(window, st["acc"][k.name] + get_path(ctx.raw_grads, k.path) / n, 0.0)
                                for k in self.plans[net.name].sparse}}

        def event(operand):
            ns, st = operand
            ns, st = self.topology_event(net, ns, st, ctx, key)
            if "acc" in st:
                st = {**st, "acc": jax.tree.map(jnp.zeros_like, st["acc"])}
            return ns, st

        ns, st = maybe(ctx.count % c.period == 0, event, (ns, st))
        return ns, {**state, "nets": {**state["nets"], net.name: st}}

    # ---- experience review --------------------------------------------------------------------
    def review_gate(self, fau):
        """The gate of the authors' `TD3.train`: 1 / (1 + exp(awaken − FAU) · Tamp), 0.4 if that is >= 0.6."""
        c = self.cfg
        gate = 1.0 / (1.0 + jnp.exp(c.review_awaken - fau) * c.review_tamp)
        return jnp.where(gate >= GATE_CAP, GATE_FALLBACK, gate)

    def review_decision(self, fau, u):
        """Review the next batch: experience review on, FAU < awaken and the uniform draw `u` >= the gate."""
        if self.cfg.experience_review == "off":
            return jnp.zeros((), bool)
        return (fau < self.cfg.review_awaken) & (u >= self.review_gate(fau))

    def review_probability(self, fau):
        if self.cfg.experience_review == "off":
            return jnp.zeros(())
        return jnp.where(fau < self.cfg.review_awaken, 1.0 - self.review_gate(fau), 0.0)

    def halves_batch(self, fau):
        return jnp.asarray(self.cfg.auto_batch) & (fau < AUTO_BATCH_FRACTION * self.cfg.review_awaken)

    def _track_fau(self, net, ctx, r):
        """FAU of the critic on this update's batch (parameters before the step: those the loss saw), plus the
        review probability and halving the previous FAU implied for this update's batch."""
        _, acts = net.apply(ctx.params_before, ctx.inputs)
        active = sum(jnp.sum(active_mask(h, self._activation), dtype=jnp.float32) for h in acts.values())
        fau = active / sum(h.size for h in acts.values())
        return {"fau": fau, "prob_sum": r["prob_sum"] + self.review_probability(r["fau"]),
                "half_sum": r["half_sum"] + self.halves_batch(r["fau"]).astype(jnp.float32), "n": r["n"] + 1.0}

    def oldest_indices(self, replay, key, batch_size):
        """Uniform indices over the oldest `review_oldest_frac` of the live slots (insertion order: the
        oldest live slot is `ptr - size` modulo the capacity)."""
        n_old = jnp.maximum(jnp.floor(replay.size * self.cfg.review_oldest_frac), 1).astype(jnp.int32)
        start = (replay.ptr - replay.size) % replay.capacity
        return (start + jax.random.randint(key, (batch_size,), 0, n_old)) % replay.capacity

    def sample_with(self, replay, fau, u, key, batch_size):
        """The replay sampler with the gate's uniform draw `u` given (tests force it)."""
        k_idx, k_old = jax.random.split(key)
        idx = replay.sample_uniform(k_idx, batch_size)
        if self.cfg.experience_review != "off":
            idx = jnp.where(self.review_decision(fau, u), self.oldest_indices(replay, k_old, batch_size), idx)
        if self.cfg.auto_batch:
            idx = jnp.where(self.halves_batch(fau), idx[jnp.arange(batch_size) % (batch_size // 2)], idx)
        return idx

    def sample(self, replay, state, key, batch_size):
        if not self._tracks_fau:
            return replay.sample_uniform(key, batch_size)
        k_gate, k = jax.random.split(key)
        return self.sample_with(replay, state["review"]["fau"], jax.random.uniform(k_gate), k, batch_size)

    # ---- logs --------------------------------------------------------------------------------
    def logs(self, state):
        out = {}
        for name, st in state["nets"].items():
            p = self.plans[name]
            active = 0
            for k in p.sparse:
                a = jnp.sum(st["masks"][k.name], dtype=jnp.float32)
                out[f"ne/density/{name}/{k.name}"] = a / (p.size[k.name] * p.rows[k.name])
                active = active + a
            total = p.dense_size + sum(p.size[k] * p.rows[k] for k in p.size)
            out[f"ne/density/{name}"] = (active + p.dense_size) / total
            out[f"ne/grown/{name}"] = sum(st["grown"].values())
            out[f"ne/pruned/{name}"] = sum(st["pruned"].values())
            out[f"ne/phase/{name}"] = st["phase"]
            out[f"ne/events/{name}"] = st["events"]
        if "review" in state:
            r = state["review"]
            n = jnp.maximum(r["n"], 1.0)
            out.update({"ne/fau": r["fau"], "ne/review_prob": self.review_probability(r["fau"]),
                        "ne/review_fraction": r["prob_sum"] / n, "ne/half_batch_fraction": r["half_sum"] / n})
        return out


def _activation(module) -> str:
    return getattr(module, "activation", None) or getattr(getattr(module, "mlp", None), "activation", "relu")


def _output_init(net, ensemble):
    """Initializer of a kernel outside the layer map (the output layer): the module's kernel_init and
    output scale (PPO's small policy head), with the ensemble axis if any."""
    m = getattr(net.module, "mlp", net.module)
    return kernel_initializer(getattr(m, "kernel_init", "lecun_normal"), ensemble, getattr(m, "out_init_scale", 1.0))


def _unlisted_kernels(net, params, specs) -> list[tuple[int, ...]]:
    """Shapes of the network's kernels outside `specs`: a residual net's input projection `embed` and output
    head `output` (SimBa, BroNet), which its layer map leaves out (they act on the residual stream); none for
    the plain chains (MLP, conv torso), whose first and output kernels are listed."""
    listed = {s.path for s in specs}
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(getattr(k, "key", None) for k in path)
        if keys[-1] == "kernel" and keys not in listed:
            out.append(tuple(leaf.shape))
    return out


def _kernel_specs(net) -> list[KernelSpec]:
    """Every kernel of the layer map in forward order: the hidden layers' kernels, then any consumer kernel
    not among them (the output layer), each with the hidden layers whose outgoing rows it holds."""
    specs, by_path = [], {}
    for l in net.layers:
        by_path[l.kernel] = len(specs)
        specs.append(KernelSpec(l.kernel[-2], l.kernel, l.ensemble, l.init, l.name))
    for l in net.layers:
        for path, rows in l.consumer_rows():
            if path not in by_path:
                by_path[path] = len(specs)
                specs.append(KernelSpec(path[-2], path, l.ensemble, _output_init(net, l.ensemble), None))
            i = by_path[path]
            s = specs[i]
            specs[i] = KernelSpec(s.name, s.path, s.ensemble, s.init, s.incoming, s.outgoing + ((l.name, rows),))
    return specs
