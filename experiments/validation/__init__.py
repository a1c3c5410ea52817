"""The validation suite: findings of the plasticity literature reproduced with this codebase.

Each finding is a module of this package with one `FINDING` (a `Finding`): its claim and source, the verdict
rule (written before any run), the deviations of the laptop scale from the paper, one sweep per scale
(docs/sweeps.md format) and an `analyse` function that reads the runs and returns an `Outcome`.
`experiments/validate.py FINDING` runs the sweep and writes docs/validation/FINDING.md from the outcome.

Scales: `laptop` (this machine's reduced version: <= 60 min on 2 CPU cores, >= 5 vmapped seeds), `paper` (the
paper's agent, env, budget and seeds, for the Slurm launcher) and `smoke` (a few thousand steps, 2 seeds and
SMOKE_REPS bootstrap replications: the pipeline end to end, for tests; its verdicts mean nothing and its reports
say so).

Scores are the evaluation protocol's (`eval/episode_return`, plastic/evaluation.py), never training returns
(except where a peer logs only training returns: `Finding.scores` then says what is compared, on both sides);
statistics are rliable's (IQM with 95 % stratified-bootstrap CIs, probability of improvement), through
experiments/report.py.
"""
from __future__ import annotations

import importlib
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SCALES = ("laptop", "paper", "smoke")
VERDICTS = ("reproduced", "not reproduced", "inconclusive")
# one module per finding, in the order of docs/validation.md
MODULES = ("dormancy", "activations", "swd", "plasticity", "gtr", "ne_least", "sanity")
REPS = 2000              # bootstrap replications
SMOKE_REPS = 100         # at the smoke scale, whose verdicts mean nothing (the pipeline is checked, not the CIs)
BOOT_SEED = 0


@dataclass(frozen=True)
class Finding:
    name: str                 # the command-line name (experiments/validate.py NAME)
    number: int               # its row in docs/validation.md
    title: str
    claim: str                # the directional claim being tested
    source: str               # paper(s) with the figure or table
    rule: str                 # how the verdict is decided, written before the runs
    deviations: tuple         # every way the laptop scale departs from the paper's setting
    sweeps: dict              # scale -> sweep (dict, docs/sweeps.md)
    analyse: Callable         # (list of runs as experiments.report loads them) -> Outcome
    notes: tuple = ()         # anything else a reader should know (reconstructions, where a paper is silent)
    # a peer implementation run beside this project's runs: peers(scale, root, sweep) stores its results under
    # root (skipping what is there); then analyse is called as analyse(runs, root, sweep)
    peers: Callable | None = None
    scores: str = ""          # the report's "scores" line, where it is not the default (eval returns' last 10 %)


@dataclass
class Outcome:
    """What a finding's analysis concluded from the runs."""
    verdict: str                              # one of VERDICTS
    why: str                                  # the rule applied to the numbers, one paragraph
    tables: list = field(default_factory=list)     # markdown blocks (a title line and a table)
    figures: dict = field(default_factory=dict)    # file name -> draw(path) (matplotlib, PNG)
    csv: dict = field(default_factory=dict)        # file name -> rows (list of dicts): the per-run data


def registry() -> dict:
    """name -> Finding, in the order of MODULES."""
    out = {}
    for m in MODULES:
        f = importlib.import_module(f"experiments.validation.{m}").FINDING
        out[f.name] = f
    return out


