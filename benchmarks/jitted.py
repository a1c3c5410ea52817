"""Speed of the fully-jitted driver (docs/benchmarks.md, "Jitted driver").

Prints, in one run:
  ppo     PPO env steps/s on the jitted driver at 1, 16 and 256 vmapped seeds (aggregate and per seed), on
          gymnax:CartPole-v1 (PureJaxRL's setting: 4 envs x 128 steps, 4 epochs x 4 minibatches) and on a
          brax env (small rollouts on CPU: --brax-envs envs x 64 steps)
  dqn     DQN on CartPole: host driver (gymnasium CartPole-v1, one jitted call per env step) vs jitted
          driver (gymnax:CartPole-v1, whole chunks in one program), same hyperparameters, 1 and 8 seeds
  compile time of the first chunk minus one steady-state chunk, per agent
Steady-state rates exclude compilation (one warm-up chunk first); the best of --rounds is reported.
Usage: python benchmarks/jitted.py [--seeds 1,16,256] [--brax brax:ant] [--brax-units 4] [--rounds 2] [--skip-brax]
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

from plastic.config import build  # noqa: E402
from plastic.drivers import make_trainer  # noqa: E402

QUIET = {"run.progress": "off", "run.tensorboard": "false"}


def chunk_rate(tr, units, rounds):
    """(compile seconds, steady env steps/s aggregated over seeds) of `units` scan iterations per chunk."""
    carry = tr.init_carry()
    carry, first = timed_chunk(tr, carry, units)
    best = float("inf")
    for _ in range(rounds):  # the carry is donated: thread it through
        carry, seconds = timed_chunk(tr, carry, units)
        best = min(best, seconds)
    steps = units * tr.unit * tr.n_seeds
    return max(first - best, 0.0), steps / best


def timed_chunk(tr, carry, units):
    """(carry, seconds) of one chunk of `units` scan iterations, waited for."""
    t = time.perf_counter()
    carry, sums, _ = tr.chunk_program(carry, units)
    jax.block_until_ready(sums)
    return carry, time.perf_counter() - t


def ppo(env, seeds, rounds, units=None, **ov):
    """PPO chunks of `units` iterations (default: 8192 env steps per seed)."""
    overrides = {**QUIET, **{f"ppo.{k}": v for k, v in ov.items()}}
    tr = make_trainer(build("ppo", overrides=overrides, env=env, seeds=seeds, steps=10**9))
    return chunk_rate(tr, units or max(1, 8192 // tr.unit), rounds)


def host_rate(cfg, steps):
    """Env steps/s of the host driver over `steps` steps after a warm-up run (compiles excluded)."""
    tmp = Path(tempfile.mkdtemp())
    try:
        tr = make_trainer(cfg)
        tr.cfg.run.steps = 2 * cfg.agent_cfg.learning_starts + 200  # warm-up: compile both step programs
        tr.run(tmp / "warm")
        tr.cfg.run.steps = steps
        tr.cfg.run.log_every = steps
        t = time.perf_counter()
        tr.run(tmp / "timed")
        return steps * cfg.run.seeds / (time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dqn(seeds, steps, rounds):
    ov = {**QUIET, "dqn.learning_starts": 1000, "dqn.train_frequency": 1, "dqn.buffer_size": 20_000,
          "dqn.hidden": "64,64", "dqn.batch_size": 64, "run.checkpoint_every": 0}
    host = max(host_rate(build("dqn", overrides=ov, env="CartPole-v1", seeds=seeds, steps=steps), steps)
               for _ in range(rounds))
    tr = make_trainer(build("dqn", overrides=ov, env="gymnax:CartPole-v1", seeds=seeds, steps=10**9))
    carry = tr.init_carry()
    for _ in range(-(-1000 // steps) + 1):  # past learning_starts, with the timed chunk length compiled
        carry, _ = timed_chunk(tr, carry, steps)
    best = float("inf")
    for _ in range(rounds):
        carry, seconds = timed_chunk(tr, carry, steps)
        best = min(best, seconds)
    return host, steps * seeds / best


def compile_times(rounds):
    out = {}
    for agent, env in (("td3", "gymnax:Pendulum-v1"), ("sac", "gymnax:Pendulum-v1"),
                       ("dqn", "gymnax:CartPole-v1"), ("ppo", "gymnax:CartPole-v1")):
        tr = make_trainer(build(agent, overrides=QUIET, env=env, steps=10**9))
        out[agent] = chunk_rate(tr, max(1, 1000 // tr.unit), rounds)[0]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="1,16,256", help="vmapped seed counts for PPO")
    p.add_argument("--brax", default="brax:ant", help="brax env for the PPO rows")
    p.add_argument("--brax-envs", type=int, default=4, help="brax envs per seed (CPU-sized)")
    p.add_argument("--brax-seeds", default="1,16", help="vmapped seed counts for brax PPO")
    p.add_argument("--brax-units", type=int, default=4, help="PPO iterations per timed brax chunk")
    p.add_argument("--dqn-steps", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--skip-brax", action="store_true")
    args = p.parse_args()
    print(f"devices: {jax.devices()}")
    print("\nPPO, jitted driver (compile excluded)")
    print(f"{'env':24s} {'seeds':>6s} {'steps/s':>12s} {'per seed':>10s} {'compile s':>10s}")
    for s in [int(x) for x in args.seeds.split(",")]:
        c, r = ppo("gymnax:CartPole-v1", s, args.rounds)
        print(f"{'gymnax:CartPole-v1':24s} {s:6d} {r:12,.0f} {r / s:10,.0f} {c:10.1f}", flush=True)
    if not args.skip_brax:
        for s in [int(x) for x in args.brax_seeds.split(",")]:
            c, r = ppo(args.brax, s, 1, args.brax_units, num_envs=args.brax_envs, num_steps=64, minibatches=4,
                       hidden="256,256")
            print(f"{args.brax:24s} {s:6d} {r:12,.0f} {r / s:10,.0f} {c:10.1f}", flush=True)
    print("\nDQN on CartPole (64-64 MLP, batch 64, one update per env step), env steps/s aggregated")
    for s in (1, 8):
        host, jit = dqn(s, args.dqn_steps, args.rounds)
        print(f"seeds {s}: host driver {host:10,.0f}   jitted driver {jit:10,.0f}   jitted/host {jit / host:6.1f}x",
              flush=True)
    print("\ncompile time of one chunk (first call minus a steady call), seconds")
    for agent, c in compile_times(1).items():
        print(f"  {agent}: {c:.1f}")


if __name__ == "__main__":
    main()
