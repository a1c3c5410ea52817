"""L2-init (regenerative regularisation toward θ₀) and weight decay (docs/interventions.md, L2-init).

L2-init adds, to the loss of every selected network (`loss_term` hook, or equivalently `grad_transform`):
  squared         c · ||θ − θ₀||²  with c = λ (gradient 2λ(θ − θ₀)) or λ/2 under `half_lambda` (gradient λ(θ − θ₀))
  unsquared_norm  λ · ||θ − θ₀||₂  (Plasticine's form; gradient of magnitude λ; 0 with gradient 0 at θ = θ₀)
θ₀ is the network's parameters at initialisation, stored per seed in the intervention state.

Weight decay (no agent optimizer here has one; every agent uses plain `optax.adam`):
  coupled    `grad_transform`: g ← g + λ·θ before the optimizer (PyTorch `Adam(weight_decay=λ)`, LOP)
  decoupled  `post_update`:   θ ← θ_after_step − lr·λ·θ_before (AdamW / optax.adamw), lr = the network's
             nominal learning rate (`Net.lr`; PPO's annealed schedule and SAC's `lr_end` decay are not followed).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.fields import nonneg, one_of
from plastic.interventions.base import Intervention, choice as _choice, nets_with_roles
from plastic.networks import weight_mask

L2_FORMS = ("squared", "unsquared_norm")
SCALE_CONVENTIONS = ("lambda", "half_lambda")
L2_PARAMS = ("all", "kernels")
L2_HOOKS = ("loss_term", "grad_transform")
WD_KINDS = ("decoupled", "coupled")
WD_MASKS = ("all", "kernels_only")
ROLES = ("actor", "critic", "temperature")


def _networks(name, nets):
    if not nets:
        raise ValueError(f"{name}.networks must name at least one role; choose from: {', '.join(ROLES)}")
    for n in nets:
        _choice(f"{name}.networks entry", n, ROLES)


class ForRoles(Intervention):
    """An intervention on the networks whose roles its config's `networks` names (checked by `validate`)."""

    def validate(self, run_cfg, agent_cfg):
        _networks(self.name, self.cfg.networks)


def kernel_mask(params):
    """Bool pytree like `params`: True on leaves whose key is `kernel` (weights), False on biases,
    LayerNorm affine, log-std and other free parameters."""
    def is_kernel(path, _):
        last = path[-1] if path else None
        return getattr(last, "key", None) == "kernel"
    return jax.tree_util.tree_map_with_path(is_kernel, params)


def _sq_dist(params, anchor, mask):
    return sum(jnp.sum(jnp.square(p - a)) for p, a, m in
               zip(jax.tree.leaves(params), jax.tree.leaves(anchor), jax.tree.leaves(mask)) if m)


@dataclass
class L2InitConfig:
    lam: float = nonneg(1e-2)           # the spec's `l2init.lambda` (GraMa Table 9)
    form: str = one_of("squared", L2_FORMS)  # squared | unsquared_norm
    # lambda (gradient 2λΔ) | half_lambda (gradient λΔ); squared form only
    scale_convention: str = one_of("lambda", SCALE_CONVENTIONS)
    params: str = one_of("all", L2_PARAMS)  # all | kernels
    hook: str = one_of("loss_term", L2_HOOKS)  # loss_term | grad_transform (same gradient; the spec allows either)
    anchor_refresh_on_reset: bool = False  # move θ₀ to the new value of entries reset by earlier post_update hooks
    networks: tuple[str, ...] = ("actor", "critic")  # roles; targets are never regularised