# ---- reading the runs ------------------------------------------------------------------------------------
def seed_series(run: dict, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one seed's numeric `key` over its rows, rows without a number left out. Rows repeat
    the latest measured value of a metric (docs/metrics.md): with log_every equal to the metric's period,
    each row is one measurement."""
    steps, values = [], []
    for row in run["metrics"]["rows"][seed]:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(row["step"])
            values.append(float(v))
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


# every in-training metric group off, for findings that score returns only (tests/test_validation.py checks the
# groups against plastic.config.MetricsConfig)
METRICS_OFF = {f"metrics.{g}_every": 0 for g in ("activity", "grad", "rank", "churn", "ntk")}


def tail_mean(values, final_frac: float = 0.1) -> float:
    """Mean over the last `final_window(n, final_frac)` of n values (experiments/report.py's rule)."""
    from experiments.report import final_window
    v = np.asarray(values, dtype=np.float64)
    return float(v[-final_window(len(v), final_frac):].mean())


def first_and_final(run: dict, seed: int, key: str, final_frac: float = 0.1):
    """(first measured value, tail_mean of its values), or (None, None)."""
    _, v = seed_series(run, seed, key)
    if not len(v):
        return None, None
    return float(v[0]), tail_mean(v, final_frac)


def run_value(run: dict, dotted: str, default=None):
    """A value of the run's config.yaml by dotted key (`dqn.train_frequency`, `run.intervention`)."""
    node = run["config"]
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def per_seed_rows(runs: list, label: Callable, keys: dict, final_frac: float = 0.1) -> list:
    """One row per (run, seed): its label, absolute seed, run directory, and for each `name: key` of `keys`
    the first measured and the final value (`name_first`, `name_final`), and the final evaluation return
    (`eval_return`, experiments/report.py's final score with the same final_frac)."""
    from experiments.report import EVAL_RETURN, final_return
    rows = []
    for run in runs:
        for seed in run["metrics"]["seeds"]:
            row = {"method": label(run), "seed": run["seed_base"] + seed, "run": str(run["path"])}
            ret, _ = final_return(run["metrics"]["rows"][seed], final_frac, EVAL_RETURN)
            row["eval_return"] = ret
            for name, key in keys.items():
                row[f"{name}_first"], row[f"{name}_final"] = first_and_final(run, seed, key, final_frac)
            rows.append(row)
    rows.sort(key=lambda r: (r["method"], r["seed"]))
    return rows


def add_eval_mean(rows: list, runs: list, name: str = "eval_mean") -> list:
    """Adds `name` to every per-seed row: the mean of all the seed's evaluation returns (the return over the
    run, a sample-efficiency score), None where the seed has no evaluation."""
    by_run = {(str(r["path"]), r["seed_base"] + s): r for r in runs for s in r["metrics"]["seeds"]}
    for row in rows:
        run = by_run[row["run"], row["seed"]]
        _, v = seed_series(run, row["seed"] - run["seed_base"], "eval/episode_return")
        row[name] = float(v.mean()) if len(v) else None
    return rows


def phase_means(run: dict, seed: int, period: int) -> dict:
    """For a non-stationary run with a switch every `period` env steps: `phase_K`, the mean evaluation return in
    phase K (an evaluation after step s measures the policy trained up to s, so it belongs to phase
    (s - 1) // period, the phase its evaluation envs play in), and `after_switch`, the mean over the phases after
    the first of each phase's first evaluation (the return just after a switch)."""
    steps, v = seed_series(run, seed, "eval/episode_return")
    phase = (steps - 1) // period
    ks = sorted(set(phase.tolist()))
    out = {f"phase_{k}": float(v[phase == k].mean()) for k in ks}
    firsts = [v[phase == k][0] for k in ks if k > 0]
    out["after_switch"] = float(np.mean(firsts)) if firsts else None
    return out


def column(rows: list, method: str, name: str) -> np.ndarray:
    return np.asarray([r[name] for r in rows if r["method"] == method and r[name] is not None], dtype=np.float64)


# ---- statistics --------------------------------------------------------------------------------------------
@contextmanager
def replications(n: int):
    """The statistics below resample `n` times inside the block (REPS outside it)."""
    global REPS
    saved, REPS = REPS, n
    try:
        yield
    finally:
        REPS = saved


def iqm_ci(x) -> tuple[float, float, float]:
    """rliable IQM of the values with its 95 % bootstrap CI (one task: the seeds are the stratum)."""
    from rliable import metrics

    from experiments.report import interval
    x = np.asarray(x, dtype=np.float64).reshape(-1, 1)
    point, ci = interval(x, lambda m: np.array([metrics.aggregate_iqm(m)]), REPS, BOOT_SEED)
    return float(point.ravel()[0]), float(ci[0].ravel()[0]), float(ci[1].ravel()[0])


def poi_ci(x, y) -> tuple[float, float, float]:
    """P(X > Y) (rliable's probability of improvement, ties counting one half) with its 95 % CI, seeds of X
    and of Y resampled independently: x and y are one task's seeds, or [seeds, tasks] arrays (the tasks in the
    same order; P averaged over tasks, seeds resampled within each task)."""
    from experiments.report import Matrix, probability_of_improvement
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = (x.reshape(-1, 1), y.reshape(-1, 1)) if x.ndim == 1 else (x, y)
    tasks = [f"task{j}" for j in range(x.shape[1])]
    return probability_of_improvement(Matrix(tasks, [], x), Matrix(tasks, [], y), REPS, BOOT_SEED)


def mean_ci(d) -> tuple[float, float, float]:
    """Mean of the values (e.g. per-seed differences) with its 95 % percentile-bootstrap CI."""
    d = np.asarray(d, dtype=np.float64)
    rs = np.random.RandomState(BOOT_SEED)
    means = d[rs.randint(0, len(d), size=(REPS, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fmt_ci(t) -> str:
    point, lo, hi = t
    return f"{point:.3g} [{lo:.3g}, {hi:.3g}]"


def rule_tests(tests: list) -> tuple[str, str]:
    """`(why, markdown block)` of a verdict rule's tests, each `(name, (estimate, lo, hi), result word)`."""
    why = "; ".join(f"{name}: {fmt_ci(v)} ({res})" for name, v, res in tests)
    rows = ["| test | estimate [95 % CI] | result |", "|---|---|---|"]
    rows += [f"| {name} | {fmt_ci(v)} | {res} |" for name, v, res in tests]
    return why, "**The rule's tests**\n\n" + "\n".join(rows)


def per_method_block(table: list, what: str = "measurements") -> str:
    """A per-method markdown table under its standard heading."""
    return (f"**Per method** (final = the last 10 % of {what}; IQM over seeds with 95 % stratified-bootstrap CIs)"
            "\n\n" + "\n".join(table))


# ---- figures -------------------------------------------------------------------------------------------------
def panels(n: int, width: float = 5.0, height: float = 3.6, sharey: bool = True):
    """(figure, the row of its n axes) for a report figure (matplotlib, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, sharey=sharey)
    return fig, axes[0]


def save(fig, path) -> None:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(runs: list, key: str, path, line: Callable, panel: Callable) -> None:
    """`key` against env steps: one panel per `panel(run)`, one line per `line(run)` (runs of the same line and
    panel pooled): the mean over seeds at the steps every seed measured, with a min-max band."""
    names = sorted({panel(r) for r in runs})
    fig, axes = panels(len(names))
    for ax, name in zip(axes, names):
        group = [r for r in runs if panel(r) == name]
        for ln in sorted({line(r) for r in group}):
            series = [seed_series(r, s, key) for r in group if line(r) == ln for s in r["metrics"]["seeds"]]
            steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in series))) if series else []
            if not steps:
                continue
            vals = np.array([[dict(zip(s.tolist(), v))[t] for t in steps] for s, v in series])
            drawn = ax.plot(steps, vals.mean(0), label=f"{ln} ({len(series)} seeds)")[0]
            ax.fill_between(steps, vals.min(0), vals.max(0), color=drawn.get_color(), alpha=0.2)
        ax.set_title(name)
        ax.set_xlabel("env steps")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(key)
    save(fig, path)
