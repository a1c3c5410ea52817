"""Sweeps (plastic/sweep.py, experiments/sweep.py): expansion into tasks with stable names, task status
(skip / resume / conflicting directories), the local launcher end to end, and a task stopped by a signal
that resumes to exactly the rows of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import rows, strip_timing
from plastic import sweep as sw
from plastic.cli import config_of
from plastic.config import ConfigError

REPO = Path(__file__).resolve().parent.parent
SWEEP_PY = REPO / "experiments" / "sweep.py"
TINY_DQN = {"run.log_every": 100, "run.checkpoint_every": 100, "run.tensorboard": False,
            "dqn.hidden": [16, 16], "dqn.batch_size": 16, "dqn.learning_starts": 100, "dqn.train_frequency": 2,
            **{f"metrics.{g}_every": 0 for g in ("activity", "grad", "rank", "churn", "ntk")}}


def demo(**kw):
    base = {"name": "demo", "agents": ["dqn"], "interventions": ["none", "grama", "redo"],
            "envs": ["probe:d_obs"], "seeds": 3, "seeds_per_task": 2, "steps": 300,
            "overrides": dict(TINY_DQN), "grid": {"grama.tau": [0.0, 0.1]}}
    return {**base, **kw}


def test_expansion_names_seeds_and_inactive_grid_keys():
    s = sw.load(demo())
    names = [t.name for t in s.tasks]
    # grama.tau is dropped where grama is not active: none and redo are one configuration each, not two
    assert names == ["dqn-none-probe_d_obs-s0-1", "dqn-none-probe_d_obs-s2",
                     "dqn-grama-probe_d_obs-grama.tau=0-s0-1", "dqn-grama-probe_d_obs-grama.tau=0-s2",
                     "dqn-grama-probe_d_obs-grama.tau=0.1-s0-1", "dqn-grama-probe_d_obs-grama.tau=0.1-s2",
                     "dqn-redo-probe_d_obs-s0-1", "dqn-redo-probe_d_obs-s2"]
    assert [t.seeds for t in s.tasks[:2]] == [[0, 1], [2]]
    assert names == [t.name for t in sw.load(demo()).tasks]  # stable
    # each task is exactly a run.py invocation: seeds packed as --seeds N --seed BASE, the grid value applied
    t = s.tasks[5]
    cfg = config_of(t.argv + ["--steps", "300"])
    assert (cfg.run.seeds, cfg.run.seed, cfg.interventions["grama"].tau) == (1, 2, 0.1)
    assert cfg.agent_cfg.hidden == (16, 16) and cfg.run.tensorboard is False
    assert "grama.tau" not in " ".join(s.tasks[0].argv)
    # all seeds in one task by default; `runs` blocks inherit the top level
    s2 = sw.load(demo(seeds_per_task=0, grid={}, runs=[{"interventions": "none"},
                                                       {"interventions": "redo", "seeds": 1, "seed": 7}]))
    assert [(t.name, t.seeds) for t in s2.tasks] == [("dqn-none-probe_d_obs-s0-2", [0, 1, 2]),
                                                    ("dqn-redo-probe_d_obs-s7", [7])]


def test_run_blocks_extend_the_top_level_overrides_and_grid():
    """A block's `overrides` and `grid` add to the top level's (the block winning on a shared key); they never
    silently drop the top level's settings."""
    s = sw.load(demo(interventions=["grama"], seeds=1, seeds_per_task=0,
                     runs=[{"overrides": {"dqn.lr": 0.01}, "grid": {"dqn.gamma": [0.9]}},
                           {"overrides": {"run.log_every": 50}}]))
    assert [t.name for t in s.tasks] == ["dqn-grama-probe_d_obs-grama.tau=0-dqn.gamma=0.9-s0",
                                         "dqn-grama-probe_d_obs-grama.tau=0.1-dqn.gamma=0.9-s0",
                                         "dqn-grama-probe_d_obs-grama.tau=0-s0", "dqn-grama-probe_d_obs-grama.tau=0.1-s0"]
    cfgs = [config_of(t.argv) for t in s.tasks]
    assert [c.agent_cfg.lr for c in cfgs][:2] == [0.01, 0.01] and cfgs[2].agent_cfg.lr != 0.01
    assert [c.run.log_every for c in cfgs] == [100, 100, 50, 50]         # the block wins where it sets one
    for c in cfgs:                                                        # the rest of the top level applies
        assert c.agent_cfg.hidden == (16, 16) and c.agent_cfg.batch_size == 16 and c.run.checkpoint_every == 100


