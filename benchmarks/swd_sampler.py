"""Cost of drawing one SWD batch from a full 1M-slot replay: the `exact` sampler before and after it was
made exact per slot, and `bucketed` for reference (docs/interventions.md, SWD / SWA).

  old       jax.random.choice(p=w / Σw): one float32 cumulative sum over all N slots (the former `exact`)
  exact     the two-level double-float inverse CDF of plastic/interventions/swd.py
  bucketed  bucket-level draw, then a uniform slot inside the bucket (bucket_size 1000)
  weights   computing w alone (the floor every sampler pays)

Each sampler is one jitted call (the replay state is its argument, so nothing is constant-folded) drawing
--batch indices; every round times --calls calls of each sampler back to back and the median per call is
kept; the table reports the median over rounds (and the best round). Usage:
  python benchmarks/swd_sampler.py [--capacity 1000000] [--batch 256] [--seeds 1] [--calls 50] [--rounds 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from plastic.interventions.swd import SWD, SWDConfig  # noqa: E402
from plastic.replay import Replay  # noqa: E402


def full_replay(capacity: int, t: int, bucket_size: int) -> Replay:
    """The state after `t` add() calls (wrapped when t > capacity), built directly."""
    j = np.arange(capacity)
    size = min(t, capacity)
    t_add = np.where(j < size, j + capacity * ((t - 1 - j) // capacity), 0)
    r = Replay.create(capacity, {"obs": jnp.zeros(())}, bucket_size)
    nb = capacity // bucket_size
    tmean = t_add.reshape(nb, bucket_size).mean(1).astype(np.float32)   # full buffer: every slot is live
    return r.replace(t_add=jnp.asarray(t_add, jnp.int32), size=jnp.asarray(size, jnp.int32),
                     ptr=jnp.asarray(t % capacity, jnp.int32), t=jnp.asarray(t, jnp.int32),
                     bucket_tmean=jnp.asarray(tmean))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--capacity", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=1, help="> 1: vmapped over this many copies of the buffer")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    N, B, S = args.capacity, args.batch, 1000
    exact = SWD(SWDConfig(sampler="exact"), "sac")
    bucketed = SWD(SWDConfig(sampler="bucketed", bucket_size=S), "sac")
    replay = full_replay(N, N + N // 2, S)
    fns = {
        "old": lambda r, k: jax.random.choice(k, N, (B,), replace=True, p=exact.probabilities(r)),
        "exact": lambda r, k: exact.sample(r, {}, k, B),
        "bucketed": lambda r, k: bucketed.sample(r, {}, k, B),
        "weights": lambda r, k: exact.weights(r).sum() + k[0].astype(jnp.float32),
    }
    if args.seeds > 1:
        replay = jax.tree.map(lambda a: jnp.stack([a] * args.seeds), replay)
        fns = {name: jax.vmap(f) for name, f in fns.items()}
        keys = lambda i: jax.random.split(jax.random.PRNGKey(i), args.seeds)   # noqa: E731
    else:
        keys = jax.random.PRNGKey
    fns = {name: jax.jit(f) for name, f in fns.items()}
    for f in fns.values():
        jax.block_until_ready(f(replay, keys(0)))
    per_round = {name: [] for name in fns}
    for rnd in range(args.rounds):
        for name, f in fns.items():
            times = []
            for i in range(args.calls):
                key = keys(rnd * args.calls + i)
                t0 = time.perf_counter()
                jax.block_until_ready(f(replay, key))
                times.append(time.perf_counter() - t0)
            per_round[name].append(1e3 * float(np.median(times)))
    print(f"SWD sampler, {N} slots, batch {B}, {args.seeds} seed(s), {jax.devices()[0].platform}: ms per call "
          f"(median over {args.rounds} rounds of the per-round median of {args.calls} calls; best round)")
    for name, v in per_round.items():
        print(f"  {name:9s} {np.median(v):8.3f} ms   (best {min(v):.3f})")


if __name__ == "__main__":
    main()
