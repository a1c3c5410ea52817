"""MuJoCo Playground on this machine: env steps/s of its backends, and training on the jitted driver.

Parts (--parts, default all):
  env    the bare env (`plastic.jaxenvs.PlaygroundEnv`): one jitted program scans --env-steps steps of --envs
         vmapped envs with random actions, per backend (--backends, default jax,warp); aggregate env steps/s
         (best of --rounds) and compile seconds; a backend that fails says why in one line (on a CPU, warp
         fails under vmap: plastic.jaxenvs.playground_default_backend).
  train  --agents on `playground:NAME` (default backend) on the jitted driver at --seeds vmapped seeds, the
         default config (metrics on): aggregate env steps/s over windows of --window scan iterations (best of
         --rounds) and the compile seconds (benchmarks/seeds.py's `Window`; off-policy networks --hidden,
         batch --batch).
Usage: python benchmarks/playground.py [--env CheetahRun] [--parts env,train] [--envs 1,64] [--seeds 1,8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

from plastic.jaxenvs import PlaygroundEnv, playground_default_backend  # noqa: E402


def env_rate(env_id: str, n_envs: int, steps: int, rounds: int):
    """(best aggregate env steps/s, compile s) of `steps` vmapped steps of `n_envs` envs with random actions."""
    env = PlaygroundEnv(env_id)

    @jax.jit
    def run(state, key):
        def body(carry, k):
            state, key = carry
            key, k_a, k_s = jax.random.split(key, 3)
            a = jax.random.uniform(k_a, (n_envs, env.action_size), minval=-1.0, maxval=1.0)
            state = jax.vmap(env.step)(state, a, jax.random.split(k_s, n_envs))[0]
            return (state, key), None
        return jax.lax.scan(body, (state, key), None, length=steps)[0]

    state, _ = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), n_envs))
    t = time.perf_counter()
    carry = jax.block_until_ready(run(state, jax.random.PRNGKey(1)))
    compile_s = time.perf_counter() - t
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        carry = jax.block_until_ready(run(*carry))
        best = max(best, steps * n_envs / (time.perf_counter() - t))
    return best, compile_s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CheetahRun", help="a MuJoCo Playground name (default CheetahRun)")
    p.add_argument("--parts", default="env,train")
    p.add_argument("--backends", default="jax,warp")
    p.add_argument("--envs", default="1,64", help="vmapped envs of the env part")
    p.add_argument("--env-steps", type=int, default=200)
    p.add_argument("--agents", default="sac,ppo")
    p.add_argument("--seeds", default="1,8", help="vmapped seeds of the train part")
    p.add_argument("--window", type=int, default=200, help="scan iterations per timed window (train part)")
    p.add_argument("--hidden", default="256,256")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    print(f"jax {jax.__version__} on {jax.devices()}; default backend here: {playground_default_backend()}")
    if "env" in parts:
        print(f"\n## playground:{args.env}, bare env, {args.env_steps} steps per program (env steps/s aggregate)")
        print(f"{'backend':8s} {'envs':>5s} {'steps/s':>10s} {'compile s':>10s}")
        for backend in args.backends.split(","):
            for n in (int(x) for x in args.envs.split(",")):
                try:
                    rate, comp = env_rate(f"playground:{args.env}:{backend}", n, args.env_steps, args.rounds)
                except Exception as e:  # noqa: BLE001 (a backend that does not run here)
                    print(f"{backend:8s} {n:5d} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}",
                          flush=True)
                    break
                print(f"{backend:8s} {n:5d} {rate:10,.0f} {comp:10.1f}", flush=True)
    if "train" in parts:
        from seeds import Window, agent_overrides
        print(f"\n## training on playground:{args.env} ({playground_default_backend()}), jitted driver, default "
              f"config (env steps/s aggregate, best of {args.rounds} windows of {args.window} iterations)")
        print(f"{'agent':5s} {'seeds':>5s} {'steps/s':>10s} {'compile s':>10s}")
        for agent in args.agents.split(","):
            for s in (int(x) for x in args.seeds.split(",")):
                ov = agent_overrides(agent, argparse.Namespace(hidden=args.hidden, batch=args.batch))
                w = Window(agent, f"playground:{args.env}", s, args.window, overrides=ov)
                rate = max(w() for _ in range(args.rounds))
                print(f"{agent:5s} {s:5d} {rate:10,.0f} {w.compile_s:10.1f}", flush=True)
                del w


if __name__ == "__main__":
    main()