@pytest.mark.parametrize("change, needle", [
    ({"name": "a b"}, "`name` must be"),
    ({"steps": 0}, "`steps` must be a positive integer"),
    ({"stepz": 3}, "unknown key(s) stepz; valid: name, agents"),
    ({"grid": {"grmaa.tau": [0.1]}}, "grmaa.tau applies to no run of this sweep"),
    ({"grid": {"grama.tua": [0.1]}}, "unknown field grama.tua"),
    ({"grid": {"grama.tau": ["x"]}}, "grama.tau: expected float"),
    ({"interventions": ["gtr"]}, "does not apply to agent 'dqn'"),
    ({"runs": [{"resources": {}}]}, "runs[0] has unknown key(s) resources"),
    ({"seeds": -1}, "`seeds` must be a positive integer"),
])
def test_bad_sweeps_are_one_line_errors(change, needle):
    with pytest.raises(ConfigError) as e:
        sw.load(demo(**change))
    assert needle in str(e.value) and "\n" not in str(e.value)


def _fake_run(task, root, checkpoints=(), **override):
    """A run directory as run.py leaves it: config.yaml (optionally altered) and checkpoint steps."""
    d = task.run_dir(root)
    d.mkdir(parents=True)
    cfg = config_of(task.argv + ["--steps", str(task.steps), "--run-dir", str(d)]).to_dict()
    for key, value in override.items():
        ns, field = key.split("__")
        cfg[ns][field] = value
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for step in checkpoints:
        (d / "checkpoints" / str(step)).mkdir(parents=True)
    return d


def test_status_skip_resume_and_conflicting_directories(tmp_path):
    s = sw.load(demo())
    a, b, c, d = s.tasks[:4]
    _fake_run(a, tmp_path, checkpoints=(100, 300))
    _fake_run(b, tmp_path, checkpoints=(100,))
    _fake_run(c, tmp_path)
    assert sw.status(a, tmp_path) == ("done", 300)
    assert sw.status(b, tmp_path) == ("partial", 100)
    assert sw.status(c, tmp_path) == ("partial", None)
    assert sw.status(d, tmp_path) == ("new", None)
    # a larger budget turns a finished run into one to resume (the budget is not part of its identity)
    longer = sw.load(demo(steps=600)).tasks[0]
    assert longer.name == a.name and sw.status(longer, tmp_path) == ("partial", 300)
    table = sw.table_text(sw.plan(s, tmp_path)).splitlines()
    assert "done" in table[1] and "partial@100" in table[2] and table[-1] == "8 task(s): 7 to run, 1 done"
    # a directory holding another configuration is never resumed
    other = sw.load(demo()).tasks[4]
    _fake_run(other, tmp_path, checkpoints=(100,), dqn__lr=0.5)
    with pytest.raises(ConfigError, match=r"differs from the sweep's in dqn\.lr; use another --root"):
        sw.status(other, tmp_path)


