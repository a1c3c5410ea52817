"""Sweeps: a YAML grid expanded into tasks with stable names, run locally or as one Slurm array job.

A sweep file (the minimal form names the grid's axes; each may be a single value or a list)::

    name: grama-vs-redo
    agents: [sac, td3]
    interventions: [none, grama, redo]
    envs: [HalfCheetah-v5, dmc:cheetah-run]
    seeds: 5                  # seeds 0..4 (base `seed`, default 0), vmapped in one task
    steps: 300000
    # optional:
    seed: 0
    seeds_per_task: 0         # 0: all seeds of a configuration in one task; k: tasks of k seeds
    config: sac_grama_halfcheetah   # a preset (experiments/configs/) under every run
    overrides: {run.log_every: 5000}          # fixed --NS.FIELD values of every run
    grid: {grama.tau: [0.0, 0.1], sac.utd: [1, 2]}   # hyperparameter product
    runs:                     # a list of blocks instead of one grid: each takes the keys above and
      - {agents: sac, interventions: grama, grid: {grama.tau: [0.0, 0.1]}}   # inherits the rest
      - {agents: td3, interventions: [none, swd]}
    resources: {partition: gpu, time: "04:00:00", gpus: 1, cpus: 4, mem: 16G, max_concurrent: 20}

A grid key whose namespace is not active in a configuration (``grama.tau`` with intervention ``none``,
``sac.utd`` for td3) is dropped from it; configurations that then coincide are one task.

A task is one `experiments/run.py` invocation: one configuration and a block of consecutive seeds (one
vmapped run). Its name, which is also its run directory under the sweep root, is
``AGENT-INTERVENTIONS-ENV[-NS.FIELD=VALUE...]-sBASE[-LAST]`` (grid values only, in the file's key order): the
same sweep file gives the same names on every machine and every re-submission. The step budget is not in
the name, so raising `steps` and re-submitting extends the finished runs.

Status of a task's directory: ``new`` (nothing there), ``partial`` (started, not at `steps`: resumed from its
last checkpoint, or restarted if it has none), ``done`` (its final checkpoint is at `steps`: skipped). A
directory whose saved config differs from the task's is an error (one line naming the differing fields):
a sweep never resumes a run under another configuration.
"""
from __future__ import annotations

import dataclasses
import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import yaml

from plastic import suites
from plastic.checkpoint import latest_checkpoint
from plastic.config import ConfigError

REPO = Path(__file__).resolve().parent.parent
TOP_KEYS = ("name", "agents", "interventions", "envs", "seeds", "seed", "seeds_per_task", "steps", "config",
            "overrides", "grid", "runs", "resources")
BLOCK_KEYS = ("agents", "interventions", "envs", "seeds", "seed", "seeds_per_task", "steps", "config",
              "overrides", "grid")
ALWAYS_ACTIVE = ("run", "metrics", "env")
MERGED_KEYS = ("overrides", "grid")  # mappings a `runs` block extends instead of replacing
# fields whose differences do not make a run directory a different experiment
IGNORED = {("run", "steps"), ("run", "run_dir"), ("run", "progress")}


@dataclasses.dataclass
class Task:
    name: str           # stable run name = directory under the sweep root
    argv: list          # run.py arguments of a fresh start, without --run-dir
    steps: int
    seeds: list         # the seeds this task trains (vmapped)

    def run_dir(self, root) -> Path:
        return Path(root) / self.name


@dataclasses.dataclass
class Sweep:
    name: str
    tasks: list
    resources: dict


def _listify(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _arg(v) -> str:
    """A YAML value as a command-line value (lists become comma lists, as tuple fields expect)."""
    if isinstance(v, (list, tuple)):
        return ",".join(_arg(x) for x in v)
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:g}" if isinstance(v, float) else str(v)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", s).replace(",", "x")


