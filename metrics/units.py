"""Per-unit scores and the τ-ratio family (docs/metrics.md §1 dormant ratio, §2 GraMa ratio).

Unit tensors are `[..., H]`, optionally with a leading ensemble axis `E` (twin critics); every axis
except the ensemble axis and the unit axis (batch, spatial) is averaged, giving `[E, H]` or `[H]`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-9


def unit_magnitude(x, ensemble: int = 0):
    """mean |x| over batch (and spatial) axes -> one value per unit, `[E, H]` or `[H]`."""
    axes = tuple(range(1 if ensemble else 0, x.ndim - 1))
    return jnp.mean(jnp.abs(x), axis=axes)


def normalize_scores(a, eps: float = EPS):
    """s_i = a_i / (mean_k a_k + eps), per layer (per ensemble member)."""
    return a / (jnp.mean(a, axis=-1, keepdims=True) + eps)


def dormant_scores(activations, layers, eps: float = EPS):
    """τ-dormant scores from post-activations: dict layer-name -> normalised mean |h| (docs/metrics.md §1)."""
    return {l.name: normalize_scores(unit_magnitude(activations[l.name], l.ensemble), eps) for l in layers}


def grama_scores(layers, probe_grads, param_grads, target: str = "pre_activation", eps: float = EPS):
    """GraMa scores (docs/metrics.md §2): dict layer-name -> (G normalised, g raw per-unit magnitude).

    `pre_activation` / `post_activation` read the probe gradients (per-sample dL/du, one backward pass);
    `weight_grad` uses mean_j |dL/dW[j, i]| over the unit's incoming kernel column.
    """
    out = {}
    for l in layers:
        if target == "weight_grad":
            k = param_grads
            for p in l.kernel:
                k = k[p]
            g = unit_magnitude(k, l.ensemble)  # over the incoming column: [E?, (kh, kw,) in, H] -> [E?, H]
        else:
            g = unit_magnitude(probe_grads[l.name], l.ensemble)
        out[l.name] = (normalize_scores(g, eps), g)
    return out


def _fmt(tau: float) -> str:
    return f"{tau:g}"


def ratio_logs(metric: str, network: str, scores: dict, taus, aggregation: str = "pooled"):
    """Flat logs `<metric>_tau_<τ>/<network>[/<layer>]`: fraction of units with score <= τ.

    `pooled` divides the number of flagged units by the number of units over all layers (and all
    ensemble members); `mean_of_layers` averages the per-layer ratios (docs/metrics.md §1).
    """
    logs = {}
    for tau in taus:
        key = f"{metric}_tau_{_fmt(tau)}"
        flagged, total, per_layer = 0.0, 0, []
        for name, s in scores.items():
            f = jnp.sum(s <= tau).astype(jnp.float32)
            logs[f"{key}/{network}/{name}"] = f / s.size
            per_layer.append(f / s.size)
            flagged, total = flagged + f, total + s.size
        if scores:
            logs[f"{key}/{network}"] = (flagged / total if aggregation == "pooled"
                                        else sum(per_layer) / len(per_layer))
    return logs


def dormant_masks(scores: dict, tau: float) -> dict:
    """τ-dormant (or GraMa-inactive) unit masks (docs/metrics.md §1, §2): dict layer -> bool `s <= tau`, same
    shape as the scores (`[H]` or `[E, H]`)."""
    return {name: jnp.asarray(s) <= tau for name, s in scores.items()}


@jax.jit
def set_overlap(prev_mask, mask):
    """`dormant_overlap` / `grama_persistence` (docs/metrics.md §8): |D_t ∩ D_prev| / max(|D_t|, 1), with D_prev
    and D_t the units flagged in boolean masks `prev_mask` and `mask` of equal (any) shape; 0 when D_t is
    empty. float32."""
    both = jnp.sum(jnp.logical_and(prev_mask, mask), dtype=jnp.float32)
    return both / jnp.maximum(jnp.sum(mask, dtype=jnp.float32), 1.0)