class L2Init(ForRoles):
    name = "l2init"
    Config = L2InitConfig

    def init(self, key, agent, agent_state=None):
        if agent_state is None:
            raise ValueError("l2init needs the freshly initialised agent state to store θ₀")
        return {n.name: {"anchor": agent_state.nets[n.name].params, "dist": jnp.zeros(())}
                for n in nets_with_roles(agent, self.cfg.networks)}

    def _mask(self, params):
        if self.cfg.params == "kernels":
            return kernel_mask(params)
        return weight_mask(params)

    @property
    def coef(self) -> float:
        c = self.cfg
        return c.lam / 2 if c.form == "squared" and c.scale_convention == "half_lambda" else c.lam

    def penalty(self, params, anchor):
        """The regulariser's value for one network (differentiable; gradient 0 at θ = θ₀ in both forms)."""
        sq = _sq_dist(params, anchor, self._mask(params))
        if self.cfg.form == "squared":
            return self.coef * sq
        pos = sq > 0
        return self.coef * jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)

    def loss_term(self, net, params, state, aux):
        if net.name not in state or self.cfg.hook != "loss_term" or self.cfg.lam == 0:
            return jnp.zeros(())
        return self.penalty(params, state[net.name]["anchor"])

    def grad_transform(self, net, grads, params, state):
        if net.name not in state or self.cfg.hook != "grad_transform" or self.cfg.lam == 0:
            return grads
        extra = jax.grad(self.penalty)(params, state[net.name]["anchor"])
        return jax.tree.map(jnp.add, grads, extra)

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state
        s = state[net.name]
        anchor = s["anchor"]
        if self.cfg.anchor_refresh_on_reset and ctx.params_before is not None and ctx.updates is not None:
            # entries an earlier post_update hook changed (a ReGraMa/ReDo reset) differ from the optimizer's result
            stepped = jax.tree.map(lambda p, u: jnp.asarray(p + u).astype(jnp.asarray(p).dtype),
                                   ctx.params_before, ctx.updates)
            anchor = jax.tree.map(lambda a, new, st: jnp.where(new != st, new, a), anchor, ns.params, stepped)
        dist = jnp.sqrt(_sq_dist(ns.params, anchor, self._mask(ns.params)))
        return ns, {**state, net.name: {"anchor": anchor, "dist": dist}}

    def logs(self, state):
        return {f"l2init/dist_to_init/{net}": s["dist"] for net, s in state.items()}


@dataclass
class WeightDecayConfig:
    lam: float = nonneg(1e-2)           # the spec's `wd.lambda` (GraMa, SWD-SAC 1e-2; LOP 1e-3 / 1e-4)
    kind: str = one_of("decoupled", WD_KINDS)  # decoupled (AdamW) | coupled (L2 in the gradient, PyTorch Adam)
    mask: str = one_of("all", WD_MASKS)  # all | kernels_only
    networks: tuple[str, ...] = ("actor", "critic")  # roles; targets are never decayed


class WeightDecay(ForRoles):
    name = "weight_decay"
    Config = WeightDecayConfig

    def init(self, key, agent, agent_state=None):
        return {n.name: {"param_norm": jnp.zeros(())} for n in nets_with_roles(agent, self.cfg.networks)}

    def _decay(self, params):
        """λ·θ on the masked leaves, 0 elsewhere."""
        mask = kernel_mask(params) if self.cfg.mask == "kernels_only" else weight_mask(params)
        return jax.tree.map(lambda p, m: self.cfg.lam * p if m else jnp.zeros_like(p), params, mask)

    def grad_transform(self, net, grads, params, state):
        if net.name not in state or self.cfg.kind != "coupled" or self.cfg.lam == 0:
            return grads
        return jax.tree.map(jnp.add, grads, self._decay(params))

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state
        if self.cfg.kind == "decoupled" and self.cfg.lam != 0:
            if not net.lr:
                raise ValueError(f"weight_decay.kind=decoupled needs the learning rate of network {net.name!r}")
            decay = self._decay(ctx.params_before)
            ns = ns.replace(params=jax.tree.map(lambda p, d: p - net.lr * d, ns.params, decay))
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(ns.params)))
        return ns, {**state, net.name: {"param_norm": norm}}

    def logs(self, state):
        return self.net_logs(state, "param_norm")
