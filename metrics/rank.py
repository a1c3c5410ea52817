"""Rank metrics on a feature matrix `Phi` (docs/metrics.md §5).

`Phi` is `[n, d]` (n samples, d features), or `[E, n, d]` for an ensemble (twin critics). Conv features
must be flattened by the caller to `[n, h * w * c]` (or `[E, n, h * w * c]`) before calling; nothing here
reshapes. `Phi` is never centred.

Every rank function takes the singular values `sv` (last axis, sorted in descending order as returned by
an SVD) and reduces over the last axis only, so batched singular values `[E, m]` give `[E]`. The
count-based ranks (`srank`, `approx_rank`, `feature_rank`, `matrix_rank`) are int32; `effective_rank`
is float32. An all-zero `Phi` (all singular values 0) gives 0 for every rank, never NaN.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

F32_EPS = float(np.finfo(np.float32).eps)


def _fmt(x: float) -> str:
    """A threshold as it appears in a metric name (docs/metrics.md §0.2): `:g`, e.g. 0.01 -> "0.01"."""
    return f"{x:g}"


def _svdvals(phi):
    """`full_matrices=False` matters: with the default, XLA's CPU SVD allocates a d x d workspace even
    without U, V (an NTK Jacobian 64 x 140k asked for 80 GB)."""
    return jnp.linalg.svd(phi, full_matrices=False, compute_uv=False)


@jax.custom_batching.custom_vmap
def _svdvals_in_turn(phi):
    """`_svdvals` with one LAPACK call per matrix: any leading axes, and the axes `vmap` adds (the seeds), are
    walked by `lax.map`. The values are those of the batched call (each matrix goes through the same gesdd)."""
    *lead, n, d = phi.shape
    if not lead:
        return _svdvals(phi)
    return jax.lax.map(_svdvals, phi.reshape(-1, n, d)).reshape(*lead, min(n, d))


@_svdvals_in_turn.def_vmap
def _in_turn_rule(axis_size, in_batched, phi):
    """vmap rule of `_svdvals_in_turn`: the batch axis becomes one more leading axis to walk."""
    return _svdvals_in_turn(phi), in_batched[0]


def device_svdvals(phi):
    """Singular values from the device SVD, any leading axes (and under `vmap`).

    On CPU every matrix is its own LAPACK call (`_svdvals_in_turn`). jaxlib's CPU kernel spreads a batch of
    matrices over XLA's intra-op thread pool and blocks its own pool thread until the batch is done; in a
    run sharded over host devices each device's program runs on that pool, and when every pool thread is
    such a wait, the queued matrices never run: the run hangs (PPO, 4 seeds on 2 host devices, rank
    metrics on: the first chunk never returned; tests/test_sharding.py). Other platforms take the batch in
    one call (cuSOLVER's batched kernels)."""
    return jax.lax.platform_dependent(phi, cpu=_svdvals_in_turn, default=_svdvals)


def scipy_svdvals(phi: np.ndarray) -> np.ndarray:
    """Host SVD with SciPy's `gesvd` driver over any leading axes (the LOP fallback, docs/metrics.md §5).

    `scipy.linalg.svdvals` takes no `lapack_driver` argument, so this calls what it wraps,
    `scipy.linalg.svd(..., compute_uv=False)`, with `lapack_driver='gesvd'`.
    A non-finite input matrix has no singular values: its row is all NaN (SciPy would raise)."""
    phi = np.asarray(phi, np.float32)
    *lead, n, d = phi.shape
    flat = phi.reshape(-1, n, d)
    out = np.full((flat.shape[0], min(n, d)), np.nan, np.float32)
    for i, a in enumerate(flat):
        if np.all(np.isfinite(a)):
            out[i] = scipy.linalg.svd(a, compute_uv=False, lapack_driver="gesvd", check_finite=False)
    return out.reshape(*lead, min(n, d))


def host_singular_values(phi):
    """The fallback branch of `singular_values`: SciPy `gesvd` on the host through `jax.pure_callback`.

    Works eagerly, under `jit` and under `vmap` (the callback then runs once per batch element)."""
    phi = jnp.asarray(phi, jnp.float32)
    shape = jax.ShapeDtypeStruct(phi.shape[:-2] + (min(phi.shape[-2:]),), jnp.float32)
    return jax.pure_callback(scipy_svdvals, shape, phi, vmap_method="sequential")


@jax.custom_batching.custom_vmap
def fallback_if_nonfinite(sv, phi):
    """`sv` (device singular values of `phi`) if all are finite, else `host_singular_values(phi)`, chosen by
    `jax.lax.cond`, so the host callback only runs on failure. Any leading axes; one predicate for all.

    Under `vmap` a `lax.cond` with a batched predicate would become a `select` running both branches (the
    callback on every call); the custom batching rule instead evaluates the whole batch at once with a
    single predicate, so the callback still runs only when some member failed (then once, on all of them)."""
    return jax.lax.cond(jnp.all(jnp.isfinite(sv)), lambda s, p: s, lambda s, p: host_singular_values(p), sv, phi)


@fallback_if_nonfinite.def_vmap
def _fallback_rule(axis_size, in_batched, sv, phi):
    """vmap rule of `fallback_if_nonfinite`: broadcast an unbatched operand, then run on the whole batch."""
    sv, phi = (x if b else jnp.broadcast_to(x, (axis_size,) + x.shape) for x, b in zip((sv, phi), in_batched))
    return fallback_if_nonfinite(sv, phi), True


@jax.jit
def singular_values(phi):
    """Singular values of `Phi` `[n, d]` (or batched `[E, n, d]`) in float32, descending (docs/metrics.md §5).

    Computed with `jnp.linalg.svd(phi, compute_uv=False)`. If any resulting value is non-finite (GPU SVD
    convergence failure), all are recomputed on the host with SciPy's `gesvd` driver
    (`scipy.linalg.svd(..., compute_uv=False, lapack_driver='gesvd')`, i.e. `svdvals` with that driver)
    through `jax.pure_callback`, selected by `jax.lax.cond` so the callback only runs on failure, also under
    `vmap` (see `fallback_if_nonfinite`). Jittable and vmappable. A non-finite `Phi` yields NaN."""
    phi = jnp.asarray(phi, jnp.float32)
    return fallback_if_nonfinite(device_svdvals(phi), phi)


def _min_k_reaching(w, level):
    """min{k : cumsum(w)_k / sum(w) >= level} over the last axis (w >= 0, 1-based); 0 when sum(w) = 0."""
    c = jnp.cumsum(w, axis=-1)
    total = c[..., -1:]
    ratio = c / jnp.where(total > 0, total, 1.0)
    k = jnp.sum(ratio < level, axis=-1, dtype=jnp.int32) + 1
    k = jnp.minimum(k, w.shape[-1])
    return jnp.where(total[..., 0] > 0, k, 0).astype(jnp.int32)


@jax.jit
def srank(sv, delta: float = 0.01):
    """`srank_delta_δ` (docs/metrics.md §5; Kumar et al. 2021): min{k : sum_{i<=k} σ_i / sum_i σ_i >= 1 − δ}.

    Same quantity as Plasticine's "stable rank" and LOP's `compute_abs_approximate_rank`. `sv` are
    descending singular values on the last axis; returns int32 (0 for all-zero `sv`)."""
    return _min_k_reaching(jnp.asarray(sv, jnp.float32), 1.0 - delta)


@jax.jit
def approx_rank(sv, p: float = 0.99):
    """`approx_rank_p` (docs/metrics.md §5; LOP `compute_approximate_rank`): min{k : sum_{i<=k} σ_i² / sum_i
    σ_i² >= p}, the PCA explained-variance rank of the uncentred `Phi`. Returns int32 (0 for all-zero)."""
    sv = jnp.asarray(sv, jnp.float32)
    return _min_k_reaching(sv * sv, p)


@jax.jit
def effective_rank(sv):
    """`effective_rank` (docs/metrics.md §5; Roy & Vetterli 2007): exp(−sum_i p_i ln p_i) with p_i = σ_i /
    sum_j σ_j and 0·ln 0 = 0. Returns float32; 0 for all-zero `sv` (not exp(0) = 1)."""
    sv = jnp.asarray(sv, jnp.float32)
    total = jnp.sum(sv, axis=-1, keepdims=True)
    p = sv / jnp.where(total > 0, total, 1.0)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    er = jnp.exp(-jnp.sum(plogp, axis=-1))
    return jnp.where(total[..., 0] > 0, er, 0.0).astype(jnp.float32)


@partial(jax.jit, static_argnames=("n",))
def feature_rank(sv, n: int, eps: float = 0.01):
    """`feature_rank_eps_ε` (docs/metrics.md §5; Lyle et al. 2022): #{i : σ_i(Phi / sqrt(n)) > ε} =
    #{i : σ_i / sqrt(n) > ε} with `n` the number of samples (rows). Scale-dependent by design. int32."""
    sv = jnp.asarray(sv, jnp.float32)
    return jnp.sum(sv / jnp.sqrt(jnp.float32(n)) > eps, axis=-1, dtype=jnp.int32)


@partial(jax.jit, static_argnames=("n", "d"))
def matrix_rank(sv, n: int, d: int):
    """`matrix_rank` (docs/metrics.md §5): #{i : σ_i > σ_max · max(n, d) · eps_float32}, NumPy's (and
    `jnp.linalg.matrix_rank`'s) default tolerance for an `[n, d]` float32 matrix. int32 (0 for all-zero)."""
    sv = jnp.asarray(sv, jnp.float32)
    tol = jnp.max(sv, axis=-1, keepdims=True) * (max(n, d) * F32_EPS)
    return jnp.sum(sv > tol, axis=-1, dtype=jnp.int32)


@partial(jax.jit, static_argnames=("network", "delta", "p", "eps"))
def rank_logs(network: str, phi, delta: float = 0.01, p: float = 0.99, eps: float = 0.01, sv=None) -> dict:
    """All §5 ranks of `Phi` as flat float32 logs (docs/metrics.md §5): `srank_delta_<δ>/<network>`,
    `approx_rank_<p>/<network>`, `effective_rank/<network>`, `feature_rank_eps_<ε>/<network>`,
    `matrix_rank/<network>` (numbers formatted with `:g`). `phi` is `[n, d]` or `[E, n, d]`; for an
    ensemble each member's rank is computed on its own `[n, d]` and the network value is the mean over
    members. Conv features must be flattened by the caller. No `stable_rank` is ever emitted.
    `sv`: singular values already computed (default: `singular_values(phi)`, with its host fallback)."""
    phi = jnp.asarray(phi, jnp.float32)
    if phi.ndim not in (2, 3):
        raise ValueError(f"rank_logs expects phi [n, d] or [E, n, d] (flatten conv features), got {phi.shape}")
    n, d = phi.shape[-2:]
    sv = singular_values(phi) if sv is None else jnp.asarray(sv, jnp.float32)
    values = {
        f"srank_delta_{_fmt(delta)}": srank(sv, delta),
        f"approx_rank_{_fmt(p)}": approx_rank(sv, p),
        "effective_rank": effective_rank(sv),
        f"feature_rank_eps_{_fmt(eps)}": feature_rank(sv, n, eps),
        "matrix_rank": matrix_rank(sv, n, d),
    }
    return {f"{k}/{network}": jnp.mean(v.astype(jnp.float32)) for k, v in values.items()}
