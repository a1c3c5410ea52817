"""This project against rejax on the same work, side by side in one run (docs/benchmarks.md, "Peers").

rejax is not a dependency of the package: it runs in its own environment (rejax 0.1.3 needs gymnax < 1.0; it
fails on gymnax 1.0's step API), given by --rejax-python. Create it once:

    python -m venv /tmp/rejax-env && /tmp/rejax-env/bin/pip install "rejax==0.1.3" "gymnax<1.0"

Work (the same hyperparameters on both sides; every seed vmapped in one jitted program; evaluation off on
both sides: rejax's eval callback is replaced by a no-op, and this project's evaluation is outside its
training program):
  ppo  gymnax CartPole-v1, 4 envs x 128 steps, 4 epochs x 4 minibatches, 64-64 tanh MLPs, lr 2.5e-4,
       at --ppo-seeds (default 1, 16, 64), --ppo-steps env steps per seed
  dqn  gymnax CartPole-v1, one env, one update per env step after 2048, batch 128, 64-64 ReLU MLP (rejax 0.1.3
       fixes its DQN network at 64-64; this project's default is 120-84), double Q,
       hard target copy every 50 updates, lr 2.5e-4, --dqn-seeds
  sac  gymnax Pendulum-v1, one env, one update per env step after 2048, batch 256, 256-256 MLPs,
       --sac-seeds (rejax updates the actor at every step, this project every other one: policy_delay 2, its
       default; the actor is a third of an update)
This project runs its default configuration (metrics on). Each side runs its budget once to compile and
warm up, then once timed, in --rounds rounds that alternate which side runs first (rejax in a fresh process
each round); the rates printed are each side's best, the ratio the median of the rounds' ratios (each round's
ratio printed after it); env steps/s are aggregated over seeds, compile time is the first run minus the best
timed one.
Usage: python benchmarks/peers.py --rejax-python /tmp/rejax-env/bin/python [--only ppo,dqn,sac] [--devices K]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from plastic.config import build  # noqa: E402
from plastic.drivers import make_trainer  # noqa: E402
from plastic.sharding import split_cpu  # noqa: E402

QUIET = {"run.progress": "off", "run.tensorboard": "false", "run.eval_every": 0, "run.checkpoint_every": 0}

# what runs in rejax's environment: argv[1] is a JSON spec; prints one JSON line
REJAX = r"""
import json, sys, time
import jax
from rejax import get_algo
spec = json.loads(sys.argv[1])
cls = get_algo(spec["algo"])
algo = cls.create(**spec["config"])
algo = algo.replace(eval_callback=lambda algo, ts, rng: ())  # no evaluation in the timed program
train = jax.jit(jax.vmap(cls.train, in_axes=(None, 0)))
keys = jax.random.split(jax.random.PRNGKey(0), spec["seeds"])
t0 = time.perf_counter()
jax.block_until_ready(train(algo, keys))
first = time.perf_counter() - t0
t0 = time.perf_counter()
jax.block_until_ready(train(algo, jax.random.split(jax.random.PRNGKey(1), spec["seeds"])))
timed = time.perf_counter() - t0
print(json.dumps({"first": first, "timed": timed}))
"""


def rejax_config(algo: str, steps: int) -> dict:
    common = {"total_timesteps": steps, "eval_freq": steps, "skip_initial_evaluation": True}
    if algo == "ppo":
        return {**common, "env": "CartPole-v1", "num_envs": 4, "num_steps": 128, "num_epochs": 4,
                "num_minibatches": 4, "learning_rate": 2.5e-4, "max_grad_norm": 0.5, "gamma": 0.99,
                "gae_lambda": 0.95, "clip_eps": 0.2, "ent_coef": 0.01, "vf_coef": 0.5,
                "agent_kwargs": {"activation": "tanh", "hidden_layer_sizes": [64, 64]}}
    if algo == "dqn":
        return {**common, "env": "CartPole-v1", "num_envs": 1, "buffer_size": 10_000, "fill_buffer": 2048,
                "batch_size": 128, "learning_rate": 2.5e-4, "gamma": 0.99, "ddqn": True, "num_epochs": 1,
                "target_update_freq": 50, "polyak": 0.0, "eps_start": 1.0, "eps_end": 0.05,
                "exploration_fraction": 0.5, "agent_kwargs": {"activation": "relu"}}  # rejax 0.1.3: 64-64, fixed
    return {**common, "env": "Pendulum-v1", "num_envs": 1, "buffer_size": 100_000, "fill_buffer": 2048,
            "batch_size": 256, "learning_rate": 3e-4, "gamma": 0.99, "num_epochs": 1, "polyak": 0.995,
            "target_update_freq": 1, "hidden_layer_sizes": [256, 256], "agent_kwargs": {"activation": "relu"}}


class Ours:
    """This project's side: built and compiled (one run of the budget) once; each call times one more run."""

    def __init__(self, algo: str, seeds: int, steps: int, devices: int = 1):
        if algo == "ppo":
            env, ov = "gymnax:CartPole-v1", {}
        elif algo == "dqn":
            env, ov = "gymnax:CartPole-v1", {"dqn.train_frequency": 1, "dqn.learning_starts": 2048,
                                             "dqn.buffer_size": 10_000, "dqn.epsilon_decay_steps": steps // 2,
                                             "dqn.hidden": "64,64"}
        else:
            env, ov = "gymnax:Pendulum-v1", {"sac.learning_starts": 2048, "sac.buffer_size": 100_000}
        ov["run.devices"] = devices if seeds % devices == 0 else 1
        self.tr = make_trainer(build(algo, overrides={**QUIET, **ov}, env=env, seeds=seeds, steps=steps))
        self.n = -(-steps // self.tr.unit)  # iterations (PPO) or env steps covering the budget
        self.steps = self.n * self.tr.unit * seeds
        self.first = self.run()

    def run(self) -> float:
        carry = self.tr.init_carry()
        t0 = time.perf_counter()
        carry, sums, _ = self.tr.chunk_program(carry, self.n)
        jax.block_until_ready(sums)
        return time.perf_counter() - t0

    def __call__(self) -> dict:
        return {"first": self.first, "timed": self.run(), "steps": self.steps}


def theirs(python: str, algo: str, seeds: int, steps: int) -> dict:
    spec = json.dumps({"algo": algo, "seeds": seeds, "config": rejax_config(algo, steps)})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # this project's site must not shadow its gymnax
    out = subprocess.run([python, "-c", REJAX, spec], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        errors = [l for l in out.stderr.splitlines() if "Error" in l] or out.stderr.strip().splitlines()[-1:]
        raise SystemExit(f"rejax failed ({algo}, {seeds} seeds): {errors[-1] if errors else out.returncode}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {**res, "steps": steps * seeds}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rejax-python", required=True, help="python of an environment with rejax 0.1.3")
    p.add_argument("--only", default="ppo,dqn,sac")
    p.add_argument("--ppo-seeds", default="1,16,64")
    p.add_argument("--ppo-steps", type=int, default=131_072)
    p.add_argument("--dqn-seeds", default="1,16")
    p.add_argument("--dqn-steps", type=int, default=8192)
    p.add_argument("--sac-seeds", default="1,8")
    p.add_argument("--sac-steps", type=int, default=6144)
    p.add_argument("--rounds", type=int, default=3, help="paired timed runs per row (the ratio: their median)")
    p.add_argument("--devices", type=int, default=1,
                   help="this project's run.devices where it divides the seeds (default 1; k > 1 on a CPU splits it "
                        "into k devices: plastic.sharding.split_cpu); rejax runs as it is, on one")
    args = p.parse_args(argv)
    split_cpu(args.devices)
    print(f"devices: {jax.devices()}; {time.strftime('%Y-%m-%d %H:%M')}; env steps/s aggregated over seeds")
    print(f"{'algo':5s} {'seeds':>5s} {'plastic':>10s} {'rejax':>10s} {'plastic/rejax':>14s} "
          f"{'compile s plastic / rejax':>26s}  rounds' ratios")
    for algo in args.only.split(","):
        for s in [int(x) for x in getattr(args, f"{algo}_seeds").split(",")]:
            steps = getattr(args, f"{algo}_steps")
            ours = Ours(algo, s, steps, args.devices)
            rates, ratios = {"ours": [], "theirs": []}, []
            for r in range(args.rounds):  # alternate which side runs first
                sides = [("ours", ours), ("theirs", lambda: theirs(args.rejax_python, algo, s, steps))]
                got = dict((name, fn()) for name, fn in (sides if r % 2 == 0 else sides[::-1]))
                for name, res in got.items():
                    rates[name].append(res["steps"] / res["timed"])
                ratios.append(rates["ours"][-1] / rates["theirs"][-1])
            b, best = got["theirs"], max(rates["ours"])
            print(f"{algo:5s} {s:5d} {best:10,.0f} {max(rates['theirs']):10,.0f} {float(np.median(ratios)):14.2f} "
                  f"{ours.first - ours.steps / best:13.1f} / {b['first'] - b['timed']:6.1f}  "
                  f"{' '.join(f'{x:.2f}' for x in ratios)}", flush=True)
            del ours


if __name__ == "__main__":
    main()
