"""Reference runs whose metrics.jsonl must not change under a refactor or a scheduling change.

Every agent on both drivers, stacks of interventions with scheduled events, every metric group firing often,
two vmapped seeds. `--out DIR` writes the runs (one folder each); `--compare A B` compares two such folders
row by row, every key but the timing (`sps`) and those starting with an `--ignore` prefix (for a change that
moves what one metric logs), and prints the first difference of each run or "identical".
To compare two versions of the code, run this file from each checkout:

    python benchmarks/identical.py --out /tmp/before     # in the old checkout
    python benchmarks/identical.py --out /tmp/after      # in the new one
    python benchmarks/identical.py --compare /tmp/before /tmp/after

Usage: python benchmarks/identical.py (--out DIR [--only NAME,...] | --compare A B [--ignore PREFIX,...])
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = {"metrics.activity_every": 40, "metrics.grad_every": 30, "metrics.rank_every": 60,
           "metrics.churn_every": 50, "metrics.ntk_every": 90, "metrics.batch_size": 64, "metrics.ntk_batch": 16}
OFF = {"hidden": "32,32", "batch_size": 32, "buffer_size": 4000, "learning_starts": 200}
# name -> (agent, intervention, env, steps, driver, overrides)
RUNS = {
    "td3-jit": ("td3", "grama+reset", "gymnax:Pendulum-v1", 1200, "jit",
                {"grama.period": 50, "grama.tau": 0.1, "grama.step_ratio_every": 7, "grama.step_ratio_window": 40,
                 "reset.schedule": "every_updates", "reset.interval": 300}),
    "sac-host": ("sac", "redo+shrink_perturb", "Pendulum-v1", 800, "host",
                 {"redo.period": 60, "redo.tau": 0.1, "shrink_perturb.period": 100}),
    "sac-jit": ("sac", "ne", "gymnax:Pendulum-v1", 1000, "jit", {"ne.period": 50}),
    "dqn-jit": ("dqn", "redo+cbp", "gymnax:CartPole-v1", 1500, "jit", {"redo.period": 40, "redo.tau": 0.1}),
    "dqn-host": ("dqn", "grama+injection", "CartPole-v1", 1000, "host",
                 {"grama.period": 40, "grama.tau": 0.1, "injection.at": "500"}),
    "td3-host": ("td3", "cbp", "Pendulum-v1", 800, "host", {"cbp.maturity": 50, "cbp.replacement_rate": 0.05}),
    "ppo-jit": ("ppo", "grama+redo", "gymnax:CartPole-v1", 4096, "jit",
                {"grama.period": 8, "grama.tau": 0.1, "redo.period": 12, "redo.tau": 0.1}),
    "ppo-host": ("ppo", "shrink_perturb", "CartPole-v1", 1024, "host", {"shrink_perturb.period": 8}),
}


def overrides_of(agent, driver, extra):
    small = OFF if agent != "ppo" else {"hidden": "32,32", "num_envs": 4, "num_steps": 64, "minibatches": 4}
    return {**{f"{agent}.{k}": v for k, v in small.items()}, **METRICS, **extra, "run.driver": driver,
            "run.progress": "off", "run.tensorboard": "false", "run.log_every": 200, "run.eval_every": 400,
            "run.eval_episodes": 2, "run.checkpoint_every": 0}


def write(out: Path, only=None, seeds=2):
    from plastic.config import build
    from plastic.drivers import make_trainer
    for name, (agent, iv, env, steps, driver, extra) in RUNS.items():
        if only and name not in only:
            continue
        cfg = build(agent, iv, overrides=overrides_of(agent, driver, extra), env=env, steps=steps, seeds=seeds)
        make_trainer(cfg).run(out / name)
        print(f"{name}: {out / name}", flush=True)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(a: Path, b: Path, ignore=()) -> bool:
    ok = True
    for name in RUNS:
        fa, fb = a / name / "metrics.jsonl", b / name / "metrics.jsonl"
        if not (fa.exists() and fb.exists()):
            print(f"{name}: missing in {a if not fa.exists() else b}")
            ok = False
            continue
        ra = [json.loads(l) for l in fa.read_text().splitlines()]
        rb = [json.loads(l) for l in fb.read_text().splitlines()]
        diff = None
        if len(ra) != len(rb):
            diff = f"{len(ra)} rows vs {len(rb)}"
        for i, (x, y) in enumerate(zip(ra, rb)):
            keys = {k for k in (set(x) | set(y)) - {"sps"} if not k.startswith(tuple(ignore))}
            bad = sorted(k for k in keys if not _same(x.get(k, "<absent>"), y.get(k, "<absent>")))
            if bad and diff is None:
                k = bad[0]
                diff = (f"row {i} (step {x.get('step')}, seed {x.get('seed')}): {len(bad)} keys differ, first "
                        f"{k}: {x.get(k, '<absent>')} vs {y.get(k, '<absent>')}")
        print(f"{name}: {'identical' if diff is None else diff} ({len(ra)} rows, {len(ra[0]) if ra else 0} keys)")
        ok &= diff is None
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the reference runs here")
    p.add_argument("--only", default="", help="comma-separated run names: " + ", ".join(RUNS))
    p.add_argument("--seeds", type=int, default=2, help="vmapped seeds per run")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"))
    p.add_argument("--ignore", default="", help="comma-separated key prefixes --compare leaves out")
    args = p.parse_args(argv)
    if args.compare:
        sys.exit(0 if compare(*args.compare, ignore=tuple(filter(None, args.ignore.split(",")))) else 1)
    if not args.out:
        p.error("give --out DIR or --compare A B")
    write(args.out, set(filter(None, args.only.split(","))), args.seeds)


if __name__ == "__main__":
    main()