def _write(tmp_path, data) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _cli(*args, env=None):
    return subprocess.run([sys.executable, str(SWEEP_PY), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=600)


def test_cli_dry_run_and_errors_write_nothing(tmp_path, capsys):
    from experiments.sweep import main
    spec = _write(tmp_path, demo())
    root = tmp_path / "root"
    assert main([str(spec), "--root", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dqn-grama-probe_d_obs-grama.tau=0.1-s2" in out and "8 task(s): 8 to run" in out
    for argv, needle in (([str(_write(tmp_path, demo(interventions=["nope"]))), "--root", str(root)], "nope"),
                         ([str(spec), "--root", str(root), "--emit-sbatch"], "--launcher slurm"),
                         ([str(tmp_path / "missing.yaml")], "does not exist"),
                         ([str(spec), "--jobs", "0"], "--jobs must be >= 1")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1
    assert not root.exists()


def test_local_sweep_runs_skips_and_extends(tmp_path):
    spec = demo(interventions=["none", "grama"], grid={}, seeds=2, seeds_per_task=0, steps=300)
    root = tmp_path / "root"
    codes = sw.launch_local(sw.load(spec), root, jobs=2, progress=False)
    assert codes == {"dqn-none-probe_d_obs-s0-1": 0, "dqn-grama-probe_d_obs-s0-1": 0}
    for name in codes:
        rs = rows(root / name)
        assert [(r["step"], r["seed"]) for r in rs] == [(s, i) for s in (100, 200, 300) for i in (0, 1)]
        assert sw.latest_checkpoint(root / name) == 300
    # re-submitting skips finished runs: nothing is started (no new task table)
    tables = sorted((root / ".sweep" / "demo").iterdir())
    assert sw.launch_local(sw.load(spec), root, progress=False) == {n: 0 for n in codes}
    assert sorted((root / ".sweep" / "demo").iterdir()) == tables
    # a larger budget resumes every run from its final checkpoint, without duplicate or missing rows
    sw.launch_local(sw.load({**spec, "steps": 500}), root, jobs=1, progress=False)
    for name in codes:
        assert [r["step"] for r in rows(root / name)] == [s for s in (100, 200, 300, 400, 500) for _ in (0, 1)]


def test_one_worker_runs_the_tasks_one_after_another_as_their_own_processes_would(tmp_path):
    """`--jobs 1`: one worker process runs both tasks (one log per task, one worker log), and a task's rows
    equal those of the same task run alone in its own process (`--run-task`, as on Slurm)."""
    sweep = sw.load(demo(interventions=["none", "grama"], grid={}, seeds=2, seeds_per_task=0, steps=300))
    root = tmp_path / "pool"
    assert set(sw.launch_local(sweep, root, jobs=1, progress=False).values()) == {0}
    (stamp,) = (root / ".sweep" / "demo").iterdir()
    logs = sorted(p.name for p in (stamp / "logs").iterdir())
    assert logs == [f"{i:04d}-{t.name}.out" for i, t in enumerate(sweep.tasks)] + ["worker-0.err"]
    for i, t in enumerate(sweep.tasks):
        assert f"task {i}: {t.name} (new)" in (stamp / "logs" / logs[i]).read_text()
    table = sw.write_table(sweep, tmp_path / "alone", sweep.tasks)
    assert _cli("--run-task", table, "--index", 1).returncode == 0
    assert strip_timing(rows(sweep.tasks[1].run_dir(tmp_path / "alone"))) == \
        strip_timing(rows(sweep.tasks[1].run_dir(root)))


def test_a_worker_splits_the_cpu_for_the_task_that_asks_last(tmp_path, monkeypatch):
    """One worker runs a task on one device, then one with `--run.devices 2`: the worker split the CPU before
    its first task (a task's own split would come after JAX started, and fail: 'this node has 1 device')."""
    from flags import XLA_TEST_FLAGS
    monkeypatch.setenv("XLA_FLAGS", XLA_TEST_FLAGS)  # the workers' CPU device count is theirs to choose
    sweep = sw.load(demo(interventions=["none"], grid={"run.devices": [1, 2]}, seeds=2, seeds_per_task=0))
    root = tmp_path / "split"
    assert set(sw.launch_local(sweep, root, jobs=1, progress=False).values()) == {0}
    (stamp,) = (root / ".sweep" / "demo").iterdir()
    assert [("sharded over 2 cpu devices (1 each)" in (stamp / "logs" / f"{i:04d}-{t.name}.out").read_text())
            for i, t in enumerate(sweep.tasks)] == [False, True]


def test_a_worker_that_dies_takes_only_its_task_with_it(tmp_path):
    """The launcher's side of the worker protocol, with a stand-in worker that dies (SIGKILL) on task 1: task 1
    reports the signal, a new worker runs task 2."""
    fake = tmp_path / "worker.py"
    fake.write_text("import os, sys\nfor line in sys.stdin:\n    i = int(line)\n    if i == 1:\n"
                    "        os.kill(os.getpid(), 9)\n    print(f'{i} 0', flush=True)\n")
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {fake}\n")
    python.chmod(0o755)
    sweep = sw.load(demo(interventions=["none", "grama", "redo"], grid={}, seeds=1))
    codes = sw.launch_local(sweep, tmp_path / "root", jobs=1, progress=False, python=str(python))
    assert list(codes.values()) == [0, -9, 0]
    (stamp,) = (tmp_path / "root" / ".sweep" / "demo").iterdir()
    assert sorted(p.name for p in (stamp / "logs").glob("worker-*")) == ["worker-0.err", "worker-1.err"]


def test_task_stopped_by_a_signal_resumes_to_the_uninterrupted_rows(tmp_path):
    spec = demo(interventions=["grama"], grid={}, seeds=2, seeds_per_task=0, steps=20_000,
                overrides={**TINY_DQN, "run.log_every": 500, "run.checkpoint_every": 500})
    sweep = sw.load(spec)
    (task,) = sweep.tasks
    ref_root, root = tmp_path / "ref", tmp_path / "cut"
    assert sw.launch_local(sweep, ref_root, progress=False) == {task.name: 0}
    table = sw.write_table(sweep, root, sweep.tasks)
    proc = subprocess.Popen([sys.executable, str(SWEEP_PY), "--run-task", str(table), "--index", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    deadline = time.time() + 300
    while sw.latest_checkpoint(task.run_dir(root)) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == sw.EXIT_INTERRUPTED, out
    cut = sw.latest_checkpoint(task.run_dir(root))
    assert "received signal" in out and cut < 20_000
    assert sw.status(task, root) == ("partial", cut)
    assert sw.launch_local(sweep, root, progress=False) == {task.name: 0}
    assert strip_timing(rows(task.run_dir(root))) == strip_timing(rows(task.run_dir(ref_root)))


def test_task_runner_never_runs_one_task_twice_at_once(tmp_path):
    sweep = sw.load(demo(interventions=["none"], grid={}, seeds=1))
    table = sw.write_table(sweep, tmp_path, sweep.tasks)
    import fcntl
    lock = tmp_path / ".sweep" / "locks" / f"{sweep.tasks[0].name}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        out = _cli("--run-task", table, "--index", "0")
    assert out.returncode == 0 and "already running in another process" in out.stdout
    assert not sweep.tasks[0].run_dir(tmp_path).exists()
    data = json.loads(table.read_text())
    assert data["root"] == str(tmp_path.resolve()) and len(data["tasks"]) == 1


def test_a_signal_during_start_up_stops_the_task_at_its_first_step(tmp_path):
    """Slurm's time-limit USR1 may come while the task process is still importing JAX: the task must still
    checkpoint (at its first chunk) and report itself interrupted, not die."""
    sweep = sw.load(demo(interventions=["none"], grid={}, seeds=1, steps=5000))
    table = sw.write_table(sweep, tmp_path, sweep.tasks)
    proc = subprocess.Popen([sys.executable, str(SWEEP_PY), "--run-task", str(table), "--index", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    time.sleep(0.3)  # the interpreter is up (the handler is its first statement), JAX is not imported yet
    proc.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == sw.EXIT_INTERRUPTED, out
    assert f"received signal {int(signal.SIGUSR1)}" in out
    assert sw.status(sweep.tasks[0], tmp_path) == ("partial", 100)


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_sweeps_expand(path):
    s = sw.load(path)
    assert s.name == path.stem and s.tasks
    if s.name == "sac_plasticity":  # grama's two thresholds, one task for each other method, per env
        assert len(s.tasks) == 10 and all(t.seeds == [0, 1, 2, 3, 4] for t in s.tasks)
        from plastic.slurm import Resources
        assert Resources.from_dict(s.resources).gpus == 1
