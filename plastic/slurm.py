"""Slurm pieces of the sweep launcher: per-task resources, the sbatch array script, submission, and the
self-requeue a task does after a stop signal.

One sweep submission is one array job; array task I runs row I of the task table
(``python experiments/sweep.py --run-task TABLE --index I``), which starts, resumes or skips its run.
Preemption and time limits end the same way:

* time limit: the script asks for ``--signal=B:USR1@N``, so Slurm sends SIGUSR1 to the batch shell N seconds
  before the limit (Slurm may send it up to a minute earlier than asked). The script ``exec``s python, so
  python *is* the batch shell and receives it; the trainer writes a checkpoint, and the task runner calls
  `requeue_self`, which asks Slurm to requeue this array task. Slurm answers with SIGTERM to the task (we
  ignore it: we are about to exit anyway), requeues it as PENDING, and starts it again once it is eligible
  (Slurm delays a requeued job by its credential lifetime, 120 s by default, ``AuthInfo=cred_expire``),
  with ``SLURM_RESTART_COUNT`` set; the rerun resumes from the checkpoint.
* preemption or ``scontrol requeue`` from outside: Slurm sends SIGCONT + SIGTERM to the batch step, waits
  KillWait (or the partition's GraceTime) and then SIGKILLs it; the trainer checkpoints at SIGTERM and exits.
  The job is already requeued: the task runner's own requeue is answered "Job is pending execution", which
  `requeue_self` counts as requeued.

Output of every run of a task goes to LOG_DIR/%A_%a.out in append mode, so a requeued task's log continues.
The submitting shell's environment is exported to the tasks (``--export=ALL``: the virtualenv, SLURM_CONF,
JAX_COMPILATION_CACHE_DIR, WANDB_* ...); ``env`` adds variables and ``setup`` adds shell lines (``module
load ...``) run before python starts.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from plastic.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


class SlurmError(ConfigError):
    """Slurm is missing or refused a request (one line, quoting Slurm's own message)."""


_TIME = re.compile(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)")


def time_seconds(spec: str | int) -> int:
    """Seconds of a Slurm time limit given as minutes ("90" or 90), "HH:MM:SS" or "D-HH:MM:SS"."""
    s = str(spec).strip()
    if re.fullmatch(r"\d+", s):
        return int(s) * 60
    m = _TIME.fullmatch(s)
    if m:
        days, h, mi, sec = (int(x or 0) for x in m.groups())
        if mi < 60 and sec < 60 and (m.group(1) is None or h < 24):
            return ((days * 24 + h) * 60 + mi) * 60 + sec
    raise ConfigError(f"resources.time={spec!r} is not a Slurm time; use minutes (90), \"HH:MM:SS\" or "
                      f"\"D-HH:MM:SS\"")


@dataclasses.dataclass
class Resources:
    """What each array task asks Slurm for (the sweep file's ``resources:`` mapping)."""
    partition: str = ""           # "" = the cluster's default partition
    time: str = ""                # time limit: minutes, "HH:MM:SS" or "D-HH:MM:SS"; "" = partition default
    gpus: int = 0                 # GPUs per task (--gres=gpu:N)
    cpus: int = 2                 # --cpus-per-task
    mem: str = ""                 # memory per node, e.g. "8G", "500M" (a bare number is MB); "" = default
    max_concurrent: int = 0       # at most this many tasks running at once (--array=...%N); 0 = no cap
    signal_seconds: int = 120     # SIGUSR1 this many seconds before the time limit (0 = none)
    requeue: bool = True          # may Slurm requeue the task (preemption, self-requeue after a signal)
    extra: list = dataclasses.field(default_factory=list)   # raw sbatch options, e.g. ["--qos=high"]
    env: dict = dataclasses.field(default_factory=dict)     # NAME: value exported before python starts
    setup: list = dataclasses.field(default_factory=list)   # shell lines run before python (module load ...)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Resources":
        """Validated resources from a mapping; a ConfigError naming the valid keys or the bad value."""
        d = dict(d or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"unknown resources key(s) {', '.join(map(str, unknown))}; valid: {', '.join(names)}")
        r = cls(**d)
        r.validate()
        return r

    def validate(self) -> None:
        def integer(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"resources.{name} must be an integer >= {low}, got {v!r}")
        for name, low in (("gpus", 0), ("cpus", 1), ("max_concurrent", 0), ("signal_seconds", 0)):
            integer(name, low)
        if self.signal_seconds > 65535:
            raise ConfigError(f"resources.signal_seconds must be <= 65535 (Slurm's limit), got {self.signal_seconds}")
        if isinstance(self.mem, int) and not isinstance(self.mem, bool):
            self.mem = str(self.mem)      # megabytes, as Slurm reads a bare number
        for name in ("partition", "mem"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"resources.{name} must be a string, got {getattr(self, name)!r}")
        if self.partition and not re.fullmatch(r"[\w.,-]+", self.partition):
            raise ConfigError(f"resources.partition={self.partition!r} is not a partition name (or comma list)")
        if self.mem and not re.fullmatch(r"\d+[KMGT]?", self.mem):
            raise ConfigError(f"resources.mem={self.mem!r} is not a Slurm memory size; use e.g. \"8G\", \"500M\"")
        if isinstance(self.time, bool) or not isinstance(self.time, (str, int)):
            raise ConfigError(f"resources.time must be minutes or \"HH:MM:SS\" / \"D-HH:MM:SS\", got {self.time!r}")
        self.time = str(self.time).strip()
        if self.time:
            limit = time_seconds(self.time)
            if limit <= 0:
                raise ConfigError(f"resources.time={self.time!r} must be positive")
            if self.signal_seconds >= limit:
                raise ConfigError(f"resources.signal_seconds={self.signal_seconds} must be less than the time "
                                  f"limit ({limit} s)")
        if not isinstance(self.requeue, bool):
            raise ConfigError(f"resources.requeue must be true or false, got {self.requeue!r}")
        if not isinstance(self.extra, list) or not all(isinstance(x, str) for x in self.extra):
            raise ConfigError(f"resources.extra must be a list of sbatch options like \"--qos=high\", got {self.extra!r}")
        self.extra = [x.strip().removeprefix("#SBATCH").strip() for x in self.extra]
        if not all(x.startswith("-") and "\n" not in x for x in self.extra):
            raise ConfigError(f"resources.extra must be a list of sbatch options like \"--qos=high\", got {self.extra!r}")
        if not isinstance(self.env, dict) or not all(re.fullmatch(r"[A-Za-z_]\w*", str(k)) for k in self.env):
            raise ConfigError(f"resources.env must map variable names to values, got {self.env!r}")
        if not isinstance(self.setup, list) or not all(isinstance(x, str) and "\n" not in x for x in self.setup):
            raise ConfigError(f"resources.setup must be a list of shell lines, got {self.setup!r}")

    def options(self) -> list[str]:
        """The sbatch options these resources add (without --array, names and logs)."""
        out = [f"--cpus-per-task={self.cpus}"]
        if self.partition:
            out.append(f"--partition={self.partition}")
        if self.time:
            out.append(f"--time={self.time}")
        if self.mem:
            out.append(f"--mem={self.mem}")
        if self.gpus:
            out.append(f"--gres=gpu:{self.gpus}")
        out.append("--requeue" if self.requeue else "--no-requeue")
        if self.signal_seconds:
            out.append(f"--signal=B:USR1@{self.signal_seconds}")
        return out + list(self.extra)


def sbatch_script(table_path, n_tasks: int, resources: Resources, job_name: str, log_dir,
                  python: str = sys.executable, workdir=REPO_ROOT) -> str:
    """A bash script that submits the `n_tasks` rows of the task table `table_path` as one array job."""
    if n_tasks < 1:
        raise ValueError(f"an array job needs at least one task, got {n_tasks}")
    log_dir = Path(log_dir).resolve()
    if re.search(r"\s", str(log_dir)):
        raise ConfigError(f"the Slurm log directory {log_dir} contains whitespace, which #SBATCH lines cannot "
                          f"carry; use a --root without spaces")
    array = f"0-{n_tasks - 1}" + (f"%{resources.max_concurrent}" if resources.max_concurrent else "")
    name = re.sub(r"\s+", "_", job_name)
    opts = [f"--job-name={name}", f"--array={array}", f"--output={log_dir}/%A_%a.out",
            f"--error={log_dir}/%A_%a.out", "--open-mode=append", "--export=ALL", *resources.options()]
    q = shlex.quote
    lines = ["#!/bin/bash",
             f"# Slurm array job of sweep {name}: task I runs row I of {Path(table_path).resolve()}",
             "# (start, resume or skip its run). Written by experiments/sweep.py --launcher slurm.",
             *(f"#SBATCH {o}" for o in opts),
             "set -e",
             f"cd {q(str(Path(workdir).resolve()))}",
             "export PYTHONUNBUFFERED=1",
             *(f"export {k}={q(str(v))}" for k, v in resources.env.items()),
             *resources.setup,
             "# exec: python becomes the batch shell, so it receives the B:USR1 time-limit signal itself",
             f"exec {q(python)} experiments/sweep.py --run-task {q(str(Path(table_path).resolve()))} "
             f"--index \"$SLURM_ARRAY_TASK_ID\"",
             ""]
    return "\n".join(lines)


def _run(cmd: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} not found: Slurm is not installed here (or not on PATH); write the script "
                         f"with --emit-sbatch and submit it where Slurm runs") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(cmd[:2])} did not answer within {timeout:.0f} s; is slurmctld up?") from None


