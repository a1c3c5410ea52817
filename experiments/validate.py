#!/usr/bin/env python
"""Reproduce a finding of the plasticity literature with this codebase and write its report.

  python experiments/validate.py --list                                   # the findings and their verdicts
  python experiments/validate.py dormancy                                 # laptop scale: run here, then report
  python experiments/validate.py dormancy --jobs 2                        # two sweep tasks at a time
  python experiments/validate.py dormancy --scale paper --emit-sbatch     # the paper's sweep as one Slurm array
  python experiments/validate.py dormancy --scale paper --analyse-only    # report once the array has finished

Each finding (experiments/validation/NAME.py) holds its claim, source, the verdict rule written before the
runs, the deviations from the paper, and one sweep per scale: laptop (this machine, <= 60 min, >= 5 vmapped
seeds), paper (the paper's agent, env, budget and seeds, for Slurm) and smoke (the pipeline at a tiny size;
its verdict means nothing). Runs go to --root (default runs/validation/NAME-SCALE; re-running skips finished
runs and resumes the rest). The report goes to --out (default docs/validation): NAME.md with the verdict,
statistics (rliable IQM with 95 % stratified-bootstrap CIs, probabilities of improvement), figures and the
per-run CSV under NAME/, and the summary table docs/validation.md is rewritten.
"""
import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without install

from experiments.report import ReportError  # noqa: E402
from plastic.config import ConfigError  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="validate.py", description=__doc__.splitlines()[0],
                                epilog="\n".join(__doc__.splitlines()[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("finding", nargs="?", help="the finding's name (--list shows them)")
    p.add_argument("--list", action="store_true", help="list the findings with their last verdicts and exit")
    p.add_argument("--scale", choices=("laptop", "paper", "smoke"), default="laptop")
    p.add_argument("--jobs", type=int, default=1, help="local: sweep tasks run at the same time (default 1)")
    p.add_argument("--launcher", choices=("local", "slurm"),
                   help="default: local for laptop and smoke, slurm for paper")
    p.add_argument("--emit-sbatch", action="store_true",
                   help="slurm: write the task table and sbatch script, print the sbatch command, do not submit")
    p.add_argument("--analyse-only", action="store_true", help="do not run anything: report on the runs in --root")
    p.add_argument("--root", help="directory of the runs (default runs/validation/FINDING-SCALE)")
    p.add_argument("--out", default=str(REPO / "docs" / "validation"), help="report directory (default docs/validation)")
    p.add_argument("--no-peers", action="store_true",
                   help="a finding with a peer implementation (sanity): do not run the peer; its pairs are "
                        "reported as missing")
    p.add_argument("--no-progress", action="store_true", help="local: no progress bar")
    return p


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        # the reports themselves (docs/validation.md, docs/validation/) are not code: writing one must not mark the next
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)docs/validation", ":(exclude)docs/validation.md"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from experiments.validation import registry
    try:
        findings = registry()
        out = Path(args.out)
        if args.list:
            from experiments.validation.report import summary_rows
            for row in summary_rows(findings, out):
                print(f"{row['number']}. {row['name'] or '—':12s} {row['verdict']:15s} {row['title']}")
            return 0
        if not args.finding:
            raise ConfigError("give a finding (--list shows them)")
        if args.finding not in findings:
            raise ConfigError(f"unknown finding {args.finding!r}; valid: {', '.join(findings)}")
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        finding = findings[args.finding]
        launcher = args.launcher or ("slurm" if args.scale == "paper" else "local")
        if args.emit_sbatch and launcher != "slurm":
            raise ConfigError("--emit-sbatch writes a Slurm script; use it with --scale paper or --launcher slurm")
        from plastic import sweep as sw
        sweep = sw.load(finding.sweeps[args.scale])
        root = Path(args.root) if args.root else REPO / "runs" / "validation" / f"{finding.name}-{args.scale}"
        command = "python experiments/validate.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                                                                  if a != "--analyse-only")
        log = root / ".validation.json"
        previous = json.loads(log.read_text()) if log.is_file() else {}
        if not args.analyse_only:
            if launcher == "slurm":
                from plastic import slurm
                slurm.Resources.from_dict(sweep.resources)
                sw.launch_slurm(sweep, root, submit=not args.emit_sbatch)
                print(f"when the array has finished: python experiments/validate.py {finding.name} --scale "
                      f"{args.scale} --root {root} --analyse-only")
                return 0
            ran = any(st != "done" for _, st, _ in sw.plan(sweep, root))
            t0 = time.time()
            codes = sw.launch_local(sweep, root, jobs=args.jobs, progress=not args.no_progress)
            wall = time.time() - t0 + previous.get("wall_s", 0.0)   # a resumed sweep adds to its earlier time
            if not all(c == 0 for c in codes.values()):
                failed = [str(t) for t, c in codes.items() if c != 0]
                print(f"error: {len(failed)} task(s) failed: {', '.join(failed)}; re-run to resume them",
                      file=sys.stderr)
                return 1
            if ran:
                root.mkdir(parents=True, exist_ok=True)
                log.write_text(json.dumps({"wall_s": wall, "jobs": args.jobs, "command": command,
                                           "machine": f"{platform.node()} ({platform.machine()}, "
                                                      f"{_cpu_count()} CPU cores)",
                                           "finished": time.strftime("%Y-%m-%d %H:%M %Z")}, indent=1))
        if finding.peers and not args.no_peers and not args.analyse_only:
            try:
                finding.peers(args.scale, root, finding.sweeps[args.scale])
            except (FileNotFoundError, RuntimeError) as e:
                raise ConfigError(f"{e}; or pass --no-peers") from None
        from experiments.validation.report import write
        info = json.loads(log.read_text()) if log.is_file() else {}
        info.setdefault("command", command)
        written = write(finding, args.scale, root, out, info, _commit())
        print(f"{finding.name}: {written['verdict']} -> {written['path']}")
        return 0
    except (ConfigError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
