"""Fewer arrays across the host driver's per-step calls: the small leaves of a pytree packed into one
flat buffer per dtype.

Every array that enters or leaves a jitted call costs the host about a microsecond (argument handling,
donation, a new `jax.Array` per output). A TD3 train state has ~90 leaves, ~65 of them biases, Adam
counts, keys, counters and intervention scalars; at one call per env step that is ~0.1-0.2 ms of a ~4 ms
step on CPU (docs/benchmarks.md). `Packer.pack` keeps the large leaves (kernels, moments, the replay) as
they are and concatenates the small ones per dtype; `unpack` slices them back. Inside a program both are
free reshapes and slices of a few KB; the math in between is unchanged, so results are bit-identical.

A seed-batched tree (`batched=True`) keeps its leading seed axis on every buffer (`[S, n]`), so the
packed state shards over seeds exactly like the tree.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

MAX_PACKED_SIZE = 4096  # elements per seed; larger leaves cross the call boundary as they are


class Packer:
    """Packs trees with the structure, shapes and dtypes of `example` (arrays or ShapeDtypeStructs)."""

    def __init__(self, example, batched: bool, max_size: int = MAX_PACKED_SIZE):
        leaves, self.treedef = jax.tree.flatten(example)
        self.specs = [(tuple(x.shape), np.dtype(x.dtype)) for x in leaves]
        self.batched = batched
        groups: dict[str, list[int]] = {}
        for i, (shape, dtype) in enumerate(self.specs):
            if self._packable(shape, dtype, max_size):
                groups.setdefault(dtype.name, []).append(i)
        self.groups = tuple(tuple(g) for _, g in sorted(groups.items()))
        packed = {i for g in self.groups for i in g}
        self.large = tuple(i for i in range(len(leaves)) if i not in packed)

    def _packable(self, shape, dtype, max_size) -> bool:
        if self.batched and not shape:
            return False
        numeric = np.issubdtype(dtype, np.number) or dtype == np.bool_
        return numeric and math.prod(shape[1:] if self.batched else shape) <= max_size

    def _flat(self, x):
        return x.reshape(x.shape[0], -1) if self.batched else x.reshape(-1)

    def split(self, tree):
        """`(large leaves, small leaves)` of `tree`, both tuples (no computation)."""
        leaves = self.treedef.flatten_up_to(tree)
        return tuple(leaves[i] for i in self.large), tuple(leaves[i] for g in self.groups for i in g)

    def join(self, large, small):
        """Inverse of `split`."""
        leaves = [None] * len(self.specs)
        for i, x in zip(self.large, large):
            leaves[i] = x
        for i, x in zip((i for g in self.groups for i in g), small):
            leaves[i] = x
        return self.treedef.unflatten(leaves)

    def pack_small(self, small):
        """The small leaves (as `split` gives them) as one buffer per dtype, traceable."""
        it = iter(small)
        return tuple(jnp.concatenate([self._flat(next(it)) for _ in g], axis=-1) for g in self.groups)

    def unpack_small(self, bufs):
        """Inverse of `pack_small`, traceable."""
        small = []
        for g, buf in zip(self.groups, bufs):
            offset = 0
            for i in g:
                shape, _ = self.specs[i]
                n = math.prod(shape[1:] if self.batched else shape)
                small.append(buf[..., offset:offset + n].reshape((buf.shape[0],) + shape[1:] if self.batched else shape))
                offset += n
        return tuple(small)

    def pack(self, tree):
        """`(large leaves, one buffer per dtype)`, traceable."""
        large, small = self.split(tree)
        return large, self.pack_small(small)

    def unpack(self, packed):
        """The tree `pack` was given, traceable."""
        large, bufs = packed
        return self.join(large, self.unpack_small(bufs))

    @property
    def crossing(self) -> int:
        """Arrays per packed tree (for docs and tests)."""
        return len(self.large) + len(self.groups)
