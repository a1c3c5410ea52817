#!/usr/bin/env python
"""Aggregate many runs with rliable into figures, a markdown report and a score table.

See `python experiments/report.py --help`. Importable for notebooks::

    from experiments.report import load_scores, aggregate, write_report
    scores = load_scores(["runs/my-sweep"])        # final return per (method, task, seed)
    rep = aggregate(scores, normalize="minmax")     # IQM / mean / median / optimality gap, P(improvement), ...
    write_report(rep, "report/")                    # PNGs, report.md, scores.csv

The statistics are rliable's (stratified bootstrap CIs, `rliable.metrics`, score distributions). Like
plot.py this module needs neither JAX nor pyplot: figures are `matplotlib.figure.Figure` objects rendered by
Agg, so importing it does not change a notebook's backend.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import math
import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

import numpy as np
import yaml

if __package__ in (None, ""):  # run as a file: make `experiments` importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.plot import (EVAL_RETURN, RETURN, SCORE_NAMES, SCORES, PlotError, _filename, _natural,  # noqa: E402
                             choose_score, curve, group_keys, load_run)
from experiments.plot import _colors as plot_colors  # noqa: E402

AGGREGATES = ("IQM", "mean", "median", "optimality gap")
# run.* fields that change what is learned (the rest of `run`, `metrics` and `env` never make a method)
METHOD_RUN_KEYS = ("run.steps", "run.pipelined_acting")
DEFAULT_METRIC_FAMILIES = ("dormant_ratio_tau_", "grama_ratio_tau_")
CURVE_POINTS = 100     # sample-efficiency grid: at most this many steps (evenly spaced over the common steps)
PROFILE_POINTS = 101   # performance-profile tau grid
CONFIDENCE = 0.95
DPI = 110

DESCRIPTION = ("Aggregate runs with rliable: IQM, mean, median and optimality gap with stratified bootstrap CIs, "
               "probability of improvement, performance profiles, sample-efficiency and plasticity-metric curves.")
EPILOG = """inputs: each RUNS argument is a run directory (config.yaml + metrics.jsonl, as experiments/run.py
  writes them) or a directory searched recursively for run directories (a sweep root; hidden directories,
  checkpoints/ and tb/ are skipped); a quoted glob pattern is expanded here.
score (--score): auto (default) scores the evaluation return eval/episode_return (complete episodes of the
  deterministic policy at evaluation log points, plastic/evaluation.py) when every run has it, else the
  training return episode_return, with a note naming a run without it; eval requires it (a run without it is
  an error); train scores episode_return. Evaluation return: the final score of a seed = the mean
  eval/episode_return over its last --final-frac of the rows that hold an evaluation (ceil(frac * n) of its n
  evaluations, at least 1; with the default 0.1 and ~10 evaluations, the last one). Training return: the mean
  episode_return over its last --final-frac of log points (ceil(frac * n) of its n rows, at least 1; null
  returns in that window are skipped). A seed without a score there is left out with a note. report.md and
  the `score` column of scores.csv (eval or train) say which was used. Seeds in scores.csv are absolute:
  run.seed + the row's seed index.
task: run.env, plus the non-stationary kind, its period and the env.* fields that differ between runs of it.
method: agent(+intervention) plus the hyperparameters (agent and intervention sections, run.steps,
  run.pipelined_acting) that take several values among runs of that agent+intervention on one task, e.g.
  sac+grama(tau=0.1); --group-by KEY... names the keys instead (agent, intervention, dotted config keys).
  Run directories with the same method and task are pooled: their seeds are the runs axis.
normalisation (--normalize): minmax (default) maps each task's lowest final score over all runs of the report
  to 0 and its highest to 1; FILE.yaml maps a task or env id to [random_score, reference_score]; none keeps
  raw returns. Normalised returns of the curves use the same map.
