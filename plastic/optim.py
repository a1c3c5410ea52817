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

from dataclasses import dataclass
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


def adam(lr, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, count: str = "global",
         trac: "TracSpec | None" = None):
    """Adam with learning rate `lr` (a float or an optax schedule of the update count); wrapped in TRAC
    when `trac` is given."""
    if count == "global":
        tx = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    elif count == "per_element":
        tx = optax.chain(scale_by_adam_per_element(b1, b2, eps), optax.scale_by_learning_rate(lr))
    elif count == "adamgnt_released":
        tx = optax.chain(scale_by_adamgnt_released(b1, b2, eps), optax.scale_by_learning_rate(lr))
    else:
        raise ValueError(f"adam count={count!r} is not valid; choose one of: {', '.join(ADAM_COUNTS)}")
    return tx if trac is None else trac_wrap(tx, trac)


# ---- TRAC ------------------------------------------------------------------------------------------------

ERFI_TERMS = 192  # Maclaurin terms: enough for float32 wherever erfi itself is finite (|x| <= 9.3)


def erfi(x):
    """The imaginary error function erfi(x) = 2/√π · Σ_n x^(2n+1) / (n! (2n+1)), summed term by term (all terms
    share x's sign, so there is no cancellation: float32 accuracy up to |x| ≈ 9.3, where erfi reaches float32's
    range; beyond it the sum overflows to ±inf, as the reference's complex-erf evaluation does)."""
    x = jnp.asarray(x, jnp.float32)
    x2 = x * x

    def term(n, carry):
        a, total = carry                          # a = x^(2n+1) / n!
        a = a * x2 / n
        return a, total + a / (2 * n + 1)
    _, total = jax.lax.fori_loop(1, ERFI_TERMS, term, (x, x))
    return total * (2 / jnp.sqrt(jnp.pi))


@dataclass(frozen=True)
class TracSpec:
    """Which networks TRAC wraps (names) and its constants (the reference's defaults: docs/interventions.md, TRAC)."""
    nets: tuple[str, ...] = ()
    betas: tuple[float, ...] = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
    s_init: float = 1e-8
    eps: float = 1e-8


class TracState(NamedTuple):
    base: Any       # the wrapped optimizer's state
    ref: Any        # θ_ref: the parameters TRAC's displacement is measured from (shaped like the parameters)
    s: Any          # [n] the tuners' scales (their sum, clipped at 0, scales the displacement)
    variance: Any   # [n] Σ β^2(t-k) h_k²
    sigma: Any      # [n] −Σ β^(t-k) h_k (starts at 1e-8, as in the reference)


def _is_trac(v) -> bool:
    return isinstance(v, TracState)


def trac_states(opt_state) -> list:
    """The `TracState`s inside `opt_state` (a chain's, a wrapper's), in tree order."""
    return [v for v in jax.tree.leaves(opt_state, is_leaf=_is_trac) if _is_trac(v)]


def trac_wrap(base: optax.GradientTransformation, spec: TracSpec) -> optax.GradientTransformation:
    """TRAC around `base` (one tuner per optimizer, i.e. per network). Each update, with x the current
    parameters and g the gradient the optimizer receives:

        Δ = (x − θ_ref) / (Σs + eps)        the displacement, unscaled by the last (unclipped) sum of scales
        h = <Δ, g>;  Δ += base's update
        v_i = β_i² v_i + h²;  σ_i = β_i σ_i − h
        s_i = s_init / erfi(1/√2) · erfi(σ_i / (√2 √v_i + eps))
        x ← θ_ref + max(Σs, 0) · Δ

    θ_ref is the parameters at `init` (the first update's starting point). Δ is recovered from x rather than
    stored, as in the authors' implementation: a write outside the optimizer between updates becomes part of the
    displacement (its offset from θ_ref is rescaled by later changes of the scale). `restart_entries` re-anchors
    the entries a unit reset touches."""
    betas = jnp.asarray(spec.betas, jnp.float32)
    n = len(spec.betas)

    def init(params):
        return TracState(base.init(params), params, jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32),
                         jnp.full((n,), 1e-8, jnp.float32))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("TRAC needs the parameters: call its update with params")
        step, base_state = base.update(grads, state.base, params)
        last = jnp.sum(state.s) + spec.eps
        delta = jax.tree.map(lambda x, r: (x - r) / last, params, state.ref)
        h = optax.tree_utils.tree_vdot(delta, grads)
        delta = jax.tree.map(jnp.add, delta, step)
        variance = betas ** 2 * state.variance + h * h
        sigma = betas * state.sigma - h
        # one series for the constant erfi(1/√2) and the tuners' arguments (elementwise: the same values as two calls)
        e = erfi(jnp.concatenate([jnp.full((1,), 1 / jnp.sqrt(2.0)), sigma / (jnp.sqrt(2.0) * jnp.sqrt(variance)
                                                                              + spec.eps)]))
        s = spec.s_init / e[0] * e[1:]
        scale = jnp.maximum(jnp.sum(s), 0.0)
        updates = jax.tree.map(lambda r, d, x: (r + scale * d - x).astype(x.dtype), state.ref, delta, params)
        return updates, TracState(base_state, state.ref, s, variance, sigma)

    return optax.GradientTransformation(init, update)


def trac_scale(opt_state):
    """max(Σs, 0) of the TRAC tuner in `opt_state` (the scale its last update applied), or None without one."""
    found = trac_states(opt_state)
    return jnp.maximum(jnp.sum(found[0].s), 0.0) if found else None


def _where(t, a, b):
    """jnp.where(t, a, b) for a bool array `t`; a or b itself for a static Python bool."""
    if isinstance(t, bool):
        return a if t else b
    return jnp.where(t, a, b)


def restart_entries(tx, opt_state, touched, params):
    """`opt_state` with the optimizer restarted at the `touched` entries (a tree shaped like the parameters of bool
    arrays or static bools), whose new values are in `params`: their moments zeroed (every parameter-shaped leaf
    of the state; scalar counts kept) and a TRAC optimizer's θ_ref moved to the new values (a written entry
    restarts from there with no displacement; zeroing θ_ref would instead rescale the written value itself)."""
    old = opt_state
    opt_state = optax.tree_map_params(tx, lambda s, t: _where(t, jnp.zeros_like(s), s), opt_state, touched)

    def anchor(new, before):
        if not _is_trac(new):
            return new
        return new._replace(ref=jax.tree.map(_where, touched, params, before.ref))
    return jax.tree.map(anchor, opt_state, old, is_leaf=_is_trac)