def load(source) -> Sweep:
    """Parse and expand a sweep (a YAML path or an already-loaded dict). Every task's config is resolved
    and validated here, so a bad sweep fails before anything is written or submitted."""
    if isinstance(source, dict):
        data, where = dict(source), "sweep"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"sweep file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
        where = str(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at top level with keys {', '.join(TOP_KEYS)}")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(TOP_KEYS)}")
    name = str(data.get("name") or "")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"{where}: `name` must be a non-empty string of letters, digits, '.', '_' or '-', "
                          f"got {data.get('name')!r}")
    resources = data.get("resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError(f"{where}: `resources` must be a mapping (partition, time, gpus, ...)")
    top = {k: v for k, v in data.items() if k in BLOCK_KEYS}
    blocks = data.get("runs")
    if blocks is None:
        blocks = [{}]
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"{where}: `runs` must be a non-empty list of mappings")
    tasks, seen = [], {}
    for i, block in enumerate(blocks):
        bad = sorted(set(block) - set(BLOCK_KEYS))
        if bad:
            raise ConfigError(f"{where}: runs[{i}] has unknown key(s) {', '.join(bad)}; valid: "
                              f"{', '.join(BLOCK_KEYS)}")
        merged = {**top, **block}
        for k in MERGED_KEYS:   # a block's overrides and grid extend the top level's, key by key
            if isinstance(top.get(k), dict) and isinstance(block.get(k), dict):
                merged[k] = {**top[k], **block[k]}
        for task in _expand(merged, f"{where}: runs[{i}]" if data.get("runs") else where, name):
            if task.name in seen:
                if seen[task.name].argv != task.argv or seen[task.name].steps != task.steps:
                    raise ConfigError(f"{where}: two different tasks are both named {task.name!r}; give them "
                                      f"different grid values or seeds")
                continue
            seen[task.name] = task
            tasks.append(task)
    if not tasks:
        raise ConfigError(f"{where}: the sweep expands to no task")
    return Sweep(name, tasks, resources)


def _expand(block: dict, where: str, sweep_name: str) -> list:
    from plastic.cli import config_of
    steps = block.get("steps")
    if steps is None or not isinstance(steps, int) or steps <= 0:
        raise ConfigError(f"{where}: `steps` must be a positive integer, got {steps!r}")
    n_seeds, base = block.get("seeds", 1), block.get("seed", 0)
    per = block.get("seeds_per_task", 0) or n_seeds
    for k, v in (("seeds", n_seeds), ("seeds_per_task", per)):
        if not isinstance(v, int) or v <= 0:
            raise ConfigError(f"{where}: `{k}` must be a positive integer, got {v!r}")
    if not isinstance(base, int) or base < 0:
        raise ConfigError(f"{where}: `seed` must be an integer >= 0, got {base!r}")
    overrides = block.get("overrides") or {}
    grid = block.get("grid") or {}
    for k, m in (("overrides", overrides), ("grid", grid)):
        if not isinstance(m, dict) or any(not re.fullmatch(r"[A-Za-z_]\w*\.[A-Za-z_]\w*", str(x)) for x in m):
            raise ConfigError(f"{where}: `{k}` must map NAMESPACE.FIELD keys (e.g. grama.tau) to values")
    keys = list(grid)
    used = set()   # grid/override keys that apply to at least one configuration of the block
    preset = block.get("config")
    if preset is not None and Path(str(preset)).suffix:  # a YAML path: absolute, task processes run elsewhere
        preset = str(Path(str(preset)).resolve())
    tasks = []
    for agent, spec, env in itertools.product(_listify(block.get("agents")), _listify(block.get("interventions")),
                                              _listify(block.get("envs"))):
        for values in itertools.product(*(_listify(grid[k]) for k in keys)):
            head = ([] if agent is None else ["--agent", str(agent)]) + \
                   ([] if spec is None else ["--intervention", str(spec)]) + \
                   ([] if env is None else ["--env", str(env)]) + \
                   ([] if preset is None else ["--config", str(preset)])
            probe = config_of(head + ["--steps", str(steps)])  # which namespaces this configuration has
            active = {*ALWAYS_ACTIVE, probe.agent, "agent", *probe.interventions}
            chosen = [(k, v) for k, v in zip(keys, values) if k.split(".")[0] in active]
            fixed = [(k, v) for k, v in overrides.items() if k.split(".")[0] in active]
            used.update(k for k, _ in chosen + fixed)
            flags = [x for k, v in fixed + chosen for x in (f"--{k}", _arg(v))]
            # validates every value, against the seed count of a task (run.devices must divide it)
            cfg = config_of(head + ["--steps", str(steps), "--seeds", str(min(per, n_seeds))] + flags)
            if cfg.run.wandb and not cfg.run.wandb_group:  # W&B groups a sweep's runs under its name
                flags += ["--run.wandb_group", sweep_name]
            tag = "+".join(cfg.interventions) or "none"
            stem = "-".join([cfg.agent, tag, suites.env_tag(cfg),
                             *(_slug(f"{k}={_arg(v)}") for k, v in chosen)])
            for first in range(base, base + n_seeds, per):
                count = min(per, base + n_seeds - first)
                seeds = list(range(first, first + count))
                name = f"{stem}-s{first}" + (f"-{first + count - 1}" if count > 1 else "")
                argv = head + ["--seeds", str(count), "--seed", str(first)] + flags
                if count != min(per, n_seeds):  # a shorter last task: its own seed count
                    config_of(argv + ["--steps", str(steps)])
                tasks.append(Task(name, argv, steps, seeds))
    unused = [k for k in [*overrides, *keys] if k not in used]
    if unused:
        raise ConfigError(f"{where}: {', '.join(unused)} applies to no run of this sweep (its namespace is not "
                          f"an agent or intervention of any run, nor run, metrics or env)")
    return tasks


