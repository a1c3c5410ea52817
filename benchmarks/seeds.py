"""Seeds as a batch axis: what the metrics and the periodic interventions cost at 1 to 64 vmapped seeds
(docs/benchmarks.md, "Seeds as a batch axis"). Ratios are measured side by side in one run.

Parts (--parts, default all):
  metrics        every agent on the jitted driver (PPO and DQN on gymnax:CartPole-v1, TD3 and SAC on
                 gymnax:Pendulum-v1) at --seeds: aggregate env steps/s with the default config (metrics on)
                 and with every metric group off; on/off (target >= 0.90) and the aggregate throughput at each
                 seed count over that at 1 seed (target: not below 1 at 16 seeds)
  host           the off-policy agents on the host driver (gymnasium Pendulum-v1 / CartPole-v1) at
                 --host-seeds: metrics on/off (target >= 0.90)
  interventions  each periodic intervention on TD3 at 16 seeds on the jitted driver, its schedule beyond the
                 timed stretch (no event fires), metrics off on both sides: cost per update (target <= 5 %)
Method: each side is timed on whole windows of training (off-policy: --window env steps, one update per step,
after a warm-up window that compiles and makes every network's first update, where every metric group
fires; PPO: --ppo-window iterations of 4 envs x 128 steps); rounds alternate the order of the sides; the ratio
is the median over rounds of the paired ratios, the rates the best of each side. A window of 1000 updates
contains the activity and gradient groups at their default rate (every 1000 updates); the rank, churn
(10,000) and NTK (50,000) groups fire less often than a window (their cost per firing: benchmarks/metrics.py).
Off-policy networks are 64-64 MLPs with batch 64 (the default 256-256 at 64 seeds is beyond 2 CPU cores);
--hidden / --batch change that.
Usage: python benchmarks/seeds.py [--parts metrics,host,interventions] [--seeds 1,16,64] [--agents ...]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from plastic.config import build  # noqa: E402
from plastic.drivers import make_trainer  # noqa: E402

QUIET = {"run.progress": "off", "run.tensorboard": "false", "run.eval_every": 0, "run.checkpoint_every": 0}
OFF = {f"metrics.{g}_every": 0 for g in ("activity", "grad", "rank", "churn", "ntk")}
JIT_ENVS = {"td3": "gymnax:Pendulum-v1", "sac": "gymnax:Pendulum-v1", "dqn": "gymnax:CartPole-v1",
            "ppo": "gymnax:CartPole-v1"}
HOST_ENVS = {"td3": "Pendulum-v1", "sac": "Pendulum-v1", "dqn": "CartPole-v1"}
# each periodic intervention with its events scheduled beyond the timed stretch ("between events")
QUIET_EVENTS = {"grama": {"grama.period": 10**8}, "redo": {"redo.period": 10**8},
                "reset": {"reset.interval": 10**9}, "shrink_perturb": {"shrink_perturb.period": 10**8},
                "injection": {"injection.at": str(10**9)}, "ne": {"ne.period": 10**8}, "cbp": {}}
# not in the default list: CBP once every unit is mature (maturity 0), where the counts run on every update
# and a replacement in some seed (~1 in 80 updates per layer and seed at rate 1e-4) takes its branch
VARIANTS = {"cbp_mature": ("cbp", {"cbp.maturity": 0})}


def agent_overrides(agent, args):
    if agent == "ppo":
        return {}
    ov = {"hidden": args.hidden, "batch_size": args.batch, "learning_starts": args.batch, "buffer_size": 100_000}
    if agent == "dqn":
        ov["train_frequency"] = 1
    return {f"{agent}.{k}": v for k, v in ov.items()}


class Window:
    """Aggregate env steps/s of a jitted-driver trainer over one window of `n` scan iterations per call (the
    carry runs on from window to window)."""

    def __init__(self, agent, env, seeds, n, intervention="none", overrides=None):
        self.tr = make_trainer(build(agent, intervention, overrides={**QUIET, **(overrides or {})}, env=env,
                                     seeds=seeds, steps=10**9))
        self.n, self.carry = n, self.tr.init_carry()
        t = time.perf_counter()
        self()  # compiles; every network's first update (all metric groups fire)
        self.compile_s = time.perf_counter() - t

    def __call__(self):
        t = time.perf_counter()
        self.carry, sums, _ = self.tr.chunk_program(self.carry, self.n)
        jax.block_until_ready(sums)
        return self.n * self.tr.unit * self.tr.n_seeds / (time.perf_counter() - t)


class HostWindow:
    """Aggregate env steps/s of the host driver over a run of `n` env steps (after a warm-up run)."""

    def __init__(self, agent, env, seeds, n, overrides):
        self.cfg = build(agent, overrides={**QUIET, **overrides}, env=env, seeds=seeds, steps=n)
        self.tr, self.n, self.tmp = make_trainer(self.cfg), n, Path(tempfile.mkdtemp())
        self.tr.run(self.tmp / "warm")  # compiles both step programs (with and without the measuring code)
        self.compile_s = 0.0

    def __call__(self):
        self.tr.cfg.run.log_every = self.n
        t = time.perf_counter()
        self.tr.run(self.tmp / f"r{time.perf_counter_ns()}")
        return self.n * self.cfg.run.seeds / (time.perf_counter() - t)

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def paired(a, b, rounds):
    """(median of rate_a / rate_b over rounds of alternating order, best rate of a, best rate of b)."""
    ratios, ra, rb = [], [], []
    for r in range(rounds):
        if r % 2:
            y, x = b(), a()
        else:
            x, y = a(), b()
        ra.append(x)
        rb.append(y)
        ratios.append(x / y)
    return float(np.median(ratios)), max(ra), max(rb)


def metrics_part(args):
    print(f"\n## metrics on / off, jitted driver (median of {args.rounds} paired windows; env steps/s aggregate)")
    print(f"{'agent':5s} {'env':20s} {'seeds':>5s} {'on':>10s} {'off':>10s} {'on/off':>7s} {'on vs 1 seed':>13s} "
          f"{'compile on/off s':>17s}")
    for agent in args.agents:
        base = None
        for s in args.seeds:
            ov = agent_overrides(agent, args)
            n = args.ppo_window if agent == "ppo" else args.window
            on = Window(agent, JIT_ENVS[agent], s, n, overrides=ov)
            off = Window(agent, JIT_ENVS[agent], s, n, overrides={**ov, **OFF})
            ratio, r_on, r_off = paired(on, off, args.rounds)
            base = base or r_on
            print(f"{agent:5s} {JIT_ENVS[agent]:20s} {s:5d} {r_on:10,.0f} {r_off:10,.0f} {ratio:7.3f} "
                  f"{r_on / base:13.2f} {on.compile_s:8.1f} /{off.compile_s:6.1f}", flush=True)
            del on, off


def host_part(args):
    print(f"\n## metrics on / off, host driver, {args.host_seeds} seeds ({args.host_steps} env steps per window)")
    for agent in [a for a in args.agents if a in HOST_ENVS]:
        ov = {**agent_overrides(agent, args), f"{agent}.learning_starts": 200}
        on = HostWindow(agent, HOST_ENVS[agent], args.host_seeds, args.host_steps, ov)
        off = HostWindow(agent, HOST_ENVS[agent], args.host_seeds, args.host_steps, {**ov, **OFF})
        ratio, r_on, r_off = paired(on, off, args.rounds)
        print(f"{agent:5s} {HOST_ENVS[agent]:12s} on {r_on:9,.0f}  off {r_off:9,.0f}  on/off {ratio:.3f}", flush=True)
        on.close()
        off.close()


def interventions_part(args):
    agent, s = args.iv_agent, args.iv_seeds
    print(f"\n## periodic interventions between events: {agent} on {JIT_ENVS[agent]}, {s} seeds, jitted driver, "
          f"metrics off (median of {args.rounds} paired windows of {args.window} updates)")
    ov = {**agent_overrides(agent, args), **OFF}
    plain = Window(agent, JIT_ENVS[agent], s, args.window, overrides=ov)
    for name in args.methods.split(","):
        method, extra = VARIANTS.get(name, (name, QUIET_EVENTS.get(name)))
        if extra is None:
            raise SystemExit(f"unknown method {name!r}; valid: {', '.join([*QUIET_EVENTS, *VARIANTS])}")
        w = Window(agent, JIT_ENVS[agent], s, args.window, method, {**ov, **extra})
        ratio, r_plain, r_with = paired(plain, w, args.rounds)
        print(f"{name:15s} plain {r_plain:9,.0f}  with it {r_with:9,.0f}  cost per update {100 * (ratio - 1):+6.1f} %",
              flush=True)
        del w


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="metrics,host,interventions")
    p.add_argument("--agents", default="ppo,dqn,td3,sac")
    p.add_argument("--seeds", default="1,16,64")
    p.add_argument("--window", type=int, default=1000, help="off-policy env steps (= updates) per window")
    p.add_argument("--ppo-window", type=int, default=64, help="PPO iterations per window")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hidden", default="64,64")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--host-seeds", type=int, default=8)
    p.add_argument("--host-steps", type=int, default=2000)
    p.add_argument("--iv-agent", default="td3")
    p.add_argument("--iv-seeds", type=int, default=16)
    p.add_argument("--methods", default=",".join(QUIET_EVENTS), help="the periodic interventions of --parts interventions (also: cbp_mature)")
    args = p.parse_args(argv)
    args.agents = args.agents.split(",")
    args.seeds = [int(x) for x in args.seeds.split(",")]
    print(f"devices: {jax.devices()}; {time.strftime('%Y-%m-%d %H:%M')}")
    parts = args.parts.split(",")
    for name, fn in (("metrics", metrics_part), ("host", host_part), ("interventions", interventions_part)):
        if name in parts:
            fn(args)


if __name__ == "__main__":
    main()
