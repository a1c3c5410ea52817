"""Cost of the evaluation protocol (docs/benchmarks.md, "Evaluation").

For each case, the same training run twice, each in its own process (so both compile everything): with the
default evaluation (`run.eval_every` 50000, 10 episodes, and at the end) and with `--run.eval_every 0`. It
prints both wall times (process start to exit, compilation included), their ratio, the number of evaluation
points, and the seconds one evaluation takes (the difference divided by the points).

Cases (the issue's targets: <= 5 % of a training run's wall time with the defaults):
  td3     TD3 on HalfCheetah-v5, host driver, default hyperparameters, --td3-steps env steps (default 50000:
          25000 random warm-up steps, then 25000 updates; one evaluation, at the end)
  ppo     PPO on gymnax:CartPole-v1, jitted driver, default hyperparameters, --ppo-steps (default 500000:
          ten evaluations)
Usage: python benchmarks/evaluation.py [--cases td3,ppo] [--td3-steps 50000] [--ppo-steps 500000] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(argv, run_dir) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *argv, "--run-dir", str(run_dir),
                    "--run.progress", "off", "--run.tensorboard", "false"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def eval_points(run_dir) -> int:
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return len({r["step"] for r in rows if "eval/episode_return" in r})


def case(name, argv, rounds):
    with tempfile.TemporaryDirectory() as tmp:
        best = {}
        for r in range(rounds):
            for mode, extra in (("on", []), ("off", ["--run.eval_every", "0"])):
                d = Path(tmp) / f"{mode}{r}"
                seconds = run_once([*argv, *extra], d)
                best[mode] = min(best.get(mode, float("inf")), seconds)
                if mode == "on":
                    points = eval_points(d)
        per = (best["on"] - best["off"]) / max(points, 1)
        ratio = best["on"] / best["off"]
        print(f"{name:5s} eval on {best['on']:7.1f} s   off {best['off']:7.1f} s   on/off x{ratio:.3f}"
              f"   {points} evaluation point(s), {per:.2f} s each (incl. compile)", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="td3,ppo")
    p.add_argument("--td3-steps", type=int, default=50_000)
    p.add_argument("--ppo-steps", type=int, default=500_000)
    p.add_argument("--rounds", type=int, default=1, help="runs of each mode; the fastest is kept")
    a = p.parse_args(argv)
    cases = {"td3": ["--agent", "td3", "--env", "HalfCheetah-v5", "--steps", str(a.td3_steps)],
             "ppo": ["--agent", "ppo", "--env", "gymnax:CartPole-v1", "--steps", str(a.ppo_steps)]}
    for name in a.cases.split(","):
        case(name, cases[name], a.rounds)


if __name__ == "__main__":
    main()
