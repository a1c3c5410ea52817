"""The CleanRL side of finding 7's TD3 and SAC pairs (experiments/validation/sanity.py). Run by the python of an
environment with CleanRL's dependencies, never by this project's (it imports nothing of plastic):

    CLEANRL_PYTHON experiments/validation/cleanrl_peer.py '{"repo": "/path/to/cleanrl", "commit": "...",
        "script": "cleanrl/td3_continuous_action_jax.py", "seeds": [0, 1, 2, 3, 4],
        "args": {"env-id": "HalfCheetah-v4", "total-timesteps": 100000, "learning-starts": 10000}}' [CACHE_DIR]

Runs the unmodified script once per seed, one after the other (cwd: a scratch directory; PYTHONPATH: the CleanRL
checkout, for its `cleanrl_utils`; OMP_NUM_THREADS=1 unless set), reads the `charts/episodic_return` scalars its tensorboard writer logs (one per
finished training episode) and prints one JSON line: {"steps": [[env step of each episode's end], ...],
"returns": [[each episode's return], ...], "wall_s": [per seed], "versions": {...}}. CleanRL's scripts evaluate
only at the end of a run (with --save-model), so the pair compares training returns on both sides.

With CACHE_DIR, each finished seed is kept there (keyed by the spec without its seed list), so a run that is
interrupted after hours resumes at the first seed it has not finished.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

TAG = "charts/episodic_return"


def scalars(logdir: Path, tag: str):
    """(steps, values) of one scalar tag in a tensorboard log directory, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    events = sorted(acc.Scalars(tag), key=lambda e: e.step) if tag in acc.Tags()["scalars"] else []
    return [int(e.step) for e in events], [float(e.value) for e in events]


def run_seed(spec: dict, seed: int, scratch: Path):
    repo = Path(spec["repo"]).resolve()
    argv = [sys.executable, str(repo / spec["script"]), "--seed", str(seed)]
    for k, v in spec["args"].items():
        argv += [f"--{k}", str(v)]
    # one OpenMP thread unless told otherwise: torch's spinning OpenMP workers made an update 25x slower (0.36 s
    # against 15 ms) on this 2-core machine while other runs shared it
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": str(repo)}
    work = scratch / f"seed{seed}"
    work.mkdir()
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"CleanRL's {spec['script']} failed on seed {seed}: {last}")
    logdirs = sorted(p for p in (work / "runs").iterdir() if p.is_dir())
    if len(logdirs) != 1:
        raise SystemExit(f"expected one tensorboard run under {work / 'runs'}, found {len(logdirs)}")
    steps, returns = scalars(logdirs[0], TAG)
    return steps, returns, wall


def seed_file(cache: Path, spec: dict, seed: int) -> Path:
    """Where one seed's result of `spec` is kept: the key covers everything but the seed list."""
    key = hashlib.sha256(json.dumps({k: v for k, v in spec.items() if k != "seeds"}, sort_keys=True)
                         .encode()).hexdigest()[:16]
    return cache / f"{key}-seed{seed}.json"


def main(spec: dict, cache: Path | None = None) -> dict:
    out = {"steps": [], "returns": [], "wall_s": []}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in spec["seeds"]:
            kept = seed_file(cache, spec, int(seed)) if cache else None
            if kept and kept.is_file():
                steps, returns, wall = json.loads(kept.read_text())
            else:
                steps, returns, wall = run_seed(spec, int(seed), Path(scratch))
                if kept:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    kept.write_text(json.dumps([steps, returns, wall]))
            out["steps"].append(steps)
            out["returns"].append(returns)
            out["wall_s"].append(wall)
    versions = {}
    for pkg in ("torch", "jax", "flax", "gymnasium", "mujoco"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {**out, "versions": versions, "python": sys.version.split()[0]}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)))