statistics (rliable): per method a (seeds x tasks) matrix (a method whose tasks have different seed counts
  uses the first n of each, by run dir and seed, with a note). IQM, mean, median and optimality gap (threshold
  --gap-threshold) with 95% percentile stratified-bootstrap CIs (--reps); probability of improvement
  P(X > Y) for every ordered pair of methods on their common tasks (P(Y > X) = 1 - P(X > Y)), or of every
  method over --baseline; performance profiles (fraction of runs above tau); sample efficiency: IQM of the
  normalised return that is scored on a common step grid (every logged step between the latest first return
  and the earliest last row of the method's runs, for the evaluation return every evaluation step between the
  latest first and the earliest last evaluation; at most 100 points; each seed's last logged return at or
  before the step). The bootstrap is seeded (--seed, numpy's global generator too, restored afterwards).
plasticity metrics (--metrics PATTERN...): mean over all seeds of a method's runs, 95% band; default: the
  network-level dormant ratio and GraMa ratio at the middle of the logged thresholds and srank_delta_*.
  Patterns match network-level keys (<metric>/<network>) unless they hold two '/'. Keys that are missing are
  skipped with a note.
phases (non-stationary runs, e.g. --env continual:NAME): each phase scored by the same final-score rule on its
  own rows (nonstationary/phase), mean over seeds [95% CI] per task, method and phase, and the change of each
  task's score from its first to its last phase; report.md's Phases section, phases.csv, phases.png.
outputs, in --out (created if needed): report.md (tables, notes, figure links), scores.csv, aggregates.png,
  probability_of_improvement.png, performance_profile.png, sample_efficiency.png, metric_<name>.png,
  phases.csv and phases.png (non-stationary runs). Identical inputs and options give byte-identical files.
errors (one line on stderr, exit status 2, nothing written): no runs found, a run without metrics.jsonl or
  config.yaml, bad options, --baseline unknown or with fewer than 2 methods, --score eval with a run without
  eval/episode_return.
--group-by and --metrics take several values: put the RUNS first, or last after --.
example: python experiments/report.py runs/sweep --out report --baseline sac --metrics 'dormant*'
"""


class ReportError(ValueError):
    """Bad input (no runs, a run without metrics, a bad option): one line, no traceback, nothing written."""


# --------------------------------------------------------------------------------------------------
# Finding and loading runs
# --------------------------------------------------------------------------------------------------

def _is_run_dir(d: Path) -> bool:
    return (d / "config.yaml").is_file() or (d / "metrics.jsonl").is_file()


def _walk(root: Path) -> list[Path]:
    """Run directories at or below `root` (not descending into a run directory, hidden dirs, checkpoints/, tb/)."""
    if _is_run_dir(root):
        return [root]
    found = []
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("checkpoints", "tb"))
        if _is_run_dir(Path(here)) and Path(here) != root:
            found.append(Path(here))
            dirs[:] = []
    return found


def find_runs(paths) -> list[Path]:
    """The run directories that `paths` name (run dirs, directories holding run dirs, or glob patterns), sorted.

    Raises ReportError for a path that does not exist or holds no run."""
    found: dict[Path, Path] = {}
    for p in map(str, paths):
        if not os.path.exists(p) and any(c in p for c in "*?["):
            roots = [Path(m) for m in sorted(glob(p)) if os.path.isdir(m)]
            if not roots:
                raise ReportError(f"{p}: the pattern matches no directory")
        else:
            if not os.path.exists(p):
                raise ReportError(f"{p}: no such directory")
            if not os.path.isdir(p):
                raise ReportError(f"{p}: not a directory")
            roots = [Path(p)]
        runs = [d for r in roots for d in _walk(r)]
        if not runs:
            raise ReportError(f"{p}: no runs found (no config.yaml or metrics.jsonl in it or below it)")
        for d in runs:
            found.setdefault(d.resolve(), d)
    return sorted(found.values(), key=str)


def _read_run(d: Path) -> dict:
    if not (d / "metrics.jsonl").is_file():
        raise ReportError(f"{d}: a run without metrics.jsonl (not started, or not a run of experiments/run.py)")
    if not (d / "config.yaml").is_file():
        raise ReportError(f"{d}: no config.yaml next to metrics.jsonl (agent, intervention and env unknown)")
    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
    except yaml.YAMLError as e:
        raise ReportError(f"{d / 'config.yaml'}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("run"), dict) or "agent" not in cfg \
            or "env" not in cfg["run"]:
        raise ReportError(f"{d / 'config.yaml'}: expected the keys agent, intervention and run.env")
    try:
        metrics = load_run(d)
    except PlotError as e:
        raise ReportError(str(e)) from None
    return {"path": d, "config": cfg, "agent": str(cfg["agent"]),
            "intervention": str(cfg.get("intervention") or "none"),
            "seed_base": int(cfg["run"].get("seed") or 0), "metrics": metrics}


def _freeze(v):
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    return v


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = _freeze(v)
    return out


def _fmt(v) -> str:
    """A config value as it appears in a label: lists as a,b; bools lower case; floats as Python prints them."""
    if isinstance(v, tuple):
        return ",".join(_fmt(x) for x in v)
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    return str(v)


def _short_names(keys: list[str]) -> dict[str, str]:
    """`grama.tau` -> `tau` where the part after the section is unambiguous among `keys`, else the full key."""
    tails = [k.split(".", 1)[-1] for k in keys]
    return {k: (t if tails.count(t) == 1 else k) for k, t in zip(keys, tails)}


def _method_params(run: dict) -> dict:
    """The hyperparameters that can make a method: the agent's and interventions' sections, METHOD_RUN_KEYS."""
    cfg = run["config"]
    sections = [run["agent"]] + [n for n in run["intervention"].split("+") if n != "none"]
    out = {}
    for s in sections:
        if isinstance(cfg.get(s), dict):
            out.update(_flatten(cfg[s], f"{s}."))
    flat_run = _flatten(cfg["run"], "run.")
    out.update({k: flat_run[k] for k in METHOD_RUN_KEYS if k in flat_run})
    return out


def _label_tasks(runs: list[dict]) -> None:
    """run["task"]: the env id, plus for a non-stationary env its kind, period and the env.* fields that
    differ between runs of that env and kind."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        env_cfg = run["config"].get("env") if isinstance(run["config"].get("env"), dict) else {}
        kind = str(env_cfg.get("nonstationary") or "none")
        env = f"continual:{env_cfg['suite']}" if env_cfg.get("suite") else str(run["config"]["run"]["env"])
        groups.setdefault((env, kind), []).append(run)
    for (env, kind), members in groups.items():
        if kind == "none":
            for run in members:
                run["task"] = env
            continue
        flats = [_flatten(r["config"].get("env") or {}) for r in members]
        keys = sorted({k for f in flats for k in f})
        varying = [k for k in keys if k not in ("nonstationary", "period", "suite")
                   and len({f.get(k) for f in flats}) > 1]
        for run, flat in zip(members, flats):
            extra = [f"period={_fmt(flat.get('period'))}"] + [f"{k}={_fmt(flat.get(k))}" for k in varying]
            run["task"] = f"{env} [{kind}, {', '.join(extra)}]"


def _base_label(agent: str, intervention: str) -> str:
    return agent if intervention == "none" else f"{agent}+{intervention}"


def _label_methods(runs: list[dict], group_by: list[str] | None) -> dict[str, dict[str, str]]:
    """Set run["method"]; returns {method: {key: value}} of the keys that label it."""
    params: dict[str, dict[str, str]] = {}
    if group_by:
        flats = [{"agent": r["agent"], "intervention": r["intervention"], **_flatten(r["config"])} for r in runs]
        for key in group_by:
            if not any(key in f for f in flats):
                some = sorted({k for f in flats for k in f if k.split(".")[-1] == key.split(".")[-1]})
                hint = f" (did you mean {', '.join(some[:4])}?)" if some else ""
                raise ReportError(f"--group-by {key!r} is in no run's config.yaml{hint}; valid: agent, intervention "
                                  f"or a dotted config key such as run.env or {runs[0]['agent']}.lr")
        rest = [k for k in group_by if k not in ("agent", "intervention")]
        short = _short_names(rest)
        for run, flat in zip(runs, flats):
            if "agent" in group_by and "intervention" in group_by:
                base = _base_label(run["agent"], run["intervention"])
            else:
                base = run["agent"] if "agent" in group_by else (run["intervention"] if "intervention" in group_by
                                                                  else "")
            values = {k: _fmt(flat.get(k, "-")) for k in rest}
            inner = ", ".join(f"{short[k]}={v}" for k, v in values.items())
            run["method"] = f"{base}({inner})" if base and inner else (base or inner)
            params[run["method"]] = values
        return params

    by_base: dict[tuple, list[dict]] = {}
    for run in runs:
        by_base.setdefault((run["agent"], run["intervention"]), []).append(run)
    for (agent, intervention), members in by_base.items():
        flats = [_method_params(r) for r in members]
        varying = set()
        for task in {r["task"] for r in members}:
            in_task = [f for r, f in zip(members, flats) if r["task"] == task]
            for k in {k for f in in_task for k in f}:
                if len({f.get(k, "<missing>") for f in in_task}) > 1:
                    varying.add(k)
        keys = sorted(varying)
        short = _short_names(keys)
        for run, flat in zip(members, flats):
            values = {k: _fmt(flat.get(k, "-")) for k in keys}
            base = _base_label(agent, intervention)
            run["method"] = f"{base}({', '.join(f'{short[k]}={v}' for k, v in values.items())})" if keys else base
            params[run["method"]] = values
    return params


def final_window(n: int, final_frac: float = 0.1) -> int:
    """How many of n values (log points, evaluations, measurements) a final score averages: ceil(final_frac * n),
    at least one. The one rule for every final score (reports and validation findings); rounding first keeps
    float noise out of the ceiling (0.1 * 30 is 3.0000000000000004)."""
    return max(1, math.ceil(round(final_frac * n, 9)))


def final_return(rows: list[dict], final_frac: float = 0.1, key: str = RETURN) -> tuple[float | None, int]:
    """(mean `key` over the last ceil(final_frac * n) of n rows (at least one), how many values it averaged);
    null and non-finite values are skipped; (None, 0) when the window holds none. `rows`: one seed's rows
    sorted by step. The training return (RETURN) windows all n rows (log points); any other key, i.e. the
    evaluation return, only the n rows that hold it (evaluations), so the fraction applies to the evaluations."""
    if key != RETURN:
        rows = [r for r in rows if r.get(key) is not None]
    k = final_window(len(rows), final_frac)
    vals = [float(r[key]) for r in rows[-k:] if _finite(r.get(key))]
    return (float(np.mean(vals)) if vals else None), len(vals)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class Scores:
    """Per-seed final returns of the runs, labelled by method and task (the output of load_scores).

    rows: one dict per (run dir, seed) with a final return: method, task, run (the run dir as found), seed
      (absolute: run.seed + index), final_return, n_returns (returns averaged); sorted by method, task, run, seed.
    runs: the loaded runs: path, config, agent, intervention, task, method, seed_base, metrics (plot.load_run).
    methods, tasks: sorted labels; params: {method: {hyperparameter: value}} that distinguish it.
    score: "eval" (final_return is of eval/episode_return) or "train" (of episode_return); key: that row key."""
    rows: list[dict]
    runs: list[dict]
    methods: list[str]
    tasks: list[str]
    params: dict[str, dict[str, str]]
    final_frac: float
    notes: list[str] = field(default_factory=list)
    score: str = "train"

    @property
    def key(self) -> str:
        return EVAL_RETURN if self.score == "eval" else RETURN

    def frame(self):
        """The rows as a pandas DataFrame (pandas comes with rliable)."""
        import pandas as pd
        return pd.DataFrame(self.rows, columns=["method", "task", "run", "seed", "final_return", "n_returns"])


def load_scores(paths, final_frac: float = 0.1, group_by: list[str] | None = None, score: str = "auto") -> Scores:
    """Find the runs under `paths`, label them by method and task, and compute every seed's final score.

    score: "auto" (the evaluation return when every run has eval/episode_return, else the training return,
    with a note), "eval" or "train"; Scores.score says which was used.
    Raises ReportError for no runs, a run without metrics.jsonl/config.yaml, a bad --group-by key, --score
    eval with a run without evaluations, or when no seed has a final score."""
    if not 0 < final_frac <= 1:
        raise ReportError(f"--final-frac must be in (0, 1], got {final_frac}")
    if score not in SCORES:
        raise ReportError(f"--score must be one of {', '.join(SCORES)}, got {score!r}")
    runs = [_read_run(d) for d in find_runs(paths)]
    try:
        key, why = choose_score(((str(r["path"]), r["metrics"]["numeric"]) for r in runs), score)
    except PlotError as e:
        raise ReportError(str(e)) from None
    _label_tasks(runs)
    params = _label_methods(runs, group_by)
    rows, notes = [], [why] if why else []
    window = "log points" if key == RETURN else "evaluations"
    for run in runs:
        for seed in run["metrics"]["seeds"]:
            value, n = final_return(run["metrics"]["rows"][seed], final_frac, key)
            if value is None:
                notes.append(f"{run['path']} seed {run['seed_base'] + seed}: no {key} in its last "
                             f"{100 * final_frac:g}% of {window}; left out")
                continue
            rows.append({"method": run["method"], "task": run["task"], "run": str(run["path"]),
                         "seed": run["seed_base"] + seed, "final_return": value, "n_returns": n, "_seed": seed})
    if not rows:
        raise ReportError(f"no seed of the runs has an {key} in its final {window} (runs too short?)")
    rows.sort(key=lambda r: (_natural(r["method"]), r["task"], r["run"], r["seed"]))
    runs.sort(key=lambda r: (_natural(r["method"]), r["task"], str(r["path"])))
    methods = sorted({r["method"] for r in rows}, key=_natural)
    tasks = sorted({r["task"] for r in rows})
    return Scores(rows, runs, methods, tasks, {m: params[m] for m in methods}, final_frac, notes,
                  "eval" if key == EVAL_RETURN else "train")


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------

def task_bounds(scores: Scores, normalize: str = "minmax") -> tuple[dict[str, tuple[float, float]], list[str]]:
    """{task: (random, reference)} so that normalised = (x - random) / (reference - random), and notes.

    "none": (0, 1) (raw scores); "minmax": the lowest and highest final return of the task over every run of
    the report (a task whose scores are all equal maps to 0: its scale is set to 1); a YAML file path:
    {task or env id: [random_score, reference_score]}, the task label looked up first."""
    notes = []
    if normalize == "none":
        return {t: (0.0, 1.0) for t in scores.tasks}, notes
    if normalize == "minmax":
        bounds = {}
        for t in scores.tasks:
            vals = [r["final_return"] for r in scores.rows if r["task"] == t]
            lo, hi = min(vals), max(vals)
            if hi == lo:
                notes.append(f"task {t}: every final return is {lo:g}; its normalised scores are 0")
                hi = lo + 1.0
            bounds[t] = (lo, hi)
        return bounds, notes
    path = Path(normalize)
    if not path.is_file():
        raise ReportError(f"--normalize must be none, minmax or a YAML file of env: [random_score, reference_score]; "
                          f"{normalize!r} is not a file")
    try:
        table = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(table, dict):
        raise ReportError(f"{path}: expected a mapping env: [random_score, reference_score]")
    env_of = {r["task"]: str(r["config"]["run"]["env"]) for r in scores.runs}
    bounds, missing = {}, []
    for t in scores.tasks:
        entry = table.get(t, table.get(env_of[t]))
        if entry is None:
            missing.append(t)
            continue
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(_finite(v) for v in entry)):
            raise ReportError(f"{path}: {t}: expected [random_score, reference_score], got {entry!r}")
        lo, hi = float(entry[0]), float(entry[1])
        if lo == hi:
            raise ReportError(f"{path}: {t}: random_score equals reference_score ({lo:g})")
        bounds[t] = (lo, hi)
    if missing:
        raise ReportError(f"{path} has no [random_score, reference_score] for {', '.join(missing)}")
    return bounds, notes


