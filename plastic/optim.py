"""Adam with the step count of your choice (docs/mechanics.md §3.5; docs/interventions.md, Continual Backprop).

optax's Adam keeps one scalar step count for the whole network, so an entry that a reset re-initialises
keeps the bias correction of an old parameter. Continual Backprop's reference optimizer counts steps per
element instead, and restarts the count of every reset entry.

`adam(lr, count=...)`:
  global       `optax.adam` itself (the default: every agent's optimizer is unchanged)
  per_element  standard Adam bias correction with a step count per entry (an int32 tree shaped like the
               parameters, so `plastic.surgery.reset_units` zeroes it at touched entries with the moments)
  adamgnt_released
               the released `AdamGnT` arithmetic of the loss-of-plasticity code
               (docs/interventions.md, Continual Backprop): per-entry count t as above, update
               `lr · (1 − b2^t) · m_t / (sqrt(v_t) + eps)` (its line meant to form Adam's bias correction has no
               effect, so fresh entries ramp up from ~0). Its coupled weight decay is not part of this transform
               (the `weight_decay` intervention, coupled, adds it).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

ADAM_COUNTS = ("global", "per_element", "adamgnt_released")


class ElementwiseAdamState(NamedTuple):
    count: Any   # int32, shaped like the parameters
    mu: Any
    nu: Any


class AdamGnTState(NamedTuple):
    """Same fields as `ElementwiseAdamState`; its own type marks the released-AdamGnT arithmetic."""
    count: Any   # int32, shaped like the parameters
    mu: Any
    nu: Any


def _per_element(b1, b2, direction, state_type):
    """Adam moments with an int32 step count per entry; `direction(m, v, t)` turns them into the update
    direction (t: the entry's count including this step, as a float)."""
    def init(params):
        zeros = lambda p: jnp.zeros_like(p)  # noqa: E731
        return state_type(jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.int32), params),
                          jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(grads, state, params=None):
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, grads, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * jnp.square(g), grads, state.nu)
        count = jax.tree.map(lambda c: jnp.minimum(c, jnp.iinfo(jnp.int32).max - 1) + 1, state.count)
        out = jax.tree.map(lambda m, v, c: direction(m, v, c.astype(m.dtype)), mu, nu, count)
        return out, state_type(count, mu, nu)

    return optax.GradientTransformation(init, update)


def scale_by_adam_per_element(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam's direction with bias correction `1 - b^t_e`, `t_e` the entry's own number of steps."""
    def direction(m, v, t):
        return (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + eps)
    return _per_element(b1, b2, direction, ElementwiseAdamState)


def scale_by_adamgnt_released(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """The released `AdamGnT` direction `(1 - b2^t_e) · m / (sqrt(v) + eps)`, `t_e` the entry's own count
    (lop/utils/AdamGnT.py @dcc3619: the in-place bias-correction line acts on a temporary, so the first
    moment is never divided by `1 - b1^t` nor `v` by `1 - b2^t`)."""
    def direction(m, v, t):
        return (1 - b2 ** t) * m / (jnp.sqrt(v) + eps)
    return _per_element(b1, b2, direction, AdamGnTState)


def adam(lr, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, count: str = "global"):
    """Adam with learning rate `lr` (a float or an optax schedule of the update count)."""
    if count == "global":
        return optax.adam(lr, b1=b1, b2=b2, eps=eps)
    if count == "per_element":
        return optax.chain(scale_by_adam_per_element(b1, b2, eps), optax.scale_by_learning_rate(lr))
    if count == "adamgnt_released":
        return optax.chain(scale_by_adamgnt_released(b1, b2, eps), optax.scale_by_learning_rate(lr))
    raise ValueError(f"adam count={count!r} is not valid; choose one of: {', '.join(ADAM_COUNTS)}")
