"""A circular replay buffer as a pytree (one per seed; vmapped over seeds by the trainer).

Each slot stores `t_add`, the value of the buffer's add() counter when it was written, so samplers can
weight by age (SWD). With `bucket_size > 0` the buffer also maintains, for every bucket of
`bucket_size` contiguous slots, the mean insertion time of its live slots (recomputed for the one bucket
an add() touches: O(bucket_size) per env step, nothing per update).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Replay:
    data: dict                      # name -> [N, ...]
    t_add: jax.Array                # int32 [N]
    ptr: jax.Array                  # int32, next slot to write
    size: jax.Array                 # int32, number of live slots
    t: jax.Array                    # int32, number of add() calls so far
    bucket_tmean: jax.Array         # float32 [N / bucket_size] (unused [1] without buckets)
    capacity: int = struct.field(pytree_node=False)
    bucket_size: int = struct.field(pytree_node=False, default=0)

    @classmethod
    def create(cls, capacity: int, example: dict, bucket_size: int = 0) -> "Replay":
        if bucket_size and capacity % bucket_size:
            raise ValueError(f"replay capacity {capacity} must be a multiple of bucket_size {bucket_size}")
        data = {k: jnp.zeros((capacity, *jnp.shape(v)), jnp.asarray(v).dtype) for k, v in example.items()}
        n_buckets = capacity // bucket_size if bucket_size else 1  # orbax cannot save empty arrays
        return cls(data=data, t_add=jnp.zeros(capacity, jnp.int32), ptr=jnp.zeros((), jnp.int32),
                   size=jnp.zeros((), jnp.int32), t=jnp.zeros((), jnp.int32),
                   bucket_tmean=jnp.zeros(n_buckets, jnp.float32), capacity=capacity, bucket_size=bucket_size)

    def add(self, transition: dict) -> "Replay":
        i = self.ptr
        data = {k: self.data[k].at[i].set(v) for k, v in transition.items()}
        t_add = self.t_add.at[i].set(self.t)
        size = jnp.minimum(self.size + 1, self.capacity)
        new = self.replace(data=data, t_add=t_add, ptr=(i + 1) % self.capacity, size=size, t=self.t + 1)
        if self.bucket_size:
            S = self.bucket_size
            b = i // S
            window = jax.lax.dynamic_slice(t_add, (b * S,), (S,))
            live = jnp.arange(S) < jnp.clip(size - b * S, 0, S)
            rel = jnp.where(live, window - self.t, 0).astype(jnp.float32)
            mean = self.t.astype(jnp.float32) + rel.sum() / jnp.maximum(live.sum(), 1)
            new = new.replace(bucket_tmean=new.bucket_tmean.at[b].set(mean))
        return new

    def ages(self):
        """Age of every slot in add() calls; the newest transition has age 0 (dead slots: garbage)."""
        return (self.t - 1) - self.t_add

    def bucket_counts(self):
        starts = jnp.arange(self.bucket_tmean.shape[0]) * self.bucket_size
        return jnp.clip(self.size - starts, 0, self.bucket_size).astype(jnp.float32)

    def sample_uniform(self, key, batch_size: int):
        return jax.random.randint(key, (batch_size,), 0, self.size)

    def gather(self, idx) -> dict:
        return {k: v[idx] for k, v in self.data.items()}
