"""Normalize-and-Project, NaP (Lyle, Zheng, Khetarpal, Martens, van Hasselt, Pascanu, Dabney, *Normalization
and effective learning rates in reinforcement learning*, NeurIPS 2024, arXiv 2407.01800; docs/interventions.md,
Normalize-and-Project).

With a normalisation layer before each nonlinearity a layer's output does not depend on the scale of its
incoming weights, so the growth of the weights' norm silently decays the effective learning rate
(∝ lr / ‖W‖²). NaP keeps the norms fixed: the network normalises (`--AGENT.norm layer`, or the LayerNorms of
`simba` / `bronet`), and every `period` updates of a selected network (`post_update`, under a `lax.cond` on its
update count) each weight tensor is projected back onto the sphere of its initial norm

    W ← W · ‖W₀‖ / ‖W‖            (every kernel: hidden, conv and output layers, per ensemble member; not an
                                   injection's frozen reference head)

and each LayerNorm's scale γ and offset β are projected jointly onto the norm of their initial value
(γ, β) ← (γ, β) · ‖(γ₀, β₀)‖ / ‖(γ, β)‖, which for ReLU-like (homogeneous) activations rescales the layer's
output and not its shape. Biases of Dense layers and free parameters (log-std, log α) are not projected. Adam's
state is kept. Defaults follow Plasticine's implementation (`plasticine/continual/*_nap.py`: every Linear weight
to its initial norm every 10 steps, biases kept); Plasticine's TD3 version runs without LayerNorm, which is
`require_norm false` here.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.core import maybe
from plastic.fields import count
from plastic.interventions.base import Intervention, check_roles, nets_with_roles
from plastic.networks import get_path, set_path


def projected_parts(params, ensemble: int, frozen: tuple[str, ...] | None = None):
    """The leaves NaP projects, as `[(paths, per_member)]`: each kernel alone; each LayerNorm's (scale, bias)
    pair jointly (a params node holding a `scale`); not the module at `frozen` (an injection's reference head,
    never trained). `per_member`: the norm is one per ensemble member (an ensemble network's Dense kernels and
    LayerNorm parameters)."""
    parts = []

    def walk(node, path):
        if not isinstance(node, dict) or path == frozen:
            return
        if "scale" in node:
            parts.append(((path + ("scale",), path + ("bias",)), ensemble > 0))
            return
        for k, v in sorted(node.items()):   # a fixed order: jax's tree maps return dicts with sorted keys
            if k == "kernel" and not isinstance(v, dict):
                parts.append(((path + (k,),), ensemble > 0 and jnp.ndim(v) == 3))
            else:
                walk(v, path + (k,))
    walk(params, ())
    return parts


def part_norms(params, parts):
    """One norm per part (per ensemble member: shape [E]) of `params`."""
    out = []
    for paths, per_member in parts:
        leaves = [get_path(params, p) for p in paths]
        if per_member:
            sq = sum(jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1) for x in leaves)
        else:
            sq = sum(jnp.sum(jnp.square(x)) for x in leaves)
        out.append(jnp.sqrt(sq))
    return out


def project(params, parts, targets):
    """Every part of `params` rescaled to its target norm (a zero part is left as it is)."""
    for (paths, per_member), target, norm in zip(parts, targets, part_norms(params, parts)):
        scale = jnp.where(norm > 0, target / jnp.where(norm > 0, norm, 1.0), 1.0)
        for p in paths:
            x = get_path(params, p)
            s = scale.reshape((-1,) + (1,) * (x.ndim - 1)) if per_member else scale
            params = set_path(params, p, (x * s).astype(x.dtype))
    return params


@dataclass
class NaPConfig:
    period: int = count(10, "updates")         # Plasticine's projection_interval (its TD3: one update per step)
    require_norm: bool = True                  # the paper's NaP normalises; false: projection alone (Plasticine TD3)
    networks: tuple[str, ...] = ("actor", "critic")  # roles (DQN's Q-network is a critic)


class NaP(Intervention):
    name = "nap"
    Config = NaPConfig
    resources = {"weight_writes": "share"}
    census = {"period": 5, "require_norm": False}

    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        check_roles("nap", c.networks)
        normalised = getattr(agent_cfg, "norm", "none") == "layer" or getattr(agent_cfg, "network", "mlp") != "mlp"
        if c.require_norm and not normalised:
            raise ValueError(f"nap normalises before each nonlinearity: add --{self.agent_name}.norm layer (or a "
                             f"simba/bronet network), or set --nap.require_norm false for the projection alone "
                             f"(Plasticine's TD3 variant)")

    def _nets(self, agent):
        return nets_with_roles(agent, self.cfg.networks, with_units=True)

    @staticmethod
    def _parts(net, params):
        spec = net.module.inject_spec() if hasattr(net.module, "inject_spec") else None
        return projected_parts(params, net.layers[0].ensemble, spec.ref if spec is not None else None)

    def expected_events(self, agent, counters):
        """A projection at every positive multiple of `period` of each selected network's update counter."""
        return {n.name: counters[n.name] // self.cfg.period for n in self._nets(agent)}

    def init(self, key, agent, agent_state=None):
        out = {}
        for net in self._nets(agent):
            params = agent_state.nets[net.name].params
            parts = self._parts(net, params)
            out[net.name] = {"target": part_norms(params, parts), "events": jnp.zeros((), jnp.int32),
                             "weight_norm": jnp.zeros(())}
        return out

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state
        s = state[net.name]
        parts = self._parts(net, ns.params)

        def event(ns):
            return ns.replace(params=project(ns.params, parts, s["target"]))

        due = ctx.count % self.cfg.period == 0
        ns = maybe(due, event, ns)
        events = s["events"] + due.astype(jnp.int32)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(ns.params)))
        return ns, {**state, net.name: {**s, "events": events, "weight_norm": norm}}

    def logs(self, state):
        return self.net_logs(state, "events", "weight_norm")
