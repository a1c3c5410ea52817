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

    def add(self, transition: dict, t=None) -> "Replay":
        """Write one transition per buffer at slot `t % capacity`, where `t` is the add() counter.

        Works on one buffer or on buffers stacked over seeds (every array with a leading seed axis, as
        the trainer holds them): all seeds write in lockstep at the same slot, so the write is one
        in-place dynamic_update_slice. (Under `vmap` a per-seed write becomes a scatter that XLA:CPU
        lowers to a pass over, and copies of, the whole buffer on every env step.)"""
        t = self.t if t is None else jnp.asarray(t, jnp.int32)
        t = t.reshape(-1)[0] if t.ndim else t
        i = t % self.capacity
        lead = self.t_add.ndim - 1  # 0: one buffer; 1: stacked over seeds

        def put(buf, v, at):
            v = jnp.broadcast_to(jnp.asarray(v, buf.dtype), buf.shape[:lead] + buf.shape[lead + 1:])
            return jax.lax.dynamic_update_slice_in_dim(buf, jnp.expand_dims(v, lead), at, axis=lead)

        def write(arrays):
            data, t_add = arrays
            return {k: put(data[k], transition[k], i) for k in data}, put(t_add, t, i)

        # The write sits in an always-taken lax.cond so that XLA cannot fuse it into the gathers that
        # read the new buffer: fused, the old buffer stays alive and every replay array is copied on
        # every env step (7x slower updates at 1M slots, see docs/benchmarks.md).
        data, t_add = jax.lax.cond(t >= 0, write, lambda arrays: arrays, (self.data, self.t_add))
        size = jnp.minimum(t + 1, self.capacity)
        full = lambda x: jnp.broadcast_to(x, self.size.shape)  # noqa: E731
        new = self.replace(data=data, t_add=t_add, ptr=full((i + 1) % self.capacity), size=full(size),
                           t=full(t + 1))
        if self.bucket_size:
            S = self.bucket_size
            b = i // S
            window = jax.lax.dynamic_slice_in_dim(t_add, b * S, S, axis=lead)
            live = jnp.arange(S) < jnp.clip(size - b * S, 0, S)
            rel = jnp.where(live, window - t, 0).astype(jnp.float32)
            mean = t.astype(jnp.float32) + rel.sum(-1) / jnp.maximum(live.sum(), 1)
            new = new.replace(bucket_tmean=put(self.bucket_tmean, mean, b))
        return new

    def cut_at_newest(self) -> "Replay":
        """The newest transition marked as an episode end (`done`; `terminated` unchanged, so a one-step target
        still bootstraps from its true next observation), on one buffer or buffers stacked over seeds: no n-step
        window runs from it into the next transition, which starts a new episode (the host driver restarts
        its episodes when it resumes a run)."""
        lead = self.t_add.ndim - 1
        i = (self.ptr.reshape(-1)[0] - 1) % self.capacity
        done = self.data["done"]
        ones = jnp.ones(done.shape[:lead] + (1,) + done.shape[lead + 1:], done.dtype)
        return self.replace(data={**self.data, "done": jax.lax.dynamic_update_slice_in_dim(done, ones, i, lead)})

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

    def gather_nstep(self, idx, n: int, gamma: float, clip: float = 0.0) -> dict:
        """n-step transitions starting at slots `idx` of one buffer (needs a `done` = episode-end field).

        Slot k of the window is idx + k (one env per buffer, so consecutive slots are consecutive steps).
        The window stops after the first episode end and at the newest slot, so it spans m <= n steps:
        reward = sum_{k<m} gamma^k r_k, next_obs and terminated of its last step, discount = gamma^m (the
        bootstrap factor, applied only if not terminated). `clip` > 0 clips each r_k to [-clip, clip]."""
        out = self.gather(idx)
        steps_to_newest = (self.ptr - 1 - idx) % self.capacity
        reward, discount = jnp.zeros_like(out["reward"]), jnp.ones_like(out["reward"])
        next_obs, terminated = out["next_obs"], out["terminated"]
        alive = jnp.ones(idx.shape, bool)
        for k in range(n):
            tr = out if k == 0 else self.gather((idx + k) % self.capacity)
            use = alive & (k <= steps_to_newest)
            r = jnp.clip(tr["reward"], -clip, clip) if clip else tr["reward"]
            reward = reward + jnp.where(use, discount * r, 0.0)
            next_obs = jnp.where(use[:, None], tr["next_obs"], next_obs)
            terminated = jnp.where(use, tr["terminated"], terminated)
            discount = jnp.where(use, discount * gamma, discount)
            alive = use & (tr["done"] == 0)
        return {**out, "reward": reward, "next_obs": next_obs, "terminated": terminated, "discount": discount}

