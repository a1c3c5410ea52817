"""A finding's report (docs/validation/NAME.md, its figures and CSV under NAME/) and the summary table
(docs/validation.md), written from the runs by experiments/validate.py."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import yaml

from experiments.validation import REPS, SCALES, SMOKE_REPS, VERDICTS, Finding, replications

SMOKE_NOTE = ("**Smoke scale: this report checks the pipeline only.** Its runs are a few thousand steps long and "
              f"its bootstrap CIs resample {SMOKE_REPS} times, not {REPS}; the verdict below means nothing about the "
              "finding.")


def _md_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_csv(rows: list, path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in keys})


def _wall(info: dict) -> str:
    if "wall_s" not in info:
        return "not recorded (the runs were made elsewhere, e.g. by the Slurm array)"
    s = info["wall_s"]
    return f"{s / 60:.1f} min on {info.get('machine', 'this machine')}, {info.get('jobs', 1)} task(s) at a time"


def write(finding: Finding, scale: str, root: Path, out: Path, info: dict, commit: str) -> dict:
    """Analyse the runs under `root` and write the report; returns {"verdict", "path"}."""
    with replications(SMOKE_REPS if scale == "smoke" else REPS):
        return _write(finding, scale, root, out, info, commit)


def _write(finding: Finding, scale: str, root: Path, out: Path, info: dict, commit: str) -> dict:
    from experiments.report import load_scores
    scores = load_scores([root], score="eval")   # the evaluation protocol's return, never training returns
    outcome = (finding.analyse(scores.runs, root, finding.sweeps[scale]) if finding.peers
               else finding.analyse(scores.runs))
    if outcome.verdict not in VERDICTS:
        raise ValueError(f"finding {finding.name}: verdict {outcome.verdict!r} is not one of {VERDICTS}")
    out.mkdir(parents=True, exist_ok=True)
    stem = finding.name if scale != "smoke" else f"{finding.name}-smoke"
    files = out / stem
    files.mkdir(exist_ok=True)
    figures = []
    for name, draw in outcome.figures.items():
        draw(files / name)
        figures.append(name)
    for name, rows in outcome.csv.items():
        write_csv(rows, files / name)
    sweep_yaml = yaml.safe_dump(finding.sweeps[scale], sort_keys=False, default_flow_style=None, width=110)
    seeds = sorted({(str(r["path"]), s) for r in scores.runs for s in r["metrics"]["seeds"]})
    lines = [f"# Finding {finding.number}: {finding.title}", ""]
    if scale == "smoke":
        lines += [SMOKE_NOTE, ""]
    lines += [f"**Verdict ({scale} scale): {outcome.verdict}.** {outcome.why}", "",
              "## Claim", "", finding.claim, "", f"Source: {finding.source}", "",
              "## Verdict rule (written before the runs)", "", finding.rule, "",
              "## How it was run", "",
              f"- command: `{info.get('command', f'python experiments/validate.py {finding.name} --scale {scale}')}`",
              f"- code: commit {commit}; report written {time.strftime('%Y-%m-%d %H:%M %Z')}",
              f"- wall time of the runs: {_wall(info)}",
              f"- runs: {len(scores.runs)} run directories, {len(seeds)} seeds in all, under `{root}`",
              "- scores: " + (finding.scores or "the evaluation protocol's `eval/episode_return` "
                              "(plastic/evaluation.py); a seed's final score is the mean over its last "
                              f"{int(100 * scores.final_frac)} % of evaluations (experiments/report.py)"), "",
              "The sweep (docs/sweeps.md format):", "", "```yaml", sweep_yaml.rstrip(), "```", "",
              "## Deviations from the paper", ""]
    lines += [f"- {d}" for d in finding.deviations] + [""]
    if finding.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in finding.notes] + [""]
    lines += ["## Results", ""]
    for t in outcome.tables:
        lines += [t, ""]
    for name in figures:
        lines += [f"![{name}]({stem}/{name})", ""]
    lines += ["Per-run data: " + ", ".join(f"[{n}]({stem}/{n})" for n in outcome.csv), ""]
    if scores.notes:
        lines += ["Notes from loading the runs:", ""] + [f"- {n}" for n in scores.notes] + [""]
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines))
    (files / "verdict.json").write_text(json.dumps({"finding": finding.name, "scale": scale,
                                                    "verdict": outcome.verdict, "why": outcome.why,
                                                    "commit": commit, "wall_s": info.get("wall_s"),
                                                    "written": time.strftime("%Y-%m-%d %H:%M %Z")}, indent=1))
    if scale != "smoke":
        write_summary(out)
    return {"verdict": outcome.verdict, "path": path}


def summary_rows(findings: dict, out: Path) -> list:
    """One row per finding, with its latest non-smoke verdict if a report exists."""
    rows = []
    for f in findings.values():
        v = out / f.name / "verdict.json"
        got = json.loads(v.read_text()) if v.is_file() else None
        rows.append({"number": f.number, "name": f.name, "title": f.title,
                     "verdict": got["verdict"] if got else "not run yet", "scale": got["scale"] if got else "",
                     "link": f"validation/{f.name}.md" if got else ""})
    return sorted(rows, key=lambda r: r["number"])


def write_summary(out: Path) -> Path:
    """docs/validation.md (next to the report directory `out`): every finding, its verdict and its report."""
    from experiments.validation import registry
    rows = summary_rows(registry(), out)
    lines = ["# Validation: the field's findings reproduced with this codebase", "",
             "Each finding has a report under [validation/](validation/) with the claim and its source, the "
             "verdict rule written before the runs, the exact command and every deviation from the paper, the "
             "wall time, rliable IQMs with 95 % stratified-bootstrap CIs, probabilities of improvement, figures "
             "and per-run data. Scores are evaluation returns (`eval/episode_return`), never training returns, except "
             "where a peer only logs training returns (finding 7's CleanRL pairs: training returns on both sides). "
             "A finding that does not reproduce is a result and is reported as such.", "",
             "Reproduce one: `python experiments/validate.py NAME` (laptop scale, this machine) or "
             "`python experiments/validate.py NAME --scale paper --emit-sbatch` (the paper's scale, one Slurm "
             f"array); scales: {', '.join(SCALES)}.", "",
             "| # | finding | name | verdict | scale | report |", "|---|---|---|---|---|---|"]
    for r in rows:
        link = f"[{r['name']}.md]({r['link']})" if r["link"] else ""
        name = f"`{r['name']}`" if r["name"] else ""
        lines.append(f"| {r['number']} | {r['title']} | {name} | {r['verdict']} | {r['scale']} | {link} |")
    path = out.parent / "validation.md"
    path.write_text("\n".join(lines) + "\n")
    return path
