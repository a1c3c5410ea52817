"""Shrink & Perturb (docs/interventions.md, Shrink & Perturb): θ ← λ·θ + μ·ξ on the selected parameters of the
selected networks.

  toward_init  ξ = θ₀, the network's parameters at initialisation (kept per seed in the state); with
               μ = 1 − λ this interpolates toward θ₀ with no randomness (Plasticine: λ = 1 − 1e-6 every step)
  fresh_noise  ξ = a fresh draw from the layer's initializer at every event (LucMc: λ 0.8, μ 0.01, kernels)

Hook: `post_update`; with `period` 1 on every update of the network, otherwise `periodic` (every `period`-th
update of that network, its own counter, under `lax.cond`). Targets are never touched: they follow through
their Polyak/hard updates. The optimizer state is untouched unless `reset_optimizer` (then Adam moments are
zeroed at every changed entry and the count is kept, the project's surgery convention).

Mode-dependent defaults: `shrink` -1, `perturb` -1, `period` 0 and `params` auto mean the spec's default
for the chosen mode (table in `DEFAULTS`).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.core import maybe
from plastic.fields import count, nonneg, unit, one_of
from plastic.interventions.base import Intervention, choice as _choice, nets_with_roles
from plastic.interventions.l2 import ROLES, kernel_mask
from plastic.networks import kernel_initializer, weight_mask
from plastic.optim import restart_entries

MODES = ("toward_init", "fresh_noise")
PARAMS = ("auto", "all", "kernels")
NOISE_INITS = ("layer_init", "he_uniform")
# mode -> (shrink λ, perturb μ, period in updates, params); docs/interventions.md, Shrink & Perturb
DEFAULTS = {"toward_init": (0.999999, 1e-6, 1, "all"),
            "fresh_noise": (0.8, 0.01, 1000, "kernels")}


@dataclass
class ShrinkPerturbConfig:
    mode: str = one_of("toward_init", MODES)  # toward_init | fresh_noise
    # λ; -1: the mode's default (0.999999 | 0.8)
    shrink: float = unit(-1.0, special=(-1.0,), note="-1: the mode's default")
    # μ; -1: the mode's default (1e-6 | 0.01)
    perturb: float = nonneg(-1.0, special=(-1.0,), note="-1: the mode's default")
    # updates of the network; 0: the mode's default (1 | 1000)
    period: int = count(0, "updates", special=(0,), note="0: the mode's default")
    params: str = one_of("auto", PARAMS)  # all | kernels; auto: the mode's default (all | kernels)
    noise_init: str = one_of("layer_init", NOISE_INITS)  # layer_init | he_uniform (fresh_noise only)
    networks: tuple[str, ...] = ("actor", "critic")  # roles; SAC's temperature only if listed
    reset_optimizer: bool = False     # zero Adam moments of the changed entries (count kept)


class ShrinkPerturb(Intervention):
    name = "shrink_perturb"
    Config = ShrinkPerturbConfig
    resources = {"weight_writes": "share"}
    census = {"period": 5}

    def __init__(self, cfg, agent_name, roles=None):
        super().__init__(cfg, agent_name, roles)
        self._fresh = {}   # net name -> key -> freshly initialised params (set by `init`; static Python)

    # ---- resolved settings -----------------------------------------------------------------------
    @property
    def resolved(self):
        """(λ, μ, period, params) with the mode's defaults filled in."""
        c = self.cfg
        lam, mu, period, params = DEFAULTS.get(c.mode, DEFAULTS["toward_init"])
        return (lam if c.shrink == -1 else c.shrink, mu if c.perturb == -1 else c.perturb,
                period if c.period == 0 else c.period, params if c.params == "auto" else c.params)

    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        if not c.networks:
            raise ValueError(f"shrink_perturb.networks must name at least one role; choose from: {', '.join(ROLES)}")
        for n in c.networks:
            _choice("shrink_perturb.networks entry", n, ROLES)

    def expected_events(self, agent, counters):
        """An event at every positive multiple of the (resolved) period of each selected network's counter."""
        period = self.resolved[2]
        return {n.name: counters[n.name] // period for n in nets_with_roles(agent, self.cfg.networks)}

    # ---- state -----------------------------------------------------------------------------------
    def init(self, key, agent, agent_state=None):
        nets = nets_with_roles(agent, self.cfg.networks)
        for net in nets:  # a fresh sample of every leaf from its own initializer (XLA drops the other nets)
            self._fresh[net.name] = lambda k, name=net.name: agent.init(k).nets[name].params
        out = {}
        for i, net in enumerate(nets):
            s = {"key": jax.random.fold_in(key, i), "events": jnp.zeros((), jnp.int32), "weight_norm": jnp.zeros(())}
            if self.cfg.mode == "toward_init":
                if agent_state is None:
                    raise ValueError("shrink_perturb toward_init needs the freshly initialised agent state (θ₀)")
                s["theta0"] = agent_state.nets[net.name].params
            out[net.name] = s
        return out

    # ---- the rule --------------------------------------------------------------------------------
    def selection(self, params):
        if self.resolved[3] == "kernels":
            return kernel_mask(params)
        return weight_mask(params)  # every weight; an injection's flag is a switch, not a weight

    def noise(self, net, params, key):
        """ξ for fresh_noise: a fresh sample from the layer's initializer (`layer_init`: the network's own
        initializers, leaf by leaf, so zero-initialised biases get zero noise) or He-uniform on kernels."""
        if self.cfg.noise_init == "layer_init":
            if net.name not in self._fresh:
                raise RuntimeError("shrink_perturb: init() must run before the first update")
            return self._fresh[net.name](key)
        leaves, tdef = jax.tree.flatten(params)
        kern = jax.tree.leaves(kernel_mask(params))
        out = []
        for i, (p, is_k) in enumerate(zip(leaves, kern)):
            if is_k:
                init = kernel_initializer("kaiming_uniform", ensemble=p.shape[0] if p.ndim == 3 else 0)
                out.append(init(jax.random.fold_in(key, i), p.shape, p.dtype))
            else:
                out.append(jnp.zeros_like(p))
        return jax.tree.unflatten(tdef, out)

    def apply(self, net, ns, s, count):
        """One event: θ ← λθ + μξ on the selected leaves; returns (ns, s)."""
        lam, mu, _, _ = self.resolved
        sel = self.selection(ns.params)
        if self.cfg.mode == "toward_init":
            xi = s["theta0"]
        else:
            xi = self.noise(net, ns.params, jax.random.fold_in(s["key"], count))
        params = jax.tree.map(lambda p, x, m: (lam * p + mu * x).astype(p.dtype) if m else p, ns.params, xi, sel)
        opt_state = ns.opt_state
        if self.cfg.reset_optimizer:
            opt_state = restart_entries(net.tx, opt_state, sel, params)  # sel: static bools
        return ns.replace(params=params, opt_state=opt_state), {**s, "events": s["events"] + 1}

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state
        s = state[net.name]
        period = self.resolved[2]
        if period == 1:
            ns, s = self.apply(net, ns, s, ctx.count)
        else:
            ns, s = maybe(ctx.count % period == 0, lambda o: self.apply(net, *o, ctx.count), (ns, s))
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(ns.params)))
        return ns, {**state, net.name: {**s, "weight_norm": norm}}

    def logs(self, state):
        return self.net_logs(state, "events", "weight_norm")