def _first_line(text: str) -> str:
    return next((l.strip() for l in text.splitlines() if l.strip()), "no message")


def submit(script_path, env: dict | None = None) -> str:
    """`sbatch --parsable SCRIPT`: the array job's id. SlurmError (one line) if sbatch is missing or refuses."""
    r = _run(["sbatch", "--parsable", str(script_path)], env)
    if r.returncode != 0:
        raise SlurmError(f"sbatch rejected {script_path}: {_first_line(r.stderr)}")
    return r.stdout.strip().split(";")[0]   # "ID" or "ID;CLUSTER"


def current_job() -> str | None:
    """This process's Slurm job as `scontrol` names it: ARRAYJOB_TASK in an array task, else SLURM_JOB_ID;
    None outside Slurm."""
    job, array, task = (os.environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"))
    if not job:
        return None
    return f"{array}_{task}" if array and task else job


def requeue_self() -> bool:
    """Requeue the Slurm job (array task) this process runs in; call it after the checkpoint is written and
    exit right after. Returns whether the job is requeued (False outside Slurm, or when Slurm refuses:
    the job was submitted with --no-requeue, or it is not a batch job)."""
    job = current_job()
    if job is None:
        return False
    # Slurm answers a requeue with SIGCONT + SIGTERM to this very process (and SIGKILL after KillWait): the
    # work is saved, so let the caller finish its exit instead of dying mid-print
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        r = _run(["scontrol", "requeue", job])
    except SlurmError as e:
        signal.signal(signal.SIGTERM, old)
        print(f"warning: cannot requeue Slurm job {job}: {e}", file=sys.stderr, flush=True)
        return False
    if r.returncode == 0 or "pending execution" in r.stderr:   # the latter: already requeued from outside
        return True
    signal.signal(signal.SIGTERM, old)
    print(f"warning: scontrol requeue {job} failed: {_first_line(r.stderr)}", file=sys.stderr, flush=True)
    return False


def job_states(job_id: str, env: dict | None = None) -> dict[str, str]:
    """{"JOB_TASK": state} of every task of an array job that Slurm still remembers (pending, running, and
    finished within MinJobAge), e.g. {"12_0": "COMPLETED", "12_1": "RUNNING"}."""
    r = _run(["squeue", "-h", "-r", "-t", "all", "-j", str(job_id), "-o", "%i|%T"], env)
    if r.returncode != 0:
        raise SlurmError(f"squeue -j {job_id} failed: {_first_line(r.stderr)}")
    return dict(line.split("|", 1) for line in r.stdout.split() if "|" in line)


def job_info(job: str, env: dict | None = None) -> dict[str, str]:
    """`scontrol show job -o JOB` as {field: value} (JobState, Restarts, ExitCode, Reason, ...) for one job or
    array task ("12_1"); values that contain spaces are cut at the first space."""
    r = _run(["scontrol", "show", "job", "-o", str(job)], env)
    if r.returncode != 0:
        raise SlurmError(f"scontrol show job {job} failed: {_first_line(r.stderr)}")
    return dict(re.findall(r"(\w[\w:/]*)=(\S*)", r.stdout.splitlines()[0] if r.stdout else ""))