def _norm(x, bounds: tuple[float, float]):
    lo, hi = bounds
    return (np.asarray(x, dtype=np.float64) - lo) / (hi - lo)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------

@contextmanager
def _seeded(seed: int):
    """rliable's stratified bootstraps draw indices from numpy's GLOBAL generator (np.random.choice), not only
    from `random_state`: seed both, and give the global state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield np.random.RandomState(seed)
    finally:
        np.random.set_state(state)


def interval(scores, func, reps: int, seed: int, size: float = CONFIDENCE):
    """rliable.library.get_interval_estimates for one entry: (point estimate, (2, ...) CI), seeded."""
    from rliable import library
    with _seeded(seed) as rs, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # degenerate resamples (one seed, ties)
        point, ci = library.get_interval_estimates({"x": scores}, func, reps=reps, confidence_interval_size=size,
                                                   random_state=rs)
    return np.asarray(point["x"], dtype=np.float64), np.asarray(ci["x"], dtype=np.float64)


def aggregate_func(gap_threshold: float = 1.0):
    """(seeds x tasks) -> [IQM, mean, median, optimality gap], rliable.metrics' definitions."""
    from rliable import metrics

    def func(x):
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x), metrics.aggregate_median(x),
                         metrics.aggregate_optimality_gap(x, gap_threshold)])
    return func


