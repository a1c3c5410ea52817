"""Sample Weight Decay (and its reverse control SWA): age-weighted replay sampling (interventions.md §3).

`age_j = t - t_add[j]` in add() calls (env steps per seed); the newest transition has age 0.
  T > 0  SWD  w = max(w_min, 1 - age / T)
  T < 0  SWA  w = min(1, w_min + age / |T|)
  T = 0  uniform
Indices are drawn i.i.d. from p = w / Σw over live slots; no importance correction.

Samplers: `exact` (O(N) weights + cumulative sum per batch) and `bucketed` ([reconstructed]: a bucket of
S contiguous slots is drawn with probability ∝ count_b · w(t - t_mean_b), then a slot uniformly inside it;
O(N/S + B) per batch, bucket means maintained by the replay buffer on add()).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.interventions.base import Intervention

SAMPLERS = ("exact", "bucketed")


@dataclass
class SWDConfig:
    T: int = 80_000
    w_min: float = 0.1
    sampler: str = "exact"      # exact | bucketed
    bucket_size: int = 1000


def age_weights(age, T: float, w_min: float):
    """Unnormalised sampling weight of a transition of the given age (float array)."""
    age = age.astype(jnp.float32)
    if T > 0:
        return jnp.maximum(w_min, 1.0 - age / T)
    if T < 0:
        return jnp.minimum(1.0, w_min + age / abs(T))
    return jnp.ones_like(age)


class SWD(Intervention):
    name = "swd"
    Config = SWDConfig
    agents = ("td3", "sac", "dqn")
    samples_replay = True

    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        if not 0.0 <= c.w_min <= 1.0:
            raise ValueError(f"swd.w_min must be in [0, 1], got {c.w_min}")
        if c.sampler not in SAMPLERS:
            raise ValueError(f"swd.sampler={c.sampler!r} is not valid; choose one of: {', '.join(SAMPLERS)}")
        if c.bucket_size < 1:
            raise ValueError(f"swd.bucket_size must be >= 1, got {c.bucket_size}")

    def replay_options(self):
        return {"bucket_size": self.cfg.bucket_size} if self.cfg.sampler == "bucketed" else {}

    def probabilities(self, replay):
        """Exact p over all N slots (0 for dead slots)."""
        live = jnp.arange(replay.capacity) < replay.size
        w = jnp.where(live, age_weights(replay.ages(), self.cfg.T, self.cfg.w_min), 0.0)
        return w / w.sum()

    def bucket_probabilities(self, replay):
        """Bucket-level p (∝ count_b · w(t - t_mean_b)) and the live count of each bucket."""
        counts = replay.bucket_counts()
        age = (replay.t - 1).astype(jnp.float32) - replay.bucket_tmean
        w = counts * age_weights(age, self.cfg.T, self.cfg.w_min)
        return w / w.sum(), counts

    def sample(self, replay, state, key, batch_size):
        if self.cfg.sampler == "exact":
            return jax.random.choice(key, replay.capacity, (batch_size,), replace=True,
                                     p=self.probabilities(replay))
        kb, ks = jax.random.split(key)
        p, counts = self.bucket_probabilities(replay)
        b = jax.random.choice(kb, p.shape[0], (batch_size,), replace=True, p=p)
        offset = jnp.floor(jax.random.uniform(ks, (batch_size,)) * counts[b]).astype(jnp.int32)
        return b * replay.bucket_size + jnp.minimum(offset, counts[b].astype(jnp.int32) - 1)
