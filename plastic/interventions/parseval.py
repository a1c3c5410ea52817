"""Parseval regularisation (Chung et al., *Parseval Regularization for Continual Reinforcement Learning*,
NeurIPS 2024, arXiv 2412.07224; docs/interventions.md, Parseval regularisation).

Adds to the loss of every selected network (`loss_term` hook)

    λ · Σ_layers ||W Wᵀ − s·I||²_F

where W is a layer's weight matrix with one row per unit (out x fan_in: a Dense kernel transposed; a conv kernel
[kh, kw, c_in, c_out] as c_out rows of kh·kw·c_in), so that the penalty pushes the units' weight vectors to be
orthogonal with squared norm s. The layers are the network's unit layers (its layer map, docs/mechanics.md §1.2:
every hidden Dense and conv of `mlp` and the conv torsos, the block expansion layers of `simba`/`bronet`), never
the output layer; a twin critic's members are penalised each (the sum over the ensemble axis). Defaults
λ = 1e-3, s = 1: Plasticine's (`plasticine/continual/*_pr.py`, `parseval_lambda`, `parseval_s`), which apply
it the same way (hidden layers of actor and critic, the squared Frobenius norm summed over layers).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from plastic.fields import nonneg, positive
from plastic.interventions.base import nets_with_roles
from plastic.interventions.l2 import ForRoles
from plastic.networks import get_path


def rows(kernel, ensemble: int):
    """A unit layer's kernel as per-unit weight rows: [E, units, fan_in] (E = 1 without an ensemble axis)."""
    k = jnp.asarray(kernel)
    k = k if ensemble else k[None]
    return jnp.swapaxes(k.reshape(k.shape[0], -1, k.shape[-1]), 1, 2)


def parseval_penalty(params, layers, s: float):
    """Σ over layers and ensemble members of ||W Wᵀ − s·I||²_F (W: `rows`, units x fan_in). Computed as
    ||G||²_F − 2s·||W||²_F + s²·units with G the smaller of W Wᵀ and Wᵀ W (both have the same non-zero
    eigenvalues, so the same Frobenius norm): O(min(units, fan_in)² · max(units, fan_in)) per layer."""
    total = jnp.zeros(())
    for spec in layers:
        w = rows(get_path(params, spec.kernel), spec.ensemble)
        units, fan_in = w.shape[1:]
        gram = jnp.einsum("eui,euj->eij", w, w) if fan_in < units else jnp.einsum("eui,evi->euv", w, w)
        total = total + jnp.sum(jnp.square(gram)) - 2 * s * jnp.sum(jnp.square(w)) + s * s * units * w.shape[0]
    return total


@dataclass
class ParsevalConfig:
    lam: float = nonneg(1e-3)          # λ (Plasticine's parseval_lambda)
    s: float = positive(1.0)           # target squared norm of each unit's weight vector (parseval_s)
    networks: tuple[str, ...] = ("actor", "critic")  # roles; targets are never regularised


class Parseval(ForRoles):
    name = "parseval"
    Config = ParsevalConfig

    def init(self, key, agent, agent_state=None):
        return {n.name: {"penalty": jnp.zeros(())} for n in nets_with_roles(agent, self.cfg.networks, True)}

    def loss_term(self, net, params, state, aux):
        if net.name not in state or self.cfg.lam == 0:
            return jnp.zeros(())
        return self.cfg.lam * parseval_penalty(params, net.layers, self.cfg.s)

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state
        return ns, {**state, net.name: {"penalty": parseval_penalty(ns.params, net.layers, self.cfg.s)}}

    def logs(self, state):
        return self.net_logs(state, "penalty")
