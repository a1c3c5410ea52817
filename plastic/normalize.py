"""Running mean and variance as a pytree (for PPO's observation and reward normalisation)."""
from __future__ import annotations

import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RunningStats:
    mean: jnp.ndarray
    var: jnp.ndarray
    count: jnp.ndarray

    @classmethod
    def create(cls, shape=()):
        # count starts at 1e-4 as in gymnasium's wrappers, so the first batch dominates immediately
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.asarray(1e-4, jnp.float32))

    def update(self, x):
        """Merge a batch `x` of shape [N, *shape] (Chan et al.'s parallel variance update)."""
        x = x.reshape(-1, *self.mean.shape)
        n = x.shape[0]
        b_mean, b_var = x.mean(0), x.var(0)
        total = self.count + n
        delta = b_mean - self.mean
        mean = self.mean + delta * n / total
        m2 = self.var * self.count + b_var * n + jnp.square(delta) * self.count * n / total
        return RunningStats(mean, m2 / total, total)

    def normalize(self, x, clip: float, eps: float = 1e-8):
        return jnp.clip((x - self.mean) / jnp.sqrt(self.var + eps), -clip, clip)
