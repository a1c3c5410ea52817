"""ReGraMa: reset hidden units whose normalised gradient magnitude is <= τ (interventions.md §1).

Scores come from the probe gradients of the very update that just happened (same minibatch, same
loss; no extra backward pass). Every `period` updates of a network — its own counter — each hidden
layer is scored independently and flagged units are reset by `plastic.surgery.reset_units`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp

from plastic.core import maybe
from plastic.interventions.base import Intervention
from plastic.networks import PROBE_POINTS
from plastic.surgery import LAYERNORM, OPTIMIZER, OUTGOING, REINIT, cap_mask, reset_units


@dataclass
class ReGraMaConfig:
    tau: float = 0.0                  # 0 for plain MLPs (paper Table 7); 0.01 for LayerNorm/residual nets
    period: int = 1000                # in updates of the network being reset
    max_reset_fraction: float = 0.0   # 0 = no cap; paper uses 0.05 for SAC on Humanoid
    score_target: str = "pre_activation"  # pre_activation | post_activation | weight_grad
    networks: tuple[str, ...] = ("actor", "critic")
    outgoing: str = "zero"            # zero | keep
    reinit: str = "layer_init"        # layer_init | xavier_uniform | kaiming_uniform | lecun_normal
    layernorm: str = "reset_unit_affine"  # reset_unit_affine | keep
    optimizer: str = "zero_moments_keep_count"  # zero_moments_keep_count | none
    eps: float = 1e-9
    skip_zero_grad_layers: bool = True


def _choice(name, value, valid):
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


class ReGraMa(Intervention):
    name = "grama"
    Config = ReGraMaConfig

    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        if c.tau < 0:
            raise ValueError(f"grama.tau must be >= 0, got {c.tau}")
        if c.period < 1:
            raise ValueError(f"grama.period must be a positive number of updates, got {c.period}")
        if not 0.0 <= c.max_reset_fraction <= 1.0:
            raise ValueError(f"grama.max_reset_fraction must be in [0, 1] (0 = no cap), got {c.max_reset_fraction}")
        _choice("grama.score_target", c.score_target, PROBE_POINTS)
        _choice("grama.outgoing", c.outgoing, OUTGOING)
        _choice("grama.reinit", c.reinit, REINIT)
        _choice("grama.layernorm", c.layernorm, LAYERNORM)
        _choice("grama.optimizer", c.optimizer, OPTIMIZER)

    def _nets(self, agent):
        return [n for n in agent.nets.values() if n.layers and agent.role(n.name) in self.cfg.networks]

    def init(self, key, agent):
        return {n.name: {"events": jnp.zeros((), jnp.int32),
                         "reset_fraction": {l.name: jnp.zeros(()) for l in n.layers}}
                for n in self._nets(agent)}

    def masks(self, net, scores):
        """Flag units with G <= τ per layer; guard all-zero-gradient layers; optional cap."""
        out = {}
        for layer in net.layers:
            G, g = scores[layer.name]
            m = G <= self.cfg.tau
            if self.cfg.skip_zero_grad_layers:
                m = m & (jnp.mean(g, axis=-1, keepdims=True) > 0)
            if self.cfg.max_reset_fraction > 0:
                m = cap_mask(m, G, math.floor(self.cfg.max_reset_fraction * layer.width + 1e-9))
            out[layer.name] = m
        return out

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state

        def event(operand):
            ns, s = operand
            masks = self.masks(net, ctx.scores)
            ns = reset_units(net, ns, masks, key, reinit=self.cfg.reinit, outgoing=self.cfg.outgoing,
                             layernorm=self.cfg.layernorm, optimizer=self.cfg.optimizer)
            s = {**s, net.name: {"events": s[net.name]["events"] + 1,
                                 "reset_fraction": {k: jnp.mean(m.astype(jnp.float32)) for k, m in masks.items()}}}
            return ns, s

        return maybe(ctx.count % self.cfg.period == 0, event, (ns, state))

    def logs(self, state):
        out = {}
        for net, s in state.items():
            out[f"grama/events/{net}"] = s["events"]
            for layer, f in s["reset_fraction"].items():
                out[f"reset_fraction/{net}/{layer}"] = f
        return out
