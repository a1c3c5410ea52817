"""The validation suite (experiments/validate.py, experiments/validation/): every finding's sweeps resolve at
every scale; the whole pipeline (expand, run, analyse, write the report) runs end to end at the smoke scale,
and the report's numbers are the runs' numbers; one-line errors. The scientific outcomes are in
docs/validation/ with their data, not asserted here."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.validation import (PLANNED, SCALES, VERDICTS, first_and_final, iqm_ci, mean_ci, poi_ci,
                                    registry)
from plastic import sweep as sw

ROOT = Path(__file__).resolve().parent.parent
FINDINGS = registry()


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_every_scale_resolves_and_paper_emits_an_sbatch(name, tmp_path):
    """Each scale's sweep loads and validates every task's config; the laptop scale keeps >= 5 seeds; the paper
    scale writes a Slurm array script (not submitted)."""
    f = FINDINGS[name]
    assert set(f.sweeps) == set(SCALES) and f.rule and f.claim and f.source and f.deviations
    for scale in SCALES:
        assert sw.plan(sw.load(f.sweeps[scale]), tmp_path / scale)
    assert sw.load(f.sweeps["laptop"]).seeds >= 5
    out = subprocess.run([sys.executable, "experiments/validate.py", name, "--scale", "paper", "--emit-sbatch",
                          "--root", str(tmp_path / "paper")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    script = list((tmp_path / "paper" / ".sweep").rglob("*.sbatch"))
    assert len(script) == 1 and "#SBATCH --array=" in script[0].read_text()
    n = len(sw.plan(sw.load(f.sweeps["paper"]), tmp_path / "paper"))
    assert f"--array=0-{n - 1}" in script[0].read_text()


def test_statistics_helpers_against_hand_computations():
    x, y = np.array([1.0, 2.0, 3.0, 4.0, 100.0]), np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    point, lo, hi = iqm_ci(x)
    assert point == pytest.approx(3.0) and lo <= point <= hi     # trim_mean(x, 0.25) drops 1 each end
    p, lo, hi = poi_ci(x, y)
    assert p == pytest.approx(np.mean([[a > b for b in y] for a in x]) + 0.5 * np.mean([[a == b for b in y] for a in x]))
    assert 0 <= lo <= p <= hi <= 1
    m, lo, hi = mean_ci(np.array([1.0, 2.0, 3.0]))
    assert m == 2.0 and 1.0 <= lo <= m <= hi <= 3.0


def test_smoke_pipeline_end_to_end(tmp_path):
    """validate.py at the smoke scale: runs the sweep, analyses the runs, writes the report, its figures, its
    per-run CSV and the verdict; the CSV's numbers are the runs' metrics.jsonl numbers."""
    name = "dormancy"
    root, out = tmp_path / "runs", tmp_path / "docs" / "validation"
    cmd = [sys.executable, "experiments/validate.py", name, "--scale", "smoke", "--root", str(root),
           "--out", str(out), "--no-progress", "--jobs", "2"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = (out / f"{name}-smoke.md").read_text()
    for heading in ("# Finding 1:", "**Verdict (smoke scale):", "## Claim", "## Verdict rule (written before the runs)",
                    "## How it was run", "## Deviations from the paper", "## Results", "Smoke scale"):
        assert heading in report
    assert "wall time of the runs:" in report and "min on" in report
    verdict = json.loads((out / f"{name}-smoke" / "verdict.json").read_text())
    assert verdict["verdict"] in VERDICTS and verdict["scale"] == "smoke"
    pngs = list((out / f"{name}-smoke").glob("*.png"))
    assert len(pngs) == 4 and all(p.stat().st_size > 1000 for p in pngs)
    for p in pngs:
        assert f"({name}-smoke/{p.name})" in report
    assert not (out.parent / "validation.md").exists()    # a smoke run never touches the summary

    rows = list(csv.DictReader((out / f"{name}-smoke" / "runs.csv").open()))
    assert len(rows) == 6 * 2                              # 3 methods x 2 replay ratios x 2 seeds
    assert {r["method"] for r in rows} == {f"{m} RR={rr}" for m in ("none", "redo", "grama") for rr in ("0.25", "1")}
    # the numbers are the runs' numbers: recompute two seeds' values from metrics.jsonl by hand
    for r in rows[:2] + rows[-2:]:
        lines = [json.loads(l) for l in (Path(r["run"]) / "metrics.jsonl").read_text().splitlines()]
        base = min(l["seed"] for l in lines)
        mine = [l for l in lines if l["seed"] == int(r["seed"]) - 0 * base]
        vals = [l["dormant_ratio_tau_0.025/q"] for l in mine if isinstance(l.get("dormant_ratio_tau_0.025/q"), float)]
        assert float(r["dormant_first"]) == pytest.approx(vals[0])
        k = max(1, math.ceil(0.1 * len(vals)))
        assert float(r["dormant_final"]) == pytest.approx(np.mean(vals[-k:]))
        evals = [l["eval/episode_return"] for l in mine if isinstance(l.get("eval/episode_return"), float)]
        assert float(r["eval_return"]) == pytest.approx(np.mean(evals[-max(1, math.ceil(0.1 * len(evals))):]))

    # a second call resumes nothing (every task done) and rewrites the same report from the same runs
    res = subprocess.run(cmd + ["--analyse-only"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / f"{name}-smoke" / "verdict.json").read_text())["verdict"] == verdict["verdict"]


def test_summary_lists_every_finding(tmp_path):
    from experiments.validation.report import summary_rows, write_summary
    out = tmp_path / "validation"
    (out / "dormancy").mkdir(parents=True)
    (out / "dormancy" / "verdict.json").write_text(json.dumps({"verdict": "inconclusive", "scale": "laptop"}))
    rows = summary_rows(FINDINGS, out)
    assert [r["number"] for r in rows] == list(range(1, 8))
    assert len(FINDINGS) + len([n for n, _ in PLANNED if n not in {f.number for f in FINDINGS.values()}]) == 7
    text = write_summary(out).read_text()
    assert "| 1 | Dormancy grows; ReDo and ReGraMa hold it down | `dormancy` | inconclusive | laptop | " \
           "[dormancy.md](validation/dormancy.md) |" in text


@pytest.mark.parametrize("args,message", [
    (["nope"], "unknown finding 'nope'; valid: dormancy"),
    ([], "give a finding"),
    (["dormancy", "--jobs", "0"], "--jobs must be >= 1"),
    (["dormancy", "--emit-sbatch"], "--emit-sbatch writes a Slurm script"),
])
def test_bad_input_one_line(args, message, tmp_path):
    res = subprocess.run([sys.executable, "experiments/validate.py", *args, "--root", str(tmp_path / "r"),
                          "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


def test_first_and_final_skip_nulls():
    run = {"metrics": {"rows": {0: [{"step": 1, "k": None}, {"step": 2, "k": 0.5}, {"step": 3, "k": 0.25},
                                    {"step": 4, "k": float("nan")}, {"step": 5, "k": 0.75}]}}}
    assert first_and_final(run, 0, "k") == (0.5, 0.75)
    assert first_and_final(run, 0, "missing") == (None, None)
