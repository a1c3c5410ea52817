"""ReDo: recycle τ-dormant hidden units (docs/interventions.md, ReDo; Sokar et al. 2023).

Every `period` updates of a network (its own counter), each hidden layer is scored on a statistics batch
by its normalised mean |post-activation| (`metrics.units.dormant_scores`, the docs/metrics.md §1 dormant score)
and the flagged units go through the shared reset pipeline `plastic.surgery.reset_units` (incoming column
redrawn, bias 0, outgoing rows 0, LayerNorm affine reset, Adam moments zeroed at touched entries with the
count kept). Targets are left alone (Polyak averaging / the next hard sync picks the change up).

Statistics batch (`stats_batch`): `separate_replay` (default; Dopamine's `batch_size_statistics=256`) scores
on `stats_batch_size` transitions drawn uniformly from the replay at the event, inside its `lax.cond`
(`Intervention.with_batches`), so no step pays for it; PPO draws them from the current rollout (all of it
if smaller). `train_batch` scores on the network's input on the update's own minibatch.

Logs, per network: `redo/events/NET`, `redo/dormant_ratio/NET` (the τ-dormant fraction, s <= tau, of the
scored units at the last event, before the reset; pooled or mean of layers), `redo/reset_fraction/NET` (the
fraction reset at that event, after `max_reset_fraction` or the schedule; the same aggregation) and
`redo/reset_fraction/NET/LAYER`, `redo/output_jump/NET` (mean |change| of the first output on the statistics
batch caused by the last event).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from metrics.units import normalize_scores, unit_magnitude
from plastic.core import maybe
from plastic.fields import count, nonneg, num, positive, unit, one_of
from plastic.interventions.base import Intervention, check_roles, nets_with_roles
from plastic.networks import get_path, set_path
from plastic.surgery import LAYERNORM, OPTIMIZER, OUTGOING, REINIT, cap_mask, reset_units

MODES = ("threshold", "scheduled_fraction")
SCORE_TYPES = ("activation", "random")
SCORE_NORMS = ("mean", "sum")
ZERO_TESTS = ("le_zero", "isclose_zero")
STATS_BATCHES = ("separate_replay", "train_batch")
STATS_SALT = 0x57A7  # the statistics batch key: fold_in(event key, STATS_SALT)
TARGETS = ("keep",)
AGGREGATIONS = ("pooled", "mean_of_layers")


@dataclass
class ReDoConfig:
    tau: float = nonneg(0.025)        # 0.1 at high replay ratio (>= 4); GraMa's baseline uses 0.02
    period: int = count(1000, "updates")  # in updates of the network being recycled (PPO: 100 minibatch updates)
    networks: tuple[str, ...] = ("actor", "critic")  # roles (DQN's q network has role critic)
    mode: str = one_of("threshold", MODES)  # threshold | scheduled_fraction (Dopamine NeuronRecyclerScheduled)
    recycle_rate: float = unit(0.3)   # scheduled_fraction: fraction(count) = rate * cos(pi/2 * count / end)
    reset_end_step: int = num(100_000_000, ge=1)  # updates of the network: no unit recycled from here on (both modes)
    score_type: str = one_of("activation", SCORE_TYPES)  # activation | random (random: scheduled_fraction only)
    score_norm: str = one_of("mean", SCORE_NORMS)  # mean | sum (divide by the layer mean or the layer sum of mean |h|)
    # le_zero (s <= tau) | isclose_zero (also s ~ 0, Plasticine)
    zero_threshold_test: str = one_of("le_zero", ZERO_TESTS)
    # separate_replay (a fresh uniform replay draw; PPO: rows of the
    # current rollout) | train_batch (the update's own minibatch)
    stats_batch: str = one_of("separate_replay", STATS_BATCHES)
    # separate_replay: transitions scored (Dopamine batch_size_statistics)
    stats_batch_size: int = count(256, "transitions")
    # layer_init | xavier_uniform (Dopamine JAX) | kaiming_uniform | lecun_normal
    reinit: str = one_of("layer_init", REINIT)
    weight_scaling: bool = False      # rescale new incoming columns to weight_scale x mean norm of kept units
    weight_scale: float = positive(1.0)
    outgoing: str = one_of("zero", OUTGOING)  # zero | keep
    layernorm: str = one_of("reset_unit_affine", LAYERNORM)  # reset_unit_affine | keep
    optimizer: str = one_of("zero_moments_keep_count", OPTIMIZER)  # zero_moments_keep_count | none
    targets: str = one_of("keep", TARGETS)  # keep (reset_target_models=False)
    include_output_layer: bool = False  # only false: output layers are never recycled
    # 0 = no cap; else at most floor(p * H) units per layer, lowest score first
    max_reset_fraction: float = unit(0.0, note="0 = no cap")
    eps: float = positive(1e-9)
    # pooled | mean_of_layers (logged redo/dormant_ratio and redo/reset_fraction/NET)
    ratio_aggregation: str = one_of("pooled", AGGREGATIONS)


class ReDo(Intervention):
    name = "redo"
    Config = ReDoConfig
    resources = {"weight_writes": "share"}
    # LOP's ReDo for PPO (lop/rl/cfg/ant/redo.yml): tau 0.1 every 100 minibatch updates
    agent_defaults = {"ppo": {"period": 100, "tau": 0.1}}
    census = {"period": 5, "tau": 0.1}

    def expected_events(self, agent, counters):
        """An event at every positive multiple of `period` of each selected network's own update counter."""
        return {n.name: counters[n.name] // self.cfg.period for n in self._nets(agent)}

    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        if c.include_output_layer:
            raise ValueError("redo.include_output_layer=true is not supported; output layers are never recycled")
        check_roles("redo", c.networks)
        if c.score_type == "random" and c.mode != "scheduled_fraction":
            raise ValueError("redo.score_type=random needs redo.mode=scheduled_fraction (a threshold on random "
                             "scores is meaningless)")

    @property
    def needs_batches(self):
        return self.cfg.stats_batch == "separate_replay"

    def _nets(self, agent):
        return nets_with_roles(agent, self.cfg.networks, with_units=True)

    def init(self, key, agent, agent_state=None):
        def one(net):
            return {"events": jnp.zeros((), jnp.int32), "dormant_ratio": jnp.zeros(()),
                    "output_jump": jnp.zeros(()), "reset_ratio": jnp.zeros(()),
                    "reset_fraction": {l.name: jnp.zeros(()) for l in net.layers}}
        return {n.name: one(n) for n in self._nets(agent)}

    # ---- scoring ---------------------------------------------------------------------------------
    def scores(self, net, params, inputs, key=None):
        """layer -> per-unit score `[E?, H]` on the statistics batch `inputs`."""
        c = self.cfg
        if c.score_type == "random":
            return {l.name: jax.random.uniform(jax.random.fold_in(key, l.layer_id), l.mask_shape)
                    for l in net.layers}
        return self.activity(net, params, inputs)

    def activity(self, net, params, inputs):
        """layer -> normalised mean |post-activation| `[E?, H]` (`score_norm`) on `inputs`: the dormancy score."""
        c = self.cfg
        _, acts = net.apply(params, inputs)
        out = {}
        for l in net.layers:
            a = unit_magnitude(acts[l.name], l.ensemble)
            if c.score_norm == "mean":
                out[l.name] = normalize_scores(a, c.eps)
            else:
                out[l.name] = a / (jnp.sum(a, axis=-1, keepdims=True) + c.eps)
        return out

    def dormant(self, s):
        """τ-dormant units of a layer's activity scores: `s <= tau` (also `s ~ 0` under `isclose_zero`)."""
        m = s <= self.cfg.tau
        if self.cfg.zero_threshold_test == "isclose_zero":
            m = m | jnp.isclose(s, 0.0)
        return m

    def masks(self, net, scores, count):
        """Units to recycle per layer: the τ-dormant ones (threshold) or the bottom k(count) (scheduled), with
        k = max(1, round(fraction(count) * H)) as Dopamine's `leastk_mask`, and 0 once fraction(count) is 0
        (`recycle_rate=0`). None in either mode once count >= `reset_end_step`: Dopamine's `is_reset` window
        (`reset_start_step <= step < reset_end_step`, start 0) gates both recyclers. Events past it still
        score and log the dormant ratio."""
        c, out = self.cfg, {}
        live = count < c.reset_end_step
        for l in net.layers:
            s = scores[l.name]
            if c.mode == "threshold":
                m = self.dormant(s) & live
            else:
                frac = c.recycle_rate * jnp.cos(jnp.pi / 2 * jnp.minimum(count / c.reset_end_step, 1.0))
                k = jnp.where(live & (frac > 0), jnp.maximum(1, jnp.round(frac * l.width)), 0).astype(jnp.int32)
                m = cap_mask(jnp.ones(s.shape, bool), s, k)
            if c.max_reset_fraction > 0:
                m = cap_mask(m, s, math.floor(c.max_reset_fraction * l.width + 1e-9))
            out[l.name] = m
        return out

    def recycle(self, net, ns, inputs, count, key):
        """Score, flag and reset one network. Returns `(new NetState, masks, scores)`."""
        c = self.cfg
        k_score, k_reset = jax.random.split(key)
        scores = self.scores(net, ns.params, inputs, k_score)
        masks = self.masks(net, scores, count)
        new = reset_units(net, ns, masks, k_reset, reinit=c.reinit, outgoing=c.outgoing,
                          layernorm=c.layernorm, optimizer=c.optimizer)
        if c.weight_scaling:
            new = new.replace(params=_rescale(net, new.params, masks, c.weight_scale))
        return new, masks, scores

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state
        c = self.cfg

        def event(operand):
            ns, s = operand
            inputs = ctx.inputs
            if c.stats_batch == "separate_replay":
                inputs = self.batches(net.name, jax.random.fold_in(key, STATS_SALT), c.stats_batch_size)
            new, masks, scores = self.recycle(net, ns, inputs, ctx.count, key)
            if c.score_type != "activation":  # random scores: dormancy still reads the activations
                scores = self.activity(net, ns.params, inputs)
            dormant = {k: self.dormant(v) for k, v in scores.items()}
            frac = lambda m: jnp.mean(m.astype(jnp.float32))  # noqa: E731
            out = lambda p: jax.tree.leaves(net.apply(p, inputs)[0])[0]  # noqa: E731
            s = {**s, "events": s["events"] + 1, "reset_fraction": {k: frac(m) for k, m in masks.items()},
                 "reset_ratio": self.ratio(masks), "dormant_ratio": self.ratio(dormant),
                 "output_jump": jnp.mean(jnp.abs(out(new.params) - out(ns.params)))}
            return new, s

        ns, s = maybe(ctx.count % c.period == 0, event, (ns, state[net.name]))
        return ns, {**state, net.name: s}

    def ratio(self, masks):
        """The flagged fraction of a network's units (`ratio_aggregation`: pooled or the mean of the layers')."""
        if self.cfg.ratio_aggregation == "pooled":
            r = sum(jnp.sum(m) for m in masks.values()) / sum(m.size for m in masks.values())
        else:
            r = sum(jnp.mean(m.astype(jnp.float32)) for m in masks.values()) / len(masks)
        return jnp.asarray(r, jnp.float32)

    def logs(self, state):
        out = {}
        for net, s in state.items():
            out[f"redo/events/{net}"] = s["events"]
            out[f"redo/dormant_ratio/{net}"] = s["dormant_ratio"]
            out[f"redo/reset_fraction/{net}"] = s["reset_ratio"]
            out[f"redo/output_jump/{net}"] = s["output_jump"]
            for layer, f in s["reset_fraction"].items():
                out[f"redo/reset_fraction/{net}/{layer}"] = f
        return out


def _rescale(net, params, masks, scale):
    """Dopamine's `weight_scaling`: each recycled unit's new incoming column is rescaled so that its norm is
    `scale` x the mean incoming norm of the layer's non-recycled units (left as drawn if none is kept)."""
    for l in net.layers:
        m = masks[l.name]                                   # [E?, H]
        k = get_path(params, l.kernel)                      # [E?, (kh, kw,) in, H]
        axes = tuple(range(1 if l.ensemble else 0, k.ndim - 1))
        norms = jnp.sqrt(jnp.sum(jnp.square(k), axis=axes))  # [E?, H]
        kept = (~m).astype(k.dtype)
        mean_kept = jnp.sum(norms * kept, -1, keepdims=True) / jnp.maximum(jnp.sum(kept, -1, keepdims=True), 1.0)
        factor = jnp.where(m & (jnp.sum(kept, -1, keepdims=True) > 0),
                           scale * mean_kept / jnp.maximum(norms, 1e-12), 1.0)
        if l.ensemble:
            factor = factor.reshape(factor.shape[0], *([1] * (k.ndim - 2)), factor.shape[-1])
        params = set_path(params, l.kernel, k * factor)
    return params