# ---- status of a task's run directory -----------------------------------------------------------
def config_diff(task: Task, run_dir) -> list:
    """Fields (NS.FIELD) where the config saved in RUN_DIR differs from the task's (step budget aside)."""
    from plastic.cli import config_of
    saved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    # resolve the task with the saved budget: the buffer size is capped by the steps of the first start
    want = config_of(task.argv + ["--steps", str(saved["run"]["steps"]), "--run-dir", str(run_dir)]).to_dict()
    diff = []
    for ns in sorted(set(saved) | set(want)):
        a, b = saved.get(ns), want.get(ns)
        if isinstance(a, dict) and isinstance(b, dict):
            for f in sorted(set(a) | set(b)):
                if (ns, f) not in IGNORED and _norm(a.get(f)) != _norm(b.get(f)):
                    diff.append(f"{ns}.{f}")
        elif _norm(a) != _norm(b):
            diff.append(ns)
    return diff


def _norm(v):
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def status(task: Task, root) -> tuple:
    """(`new` | `partial` | `done`, latest checkpoint step or None). Raises ConfigError if the directory
    holds a run of another configuration."""
    d = task.run_dir(root)
    if not (d / "config.yaml").exists():
        return "new", None
    diff = config_diff(task, d)
    if diff:
        raise ConfigError(f"{d} holds a run whose config differs from the sweep's in {', '.join(diff[:6])}"
                          f"{' ...' if len(diff) > 6 else ''}; use another --root or remove that directory")
    step = latest_checkpoint(d)
    return ("done" if step is not None and step >= task.steps else "partial"), step


# ---- task tables and the task runner -------------------------------------------------------------
def write_table(sweep: Sweep, root, tasks: list, stamp: str | None = None) -> Path:
    """ROOT/.sweep/NAME/STAMP/tasks.json: the tasks of one submission (array index = list position). A new
    directory per submission, so tasks of an earlier array that are still running or requeued keep their
    own table."""
    root = Path(root).resolve()
    d = root / ".sweep" / sweep.name / (stamp or datetime.now().strftime("%Y%m%d-%H%M%S-%f"))
    d.mkdir(parents=True, exist_ok=False)
    (d / "logs").mkdir()
    table = {"sweep": sweep.name, "root": str(root), "tasks": [dataclasses.asdict(t) for t in tasks]}
    path = d / "tasks.json"
    path.write_text(json.dumps(table, indent=1))
    return path


