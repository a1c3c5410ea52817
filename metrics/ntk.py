"""NTK Gram-matrix rank of a scalar critic (docs/metrics.md §6).

`J ∈ R^{B×P}` holds one per-example parameter gradient per row; `K = J Jᵀ`. The ranks are read from the
singular values of `J` (`sigma_i(K) = sigma_i(J)²`), which is better conditioned than forming `K`.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metrics.rank import singular_values


def jacobian(scalar_fn, params, inputs):
    """Per-example Jacobian `J [B, P]` (docs/metrics.md §6): row b is the gradient of `scalar_fn(params, x_b)`
    (a scalar, e.g. Q1(s_b, a_b)) w.r.t. all parameters, flattened with `ravel_pytree` (leaf order of
    `params`). `inputs` is an array or a pytree (e.g. `(obs, act)`) whose every leaf has the batch on axis 0;
    `scalar_fn` receives one example (the same pytree with axis 0 removed)."""
    def row(x):
        return ravel_pytree(jax.grad(scalar_fn)(params, x))[0]
    return jax.vmap(row)(inputs)


@jax.jit
def ntk_rank(J, tol: float = 1e-6):
    """(`ntk_rank_abs`, `ntk_rank_rel`) of `K = J Jᵀ` (docs/metrics.md §6), from the singular values of `J`:
    abs = #{i : sigma_i(J)² > tol} (absolute tolerance, the SWD utility's default 1e-6) and
    rel = #{i : sigma_i(J)² > tol · sigma_1(J)²} (scale-free [project]). int32 scalars (0 for J = 0);
    `J` may carry leading batch axes (`[..., B, P]` gives `[...]`)."""
    s2 = jnp.square(singular_values(J))
    abs_rank = jnp.sum(s2 > tol, axis=-1, dtype=jnp.int32)
    rel_rank = jnp.sum(s2 > tol * s2[..., :1], axis=-1, dtype=jnp.int32)
    return abs_rank, rel_rank


@partial(jax.jit, static_argnames=("network",))
def ntk_logs(network: str, J, tol: float = 1e-6) -> dict:
    """Flat logs `ntk_rank_abs/<network>` and `ntk_rank_rel/<network>` (docs/metrics.md §6) of `ntk_rank(J,
    tol)`, as float32 (mean over leading axes if `J` is batched)."""
    a, r = ntk_rank(J, tol)
    return {f"ntk_rank_abs/{network}": jnp.mean(a.astype(jnp.float32)),
            f"ntk_rank_rel/{network}": jnp.mean(r.astype(jnp.float32))}