@dataclass
class Matrix:
    """One method's normalised final scores: values[i, j] = entry i of tasks[j]; entries[j][i] = (run, seed)."""
    tasks: list[str]
    entries: list[list[tuple[str, int]]]
    values: np.ndarray


@dataclass
class Report:
    """Everything write_report draws and tabulates (the output of aggregate).

    bounds: {task: (random, reference)} of the normalisation; matrices: {method: Matrix};
    aggregates: {method: {name: (point, lo, hi)}} for AGGREGATES; poi: [(X, Y, P(X > Y), lo, hi)];
    profile_taus and profiles: {method: (fraction above tau, lo, hi)}; curves: {method: (steps, IQM, lo, hi)};
    metric_curves: {key: {method: {task: (steps, mean, lo, hi)}}}."""
    scores: Scores
    normalize: str
    bounds: dict
    matrices: dict
    aggregates: dict
    poi: list
    profile_taus: np.ndarray
    profiles: dict
    curves: dict
    metric_keys: list
    metric_curves: dict
    reps: int
    seed: int
    gap_threshold: float
    baseline: str | None
    notes: list = field(default_factory=list)
    phases: Phases | None = None


# --------------------------------------------------------------------------------------------------
# Phases of non-stationary runs (continual suites, plastic/suites.py)
# --------------------------------------------------------------------------------------------------

PHASE, PHASE_TASK = "nonstationary/phase", "nonstationary/task"


@dataclass
class Phases:
    """Per-phase scores of the runs whose rows carry `nonstationary/phase` (every non-stationary run).

    rows: one dict per (run dir, seed, phase): method, task, run, seed, phase, label (the phase's env id for a
      task sequence, else the run's env), final_return (the final-score rule of the report applied to the rows
      of that phase only), n_returns.
    table: {task: {method: [(phase, label, mean, lo, hi)]}}: mean over seeds with a 95% bootstrap CI.
    visits: {task: {method: [(label, first phase, last phase, mean change, lo, hi)]}}: for every label seen in
      more than one phase, the per-seed change of the final return from its first to its last phase, averaged
      over seeds (a negative change: lost performance on a task seen before; for permuted or re-drawn-physics
      suites every phase has the same label, so it compares the last phase with the first)."""
    rows: list
    table: dict
    visits: dict


def _phase_label(rows: list[dict], env: str) -> str:
    tasks = [r[PHASE_TASK] for r in rows if isinstance(r.get(PHASE_TASK), str)]
    return tasks[-1] if tasks else env


def phase_scores(scores: Scores, reps: int = 2000, seed: int = 0) -> Phases | None:
    """The per-phase scores of `scores`' non-stationary runs (None if no run has phases)."""
    from rliable import metrics
    rows = []
    for run in scores.runs:
        for s in run["metrics"]["seeds"]:
            by_phase: dict[int, list] = {}
            for r in run["metrics"]["rows"][s]:
                if _finite(r.get(PHASE)):
                    by_phase.setdefault(int(r[PHASE]), []).append(r)
            for k, prs in sorted(by_phase.items()):
                value, n = final_return(prs, scores.final_frac, scores.key)
                if value is not None:
                    rows.append({"method": run["method"], "task": run["task"], "run": str(run["path"]),
                                 "seed": run["seed_base"] + s, "phase": k,
                                 "label": _phase_label(prs, str(run["config"]["run"]["env"])),
                                 "final_return": value, "n_returns": n})
    if not rows:
        return None

    def mean_ci(values):
        point, ci = interval(np.asarray(values, np.float64).reshape(-1, 1),
                             lambda x: np.array([metrics.aggregate_mean(x)]), reps, seed)
        return float(point[0]), float(ci[0, 0]), float(ci[1, 0])

    table, visits = {}, {}
    for t in sorted({r["task"] for r in rows}):
        for m in scores.methods:
            mine = [r for r in rows if r["task"] == t and r["method"] == m]
            if not mine:
                continue
            cells = []
            for k in sorted({r["phase"] for r in mine}):
                at = [r for r in mine if r["phase"] == k]
                cells.append((k, at[0]["label"], *mean_ci([r["final_return"] for r in at])))
            table.setdefault(t, {})[m] = cells
            per_seed: dict[tuple, dict] = {}
            for r in mine:
                by_label = per_seed.setdefault((r["run"], r["seed"]), {})
                by_label.setdefault(r["label"], {})[r["phase"]] = r["final_return"]
            changes = []
            for label in dict.fromkeys(r["label"] for r in sorted(mine, key=lambda r: r["phase"])):
                seen = sorted({r["phase"] for r in mine if r["label"] == label})
                if len(seen) < 2:
                    continue
                first, last = seen[0], seen[-1]
                diffs = [v[label][last] - v[label][first] for v in per_seed.values()
                         if label in v and first in v[label] and last in v[label]]
                if diffs:
                    changes.append((label, first, last, *mean_ci(diffs)))
            if changes:
                visits.setdefault(t, {})[m] = changes
    return Phases(rows, table, visits)


def _matrices(scores: Scores, bounds: dict, notes: list) -> dict[str, Matrix]:
    out = {}
    for m in scores.methods:
        tasks = sorted({r["task"] for r in scores.rows if r["method"] == m})
        per_task = [[r for r in scores.rows if r["method"] == m and r["task"] == t] for t in tasks]
        n = min(len(p) for p in per_task)
        if any(len(p) != n for p in per_task):
            counts = ", ".join(f"{t}: {len(p)}" for t, p in zip(tasks, per_task))
            notes.append(f"method {m}: seeds per task differ ({counts}); its matrix uses the first {n} of each "
                         f"(by run dir and seed)")
        per_task = [p[:n] for p in per_task]
        values = np.array([[_norm(p[i]["final_return"], bounds[t]) for t, p in zip(tasks, per_task)]
                           for i in range(n)], dtype=np.float64).reshape(n, len(tasks))
        out[m] = Matrix(tasks, [[(r["run"], r["_seed"]) for r in p] for p in per_task], values)
    return out


def improvement_probability(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) averaged over tasks: per task, the fraction of (seed of X, seed of Y) pairs where X scores higher,
    ties counting one half. x: (runs_x, tasks), y: (runs_y, tasks).

    Equal to rliable.metrics.probability_of_improvement (its Mann-Whitney U / (n_x n_y), and its 0.5 for
    identical columns), vectorised: scipy's mannwhitneyu per task and bootstrap sample made the report ~50x
    slower (tests/test_report.py checks the equality)."""
    diff = x[:, None, :] - y[None, :, :]
    return float(np.mean((diff > 0).mean(axis=(0, 1)) + 0.5 * (diff == 0).mean(axis=(0, 1))))


def iqm_columns(x: np.ndarray) -> np.ndarray:
    """IQM of each column: the mean of the middle values after dropping int(0.25 n) from each end, as
    rliable.metrics.aggregate_iqm (scipy.stats.trim_mean(..., 0.25)) of each column, vectorised over columns."""
    n = x.shape[0]
    cut = int(0.25 * n)
    return np.sort(x, axis=0)[cut:n - cut].mean(axis=0)


def score_distribution(x: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Fraction of all (seed, task) scores above each tau: rliable.library.score_distributions, vectorised."""
    return (np.asarray(x).reshape(-1, 1) > np.asarray(taus).reshape(1, -1)).mean(axis=0)


