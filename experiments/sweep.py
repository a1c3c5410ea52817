#!/usr/bin/env python
"""Run a sweep (a YAML grid of runs) locally or as one Slurm array job.

A sweep crosses agents x interventions x envs x hyperparameters x seeds; its format is in docs/sweeps.md, and
experiments/sweeps/ has examples.

  python experiments/sweep.py SWEEP.yaml --dry-run                      # the task table, nothing written
  python experiments/sweep.py SWEEP.yaml --launcher local --jobs 2      # run here, 2 tasks at a time
  python experiments/sweep.py SWEEP.yaml --launcher slurm               # one sbatch array job
  python experiments/sweep.py SWEEP.yaml --launcher slurm --emit-sbatch # write the script, do not submit

Re-running the same command skips finished runs and resumes unfinished ones from their checkpoints.
"""
import argparse
import signal
import sys
from pathlib import Path

# A task process may get its stop signal (Slurm's time-limit USR1, a preemption's TERM) while Python is still
# importing JAX: record it from the first instant, so the task checkpoints at its first step instead of dying.
EARLY_SIGNAL = []
if "--run-task" in sys.argv or "--run-tasks" in sys.argv:
    for _s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(_s, lambda signum, _frame: EARLY_SIGNAL.append(signum))

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from plastic.config import ConfigError  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep.py", description=__doc__.splitlines()[0],
                                epilog="\n".join(__doc__.splitlines()[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", nargs="?", help="sweep YAML file")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: worker processes on this machine; slurm: one sbatch array job (default local)")
    p.add_argument("--root", help="directory of the sweep's runs (default runs/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="print the task table (with each task's status) and exit")
    p.add_argument("--emit-sbatch", action="store_true",
                   help="slurm: write the task table and sbatch script, print the sbatch command, do not submit")
    p.add_argument("--jobs", type=int, default=1,
                   help="local: tasks run at the same time, one worker process each (default 1)")
    p.add_argument("--no-progress", action="store_true", help="local: no progress bar")
    p.add_argument("--run-task", metavar="TABLE", help=argparse.SUPPRESS)  # what each task process runs
    p.add_argument("--index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--run-tasks", metavar="TABLE", help=argparse.SUPPRESS)  # a local sweep's worker (stdin: indices)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from plastic import sweep as sw
    try:
        if args.run_tasks:
            return sw.serve_tasks(args.run_tasks, EARLY_SIGNAL)
        if args.run_task:
            import os
            index = args.index if args.index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", -1))
            return sw.run_task(args.run_task, index, early_signals=EARLY_SIGNAL)
        if not args.sweep:
            raise ConfigError("give a sweep YAML file (see --help)")
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        if args.emit_sbatch and args.launcher != "slurm":
            raise ConfigError("--emit-sbatch writes a Slurm script; use it with --launcher slurm")
        sweep = sw.load(args.sweep)
        root = Path(args.root) if args.root else Path("runs") / sweep.name
        if args.launcher == "slurm":
            from plastic import slurm
            slurm.Resources.from_dict(sweep.resources)  # bad resources fail before anything is written
        if args.dry_run:
            print(f"sweep {sweep.name} -> {root}")
            print(sw.table_text(sw.plan(sweep, root)))
            return 0
        if args.launcher == "slurm":
            sw.launch_slurm(sweep, root, submit=not args.emit_sbatch)
            return 0
        codes = sw.launch_local(sweep, root, jobs=args.jobs, progress=not args.no_progress)
        return 0 if all(c == 0 for c in codes.values()) else 1
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
