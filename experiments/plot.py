#!/usr/bin/env python
"""Plot return and plasticity-metric curves of one or more runs. See `python experiments/plot.py --help`.

Importable for notebooks (`from experiments.plot import load_run, curve, plot_runs`): only the standard library,
NumPy and matplotlib are used, and figures are drawn on `matplotlib.figure.Figure` objects without pyplot, so
importing this module neither needs JAX nor changes a notebook's matplotlib backend.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

BOOKKEEPING = ("step", "seed", "sps", "episodes", "episode_length")
RETURN = "episode_return"
EVAL_RETURN = "eval/episode_return"  # plastic/evaluation.py: deterministic policy, only at evaluation log points
EVAL_PREFIX = "eval/"
SCORES = ("auto", "eval", "train")
SCORE_NAMES = {RETURN: "training return", EVAL_RETURN: "evaluation return"}
BANDS = ("ci95", "std", "none")
Z95 = 1.96

DESCRIPTION = "Render episode-return and metric curves of one or more runs to PNG files (one line per run)."
EPILOG = """input: each RUN_DIR holds metrics.jsonl, one JSON object per line and per seed and log point, with
  `step` (env steps) and `seed`; other keys are numbers or null (null = not measured / no episode finished; nulls
  are skipped, never read as 0). Rows may be in any order (resumed runs): each seed is sorted by step.
  Keys: episode_return, eval/episode_return and eval/episode_length (evaluation log points only),
  <metric>/<network> (e.g. dormant_ratio_tau_0.025/critic), <metric>/<network>/<layer>,
  cumulative reset counters (any key containing /events/, e.g. grama/events/critic) and the task phase
  (nonstationary/...).
score (--score): which return return.png draws. auto (default): the evaluation return eval/episode_return
  (complete episodes of the deterministic policy, logged at evaluation log points only; plastic/evaluation.py)
  when every RUN_DIR has it, else the training return episode_return (mean over the training episodes that
  ended since the previous row, with exploration), with a printed note naming a run without evaluations;
  eval: the evaluation return, a run without it is an error; train: the training return.
outputs, in --out (created if needed; nothing in it is deleted):
  return.png   the chosen return vs env steps (evaluation return: a marker at each evaluation)
  METRIC.png   one figure per <metric> name, one panel per network (with --layers also one per layer);
               keys without a network (e.g. q_mean) get a figure of their own
  summary.csv  per run and key: the last step with a value, the number of seeds there and their mean
               (episode_return, eval/episode_return where a run has it, then the metrics)
curves: mean over seeds at each step, with a band over the seeds having a value at that step (n):
  ci95 = mean +- 1.96 * std / sqrt(n), std = mean +- std (std: sample standard deviation, ddof=1), none;
  no band where n = 1.
events: a thin vertical line in the run's colour at each step where a seed's reset counter rose since its previous
  row (counters start at 0), dashed; dotted where a nonstationary/ value changed between a seed's consecutive rows
  (task switch). Each distinct step is drawn once per run. A counter named .../events/NETWORK is drawn on that
  network's panels only (on every panel of figures without that network, and on return.png).
default metrics: every <metric>/<network> key except events, nonstationary/, eval/ and bookkeeping keys (step,
  seed, sps, episodes, episode_length), plus other number keys without a network (e.g. q_mean). --metrics
  patterns (fnmatch, e.g. 'dormant_*/critic' 'loss/*') choose among all number keys instead, bookkeeping,
  counters, eval/ and nonstationary/ ones included (not the return that return.png draws); layer-level keys
  need --layers.
errors (one line on stderr, exit status 2): a RUN_DIR without metrics.jsonl, an empty metrics.jsonl, a malformed
  line (file:line), a --metrics pattern that matches nothing, a --labels count that differs from the runs',
  --score eval with a run that has no eval/episode_return.
