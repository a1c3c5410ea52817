"""Slurm launcher (plastic/slurm.py): the rendered array script and resource validation (no cluster), then
against a real single-node Slurm (tests/slurm_cluster.py): sbatch accepts the script, a sweep completes as
an array job, and a task stopped mid-run (time-limit signal, preemption requeue) requeues itself and
finishes with exactly the rows of an uninterrupted run."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flags import xla_flags
from helpers import METRICS_OFF, rows, strip_timing
from plastic import slurm
from plastic.config import ConfigError

REPO = Path(__file__).resolve().parent.parent
SWEEP_PY = REPO / "experiments" / "sweep.py"
pytestmark = pytest.mark.xdist_group("slurm")  # one private cluster, on one pytest-xdist worker


# ---- the script and the resources (no cluster) ---------------------------------------------------
def sbatch_lines(script: str) -> list[str]:
    return [l.removeprefix("#SBATCH ") for l in script.splitlines() if l.startswith("#SBATCH ")]


def test_script_of_full_resources(tmp_path):
    res = slurm.Resources.from_dict({
        "partition": "gpu", "time": "1-02:00:00", "gpus": 2, "cpus": 4, "mem": "16G", "max_concurrent": 3,
        "signal_seconds": 300, "extra": ["--qos=high", "#SBATCH --account=lab"], "env": {"WANDB_MODE": "offline",
                                                                                          "NOTE": "a b"},
        "setup": ["module load cuda/12"]})
    table, logs = tmp_path / "tasks.json", tmp_path / "logs"
    text = slurm.sbatch_script(table, 5, res, job_name="my sweep", log_dir=logs, python="/opt/py/bin/python",
                               workdir=tmp_path)
    assert text.startswith("#!/bin/bash\n")
    assert sbatch_lines(text) == [
        "--job-name=my_sweep", "--array=0-4%3", f"--output={logs}/%A_%a.out", f"--error={logs}/%A_%a.out",
        "--open-mode=append", "--export=ALL", "--cpus-per-task=4", "--partition=gpu", "--time=1-02:00:00",
        "--mem=16G", "--gres=gpu:2", "--requeue", "--signal=B:USR1@300", "--qos=high", "--account=lab"]
    body = [l for l in text.splitlines() if l and not l.startswith("#")]
    assert body == ["set -e", f"cd {tmp_path}", "export PYTHONUNBUFFERED=1", "export WANDB_MODE=offline",
                    "export NOTE='a b'", "module load cuda/12",
                    f'exec /opt/py/bin/python experiments/sweep.py --run-task {table} --index "$SLURM_ARRAY_TASK_ID"']
    # every #SBATCH line comes before the first command (sbatch stops reading options there)
    first_cmd = next(i for i, l in enumerate(text.splitlines()) if l and not l.startswith("#"))
    assert all(i < first_cmd for i, l in enumerate(text.splitlines()) if l.startswith("#SBATCH"))


def test_script_of_default_resources(tmp_path):
    text = slurm.sbatch_script(tmp_path / "t.json", 1, slurm.Resources.from_dict(None), "s", tmp_path)
    assert sbatch_lines(text)[1:] == [
        "--array=0-0", f"--output={tmp_path}/%A_%a.out", f"--error={tmp_path}/%A_%a.out", "--open-mode=append",
        "--export=ALL", "--cpus-per-task=2", "--requeue", "--signal=B:USR1@120"]
    assert f"cd {slurm.REPO_ROOT}" in text and f"exec {sys.executable} experiments/sweep.py" in text
    off = slurm.Resources.from_dict({"requeue": False, "signal_seconds": 0, "time": 30, "mem": 500})
    assert off.time == "30" and off.options() == ["--cpus-per-task=2", "--time=30", "--mem=500", "--no-requeue"]
    with pytest.raises(ValueError, match="at least one task"):
        slurm.sbatch_script(tmp_path / "t.json", 0, off, "s", tmp_path)


@pytest.mark.parametrize("spec, seconds", [(90, 5400), ("90", 5400), ("01:30:00", 5400), ("48:00:00", 172800),
                                           ("1-00:00:01", 86401), ("0-23:59:59", 86399)])
def test_time_limits(spec, seconds):
    assert slurm.time_seconds(spec) == seconds


@pytest.mark.parametrize("resources, needle", [
    ({"gpu": 1}, "unknown resources key(s) gpu; valid: partition, time, gpus, cpus, mem, max_concurrent, "
                 "signal_seconds, requeue, extra, env, setup"),
    ({"time": "25:00"}, "resources.time='25:00' is not a Slurm time; use minutes (90), \"HH:MM:SS\" or"),
    ({"time": "1-24:00:00"}, "is not a Slurm time"),
    ({"time": "01:60:00"}, "is not a Slurm time"),
    ({"time": True}, "resources.time must be minutes"),
    ({"time": "0"}, "resources.time='0' must be positive"),
    ({"time": "00:02:00"}, "resources.signal_seconds=120 must be less than the time limit (120 s)"),
    ({"gpus": -1}, "resources.gpus must be an integer >= 0, got -1"),
    ({"cpus": 0}, "resources.cpus must be an integer >= 1, got 0"),
    ({"cpus": "4"}, "resources.cpus must be an integer >= 1, got '4'"),
    ({"max_concurrent": 1.5}, "resources.max_concurrent must be an integer >= 0"),
    ({"mem": "8GB"}, "resources.mem='8GB' is not a Slurm memory size"),
    ({"partition": "a b"}, "is not a partition name"),
    ({"requeue": "yes"}, "resources.requeue must be true or false"),
    ({"extra": ["qos=high"]}, "resources.extra must be a list of sbatch options"),
    ({"extra": "--qos=high"}, "resources.extra must be a list of sbatch options"),
    ({"env": {"1X": "a"}}, "resources.env must map variable names to values"),
    ({"setup": "module load x"}, "resources.setup must be a list of shell lines"),
])
def test_bad_resources_are_one_line_errors(resources, needle):
    with pytest.raises(ConfigError) as e:
        slurm.Resources.from_dict(resources)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_log_dir_with_spaces_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="contains whitespace"):
        slurm.sbatch_script(tmp_path / "t.json", 2, slurm.Resources(), "s", tmp_path / "my logs")


def test_current_job_and_requeue_outside_slurm(monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(k, raising=False)
    assert slurm.current_job() is None and slurm.requeue_self() is False
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    assert slurm.current_job() == "17"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm.current_job() == "12_3"


def test_submit_without_sbatch_is_one_line_error(tmp_path):
    with pytest.raises(slurm.SlurmError) as e:
        slurm.submit(tmp_path / "x.sbatch", env={"PATH": str(tmp_path)})
    assert str(e.value).startswith("sbatch not found: Slurm is not installed") and "\n" not in str(e.value)


# ---- a real cluster --------------------------------------------------------------------------------
def test_sbatch_accepts_the_script_and_rejections_quote_sbatch(slurm_cluster, tmp_path):
    res = slurm.Resources.from_dict({"time": "00:10:00", "cpus": 1, "mem": "100M", "max_concurrent": 1,
                                     "signal_seconds": 60, "extra": ["--comment=plastic"], "env": {"X": "1"}})
    script = tmp_path / "s.sbatch"
    script.write_text(slurm.sbatch_script(tmp_path / "t.json", 3, res, "check", tmp_path / "logs"))
    out = slurm_cluster.run("sbatch", "--test-only", str(script))   # parses every option, submits nothing
    assert "to start at" in out.stderr, out.stderr
    script.write_text(slurm.sbatch_script(tmp_path / "t.json", 3, slurm.Resources(partition="nope"), "check",
                                          tmp_path / "logs"))
    with pytest.raises(slurm.SlurmError) as e:
        slurm.submit(script, env=slurm_cluster.env)
    msg = str(e.value)
    assert msg.startswith(f"sbatch rejected {script}: sbatch: error: ") and "partition" in msg.lower()
    assert "\n" not in msg


def _sweep_file(tmp_path, name, steps, log_every, checkpoint_every, **grid) -> Path:
    """A DQN sweep on the probe env at TINY sizes, metrics off, 1 CPU per task."""
    overrides = {"run.log_every": log_every, "run.checkpoint_every": checkpoint_every, "run.tensorboard": False,
                 "run.progress": "off", "dqn.hidden": [16, 16], "dqn.batch_size": 16, "dqn.learning_starts": 100,
                 "dqn.train_frequency": 2, "dqn.buffer_size": 1000, **METRICS_OFF}
    spec = {"name": name, "agents": ["dqn"], "envs": ["probe:d_obs"], "steps": steps, "overrides": overrides,
            "resources": {"cpus": 1, "time": "00:30:00", "signal_seconds": 60}, **grid}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def _env(cluster) -> dict:
    """The cluster's environment plus the suite's JAX compilation cache (exported to the tasks by sbatch),
    so a requeued task and the reference runs read their compiled programs from disk."""
    import jax
    env = {**cluster.env, "XLA_FLAGS": xla_flags()}
    if jax.config.jax_compilation_cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    return env


def _sweep_cli(cluster, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SWEEP_PY), *map(str, args)], capture_output=True, text=True,
                          env=_env(cluster), cwd=REPO, timeout=120)


def _submit(cluster, spec: Path, root: Path) -> str:
    out = _sweep_cli(cluster, spec, "--launcher", "slurm", "--root", root)
    assert out.returncode == 0, out.stdout + out.stderr
    job = out.stdout.split("submitted array job ")[1].split()[0]
    assert job.isdigit(), out.stdout
    return job


def _log(root: Path, sweep: str, job_task: str) -> str:
    return "\n".join(p.read_text() for p in (root / ".sweep" / sweep).glob(f"*/logs/{job_task}.out"))


def test_sweep_runs_as_an_array_job(slurm_cluster, tmp_path, capsys):
    from plastic.checkpoint import latest_checkpoint
    spec = _sweep_file(tmp_path, "arr", 300, 100, 100, interventions=["none", "grama"], seeds=2)
    root = tmp_path / "root"
    job = _submit(slurm_cluster, spec, root)
    states = slurm_cluster.wait(job, timeout=240)
    assert states == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}, [_log(root, "arr", t) for t in states]
    for i, name in enumerate(("dqn-none-probe_d_obs-s0-1", "dqn-grama-probe_d_obs-s0-1")):
        assert [(r["step"], r["seed"]) for r in rows(root / name)] == [(s, k) for s in (100, 200, 300)
                                                                       for k in (0, 1)]
        assert latest_checkpoint(root / name) == 300
        assert f"task {i}: {name} (new)" in _log(root, "arr", f"{job}_{i}")   # one log per array task
    # re-submitting a finished sweep submits nothing (in-process: what the command line does after parsing)
    from plastic import sweep as sw
    assert sw.launch_slurm(sw.load(str(spec)), root) == (None, None)
    assert "all 2 task(s) done" in capsys.readouterr().out


STEPS = 6000
TASKS = ("dqn-grama-probe_d_obs-s0-1", "dqn-grama-probe_d_obs-s2-3")


@pytest.fixture(scope="module")
def interrupted(slurm_cluster, tmp_path_factory):
    """One array job of two tasks (same config, seeds 0-1 and 2-3), each interrupted once its first
    checkpoint is written: task 0 by USR1 to its batch shell (what --signal=B:USR1@N sends before the time
    limit), task 1 by `scontrol requeue` (the preemption path: SIGTERM, the job already requeued). While Slurm
    holds them back before the rerun, the same two tasks run uninterrupted in this process (the same task
    runner, outside Slurm) as the reference. Returns {index: (run dir, JOB_TASK, log, reference rows)}."""
    from plastic import sweep as sw
    d = tmp_path_factory.mktemp("interrupted")
    spec = _sweep_file(d, "cut", STEPS, 200, 1000, interventions=["grama"], seeds=4, seeds_per_task=2)
    sweep = sw.load(str(spec))
    assert [t.name for t in sweep.tasks] == list(TASKS)
    root = d / "cut"
    with pytest.MonkeyPatch.context() as mp:     # what `sweep.py --launcher slurm` does, without its start-up
        for k, v in _env(slurm_cluster).items():
            mp.setenv(k, v)
        _, job = sw.launch_slurm(sweep, root)
    interrupt = {0: ("scancel", "--signal=USR1", "--batch"), 1: ("scontrol", "requeue")}
    end = time.monotonic() + 180
    while interrupt:
        for i in list(interrupt):
            if sw.latest_checkpoint(root / TASKS[i]) is not None:
                slurm_cluster.run(*interrupt.pop(i), f"{job}_{i}")
        states = slurm_cluster.states(job)
        assert all(states.get(f"{job}_{i}") in ("PENDING", "RUNNING") for i in interrupt), \
            (states, [_log(root, "cut", t) for t in states])
        assert time.monotonic() < end, f"no checkpoint after 180 s\n{slurm_cluster.log_tail()}"
        time.sleep(0.1)
    table = sw.write_table(sweep, d / "ref", sweep.tasks)
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("SLURM_")]:
            mp.delenv(k)
        assert [sw.run_task(table, i) for i in range(2)] == [0, 0]
    states = slurm_cluster.wait(job, timeout=240)
    logs = [_log(root, "cut", f"{job}_{i}") for i in range(2)]
    assert states == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}, logs
    out = {}
    for i in range(2):
        ref = strip_timing(rows(d / "ref" / TASKS[i]))
        assert [(r["step"], r["seed"]) for r in ref] == [(s, k) for s in range(200, STEPS + 1, 200) for k in (0, 1)]
        out[i] = (root / TASKS[i], f"{job}_{i}", logs[i], ref)
    return out


def _assert_resumed(cluster, case, signal_name):
    from plastic.checkpoint import latest_checkpoint
    run_dir, task, log, reference = case
    info = cluster.info(task)
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0", info
    sig = getattr(signal, signal_name)
    assert re.search(rf"received signal ({int(sig)}|{sig.name})\b", log) and "requeued" in log, log
    assert log.count(" (partial at step ") == 1 and log.count("done: step ") == 1, log  # resumed once
    assert latest_checkpoint(run_dir) == STEPS
    assert strip_timing(rows(run_dir)) == reference      # no duplicate, no missing row, same values


def test_time_limit_signal_and_an_outside_requeue_both_resume(slurm_cluster, interrupted):
    """Task 0, USR1 to the exec'd task runner: it writes a checkpoint, requeues its own array task, and the rerun
    resumes to the rows of the uninterrupted run. Task 1, `scontrol requeue` of the running task: SIGTERM, a
    checkpoint, the task's own requeue is answered 'pending', the rerun resumes likewise. One test for both
    tasks of the one array job: two tests sharing the module fixture had it set up twice (42 s each) when
    pytest-xdist ran another module's test between them."""
    _assert_resumed(slurm_cluster, interrupted[0], "SIGUSR1")
    _assert_resumed(slurm_cluster, interrupted[1], "SIGTERM")
    assert "DUE TO JOB REQUEUE" in interrupted[1][2]
