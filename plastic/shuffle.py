"""`permutation(key, n)`: the values of `jax.random.permutation(key, n)`, bit for bit, with a faster sort on CPU.

JAX shuffles `arange(n)` by sorting it along fresh random 32-bit keys, one or more rounds (one up to n = 1625):
each round a stable sort of (key, value) pairs. XLA:CPU sorts two operands through a generic comparator, and a
64-seed vmap of 512-element shuffles (PPO's minibatch shuffle, once per epoch) took 3.4 ms, a fifth of a PPO
epoch on CartPole. `stable_argsort` gets the same order from two sorts of one uint32 operand each, 1.3 ms for
the same work (docs/benchmarks.md, The minibatch shuffle and the bootstrap values). GPUs keep
`jax.random.permutation`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MAX_N = 1 << 16  # stable_argsort packs an index and a part of a key into 32 bits twice


def permutation(key, n: int) -> jax.Array:
    """`jax.random.permutation(key, n)`: the same int32 values on every platform; on CPU each round's sort is
    `stable_argsort`'s."""
    if not 2 <= n <= MAX_N:
        return jax.random.permutation(key, n)
    rounds = int(np.ceil(3 * np.log(n) / np.log(np.iinfo(np.uint32).max)))  # as jax.random.permutation counts them

    def cpu(key):
        x = jnp.arange(n, dtype=jnp.int32)
        for _ in range(rounds):
            key, sub = jax.random.split(key)
            x = x[stable_argsort(jax.random.bits(sub, (n,), jnp.uint32))]
        return x

    return jax.lax.platform_dependent(key, cpu=cpu, default=lambda key: jax.random.permutation(key, n))


def stable_argsort(keys: jax.Array) -> jax.Array:
    """The stable argsort of 1-D uint32 `keys` (int32; equal keys keep index order), as the values of
    `lax.sort_key_val(keys, arange(n))`, for n <= 65536. With b bits for an index, the first sort orders by
    the key's low 32 - b bits (an index packed below them breaks ties), the second by its high b bits (the
    position from the first sort packed below them): together, by the whole key, then by index."""
    n = keys.shape[0]
    if n > MAX_N:
        raise ValueError(f"stable_argsort sorts at most {MAX_N} keys, got {n}")
    b = max(1, (n - 1).bit_length())
    mask = jnp.uint32((1 << b) - 1)
    at = jnp.arange(n, dtype=jnp.uint32)
    by_low = jnp.sort((keys << b) | at) & mask                        # indices by (low bits, index)
    by_high = jnp.sort(((keys[by_low] >> (32 - b)) << b) | at) & mask  # positions in by_low by (high bits, position)
    return by_low[by_high].astype(jnp.int32)