def read_table(path) -> tuple:
    data = json.loads(Path(path).read_text())
    return data, [Task(**t) for t in data["tasks"]]


EXIT_INTERRUPTED = 3   # a task stopped by a signal after writing its checkpoint (not requeued by Slurm)


def run_task(table_path, index: int, early_signals: list | None = None) -> int:
    """Run task `index` of a task table in this process: start it, resume it, or skip it if it is done.
    `early_signals`: the list where the process's first signal handler records stop signals caught before
    this function took over (one there stops the run at its first step).
    Exit code 0 when the run is finished (or requeued on Slurm after a signal), EXIT_INTERRUPTED when a
    signal stopped it elsewhere, 2 on bad input."""
    from plastic import cli
    from plastic.checkpoint import CheckpointError
    from plastic.loop import catch_stop_signals
    table, tasks = read_table(table_path)
    if not 0 <= index < len(tasks):
        raise ConfigError(f"task index {index} out of range: {table_path} has {len(tasks)} tasks")
    task, root = tasks[index], Path(table["root"])
    lock_dir = root / ".sweep" / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    # a stop signal that arrives while the run is still being built and compiled stops it at its first step
    stop, restore = catch_stop_signals()
    stop["sig"] = stop["sig"] or (early_signals[0] if early_signals else None)
    try:
        with open(lock_dir / f"{task.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                print(f"task {task.name} is already running in another process; leaving it to that one",
                      flush=True)
                return 0
            state, step = status(task, root)
            d = task.run_dir(root)
            print(f"task {index}: {task.name} ({state}{'' if step is None else f' at step {step}'})", flush=True)
            if state == "done":
                return 0
            # partial and never checkpointed: --resume starts it over in place (plastic.cli.execute)
            argv = (task.argv + ["--steps", str(task.steps), "--run-dir", str(d)] if state == "new" else
                    ["--resume", "--run-dir", str(d), "--steps", str(task.steps)])
            summary = cli.execute(argv)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        restore()
    if not summary.get("interrupted"):
        return 0
    from plastic.slurm import requeue_self
    if requeue_self():
        print(f"task {task.name}: requeued", flush=True)
        return 0
    return EXIT_INTERRUPTED


# ---- launchers --------------------------------------------------------------------------------
def plan(sweep: Sweep, root) -> list:
    """[(task, status, step)] for every task of the sweep (ConfigError if a directory conflicts)."""
    return [(t, *status(t, root)) for t in sweep.tasks]


def table_text(rows: list) -> str:
    lines = [f"{'#':>3}  {'status':<16} {'steps':>9}  {'seeds':<9} name"]
    for i, (t, st, step) in enumerate(rows):
        where = st if step is None or st == "done" else f"{st}@{step}"
        seeds = str(t.seeds[0]) if len(t.seeds) == 1 else f"{t.seeds[0]}-{t.seeds[-1]}"
        lines.append(f"{i:>3}  {where:<16} {t.steps:>9}  {seeds:<9} {t.name}")
    todo = sum(st != "done" for _, st, _ in rows)
    lines.append(f"{len(rows)} task(s): {todo} to run, {len(rows) - todo} done")
    return "\n".join(lines)