def probability_of_improvement(mx: Matrix, my: Matrix, reps: int, seed: int):
    """(P(X > Y), lo, hi) on the tasks both have, with rliable's independent stratified bootstrap CI (seeds of X
    and of Y resampled separately within each task), or None without a common task."""
    common = [t for t in mx.tasks if t in my.tasks]
    if not common:
        return None
    x = mx.values[:, [mx.tasks.index(t) for t in common]]
    y = my.values[:, [my.tasks.index(t) for t in common]]
    point, ci = interval([x, y], lambda a, b: np.array([improvement_probability(a, b)]), reps, seed)
    return float(point.ravel()[0]), float(ci.ravel()[0]), float(ci.ravel()[1])


def _seed_returns(run: dict, seed: int, key: str = RETURN) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(steps with a finite `key`, those values, the steps of the grid, the last of them) of one seed of a run.
    The grid steps are every logged step for the training return, the steps of rows holding `key` (the
    evaluations) otherwise."""
    rows = run["metrics"]["rows"][seed]
    steps = np.array([r["step"] for r in rows if _finite(r.get(key))], dtype=np.int64)
    vals = np.array([r[key] for r in rows if _finite(r.get(key))], dtype=np.float64)
    grid = np.array([r["step"] for r in rows if key == RETURN or r.get(key) is not None], dtype=np.int64)
    return steps, vals, grid, int(grid[-1]) if len(grid) else int(rows[-1]["step"])


def sample_efficiency(scores: Scores, matrix: Matrix, bounds: dict, reps: int, seed: int):
    """(steps, IQM, lo, hi) of the normalised score return (scores.key) of the matrix's seeds, or None without a
    common step.

    Grid: every step logged by one of those seeds (for the evaluation return: every evaluation step), from the
    latest first-return step to the earliest last row (last evaluation) (at most CURVE_POINTS of them, evenly
    spaced); a seed's value at a step is its last return logged at or before it."""
    by_path = {str(r["path"]): r for r in scores.runs}
    series, all_steps = [], []
    for j, task in enumerate(matrix.tasks):
        for run_path, s in matrix.entries[j]:
            run = by_path[run_path]
            steps, vals, grid_steps, last = _seed_returns(run, s, scores.key)
            series.append((j, steps, _norm(vals, bounds[task]), last))
            all_steps.append(grid_steps)
    start = max(int(st[0]) for _, st, _, _ in series)
    stop = min(last for _, _, _, last in series)
    grid = np.unique(np.concatenate(all_steps))
    grid = grid[(grid >= start) & (grid <= stop)]
    if not len(grid):
        return None
    if len(grid) > CURVE_POINTS:
        grid = grid[np.unique(np.round(np.linspace(0, len(grid) - 1, CURVE_POINTS)).astype(int))]
    n, n_tasks = matrix.values.shape
    arr = np.empty((n, n_tasks, len(grid)))
    counters = [0] * n_tasks
    for j, steps, vals, _ in series:
        arr[counters[j], j] = vals[np.searchsorted(steps, grid, side="right") - 1]
        counters[j] += 1

    point, ci = interval(arr, lambda x: iqm_columns(x.reshape(-1, x.shape[-1])), reps, seed)
    return grid, point, ci[0], ci[1]


def _default_metric_patterns(keys: list[str]) -> list[str]:
    """dormant and GraMa ratios at the middle logged threshold (lower middle of an even count), srank."""
    patterns = []
    for family in DEFAULT_METRIC_FAMILIES:
        taus = {}
        for k in keys:
            m = re.fullmatch(re.escape(family) + r"([0-9.e+-]+)/[^/]+", k)
            if m:
                try:
                    taus[m.group(1)] = float(m.group(1))
                except ValueError:
                    pass
        if taus:
            ordered = sorted(taus, key=lambda t: taus[t])
            patterns.append(f"{family}{ordered[(len(ordered) - 1) // 2]}/*")
    if any(re.fullmatch(r"srank_delta_[^/]*/[^/]+", k) for k in keys):
        patterns.append("srank_delta_*/*")
    return patterns


def select_metrics(scores: Scores, patterns: list[str] | None) -> tuple[list[str], list[str]]:
    """(metric keys, notes): `patterns` (fnmatch) or the defaults over the runs' number keys; a pattern that
    matches nothing is a note. A pattern with fewer than two '/' matches network-level keys only."""
    numeric = sorted(set().union(*(r["metrics"]["numeric"] for r in scores.runs))
                     - {RETURN, EVAL_RETURN, "step", "seed"})
    notes = []
    if patterns is None:
        patterns = _default_metric_patterns(numeric)
        if not patterns:
            notes.append("no default plasticity metric (dormant_ratio_tau_*, grama_ratio_tau_*, srank_delta_*) "
                         "in the runs; no metric figures")
    chosen = set()
    for p in patterns:
        candidates = numeric if p.count("/") >= 2 else [k for k in numeric if k.count("/") <= 1]
        hits = [k for k in candidates if fnmatch.fnmatchcase(k, p)]
        if not hits:
            notes.append(f"--metrics {p!r} matches no metric of the runs; skipped")
        chosen.update(hits)
    return sorted(chosen, key=_natural), notes


def _pooled(runs: list[dict]) -> dict:
    """All seeds of `runs` as one plot.load_run-like run (seeds renumbered), for plot.curve."""
    rows = {}
    for run in runs:
        for s in run["metrics"]["seeds"]:
            rows[len(rows)] = run["metrics"]["rows"][s]
    steps = np.unique(np.concatenate([run["metrics"]["steps"] for run in runs]))
    return {"rows": rows, "seeds": list(rows), "steps": steps}


