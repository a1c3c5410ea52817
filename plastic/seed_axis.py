"""The seed axis as the drivers vmap it (bottom layer: imports nothing of the project).

With several seeds in one program the drivers vmap the per-seed step under the axis name `SEED_VMAP_AXIS`
(`plastic.sharding.Placement.vmap`). A `lax.cond` whose predicate differs per seed becomes a `select` under
`vmap` and runs both branches on every call; `any_seed` turns a per-seed predicate into "some seed's holds",
an unbatched scalar, so that a cond on it stays a real branch (`plastic.core.seed_cond`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SEED_VMAP_AXIS = "seed_vmap"


def seed_axis_bound() -> bool:
    """Whether this code is traced under the drivers' seed vmap (several seeds in one program)."""
    try:
        jax.lax.axis_size(SEED_VMAP_AXIS)
    except NameError:
        return False
    return True


def any_seed(pred):
    """Boolean scalar: `pred` holds for some seed of the program (unbatched under the seed vmap); `pred`
    itself outside it."""
    if not seed_axis_bound():
        return pred
    return jax.lax.pmax(jnp.asarray(pred, jnp.int32), SEED_VMAP_AXIS) > 0