def _progress_step(run_dir) -> int:
    """The last logged env step of a run (0 if none): what the local launcher's progress bar shows."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return 0
    with open(p, "rb") as f:
        f.seek(max(0, p.stat().st_size - 65536))
        lines = [l for l in f.read().splitlines() if l.strip().startswith(b"{")]
    try:
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (ValueError, KeyError):
        return 0


def serve_tasks(table_path, early_signals: list, commands=sys.stdin, replies=None) -> int:
    """A local sweep's worker: run the tasks of a task table whose indices arrive on `commands`, one per line,
    one after another in this process (imports and compiled programs are paid once per worker, not per task).
    Each task's output goes to its log (LOGS/IIII-NAME.out beside the table); after each, `I CODE` (its exit
    code, as `run_task` returns it) is written to `replies` (default: this process's stdout, which everything
    else printed outside the tasks then leaves for stderr). Ends at the end of `commands`, or after the task a stop signal interrupted (a signal between tasks
    ends it before the next one)."""
    _, tasks = read_table(table_path)
    logs = Path(table_path).parent / "logs"
    # One CPU split for the worker's life, the most any task asks for (`--run.devices k`): a task's own split
    # (cli.execute) comes too late once an earlier task has started JAX, and `k` would not exist for it.
    from plastic.cli import config_of
    from plastic.sharding import split_cpu
    split_cpu(max(config_of(t.argv).run.devices for t in tasks))
    if replies is None:  # the replies keep stdout; whatever else this process prints goes to its stderr
        sys.stdout.flush()
        replies = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
    for line in commands:
        if early_signals:
            return EXIT_INTERRUPTED
        i = int(line)
        saved = [os.dup(1), os.dup(2)]
        with open(logs / f"{i:04d}-{tasks[i].name}.out", "a") as log:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                code = run_task(table_path, i, early_signals)
            except Exception as e:  # a failing task fails alone; the worker goes on with the next
                import traceback
                traceback.print_exc()
                print(f"task {tasks[i].name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
        replies.write(f"{i} {code}\n")
        replies.flush()
        if code == EXIT_INTERRUPTED:
            return code
    return 0


def launch_local(sweep: Sweep, root, jobs: int = 1, progress: bool = True, python: str = sys.executable) -> dict:
    """Run the sweep's unfinished tasks on this machine, `jobs` at a time: `jobs` worker processes each run
    tasks one after another (`serve_tasks`: the task runner Slurm uses, imports and compiled programs shared
    by the tasks of a worker; output in ROOT/.sweep/NAME/STAMP/logs/, one file per task). A progress bar counts
    env steps over all tasks. Ctrl-C (or SIGTERM) stops the running tasks with a checkpoint; re-running the
    sweep resumes them. A worker that dies takes only its running task with it. Returns {task name: exit
    code} (a worker killed by a signal: minus the signal's number)."""
    import queue as queues
    import threading
    rows = plan(sweep, root)
    todo = [(t, step or 0) for t, st, step in rows if st != "done"]
    codes = {t.name: 0 for t, st, _ in rows if st == "done"}
    if not todo:
        print(f"sweep {sweep.name}: all {len(rows)} task(s) done in {root}", flush=True)
        return codes
    table = write_table(sweep, root, [t for t, _ in todo])
    logs = table.parent / "logs"
    print(f"sweep {sweep.name}: {len(todo)} task(s) to run ({len(rows) - len(todo)} done) in {root}; "
          f"logs in {logs}", flush=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(t.steps for t, _ in todo), initial=sum(s for _, s in todo), unit="step",
                   desc=sweep.name, dynamic_ncols=True)
    pending = list(range(len(todo)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SLURM_JOB_ID", None)  # a local sweep started inside a Slurm allocation never requeues that job
    shown = {t.name: s for t, s in todo}
    replies = queues.Queue()
    workers, started = {}, []  # workers: Popen -> index of its running task (None: idle)

    def start_worker():  # what a worker prints outside its tasks goes to logs/worker-K.err
        cmd = [python, str(REPO / "experiments" / "sweep.py"), "--run-tasks", str(table)]
        with open(logs / f"worker-{len(started)}.err", "a") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                                    cwd=REPO, text=True, start_new_session=True)  # Ctrl-C reaches only us
        started.append(proc)
        threading.Thread(target=lambda: [replies.put((proc, l)) for l in proc.stdout] + [replies.put((proc, None))],
                         daemon=True).start()
        workers[proc] = None

    def give(proc):  # the next task, or the end of its commands (an idle worker then exits)
        workers[proc] = None
        try:
            if pending:
                proc.stdin.write(f"{pending[0]}\n")
                proc.stdin.flush()
                workers[proc] = pending.pop(0)
            else:
                proc.stdin.close()
        except BrokenPipeError:  # it died meanwhile: its end is reported by its reader
            pass

    def show(i):  # the progress bar: env steps logged by task i since last shown
        name, step = todo[i][0].name, _progress_step(todo[i][0].run_dir(root))
        if bar is not None and step > shown[name]:
            bar.update(step - shown[name])
            shown[name] = step

    def finish(i, code):
        show(i)
        task = todo[i][0]
        codes[task.name] = code
        if code != 0:
            print(f"task {task.name} exited with {code}; see {logs / f'{i:04d}-{task.name}.out'}", flush=True)

    try:
        while pending or any(i is not None for i in workers.values()):
            while pending and len(workers) < jobs:
                start_worker()
                give(started[-1])
            try:
                proc, line = replies.get(timeout=0.5)
            except queues.Empty:
                proc = None
            if proc is not None and line is not None:
                i, code = map(int, line.split())
                finish(i, code)
                give(proc)
            elif proc is not None:  # the worker ended: a task it was running died with it
                running = workers.pop(proc)
                if running is not None:
                    finish(running, proc.wait() or 1)
            for i in workers.values():
                if i is not None:
                    show(i)
    except KeyboardInterrupt:
        running = {p: i for p, i in workers.items() if i is not None}
        print(f"\ninterrupted: stopping {len(running)} running task(s) with a checkpoint ...", flush=True)
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc, i in running.items():
            proc.wait()
            codes.setdefault(todo[i][0].name, EXIT_INTERRUPTED)
        raise
    finally:
        for proc, i in workers.items():
            if i is not None and proc.poll() is None:  # an error here: stop its task with a checkpoint
                proc.send_signal(signal.SIGTERM)
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            proc.wait()
        if bar is not None:
            bar.close()
    failed = sorted(n for n, c in codes.items() if c != 0)
    print(f"sweep {sweep.name}: {len(codes) - len(failed)}/{len(rows)} task(s) done"
          + (f"; not finished: {', '.join(failed)}" if failed else ""), flush=True)
    return codes


def launch_slurm(sweep: Sweep, root, submit: bool = True, python: str = sys.executable) -> tuple:
    """Write the task table of the unfinished tasks and an sbatch array script for them; submit it unless
    `submit` is False (`--emit-sbatch`). Returns (script path or None when nothing is left, job id or None)."""
    from plastic import slurm
    resources = slurm.Resources.from_dict(sweep.resources)
    rows = plan(sweep, root)
    todo = [t for t, st, _ in rows if st != "done"]
    if not todo:
        print(f"sweep {sweep.name}: all {len(rows)} task(s) done in {root}", flush=True)
        return None, None
    table = write_table(sweep, root, todo)
    script = table.parent / "sweep.sbatch"
    script.write_text(slurm.sbatch_script(table, len(todo), resources, job_name=sweep.name,
                                          log_dir=table.parent / "logs", python=python))
    if not submit:
        print(f"sweep {sweep.name}: {len(todo)} task(s); wrote {script}\nsubmit with: sbatch {script}", flush=True)
        return script, None
    job = slurm.submit(script)
    print(f"sweep {sweep.name}: submitted array job {job} with {len(todo)} task(s) "
          f"({len(rows) - len(todo)} done); logs in {table.parent / 'logs'}; watch with: squeue -j {job}",
          flush=True)
    return script, job
