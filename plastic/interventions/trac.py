"""TRAC, a parameter-free optimizer for lifelong RL (Muppidi, Zhang & Yang, *Fast TRAC*, NeurIPS 2024,
arXiv 2405.16642; docs/interventions.md, TRAC).

TRAC wraps each selected network's Adam (an agent build option, `agent_options() -> {"trac": TracSpec}`, so the
agent builds `plastic.optim.adam(..., trac=spec)`): the parameters are θ_ref + S·Δ, where Δ accumulates Adam's
updates and the scale S is tuned online, per network, by a sum of erfi-potential tuners at several discounts
(`plastic.optim.trac_wrap`). Defaults are the authors' implementation's (`start_trac`: betas 0.9 ... 0.999999,
s_prev 1e-8, eps 1e-8), which Plasticine vendors. Nothing else is hooked: the scale the optimizer applied is
logged as `trac/scale/NET` after each update.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from plastic.fields import num, positive
from plastic.interventions.base import nets_with_roles
from plastic.interventions.l2 import ForRoles
from plastic.optim import TracSpec, trac_scale

DEFAULT = TracSpec()


@dataclass
class TracConfig:
    betas: tuple[float, ...] = num(DEFAULT.betas, gt=0, lt=1)  # discounts of the tuners (one tuner each)
    s_init: float = positive(DEFAULT.s_init)   # the reference's s_prev: the initial scale's size
    eps: float = positive(DEFAULT.eps)         # added to √2·√v and to the scale that unscales the displacement
    networks: tuple[str, ...] = ("actor", "critic")  # roles whose optimizer TRAC wraps (SAC's α: "temperature")


class Trac(ForRoles):
    name = "trac"
    Config = TracConfig

    def validate(self, run_cfg, agent_cfg):
        super().validate(run_cfg, agent_cfg)
        if not self.cfg.betas:
            raise ValueError("trac.betas must list at least one discount in (0, 1)")

    def net_names(self) -> tuple[str, ...]:
        return tuple(n for n, role in self.roles.items() if role in self.cfg.networks)

    def agent_options(self) -> dict:
        c = self.cfg
        return {"trac": TracSpec(self.net_names(), tuple(c.betas), c.s_init, c.eps)}

    def init(self, key, agent, agent_state=None):
        return {n.name: {"scale": jnp.zeros(())} for n in nets_with_roles(agent, self.cfg.networks)}

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state
        return ns, {**state, net.name: {"scale": trac_scale(ns.opt_state)}}

    def logs(self, state):
        return {f"trac/scale/{net}": s["scale"] for net, s in state.items()}