--metrics and --labels take several values: put the RUN_DIRs first, or last after --.
example: python experiments/plot.py runs/sac-none runs/sac-grama --out plots --metrics 'dormant*' 'loss/*'
"""


class PlotError(ValueError):
    """Bad input (missing or malformed metrics.jsonl, a pattern that matches nothing): one line, no traceback."""


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def _as_int(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _is_num(v) -> bool:
    return isinstance(v, (int, float))  # bools count (as 0/1); strings (e.g. a task name) and null do not


def is_event_key(key: str) -> bool:
    return "/events/" in key


def is_nonstationary_key(key: str) -> bool:
    return key.startswith("nonstationary/")


def is_eval_key(key: str) -> bool:
    return key.startswith(EVAL_PREFIX)


def is_layer_key(key: str) -> bool:
    """`<metric>/<network>/<layer>`; counters and nonstationary/ keys are never layer keys."""
    return key.count("/") >= 2 and not is_event_key(key) and not is_nonstationary_key(key)


def load_run(run_dir, label: str | None = None) -> dict:
    """Read RUN_DIR/metrics.jsonl.

    Returns a dict with
      rows:     {seed: [row, ...]} each seed's rows sorted by step (a repeated step keeps the later line)
      seeds:    sorted seed ids
      steps:    np.ndarray, sorted union of every seed's steps
      keys:     sorted keys seen in any row, `step` and `seed` left out
      numeric:  the subset of `keys` with at least one number
      events:   {counter key: sorted distinct steps (over seeds) at which the counter rose}
      switches: sorted distinct steps (over seeds) at which a nonstationary/ value changed
      label:    `label`, else the directory's name
      path:     the run directory (Path)
    Raises PlotError on a missing or empty file or a malformed line.
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        where = "not a directory" if not run_dir.is_dir() else "no metrics.jsonl in it"
        raise PlotError(f"{run_dir}: {where}")
    by_seed: dict[int, dict[int, dict]] = {}
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PlotError(f"{path}:{lineno}: malformed line, not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PlotError(f"{path}:{lineno}: malformed line, expected a JSON object")
            step, seed = _as_int(row.get("step")), _as_int(row.get("seed"))
            if step is None or seed is None:
                missing = "step" if step is None else "seed"
                raise PlotError(f"{path}:{lineno}: malformed line, no integer '{missing}'")
            row["step"], row["seed"] = step, seed
            by_seed.setdefault(seed, {})[step] = row
    if not by_seed:
        raise PlotError(f"{path}: empty file, no rows")

    rows = {s: [r for _, r in sorted(by_seed[s].items())] for s in sorted(by_seed)}
    keys, numeric = set(), set()
    for seed_rows in rows.values():
        for r in seed_rows:
            for k, v in r.items():
                keys.add(k)
                if _is_num(v):
                    numeric.add(k)
    keys -= {"step", "seed"}
    numeric -= {"step", "seed"}
    steps = np.unique(np.concatenate([np.array([r["step"] for r in rs], dtype=np.int64) for rs in rows.values()]))
    run = {"rows": rows, "seeds": sorted(rows), "steps": steps, "keys": sorted(keys), "numeric": sorted(numeric),
           "label": label if label is not None else (run_dir.resolve().name or str(run_dir)), "path": run_dir}
    run["events"] = {k: _event_steps(rows, k) for k in run["keys"] if is_event_key(k)}
    run["switches"] = _switch_steps(rows, [k for k in run["keys"] if is_nonstationary_key(k)])
    return run


def _event_steps(rows: dict, key: str) -> list[int]:
    """Steps of rows where the cumulative counter `key` exceeds its previous non-null value (0 before the first)."""
    out = set()
    for seed_rows in rows.values():
        prev = 0
        for r in seed_rows:
            v = r.get(key)
            if not _is_num(v) or not math.isfinite(v):
                continue
            if v > prev:
                out.add(r["step"])
            prev = v
    return sorted(out)


def _switch_steps(rows: dict, keys: list[str]) -> list[int]:
    """Steps of rows where any nonstationary/ value differs from the seed's previous non-null value of it."""
    out = set()
    for seed_rows in rows.values():
        for key in keys:
            prev = None
            for r in seed_rows:
                v = r.get(key)
                if v is None:
                    continue
                if prev is not None and v != prev:
                    out.add(r["step"])
                prev = v
    return sorted(out)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------

def values(run: dict, key: str) -> np.ndarray:
    """(seeds, steps) array of `key` over run["seeds"] x run["steps"]; NaN where null, missing or non-finite."""
    steps = run["steps"]
    out = np.full((len(run["seeds"]), len(steps)), np.nan)
    for i, seed in enumerate(run["seeds"]):
        seed_rows = run["rows"][seed]
        cols = np.searchsorted(steps, [r["step"] for r in seed_rows])
        for c, r in zip(cols, seed_rows):
            v = r.get(key)
            if _is_num(v):
                out[i, c] = v
    out[~np.isfinite(out)] = np.nan
    return out


def stats(run: dict, key: str):
    """(steps, mean, std, n) at the steps where at least one seed has a finite value of `key`.

    n: how many seeds have one there; std: sample standard deviation over them (ddof=1), 0 where n = 1."""
    v = values(run, key)
    finite = np.isfinite(v)
    n = finite.sum(axis=0)
    keep = n > 0
    v, finite, n = v[:, keep], finite[:, keep], n[keep]
    mean = np.where(finite, v, 0.0).sum(axis=0) / np.maximum(n, 1)
    ss = np.where(finite, (v - mean) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(np.where(n > 1, ss / np.maximum(n - 1, 1), 0.0))
    return run["steps"][keep], mean, std, n


def curve(run: dict, key: str, band: str = "ci95"):
    """(steps, mean, lo, hi) of `key` over seeds; band "ci95" (mean +- 1.96 std/sqrt(n)), "std" or "none".

    Empty arrays when no seed ever has a value of `key`."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}, got {band!r}")
    steps, mean, std, n = stats(run, key)
    if band == "ci95":
        half = Z95 * std / np.sqrt(np.maximum(n, 1))
    elif band == "std":
        half = std
    else:
        half = np.zeros_like(mean)
    return steps, mean, mean - half, mean + half


# --------------------------------------------------------------------------------------------------
# Which keys, which figures
# --------------------------------------------------------------------------------------------------

def has_eval(numeric) -> bool:
    """Whether a run (its `numeric` keys, as load_run gives them) logged the evaluation return."""
    return EVAL_RETURN in numeric


def choose_score(names_numeric, score: str = "auto") -> tuple[str, str | None]:
    """(return key, note) for `score` ("auto", "eval" or "train") over runs given as (name, numeric keys) pairs.

    auto: EVAL_RETURN when every run has it, else RETURN with a note naming a run without it; eval: EVAL_RETURN,
    a PlotError naming the first run without it; train: RETURN. The note is None unless auto fell back."""
    if score not in SCORES:
        raise PlotError(f"--score must be one of {', '.join(SCORES)}, got {score!r}")
    pairs = list(names_numeric)
    if score == "train":
        return RETURN, None
    missing = [name for name, numeric in pairs if not has_eval(numeric)]
    if not missing:
        return EVAL_RETURN, None
    more = f" (and {len(missing) - 1} more of the {len(pairs)} runs)" if len(missing) > 1 else ""
    if score == "eval":
        raise PlotError(f"--score eval: {missing[0]} has no {EVAL_RETURN} in its rows{more} (evaluation off, "
                        f"run.eval_every 0, or not reached); use --score train or auto")
    return RETURN, (f"--score auto: scoring the training return {RETURN}, not the evaluation return, because "
                    f"{missing[0]} has no {EVAL_RETURN} in its rows{more}")


def return_key(runs: list[dict], score: str = "auto") -> tuple[str, str | None]:
    """choose_score over load_run results, runs named by their directories."""
    return choose_score(((str(r["path"]), r["numeric"]) for r in runs), score)


def default_metric(key: str) -> bool:
    return (key != RETURN and key not in BOOKKEEPING and not is_event_key(key) and not is_nonstationary_key(key)
            and not is_eval_key(key) and key.count("/") <= 1)


def select_keys(runs: list[dict], metrics=None, layers: bool = False, ret: str = RETURN) -> list[str]:
    """Metric keys to plot (`ret`, the return that return.png draws, left out; eval/ keys only through `metrics`).
    Raises PlotError for a pattern that matches nothing."""
    numeric = sorted(set().union(*(r["numeric"] for r in runs)))
    if metrics is None:
        return [k for k in numeric if default_metric(k) or (layers and is_layer_key(k))]
    candidates = [k for k in numeric if k not in ("step", "seed") and (layers or not is_layer_key(k))]
    chosen = set()
    for pattern in metrics:
        hits = [k for k in candidates if fnmatch.fnmatchcase(k, pattern)]
        if not hits:
            hint = ""
            if not layers and any(fnmatch.fnmatchcase(k, pattern) for k in numeric if is_layer_key(k)):
                hint = " (it matches layer-level keys: add --layers)"
            elif pattern in ("step", "seed"):
                hint = " (step and seed are not metrics)"
            raise PlotError(f"--metrics {pattern!r} matches no number key of the runs{hint}")
        chosen.update(hits)
    chosen.discard(ret)
    return sorted(chosen)


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def group_keys(keys: list[str]) -> dict[str, list[tuple[str, str | None]]]:
    """{figure name: [(key, panel), ...]}: `<metric>/<rest>` -> figure <metric>, panel <rest>; a key without
    '/' -> a figure of its own with one panel (None)."""
    groups: dict[str, list] = {}
    for k in keys:
        metric, _, panel = k.partition("/")
        groups.setdefault(metric, []).append((k, panel or None))
    return {m: sorted(v, key=lambda kp: _natural(kp[1] or "")) for m, v in sorted(groups.items())}


def _filename(name: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "metric"
    base, i = stem, 2
    while stem.lower() in taken:
        stem, i = f"{base}_{i}", i + 1
    taken.add(stem.lower())
    return stem + ".png"


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------

def _colors(n: int):
    from matplotlib import colormaps
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _event_steps_for(run: dict, network: str | None, figure_networks: set[str]) -> list[int]:
    out = set()
    for key, steps in run["events"].items():
        target = key.split("/events/", 1)[1]
        if network is None or target not in figure_networks or target == network:
            out.update(steps)
    return sorted(out)


def draw_panel(ax, runs, key, panel, figure_networks, band, colors, title, markers=False) -> tuple[bool, bool]:
    """One panel: a mean line and band per run (`markers`: a marker at every point), then its resets and task
    switches; returns (any reset, any switch) drawn."""
    network = panel.split("/")[0] if panel else None
    any_reset = any_switch = False
    for run, color in zip(runs, colors):
        steps, mean, lo, hi = curve(run, key, band)
        if len(steps):
            mark = {"marker": "o", "ms": 3.5} if markers else {"marker": "o" if len(steps) == 1 else None}
            ax.plot(steps, mean, color=color, lw=1.4, label=run["label"], **mark)
            if band != "none" and np.any(hi > lo):
                ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
    ylim = ax.get_ylim() if ax.has_data() else None
    for run, color in zip(runs, colors):
        resets = _event_steps_for(run, network, figure_networks)
        if resets:
            any_reset = True
            ax.vlines(resets, 0, 1, transform=ax.get_xaxis_transform(), colors=[color], linestyles="--",
                      lw=0.7, alpha=0.35, gid=f"resets:{run['label']}")
        if run["switches"]:
            any_switch = True
            ax.vlines(run["switches"], 0, 1, transform=ax.get_xaxis_transform(), colors=[color], linestyles=":",
                      lw=0.9, alpha=0.45, gid=f"switches:{run['label']}")
    if ylim is not None:
        ax.set_ylim(ylim)
    if not ax.has_data():
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("env steps")
    ax.grid(alpha=0.25)
    return any_reset, any_switch


def _figure(runs, panels, band, colors, titles, ylabel, path: Path, markers: bool = False) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    n = len(panels)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    figure_networks = {p.split("/")[0] for _, p in panels if p}
    any_reset = any_switch = False
    for i, ((key, panel), title) in enumerate(zip(panels, titles)):
        reset, switch = draw_panel(axes[i], runs, key, panel, figure_networks, band, colors, title, markers)
        any_reset, any_switch = any_reset or reset, any_switch or switch
        if i % ncols == 0:
            axes[i].set_ylabel(ylabel(key))
    for ax in axes[n:]:
        ax.set_visible(False)
    mark = {"marker": "o", "ms": 3.5} if markers else {}
    handles = [Line2D([], [], color=c, lw=1.4, label=run["label"], **mark) for run, c in zip(runs, colors)]
    if any_reset:
        handles.append(Line2D([], [], color="gray", ls="--", lw=0.8, label="reset"))
    if any_switch:
        handles.append(Line2D([], [], color="gray", ls=":", lw=0.9, label="task switch"))
    axes[0].legend(handles=handles, fontsize=7 if len(handles) > 4 else 8, loc="best")
    fig.savefig(path, dpi=110)
    return path


def plot_runs(runs: list[dict], out_dir, metrics=None, band: str = "ci95", layers: bool = False,
              score: str = "auto") -> list[Path]:
    """Write return.png, one PNG per metric family and summary.csv into `out_dir`; returns the paths written.

    runs: load_run results (one curve each, in their `label`); metrics: fnmatch patterns over keys, None for
    the defaults; band: "ci95", "std" or "none"; layers: also plot <metric>/<network>/<layer> keys; score:
    which return return.png draws ("auto", "eval", "train"; return_key says which and why).
    Raises PlotError (before anything is written) when a pattern matches nothing or a run lacks the score."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}, got {band!r}")
    runs = list(runs)
    if not runs:
        raise PlotError("no runs to plot")
    ret, _ = return_key(runs, score)
    keys = select_keys(runs, metrics, layers, ret)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = _colors(len(runs))
    name = SCORE_NAMES[ret]
    written = [_figure(runs, [(ret, None)], band, colors, [f"{name} ({ret})"], lambda k: name, out / "return.png",
                       markers=ret == EVAL_RETURN)]
    taken = {"return", "summary"}
    for metric, panels in group_keys(keys).items():
        titles = [f"{metric} \u2014 {p}" if p else metric for _, p in panels]
        written.append(_figure(runs, panels, band, colors, titles, lambda k: k.partition("/")[0],
                               out / _filename(metric, taken)))
    returns = [RETURN] + [EVAL_RETURN] * any(has_eval(r["numeric"]) for r in runs)
    written.append(write_summary(runs, returns + [k for k in keys if k not in returns], out / "summary.csv"))
    return written


def summary(runs: list[dict], keys: list[str]) -> list[dict]:
    """Per run and key: the last step where a seed has a value, the number of seeds with one, their mean."""
    table = []
    for run in runs:
        for key in keys:
            steps, mean, _, n = stats(run, key)
            if len(steps):
                table.append({"run": run["label"], "key": key, "step": int(steps[-1]), "n_seeds": int(n[-1]),
                              "mean": float(mean[-1])})
    return table


def write_summary(runs: list[dict], keys: list[str], path: Path) -> Path:
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run", "key", "step", "n_seeds", "mean"])
        w.writeheader()
        for row in summary(runs, keys):
            w.writerow({**row, "mean": repr(row["mean"])})
    return Path(path)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plot.py", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories holding metrics.jsonl")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for the PNGs and summary.csv")
    p.add_argument("--metrics", nargs="+", metavar="PATTERN",
                   help="fnmatch patterns over metric keys to plot instead of the defaults (quote them)")
    p.add_argument("--x", default="step", choices=["step"], help="x axis: env steps per seed (default step)")
    p.add_argument("--band", default="ci95", choices=BANDS,
                   help="band over seeds: ci95 (default), std, or none")
    p.add_argument("--layers", action="store_true", help="also plot per-layer keys as extra panels")
    p.add_argument("--score", default="auto", choices=SCORES,
                   help="return.png: eval/episode_return (eval), episode_return (train), or auto (default): the "
                        "evaluation return when every run has it, else the training return")
    p.add_argument("--labels", nargs="+", metavar="LABEL",
                   help="one legend label per RUN_DIR, in order (default: the directories' names)")
    return p


def _default_labels(dirs: list[Path]) -> list[str]:
    names = [d.resolve().name or str(d) for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [str(Path(*d.resolve().parts[-2:])) for d in dirs]  # same names: add the parent's


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)

    def fail(msg: str):
        p.exit(2, f"{p.prog}: error: {' '.join(str(msg).split())}\n")

    dirs = [Path(d) for d in args.runs]
    if args.labels is not None and len(args.labels) != len(dirs):
        fail(f"--labels got {len(args.labels)} labels for {len(dirs)} RUN_DIRs")
    labels = args.labels or _default_labels(dirs)
    try:
        runs = [load_run(d, label) for d, label in zip(dirs, labels)]
    except (PlotError, OSError) as e:
        fail(str(e))
    try:
        ret, note = return_key(runs, args.score)
        written = plot_runs(runs, args.out, metrics=args.metrics, band=args.band, layers=args.layers,
                            score=args.score)
    except PlotError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write to {args.out}: {e}")
    print(f"wrote {len(written)} files to {args.out}/: {', '.join(w.name for w in written)}")
    print(f"return.png: {SCORE_NAMES[ret]} ({ret})")
    if note:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
