"""Gradient statistics (docs/metrics.md §3) and weight, feature and update magnitudes (docs/metrics.md §7).

All functions reduce over whole pytrees of float arrays and return float32 scalars.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.tree_util import DictKey


def _leaves(tree):
    """The pytree's leaves as float32 arrays."""
    return [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(tree)]


def _count(leaves) -> int:
    """Total number of entries (static)."""
    return sum(x.size for x in leaves)


def _sq(leaves):
    """Sum of squares over all entries (float32)."""
    return sum((jnp.sum(jnp.square(x)) for x in leaves), jnp.float32(0.0))


@jax.jit
def grad_stats(grads, threshold: float = 1e-8) -> dict:
    """Gradient statistics over the whole pytree (docs/metrics.md §3, CleanRL-JAX `GradientMonitor`):
    `sparsity` = #{j : |g_j| < threshold} / #entries (higher is worse; never called "GraMa"),
    `l1` = sum_j |g_j|, `l2` = sqrt(sum_j g_j²). Pass the raw gradient (before clipping / optimizer)."""
    leaves = _leaves(grads)
    small = sum((jnp.sum(jnp.abs(x) < threshold, dtype=jnp.float32) for x in leaves), jnp.float32(0.0))
    l1 = sum((jnp.sum(jnp.abs(x)) for x in leaves), jnp.float32(0.0))
    return {"sparsity": small / max(_count(leaves), 1), "l1": l1, "l2": jnp.sqrt(_sq(leaves))}


@jax.jit
def param_rms(params):
    """`param_rms` (docs/metrics.md §7): sqrt(sum_j θ_j² / N) over all N parameters of the pytree."""
    leaves = _leaves(params)
    return jnp.sqrt(_sq(leaves) / max(_count(leaves), 1))


@jax.jit
def param_dist_init_rms(params, ref):
    """`param_dist_init_rms` (docs/metrics.md §7, Plasticine `compute_l2_norm_difference`): sqrt(sum_j (θ_j −
    θ_ref_j)² / N), with `ref` the parameters at initialisation (same structure)."""
    diff = jax.tree.map(lambda a, b: jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32), params, ref)
    return param_rms(diff)


@jax.jit
def feature_norm(phi):
    """`feature_norm` (docs/metrics.md §7): mean over samples (and ensemble members, for `[E, n, d]`) of the L2
    norm of each feature row `Phi_b` (last axis)."""
    return jnp.mean(jnp.linalg.norm(jnp.asarray(phi, jnp.float32), axis=-1))


def layer_groups(tree) -> list[list[int]]:
    """Indices (into `jax.tree.leaves(tree)`) of the leaves of each layer: a layer is the set of array
    leaves held directly by one dict below the root (a flax module's params: kernel and bias together); a
    leaf held directly by the root, or by a list/tuple, is its own layer."""
    groups: dict = {}
    for i, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
        key = tuple(path[:-1]) if len(path) >= 2 and isinstance(path[-1], DictKey) else tuple(path)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


@jax.jit
def grad_to_param_ratio(grads, params, eps: float = 1e-12):
    """`grad_to_param_ratio` (docs/metrics.md §7, modelled on SimbaV2 `get_effective_lr`): the parameter-count-
    weighted mean over layers of ||g_l|| / (||θ_l|| + eps). A layer is one innermost dict of array leaves
    (kernel and bias together, see `layer_groups`; ensemble members are pooled), not one leaf: a bias-only
    leaf is 0 at initialisation, so per-leaf ratios would blow up. `grads` and `params` share a structure;
    pass the parameters the gradient was taken at."""
    g, p = _leaves(grads), _leaves(params)
    if len(g) != len(p):
        raise ValueError("grads and params must have the same tree structure")
    num, den = jnp.float32(0.0), 0
    for idx in layer_groups(params):
        n = sum(p[i].size for i in idx)
        gn = jnp.sqrt(_sq([g[i] for i in idx]))
        pn = jnp.sqrt(_sq([p[i] for i in idx]))
        num, den = num + n * gn / (pn + eps), den + n
    return num / max(den, 1)


@jax.jit
def update_to_param_ratio(updates, params_before, eps: float = 1e-12):
    """`update_to_param_ratio` (docs/metrics.md §7): ||Δθ|| / (||θ_before|| + eps), global norms over the pytree,
    with Δθ the update actually applied (after the optimizer and learning rate)."""
    return jnp.sqrt(_sq(_leaves(updates))) / (jnp.sqrt(_sq(_leaves(params_before))) + eps)


@partial(jax.jit, static_argnames=("network",))
def norm_logs(network: str, grads, updates, params_before, params, params_init,
              threshold: float = 1e-8) -> dict:
    """Flat §3/§7 logs for one network: `grad_sparsity`, `grad_l1`, `grad_l2` (of `grads`),
    `grad_to_param_ratio` (grads vs `params_before`, the parameters they were taken at),
    `update_to_param_ratio` (`updates` vs `params_before`), `param_rms` and `param_dist_init_rms` (of the
    post-update `params`, the latter against `params_init`), each keyed `<metric>/<network>`. `grads` must
    be the raw loss gradient (docs/metrics.md §3: before masking, weight decay, clipping or the optimizer)."""
    gs = grad_stats(grads, threshold)
    return {
        f"grad_sparsity/{network}": gs["sparsity"],
        f"grad_l1/{network}": gs["l1"],
        f"grad_l2/{network}": gs["l2"],
        f"grad_to_param_ratio/{network}": grad_to_param_ratio(grads, params_before),
        f"update_to_param_ratio/{network}": update_to_param_ratio(updates, params_before),
        f"param_rms/{network}": param_rms(params),
        f"param_dist_init_rms/{network}": param_dist_init_rms(params, params_init),
    }