def aggregate(scores: Scores, normalize: str = "minmax", reps: int = 2000, seed: int = 0,
              gap_threshold: float = 1.0, baseline: str | None = None, metrics: list[str] | None = None) -> Report:
    """Normalise, then every statistic of the report: aggregates with CIs, probabilities of improvement,
    performance profiles, sample-efficiency curves and plasticity-metric curves.

    Raises ReportError for a bad normalisation, reps < 1, or a --baseline that is unknown or has nothing to be
    compared with. Deterministic given `scores` and the options."""
    if reps < 1:
        raise ReportError(f"--reps must be >= 1, got {reps}")
    if not 0 <= seed < 2**32:
        raise ReportError(f"--seed must be in [0, 2**32), got {seed}")
    if not math.isfinite(gap_threshold):
        raise ReportError(f"--gap-threshold must be a finite number, got {gap_threshold}")
    if baseline is not None:
        if baseline not in scores.methods:
            raise ReportError(f"--baseline {baseline!r} is not a method of the runs; valid: "
                              f"{', '.join(scores.methods)}")
        if len(scores.methods) < 2:
            raise ReportError(f"--baseline needs at least 2 methods to compare; the runs have 1 ({baseline})")
    notes = list(scores.notes)
    bounds, norm_notes = task_bounds(scores, normalize)
    notes += norm_notes
    matrices = _matrices(scores, bounds, notes)

    func = aggregate_func(gap_threshold)
    aggregates = {}
    for m, mx in matrices.items():
        point, ci = interval(mx.values, func, reps, seed)
        aggregates[m] = {name: (float(point[i]), float(ci[0, i]), float(ci[1, i])) for i, name in enumerate(AGGREGATES)}
    if len(scores.tasks) == 1:
        notes.append("one task: the aggregates are statistics over that task's seeds")
    partial = [m for m, mx in matrices.items() if len(mx.tasks) < len(scores.tasks)]
    if partial:
        notes.append(f"not every method ran every task ({', '.join(f'{m}: {len(matrices[m].tasks)}' for m in partial)} "
                     f"of {len(scores.tasks)}): their aggregates are over different task sets")

    poi = []
    methods = scores.methods
    if len(methods) < 2:
        notes.append("one method: no probability of improvement")
    elif baseline is not None:
        for m in methods:
            if m != baseline:
                p = probability_of_improvement(matrices[m], matrices[baseline], reps, seed)
                if p is None:
                    notes.append(f"{m} and {baseline} share no task: no probability of improvement")
                else:
                    poi.append((m, baseline, *p))
    else:
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                p = probability_of_improvement(matrices[a], matrices[b], reps, seed)
                if p is None:
                    notes.append(f"{a} and {b} share no task: no probability of improvement")
                    continue
                poi += [(a, b, *p), (b, a, 1.0 - p[0], 1.0 - p[2], 1.0 - p[1])]
        poi.sort(key=lambda r: (methods.index(r[0]), methods.index(r[1])))

    allv = np.concatenate([mx.values.ravel() for mx in matrices.values()])
    lo_t, hi_t = (float(allv.min()), float(allv.max())) if normalize == "none" else \
        (min(0.0, float(allv.min())), max(1.0, float(allv.max())))
    if hi_t == lo_t:
        hi_t = lo_t + 1.0
    taus = np.linspace(lo_t, hi_t, PROFILE_POINTS)
    profiles = {}
    for m, mx in matrices.items():
        point, ci = interval(mx.values, lambda x: score_distribution(x, taus), reps, seed)
        profiles[m] = (point, ci[0], ci[1])

    curves = {}
    for m, mx in matrices.items():
        c = sample_efficiency(scores, mx, bounds, reps, seed)
        if c is None:
            notes.append(f"method {m}: its runs share no logged step with a return; no sample-efficiency curve")
        else:
            curves[m] = c

    keys, metric_notes = select_metrics(scores, metrics)
    notes += metric_notes
    metric_curves = {}
    for key in keys:
        per_method = {}
        for m in methods:
            for t in scores.tasks:
                runs = [r for r in scores.runs if r["method"] == m and r["task"] == t]
                if runs:
                    steps, mean, lo, hi = curve(_pooled(runs), key, "ci95")
                    if len(steps):
                        per_method.setdefault(m, {})[t] = (steps, mean, lo, hi)
        if per_method:
            metric_curves[key] = per_method
        else:
            notes.append(f"metric {key}: never measured (only nulls); skipped")
    keys = [k for k in keys if k in metric_curves]
    return Report(scores, str(normalize), bounds, matrices, aggregates, poi, taus, profiles, curves, keys,
                  metric_curves, reps, seed, gap_threshold, baseline, notes, phase_scores(scores, reps, seed))


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------

def _colors(methods: list[str]) -> dict:
    return dict(zip(methods, plot_colors(len(methods))))


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version string: identical bytes across runs
    return path


def _score_label(rep: Report, final: bool = True) -> str:
    what = ("final " if final else "") + ("eval return" if rep.scores.score == "eval" else "return")
    return f"raw {what}" if rep.normalize == "none" else f"normalised {what}"


def _fig_aggregates(rep: Report, path: Path) -> Path:
    from matplotlib.figure import Figure
    methods = rep.scores.methods
    colors = _colors(methods)
    fig = Figure(figsize=(3.2 * len(AGGREGATES), 0.5 + 0.45 * len(methods) + 0.9), layout="constrained")
    axes = fig.subplots(1, len(AGGREGATES), sharey=True)
    ys = np.arange(len(methods))[::-1]
    for ax, name in zip(axes, AGGREGATES):
        for y, m in zip(ys, methods):
            point, lo, hi = rep.aggregates[m][name]
            ax.barh(y, hi - lo, left=lo, height=0.6, color=colors[m], alpha=0.75)
            ax.plot([point, point], [y - 0.3, y + 0.3], color="black", lw=1.6)
        title = f"{name} (threshold {rep.gap_threshold:g})" if name == "optimality gap" else name
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(_score_label(rep))
        ax.grid(axis="x", alpha=0.25)
    axes[0].set_yticks(ys, methods)
    fig.suptitle(f"95% stratified bootstrap CIs ({rep.reps} reps)", fontsize=9)
    return _save(fig, path)


def _fig_poi(rep: Report, path: Path) -> Path:
    from matplotlib.figure import Figure
    colors = _colors(rep.scores.methods)
    fig = Figure(figsize=(6.4, 0.7 + 0.42 * len(rep.poi) + 0.8), layout="constrained")
    ax = fig.subplots()
    ys = np.arange(len(rep.poi))[::-1]
    for y, (x, other, p, lo, hi) in zip(ys, rep.poi):
        ax.barh(y, hi - lo, left=lo, height=0.6, color=colors[x], alpha=0.75)
        ax.plot([p, p], [y - 0.3, y + 0.3], color="black", lw=1.6)
    ax.axvline(0.5, color="gray", ls="--", lw=0.8)
    ax.set_yticks(ys, [f"P({x} > {y})" for x, y, *_ in rep.poi])
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of improvement")
    ax.grid(axis="x", alpha=0.25)
    return _save(fig, path)


def _fig_profiles(rep: Report, path: Path) -> Path:
    from matplotlib.figure import Figure
    colors = _colors(rep.scores.methods)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for m, (prof, lo, hi) in rep.profiles.items():
        ax.plot(rep.profile_taus, prof, color=colors[m], lw=1.6, label=m)
        ax.fill_between(rep.profile_taus, lo, hi, color=colors[m], alpha=0.2, lw=0)
    ax.set_xlabel(f"{_score_label(rep)} (\u03c4)")
    ax.set_ylabel("fraction of runs with score > \u03c4")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _fig_curves(rep: Report, path: Path) -> Path:
    from matplotlib.figure import Figure
    colors = _colors(rep.scores.methods)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for m, (steps, iqm, lo, hi) in rep.curves.items():
        ax.plot(steps, iqm, color=colors[m], lw=1.6, label=m, marker="o" if len(steps) == 1 else None)
        ax.fill_between(steps, lo, hi, color=colors[m], alpha=0.2, lw=0)
    ax.set_xlabel("env steps")
    ax.set_ylabel("IQM of " + _score_label(rep, final=False))
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _fig_phases(rep: Report, path: Path) -> Path:
    """Final return per phase, one panel per task, a line per method with its 95% CI band."""
    from matplotlib.figure import Figure
    colors = _colors(rep.scores.methods)
    tasks = list(rep.phases.table)
    fig = Figure(figsize=(6.4, 3.6 * len(tasks)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(tasks), 1, squeeze=False)[:, 0])
    for ax, t in zip(axes, tasks):
        ticks = {}
        for m, cells in rep.phases.table[t].items():
            k, labels, mean, lo, hi = zip(*cells)
            ax.plot(k, mean, color=colors[m], lw=1.6, marker="o", label=m)
            ax.fill_between(k, lo, hi, color=colors[m], alpha=0.2, lw=0)
            ticks.update(zip(k, labels))
        short = {k: v.split(":")[1] if ":" in v else v for k, v in ticks.items()}  # the name within its family
        several = len(set(short.values())) > 1
        ax.set_xticks(sorted(short), [f"{k}: {short[k]}" if several else str(k) for k in sorted(short)],
                      fontsize=7, rotation=25 if several else 0, ha="right" if several else "center")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("phase")
        ax.set_ylabel("final " + ("evaluation" if rep.scores.score == "eval" else "training") + " return")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8)
    return _save(fig, path)


