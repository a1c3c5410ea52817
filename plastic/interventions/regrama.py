"""ReGraMa: reset hidden units whose normalised gradient magnitude is <= τ (docs/interventions.md, ReGraMa).

Scores come from the probe gradients of the very update that just happened (same minibatch, same
loss; no extra backward pass). Every `period` updates of a network — its own counter — each hidden
layer is scored independently and flagged units are reset by `plastic.surgery.reset_units`.

Diagnostics in the intervention state (logged with the run's metrics):
- `reset_fraction/NET/LAYER`: fraction of the layer's units reset at the last event;
- `grama/output_jump/NET`: mean |output change| on the update's batch caused by the last event (0 on a
  plain ReLU MLP with τ=0; non-zero with LayerNorm over the reset units, docs/mechanics.md §1.3), over the
  network's first output array: TD3's pre-tanh action, SAC's actor output (its mean and log-std halves
  together), every critic member's Q-value (SAC simbav2: its bin logits), DQN's Q-values, PPO's policy
  logits or Gaussian mean (the free log-std is a parameter, not an output) and PPO's value;
- `grama/zero_grad_layer/NET/LAYER`: 1 if the layer's gradient was all zero at the last event, so the
  guard skipped it (for twin critics: the fraction of members);
- `reset_unit_step_ratio/NET`: mean |update| on the entries touched by the last non-empty reset,
  divided by the learning rate, averaged over the first `step_ratio_window` updates after it, sampled
  every `step_ratio_every`-th update (docs/metrics.md §8; shows the larger-than-lr Adam steps of the
  scalar-count convention, docs/mechanics.md §3.3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from metrics.units import normalize_scores
from plastic.core import maybe
from plastic.fields import count, nonneg, num, positive, unit, one_of
from plastic.interventions.base import Intervention, check_roles, nets_with_roles
from plastic.networks import PROBE_POINTS
from plastic.surgery import (LAYERNORM, OPTIMIZER, OUTGOING, REINIT, cap_mask, reset_units,
                             touched_entries)

@dataclass
class ReGraMaConfig:
    tau: float = nonneg(0.0)          # 0 for plain MLPs (paper Table 7); the default is 0.01 on LayerNorm/
                                      # residual nets (--AGENT.network simba|bronet: Tables 3, 5)
    period: int = count(1000, "updates")  # in updates of the network being reset (PPO default: 100)
    max_reset_fraction: float = unit(0.0, note="0 = no cap")  # 0 = no cap; paper uses 0.05 for SAC on Humanoid
    score_target: str = one_of("pre_activation", PROBE_POINTS)  # pre_activation | post_activation | weight_grad
    networks: tuple[str, ...] = ("actor", "critic")  # roles (DQN's q network has role critic)
    outgoing: str = one_of("zero", OUTGOING)  # zero | keep
    reinit: str = one_of("layer_init", REINIT)  # layer_init | xavier_uniform | kaiming_uniform | lecun_normal
    layernorm: str = one_of("reset_unit_affine", LAYERNORM)  # reset_unit_affine | keep
    optimizer: str = one_of("zero_moments_keep_count", OPTIMIZER)  # zero_moments_keep_count | none
    eps: float = positive(1e-9)
    skip_zero_grad_layers: bool = True
    # updates after a reset over which reset_unit_step_ratio is averaged (0: off)
    step_ratio_window: int = nonneg(1000, note="0 = off")
    step_ratio_every: int = num(10, ge=1)  # ... sampling every k-th update of the window


class ReGraMa(Intervention):
    name = "grama"
    Config = ReGraMaConfig
    resources = {"weight_writes": "share"}
    # PPO: every 100 minibatch updates (docs/interventions.md, ReGraMa: by analogy with LOP's ReDo-for-PPO setting)
    agent_defaults = {"ppo": {"period": 100}}
    metrics_fields = {"grama_target": "score_target"}   # the GraMa ratio the metrics report is the one it thresholds

    @classmethod
    def defaults_for(cls, agent, agent_cfg):
        """τ = 0.01 on LayerNorm / residual networks (SimBa, BroNet, an mlp with `norm=layer`: paper Tables 3
        and 5), 0 on plain MLPs and conv torsos (Table 7)."""
        out = super().defaults_for(agent, agent_cfg)
        if getattr(agent_cfg, "network", "mlp") != "mlp" or getattr(agent_cfg, "norm", "none") == "layer":
            out["tau"] = 0.01
        return out
    census = {"period": 5, "tau": 0.1}

    def expected_events(self, agent, counters):
        """An event at every positive multiple of `period` of each selected network's own update counter."""
        return {n.name: counters[n.name] // self.cfg.period for n in self._nets(agent)}

    def validate(self, run_cfg, agent_cfg):
        check_roles("grama", self.cfg.networks)

    def _nets(self, agent):
        return nets_with_roles(agent, self.cfg.networks, with_units=True)

    def init(self, key, agent, agent_state=None):
        def one(net):
            zeros = {l.name: jnp.zeros(()) for l in net.layers}
            return {"events": jnp.zeros((), jnp.int32), "reset_fraction": zeros, "zero_grad_layer": zeros,
                    "output_jump": jnp.zeros(()),
                    # the last non-empty reset and the step ratio of the entries it touched
                    "fresh": {l.name: jnp.zeros((l.ensemble, l.width) if l.ensemble else (l.width,), bool)
                              for l in net.layers},
                    "since": jnp.zeros((), jnp.int32), "ratio_sum": jnp.zeros(()), "ratio_n": jnp.zeros(()),
                    "ratio_last": jnp.zeros(())}  # the previous window's value, shown until a new one has samples

        return {n.name: one(n) for n in self._nets(agent)}

    @staticmethod
    def zero_grad_layers(net, scores):
        """layer -> bool `[E?, 1]`: True where the layer's gradient is all zero on this batch."""
        return {l.name: jnp.mean(scores[l.name][1], axis=-1, keepdims=True) <= 0 for l in net.layers}

    def masks(self, net, scores):
        """Flag units with G <= τ per layer, G = g / (mean g + `eps`) from the update's raw per-unit gradient
        magnitudes g; guard all-zero-gradient layers; optional cap."""
        out, zero = {}, self.zero_grad_layers(net, scores)
        for layer in net.layers:
            G = normalize_scores(scores[layer.name][1], self.cfg.eps)
            m = G <= self.cfg.tau
            if self.cfg.skip_zero_grad_layers:
                m = m & ~zero[layer.name]
            if self.cfg.max_reset_fraction > 0:
                m = cap_mask(m, G, math.floor(self.cfg.max_reset_fraction * layer.width + 1e-9))
            out[layer.name] = m
        return out

    def _window_open(self, s):
        any_fresh = sum(jnp.sum(m) for m in s["fresh"].values()) > 0
        return (s["since"] < self.cfg.step_ratio_window) & (s["events"] > 0) & any_fresh

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state
        c = self.cfg
        s = self.track_step_ratio(net, ctx, state[net.name])
        # The whole event (scores, draws, the reset and its bookkeeping) sits under one `lax.cond` on the
        # network's shared counter. Its outputs include the NetState, which XLA:CPU copies on every update,
        # taken or not (one pass over the parameters and moments); the branch-free alternative (masks all
        # False off the event) cost more: a zero draw of every kernel and masked writes of the parameters
        # and both moments on every update, +9.5 % per TD3 update at 16 seeds (benchmarks/seeds.py).
        due = ctx.count % c.period == 0

        def event(operand):
            ns, s = operand
            scores = ctx.grama()  # computed here, inside the event's branch
            masks = self.masks(net, scores)
            new = reset_units(net, ns, masks, key, reinit=c.reinit, outgoing=c.outgoing, layernorm=c.layernorm,
                              optimizer=c.optimizer)
            frac = lambda m: jnp.mean(m.astype(jnp.float32))  # noqa: E731
            s = {**s, "events": s["events"] + 1,
                 "reset_fraction": {k: frac(m) for k, m in masks.items()},
                 "zero_grad_layer": {k: frac(z) for k, z in self.zero_grad_layers(net, scores).items()}}
            if ctx.inputs is not None:  # of the network's first output array (see the module docstring)
                out = lambda p: jax.tree.leaves(net.apply(p, ctx.inputs)[0])[0]  # noqa: E731
                s["output_jump"] = jnp.mean(jnp.abs(out(new.params) - out(ns.params)))
            # a non-empty reset opens a new step-ratio window; an empty one leaves the last window alone
            any_reset = sum(jnp.sum(m) for m in masks.values()) > 0
            opened = {"fresh": masks, "since": jnp.zeros((), jnp.int32), "ratio_sum": jnp.zeros(()),
                      "ratio_n": jnp.zeros(()), "ratio_last": _step_ratio(s)}
            s.update(jax.tree.map(lambda a, b: jnp.where(any_reset, a, b), opened, {k: s[k] for k in opened}))
            return new, s

        ns, s = maybe(due, event, (ns, s))
        return ns, {**state, net.name: s}

    def track_step_ratio(self, net, ctx, s):
        """Inside the window after a non-empty reset, every `step_ratio_every`-th update adds its mean
        |update| / lr over the entries that reset touched (a subsample of the window keeps the cost low)."""
        c = self.cfg
        if not c.step_ratio_window or ctx.updates is None or not net.lr:
            return s
        live = self._window_open(s)
        sampled = live & (s["since"] % c.step_ratio_every == 0)  # this seed samples this update

        def add(s):
            touched = touched_entries(net, ctx.updates, s["fresh"], c.layernorm, c.outgoing)
            num, den = jnp.zeros(()), jnp.zeros(())
            for u, t in zip(jax.tree.leaves(ctx.updates), jax.tree.leaves(touched)):
                num = num + jnp.sum(jnp.where(t, jnp.abs(u), 0.0))
                den = den + jnp.sum(t)
            added = {**s, "ratio_sum": s["ratio_sum"] + num / jnp.maximum(den, 1.0) / net.lr,
                     "ratio_n": s["ratio_n"] + 1.0}
            return jax.tree.map(lambda a, b: jnp.where(sampled, a, b), added, s)

        # `sampled` differs by seed, and a `lax.cond` on it would become a `select` under the seed vmap (the
        # sums on every update). The cond's predicate reads the shared counter instead: a window opens at an
        # event, a multiple of `period`, and `since` counts the updates after it, so a sampled update has
        # count - 1 = 0 mod gcd(period, every) and (count - 1) mod period < window; inside, each seed keeps
        # the sums only where it samples.
        k = ctx.count - 1
        s = maybe((k % math.gcd(c.period, c.step_ratio_every) == 0) & (k % c.period < c.step_ratio_window), add, s)
        return {**s, "since": jnp.where(live, s["since"] + 1, s["since"])}

    def logs(self, state):
        out = {}
        for net, s in state.items():
            out[f"grama/events/{net}"] = s["events"]
            out[f"grama/output_jump/{net}"] = s["output_jump"]
            out[f"reset_unit_step_ratio/{net}"] = _step_ratio(s)
            for layer, f in s["reset_fraction"].items():
                out[f"reset_fraction/{net}/{layer}"] = f
                out[f"grama/zero_grad_layer/{net}/{layer}"] = s["zero_grad_layer"][layer]
        return out


def _step_ratio(s):
    return jnp.where(s["ratio_n"] > 0, s["ratio_sum"] / jnp.maximum(s["ratio_n"], 1.0), s["ratio_last"])
