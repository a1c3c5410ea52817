"""Unit-level parameter and optimizer surgery shared by every reset method (docs/mechanics.md §1, §3, §4.5).

`reset_units` re-initialises flagged hidden units through the layer map: incoming columns redrawn from
the layer's own initializer, bias 0, outgoing rows 0 (unless `outgoing=keep`), LayerNorm affine and other
per-unit parameters (SimbaV2's scaler) reset, and Adam `mu`/`nu`
zeroed at every touched entry with the scalar `count` kept (a TRAC optimizer's θ_ref moves to the fresh values
there: plastic.optim.restart_entries). Unflagged entries are bit-identical.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from plastic.core import NetState
from plastic.networks import get_path, kernel_initializer, set_path
from plastic.optim import restart_entries

REINIT = ("layer_init", "xavier_uniform", "kaiming_uniform", "lecun_normal")
OUTGOING = ("zero", "keep")
LAYERNORM = ("reset_unit_affine", "keep")
OPTIMIZER = ("zero_moments_keep_count", "none")


def cap_mask(flagged, score, k):
    """Keep at most `k` flagged units per row, lowest score first (rank mask, static shapes)."""
    s = jnp.where(flagged, score, jnp.inf)
    rank = jnp.argsort(jnp.argsort(s, axis=-1, stable=True), axis=-1, stable=True)
    return flagged & (rank < k)


def touched_entries(net, params, masks: dict, layernorm="reset_unit_affine", outgoing="zero"):
    """Bool tree shaped like `params`: True at every entry a reset of `masks` touches (incoming column,
    bias, per-unit parameters, LayerNorm affine unless `layernorm=keep`, outgoing rows in every consumer
    unless `outgoing=keep`), as in docs/mechanics.md §3.1."""
    touched = jax.tree.map(lambda p: jnp.zeros(p.shape, bool), params)

    def mark(path, m):
        nonlocal touched
        old = get_path(touched, path)
        touched = set_path(touched, path, old | jnp.broadcast_to(m, old.shape))

    for layer in net.layers:
        m = masks[layer.name]
        mark(layer.kernel, m[..., None, :])
        if layer.bias is not None:
            mark(layer.bias, m)
        for path, _ in layer.unit_params:
            mark(path, m)
        if layer.layer_norm is not None and layernorm == "reset_unit_affine":
            for path in layer.layer_norm:
                mark(path, m)
        if outgoing == "zero":
            for consumer, rows in layer.consumer_rows():
                mark(consumer, rows(m))
    return touched


def fresh_kernels(net, params, key, *, reinit="layer_init", init=None) -> dict:
    """layer name -> a newly drawn kernel of that layer's shape (what `reset_units` puts in reset columns).

    `init` (optional) overrides `reinit`: a function `LayerSpec -> initializer (key, shape, dtype)` giving
    the distribution of each layer's new incoming columns (e.g. CBP's U(-b, b)); None keeps `reinit`."""
    out = {}
    for layer in net.layers:
        kernel = get_path(params, layer.kernel)
        if init is not None:
            draw = init(layer)
        else:
            draw = layer.init if reinit == "layer_init" else kernel_initializer(reinit, layer.ensemble)
        out[layer.name] = draw(jax.random.fold_in(key, layer.layer_id), kernel.shape, kernel.dtype)
    return out


def reset_units(net, ns: NetState, masks: dict, key, *, reinit="layer_init", outgoing="zero",
                layernorm="reset_unit_affine", optimizer="zero_moments_keep_count", init=None):
    """Reset the units flagged in `masks` (layer name -> bool `[E?, H]`). Returns the new NetState.

    The reset columns come from `fresh_kernels(net, ns.params, key, reinit=reinit, init=init)`."""
    params = ns.params
    fresh = fresh_kernels(net, params, key, reinit=reinit, init=init)
    for layer in net.layers:
        m = masks[layer.name]
        col = m[..., None, :]            # incoming column of a [E?, in, H] kernel
        kernel = get_path(params, layer.kernel)
        params = set_path(params, layer.kernel, jnp.where(col, fresh[layer.name], kernel))
        if layer.bias is not None:
            params = set_path(params, layer.bias, jnp.where(m, 0.0, get_path(params, layer.bias)))
        for path, value in layer.unit_params:
            params = set_path(params, path, jnp.where(m, value, get_path(params, path)))
        if layer.layer_norm is not None and layernorm == "reset_unit_affine":
            scale, offset = layer.layer_norm
            params = set_path(params, scale, jnp.where(m, 1.0, get_path(params, scale)))
            params = set_path(params, offset, jnp.where(m, 0.0, get_path(params, offset)))
    # outgoing rows last, so that a reset unit in the next layer (whose incoming column was just redrawn)
    # cannot put weight back on the outgoing row of a reset unit below it
    if outgoing == "zero":
        for layer in net.layers:
            for consumer, rows in layer.consumer_rows():  # outgoing rows of a [E?, (spatial x) H, out] kernel
                row = rows(masks[layer.name])
                params = set_path(params, consumer, jnp.where(row, 0.0, get_path(params, consumer)))

    opt_state = ns.opt_state
    if optimizer == "zero_moments_keep_count":
        touched = touched_entries(net, ns.params, masks, layernorm, outgoing)
        opt_state = restart_entries(net.tx, opt_state, touched, params)
    return NetState(params, opt_state)