def write_phases_csv(rep: Report, path: Path) -> Path:
    """One row per (run dir, seed, phase) of the non-stationary runs."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["method", "task", "run", "seed", "phase", "label", "final_return", "n_returns", "score"])
        for r in rep.phases.rows:
            w.writerow([r["method"], r["task"], r["run"], r["seed"], r["phase"], r["label"], repr(r["final_return"]),
                        r["n_returns"], rep.scores.score])
    return Path(path)


def _fig_metric(rep: Report, family: str, panels: list, path: Path) -> Path:
    from matplotlib.figure import Figure
    methods, tasks = rep.scores.methods, rep.scores.tasks
    colors = _colors(methods)
    fig = Figure(figsize=(4.4 * len(panels), 3.2 * len(tasks) + 0.4), layout="constrained")
    axes = fig.subplots(len(tasks), len(panels), squeeze=False)
    for i, task in enumerate(tasks):
        for j, (key, panel) in enumerate(panels):
            ax = axes[i, j]
            for m in methods:
                c = rep.metric_curves[key].get(m, {}).get(task)
                if c is None:
                    continue
                steps, mean, lo, hi = c
                ax.plot(steps, mean, color=colors[m], lw=1.4, label=m, marker="o" if len(steps) == 1 else None)
                if np.any(hi > lo):
                    ax.fill_between(steps, lo, hi, color=colors[m], alpha=0.2, lw=0)
            if not ax.has_data():
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_title(f"{panel or family} \u2014 {task}" if len(tasks) > 1 else (panel or family), fontsize=9)
            ax.set_xlabel("env steps")
            ax.grid(alpha=0.25)
            if j == 0:
                ax.set_ylabel(family)
    shown = [m for m in methods if any(m in rep.metric_curves[key] for key, _ in panels)]
    from matplotlib.lines import Line2D
    axes[0, 0].legend(handles=[Line2D([], [], color=colors[m], lw=1.4, label=m) for m in shown], fontsize=7)
    fig.suptitle(f"{family}: mean over seeds, 95% band", fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Tables and the report
# --------------------------------------------------------------------------------------------------

def _num(x: float) -> str:
    return f"{x:.3f}"


def _cell(point: float, lo: float, hi: float) -> str:
    return f"{_num(point)} [{_num(lo)}, {_num(hi)}]"


def _md(s) -> str:
    return str(s).replace("|", "\\|")


def write_scores_csv(rep: Report, path: Path) -> Path:
    """One row per (run dir, seed) with a final return; `in_matrix` is 0 for seeds a method's matrix left out."""
    used = {(m, t, run, s) for m, mx in rep.matrices.items() for t, col in zip(mx.tasks, mx.entries)
            for run, s in col}
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["method", "task", "run", "seed", "final_return", "normalized", "n_returns", "in_matrix",
                    "score"])
        for r in rep.scores.rows:
            norm = float(_norm(r["final_return"], rep.bounds[r["task"]]))
            w.writerow([r["method"], r["task"], r["run"], r["seed"], repr(r["final_return"]), repr(norm),
                        r["n_returns"], int((r["method"], r["task"], r["run"], r["_seed"]) in used),
                        rep.scores.score])
    return Path(path)


def _values(runs: list[dict], key: str) -> str:
    """The distinct values of run.<key> among the runs' configs, as text ("10", "5, 10", "?" where unset)."""
    vals = {r["config"]["run"].get(key) for r in runs}
    return ", ".join(sorted(("?" if v is None else _fmt(v) for v in vals), key=_natural))


def _score_text(s: Scores) -> str:
    """report.md's score paragraph: which return, and how a seed's final score is taken from it."""
    frac = s.final_frac
    if s.score == "eval":
        return (f"**Score:** evaluation return (`{EVAL_RETURN}`, the mean over {_values(s.runs, 'eval_episodes')} "
                f"complete episodes of the deterministic policy per evaluation, every {_values(s.runs, 'eval_every')} "
                f"env steps and at the end). The final score of a seed is the mean `{EVAL_RETURN}` over its last "
                f"{100 * frac:g}% of evaluations (ceil({frac:g} n) of its n rows that hold an evaluation, at least "
                f"one).")
    return (f"**Score:** training return (`{RETURN}`, the mean over the training episodes that ended since the "
            f"previous log point, with exploration). The final score of a seed is the mean `{RETURN}` over its last "
            f"{100 * frac:g}% of log points (ceil({frac:g} n) of its n rows, at least one; null returns skipped).")


