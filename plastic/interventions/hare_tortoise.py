"""Hare & Tortoise (docs/interventions.md, Hare & Tortoise): each selected network is the Hare, trained as usual; a
Tortoise copy of it follows the Hare by an exponential moving average after every update of that network, and every
`period` updates the Hare is reset to the Tortoise:

  after each update   θ_T ← m·θ_T + (1 − m)·θ_H
  every period-th     θ_H ← θ_T      (the optimizer state kept, as in the release; `reset_optimizer` restarts Adam's
                                     moments at every entry, count kept)

(Lee et al. 2024, "Slow and Steady Wins the Race: Maintaining Plasticity with Hare and Tortoise Networks", ICML,
arXiv 2406.02596; the authors' release of the supervised experiments, github.com/dojeon-ai/Hare-Tortoise.) The
Tortoise starts as the initial network. Acting, evaluation and the targets use the Hare, the network the agent trains;
targets follow it through their Polyak / hard updates. The EMA runs at the Hare's own update count; the reset is a
`periodic` event on that counter (one real `lax.cond`, shared by all seeds).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from plastic.core import maybe
from plastic.fields import count, unit_lt1
from plastic.interventions.base import nets_with_roles
from plastic.interventions.l2 import ForRoles
from plastic.networks import copy_switches, weight_mask
from plastic.optim import restart_entries


@dataclass
class HareTortoiseConfig:
    momentum: float = unit_lt1(0.999)            # m: the Tortoise's EMA momentum per Hare update (the release's)
    period: int = count(2_000, "updates")        # Hare updates between resets (the release: 10 epochs, ~1760 updates)
    networks: tuple[str, ...] = ("actor", "critic")  # roles (DQN's Q-network is a critic)
    reset_optimizer: bool = False                # restart the Hare's Adam moments at a reset (the release keeps them)


class HareTortoise(ForRoles):
    name = "hare_tortoise"
    Config = HareTortoiseConfig
    resources = {"weight_writes": "share"}
    census = {"period": 5}

    def _nets(self, agent):
        return nets_with_roles(agent, self.cfg.networks)

    def expected_events(self, agent, counters):
        """A reset at every positive multiple of `period` of each selected network's own update counter."""
        return {n.name: counters[n.name] // self.cfg.period for n in self._nets(agent)}

    def init(self, key, agent, agent_state=None):
        if agent_state is None:
            raise ValueError("hare_tortoise needs the freshly initialised agent state (the Tortoise's start)")
        return {n.name: {"tortoise": agent_state.nets[n.name].params, "events": jnp.zeros((), jnp.int32),
                         "distance": jnp.zeros(())} for n in self._nets(agent)}

    def reset(self, net, ns, s):
        """θ_H ← θ_T; the optimizer state is kept, or restarted at every entry with `reset_optimizer`."""
        # the Hare keeps its switches (an injection's flag): the Tortoise's average of a flag is no structure
        params = copy_switches(jax.tree.map(lambda t, p: t.astype(p.dtype), s["tortoise"], ns.params), ns.params)
        opt_state = ns.opt_state
        if self.cfg.reset_optimizer:
            opt_state = restart_entries(net.tx, opt_state, weight_mask(params), params)
        return ns.replace(params=params, opt_state=opt_state), {**s, "events": s["events"] + 1}

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state
        m = self.cfg.momentum
        s = state[net.name]
        s = {**s, "tortoise": optax.incremental_update(ns.params, s["tortoise"], 1.0 - m)}  # a Polyak step
        ns, s = maybe(ctx.count % self.cfg.period == 0, lambda o: self.reset(net, *o), (ns, s))
        gap = optax.tree_utils.tree_norm(optax.tree_utils.tree_sub(ns.params, s["tortoise"]))
        return ns, {**state, net.name: {**s, "distance": gap}}

    def logs(self, state):
        return self.net_logs(state, "events", "distance")
