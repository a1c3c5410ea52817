"""What each intervention costs, measured side by side in one run (docs/benchmarks.md, "Interventions").

Prints, per method (each at its default settings, metrics off on both sides):
  update   off-policy agents (td3, sac, dqn): update-only time of the plain agent and of agent + method
           (jitted UTD-1 learn calls on a filled replay, no env; `benchmarks.offpolicy.UpdateTimer`), on a
           whole number of the method's periods where it has one, so periodic events fire at their rate
  ppo      PPO methods: one jitted-driver chunk of PPO iterations (gymnax CartPole, env included)
  acting   LEAST: the host training loop's env steps/s (env + store + acting hook + update + action) with
           and without it, stops active from the first step
The overhead is the median of paired back-to-back rounds (plain, method; alternating order): a shared
2-core machine drifts by +-10-30 % between minutes, which best-of-N on each side alone does not cancel.
`--variant K=V,...` sets config fields on the method side only, so `--methods none --variant sac.network=simbav2`
prices a network or an agent switch against the plain agent.
Usage:
  python benchmarks/interventions.py [--agent td3] [--methods all|redo,cbp,...|none] [--variant K=V,...]
                                     [--updates 1000] [--rounds 8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.offpolicy import TrainTimer, UpdateTimer, env_for, trainer_for  # noqa: E402
from plastic.config import build, supported_agents  # noqa: E402
from plastic.interventions import REGISTRY  # noqa: E402
from plastic.drivers import make_trainer  # noqa: E402

OFF = {f"metrics.{g}_every": 0 for g in ("activity", "grad", "rank", "churn", "ntk")}
# Settings that make a method do its work inside a short benchmark (everything else at its default):
# start times that would fall after the timed stretch are moved to the start.
BENCH = {
    "least": {"least.t_start_frac": 0.0},
    "injection": {"injection.at": "1"},
    "reset": {"reset.interval": 1000},
    "nap": {"nap.require_norm": False},     # the projection's cost on the plain network (LayerNorm's is its own)
}


def paired(timers: dict, n: int, rounds: int):
    """(median ratio plain/method - 1, quartiles, best ms per call of each) over `rounds` pairs."""
    ratios, best = [], {k: 0.0 for k in timers}
    for r in range(rounds):
        order = ("plain", "method") if r % 2 == 0 else ("method", "plain")
        rate = {k: timers[k](n) for k in order}
        ratios.append(rate["plain"] / rate["method"])
        best = {k: max(best[k], rate[k]) for k in best}
    q1, q3 = np.percentile(ratios, [25, 75]) - 1
    return float(np.median(ratios)) - 1, (q1, q3), {k: 1000.0 / v for k, v in best.items()}


class ChunkTimer:
    """Iterations/s of the on-policy jitted driver (one chunk of `n` PPO iterations per call)."""

    def __init__(self, tr):
        self.tr = tr
        self.carry = tr.init_carry()
        self(1)

    def __call__(self, n):
        t = time.perf_counter()
        self.carry, sums, _ = self.tr.chunk_program(self.carry, n)
        jax.block_until_ready(sums)
        return n / (time.perf_counter() - t)


def ppo_trainer(intervention):
    ov = {**OFF, "run.progress": "off", "run.tensorboard": "false", **BENCH.get(intervention, {})}
    return make_trainer(build("ppo", intervention, overrides=ov, env="gymnax:CartPole-v1", steps=10**9))


def line(name, what, over, q, ms):
    print(f"{name:15s} {what:9s} plain {ms['plain']:8.3f} ms  with it {ms['method']:8.3f} ms  "
          f"overhead {100 * over:+6.1f} % (quartiles {100 * q[0]:+.1f} / {100 * q[1]:+.1f} %)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", default="td3", choices=("td3", "sac", "dqn"), help="off-policy agent")
    ap.add_argument("--methods", default="all", help="comma-separated intervention names, or all")
    ap.add_argument("--updates", type=int, default=1000, help="timed updates per round (off-policy)")
    ap.add_argument("--iterations", type=int, default=20, help="timed PPO iterations per round")
    ap.add_argument("--acting-steps", type=int, default=500, help="timed env steps per round (LEAST)")
    ap.add_argument("--rounds", type=int, default=8, help="pairs of rounds (plain, method)")
    ap.add_argument("--variant", default="", help="K=V,... config fields of the method side only")
    args = ap.parse_args()
    names = sorted(REGISTRY) if args.methods == "all" else args.methods.split(",")
    variant = dict(kv.split("=", 1) for kv in args.variant.split(",") if kv)
    print(f"{args.agent} on {env_for(args.agent)} (update-only, 1 seed, UTD 1) and ppo on gymnax:CartPole-v1 (jitted chunks); "
          f"median of {args.rounds} paired rounds", flush=True)
    plain_off = None
    for name in names:
        supported = ("td3", "sac", "dqn", "ppo") if name == "none" else supported_agents(REGISTRY[name])
        if args.agent in supported:
            if plain_off is None:
                plain_off = UpdateTimer(trainer_for(args.agent, 1, overrides=OFF), 10_000)
            with_it = UpdateTimer(trainer_for(args.agent, 1, name, overrides={**OFF, **BENCH.get(name, {}), **variant}),
                                  10_000)
            line(name if not variant else f"{name} {args.variant}", "update",
                 *paired({"plain": plain_off, "method": with_it}, args.updates, args.rounds))
        elif "ppo" in supported:
            timers = {"plain": ChunkTimer(ppo_trainer("none")), "method": ChunkTimer(ppo_trainer(name))}
            line(name, "ppo iter", *paired(timers, args.iterations, args.rounds))
        else:
            print(f"{name:15s} skipped: supports {', '.join(supported)}", flush=True)
        if name == "least" and args.agent in supported:
            ov = {**OFF, f"{args.agent}.learning_starts": 0}
            timers = {"plain": TrainTimer(trainer_for(args.agent, 1, overrides=ov)),
                      "method": TrainTimer(trainer_for(args.agent, 1, name, overrides={**ov, **BENCH[name]}))}
            line(name, "acting", *paired(timers, args.acting_steps, args.rounds))


if __name__ == "__main__":
    main()