def markdown(rep: Report, figures: list[str]) -> str:
    """report.md: what was aggregated and how, the aggregate and P(improvement) tables, figure links, notes."""
    s = rep.scores
    n_seeds = len(s.rows)
    out = ["# Report", "",
           f"{len(s.runs)} run director{'y' if len(s.runs) == 1 else 'ies'}, {n_seeds} seed{'s' * (n_seeds != 1)}, "
           f"{len(s.methods)} method{'s' * (len(s.methods) != 1)}, {len(s.tasks)} task{'s' * (len(s.tasks) != 1)}.",
           "",
           _score_text(s), ""]
    if rep.normalize == "none":
        out.append("**Normalisation:** none (raw returns; aggregates across tasks mix their scales).")
    elif rep.normalize == "minmax":
        out.append("**Normalisation:** minmax per task: (x - lowest) / (highest - lowest) over the final returns of "
                   "every run of this report on that task (relative to these runs only).")
    else:
        out.append(f"**Normalisation:** (x - random) / (reference - random) with scores from `{rep.normalize}`.")
    out += ["", "| task | random (0) | reference (1) |", "|---|---|---|"]
    out += [f"| {_md(t)} | {rep.bounds[t][0]:.6g} | {rep.bounds[t][1]:.6g} |" for t in s.tasks]
    out += ["", "## Aggregates", "",
            f"Point estimate [95% CI], stratified bootstrap over seeds within tasks ({rep.reps} reps, seed "
            f"{rep.seed}); rliable's definitions: IQM over all seeds and tasks, mean and median of the per-task "
            f"means, optimality gap at threshold {rep.gap_threshold:g}.", "",
            "| method | tasks | seeds | " + " | ".join(AGGREGATES) + " |",
            "|---|---|---|" + "---|" * len(AGGREGATES)]
    for m in s.methods:
        mx = rep.matrices[m]
        cells = [_cell(*rep.aggregates[m][a]) for a in AGGREGATES]
        out.append(f"| {_md(m)} | {len(mx.tasks)} | {mx.values.shape[0]} | " + " | ".join(cells) + " |")
    out += ["", "## Probability of improvement", ""]
    if not rep.poi:
        out.append("None (fewer than two methods with a common task).")
    elif rep.baseline is not None:
        out += [f"P(method > {_md(rep.baseline)}) averaged over their common tasks, [95% CI].", "",
                f"| method | P(method > {_md(rep.baseline)}) |", "|---|---|"]
        out += [f"| {_md(x)} | {_cell(p, lo, hi)} |" for x, _, p, lo, hi in rep.poi]
    else:
        table = {(x, y): (p, lo, hi) for x, y, p, lo, hi in rep.poi}
        out += ["P(row > column) averaged over their common tasks, [95% CI].", "",
                "| P(row > column) | " + " | ".join(_md(m) for m in s.methods) + " |",
                "|---|" + "---|" * len(s.methods)]
        for x in s.methods:
            cells = ["\u2014" if x == y else (_cell(*table[(x, y)]) if (x, y) in table else "n/a") for y in s.methods]
            out.append(f"| {_md(x)} | " + " | ".join(cells) + " |")
    if rep.phases is not None:
        out += _phases_markdown(rep)
    out += ["", "## Figures", ""]
    out += [f"- [{name}]({name})" for name in figures]
    out += ["", "## Methods", "", "| method | hyperparameters | run directories |", "|---|---|---|"]
    for m in s.methods:
        hp = ", ".join(f"{k}={v}" for k, v in s.params[m].items()) or "\u2014"
        dirs = sorted({str(r["path"]) for r in s.runs if r["method"] == m})
        out.append(f"| {_md(m)} | {_md(hp)} | {_md(', '.join(dirs))} |")
    out += ["", "## Notes", ""]
    out += [f"- {_md(n)}" for n in rep.notes] or ["None."]
    return "\n".join(out) + "\n"


def _phases_markdown(rep: Report) -> list[str]:
    ph = rep.phases
    out = ["", "## Phases", "",
           f"Non-stationary runs, phase by phase (`nonstationary/phase` of the rows): the final "
           f"{'evaluation' if rep.scores.score == 'eval' else 'training'} return of each phase (the report's "
           f"final-score rule on that phase's rows), raw, mean over seeds [95% bootstrap CI, {rep.reps} reps]. "
           f"Every (run, seed, phase) is in phases.csv."]
    for t, per_method in ph.table.items():
        phases = sorted({c[0] for cells in per_method.values() for c in cells})
        labels = {c[0]: c[1] for cells in per_method.values() for c in cells}
        out += ["", f"### {_md(t)}", "", "| method | " + " | ".join(f"{k}: {_md(labels[k])}" for k in phases) + " |",
                "|---|" + "---|" * len(phases)]
        for m, cells in per_method.items():
            by = {c[0]: _cell(*c[2:]) for c in cells}
            out.append(f"| {_md(m)} | " + " | ".join(by.get(k, "n/a") for k in phases) + " |")
        if t in ph.visits:
            out += ["", "Change from the first to the last phase of each task seen more than once (last minus "
                    "first, per seed, mean [95% CI]; negative: performance lost on a task seen before):", "",
                    "| method | task | first phase | last phase | change |", "|---|---|---|---|---|"]
            for m, changes in ph.visits[t].items():
                out += [f"| {_md(m)} | {_md(label)} | {a} | {b} | {_cell(c, lo, hi)} |"
                        for label, a, b, c, lo, hi in changes]
    return out


def write_report(rep: Report, out_dir) -> list[Path]:
    """Write the figures, scores.csv and report.md into `out_dir` (created if needed); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [_fig_aggregates(rep, out / "aggregates.png")]
    if rep.poi:
        written.append(_fig_poi(rep, out / "probability_of_improvement.png"))
    written.append(_fig_profiles(rep, out / "performance_profile.png"))
    if rep.curves:
        written.append(_fig_curves(rep, out / "sample_efficiency.png"))
    taken = {"aggregates", "probability_of_improvement", "performance_profile", "sample_efficiency", "report",
             "scores", "phases"}
    for family, panels in group_keys(rep.metric_keys).items():
        written.append(_fig_metric(rep, family, panels, out / _filename(f"metric_{family}", taken)))
    if rep.phases is not None:
        written.append(_fig_phases(rep, out / "phases.png"))
        written.append(write_phases_csv(rep, out / "phases.csv"))
    written.append(write_scores_csv(rep, out / "scores.csv"))
    md = out / "report.md"
    md.write_text(markdown(rep, [p.name for p in written if p.suffix == ".png"]))
    written.append(md)
    return written


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="report.py", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUNS", help="run directories, directories holding them, or globs")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--final-frac", type=float, default=0.1, metavar="F",
                   help="fraction of each seed's last log points (evaluations, for the evaluation return) averaged "
                        "into its final score (default 0.1)")
    p.add_argument("--score", default="auto", choices=SCORES,
                   help="score eval/episode_return (eval), episode_return (train), or auto (default): the "
                        "evaluation return when every run has it, else the training return")
    p.add_argument("--normalize", default="minmax", metavar="none|minmax|FILE.yaml",
                   help="per-task normalisation (default minmax)")
    p.add_argument("--gap-threshold", type=float, default=1.0, metavar="G",
                   help="optimality-gap threshold on normalised scores (default 1)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--baseline", metavar="METHOD", help="compare every method with this one only")
    p.add_argument("--group-by", nargs="+", metavar="KEY",
                   help="keys that define a method: agent, intervention, dotted config keys (e.g. grama.tau)")
    p.add_argument("--metrics", nargs="+", metavar="PATTERN",
                   help="fnmatch patterns of plasticity metric keys to plot (quote them)")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)

    def fail(msg: str):
        p.exit(2, f"{p.prog}: error: {' '.join(str(msg).split())}\n")

    try:
        scores = load_scores(args.runs, final_frac=args.final_frac, group_by=args.group_by, score=args.score)
        rep = aggregate(scores, normalize=args.normalize, reps=args.reps, seed=args.seed,
                        gap_threshold=args.gap_threshold, baseline=args.baseline, metrics=args.metrics)
    except (ReportError, OSError) as e:
        fail(str(e))
    try:
        written = write_report(rep, args.out)
    except OSError as e:
        fail(f"cannot write to {args.out}: {e}")
    print(f"{len(scores.methods)} method(s), {len(scores.tasks)} task(s), {len(scores.rows)} seed(s); wrote "
          f"{len(written)} files to {args.out}/: {', '.join(w.name for w in written)}")
    print(f"score: {SCORE_NAMES[scores.key]} ({scores.key})")
    for n in rep.notes:
        print(f"note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
