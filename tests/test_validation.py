"""The validation suite (experiments/validate.py, experiments/validation/): every finding's sweeps resolve at
every scale; the whole pipeline (expand, run, analyse, write the report) runs end to end at the smoke scale,
and the report's numbers are the runs' numbers; one-line errors. The scientific outcomes are in
docs/validation/ with their data, not asserted here."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.report import final_return, final_window
from experiments.validate import main as validate
from experiments.validation import (METRICS_OFF, SCALES, VERDICTS, first_and_final, iqm_ci, mean_ci, poi_ci, tail_mean,
                                    registry)
from experiments.validation.sanity import (CLEANRL_PYTHON_DEFAULT, CLEANRL_PYTHON_VAR, CLEANRL_REPO_DEFAULT,
                                           CLEANRL_REPO_VAR, REJAX_PYTHON_DEFAULT, REJAX_PYTHON_VAR, score_key)
from plastic import sweep as sw

ROOT = Path(__file__).resolve().parent.parent
FINDINGS = registry()
# the peers' own environments (sanity): the peer path runs where both exist, the --no-peers path elsewhere
PEER_ENVS = (os.environ.get(REJAX_PYTHON_VAR, REJAX_PYTHON_DEFAULT), os.environ.get(CLEANRL_PYTHON_VAR, CLEANRL_PYTHON_DEFAULT),
             os.environ.get(CLEANRL_REPO_VAR, CLEANRL_REPO_DEFAULT))


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_every_scale_resolves_and_paper_emits_an_sbatch(name, tmp_path):
    """Each scale's sweep loads and validates every task's config; the laptop scale keeps >= 5 seeds; the paper
    scale writes a Slurm array script (not submitted)."""
    f = FINDINGS[name]
    assert set(f.sweeps) == set(SCALES) and f.rule and f.claim and f.source and f.deviations
    for scale in SCALES:
        assert sw.plan(sw.load(f.sweeps[scale]), tmp_path / scale)
    laptop = sw.load(f.sweeps["laptop"])
    assert all(len(t.seeds) >= 5 for t in laptop.tasks)     # >= 5 seeds, vmapped in each task
    assert validate([name, "--scale", "paper", "--emit-sbatch", "--root", str(tmp_path / "paper")]) == 0
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


# per finding: a column of its runs.csv and the metrics.jsonl key it is read from (first and final values)
CHECKED = {"dormancy": ("dormant", "dormant_ratio_tau_0.025/q"), "activations": ("dormant_0", "dormant_ratio_tau_0/critic"),
           "swd": ("grad_l1", "grad_l1/critic"), "gtr": None,
           "plasticity": ("dormant", "dormant_ratio_tau_0.025/q"), "ne_least": ("fau", "fau/critic"), "sanity": None}


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_smoke_pipeline_end_to_end(name, tmp_path, capsys):
    """validate.py at the smoke scale: runs the sweep, analyses the runs, writes the report, its figures, its
    per-run CSV and the verdict; the CSV's numbers are the runs' metrics.jsonl numbers."""
    root, out = tmp_path / "runs", tmp_path / "docs" / "validation"
    args = [name, "--scale", "smoke", "--root", str(root), "--out", str(out), "--no-progress", "--jobs", "1"]
    peer = FINDINGS[name].peers is not None and all(Path(p).exists() for p in PEER_ENVS)
    if FINDINGS[name].peers is not None and not peer:
        args.append("--no-peers")
    # in this process (test_the_script_runs_from_a_checkout starts the script): the tasks run in a sweep worker
    assert validate(args) == 0, capsys.readouterr()
    stem = f"{name}-smoke"
    report = (out / f"{stem}.md").read_text()
    for heading in (f"# Finding {FINDINGS[name].number}:", "**Verdict (smoke scale):", "## Claim",
                    "## Verdict rule (written before the runs)", "## How it was run", "## Deviations from the paper",
                    "## Results", "Smoke scale", "wall time of the runs:", "**The rule's tests**"):
        assert heading in report
    verdict = json.loads((out / stem / "verdict.json").read_text())
    assert verdict["verdict"] in VERDICTS and verdict["scale"] == "smoke"
    pngs = sorted((out / stem).glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert sorted(re.findall(rf"\]\({stem}/([^)]+\.png)\)", report)) == [p.name for p in pngs]
    assert not (out.parent / "validation.md").exists()    # a smoke run never touches the summary

    sweep = sw.load(FINDINGS[name].sweeps["smoke"])
    rows = list(csv.DictReader((out / stem / "runs.csv").open()))
    peer_rows = [r for r in rows if r["run"].endswith(".json")]      # a peer's seeds (sanity: rejax, CleanRL)
    rows = [r for r in rows if r not in peer_rows]
    assert len(rows) == sum(len(t.seeds) for t in sweep.tasks)
    assert len(peer_rows) == (len(rows) if peer else 0)
    for r in peer_rows:     # the peer's final score is the mean of its last 10 % of evaluations (or episodes)
        got = json.loads(Path(r["run"]).read_text())
        returns = got["returns"][int(r["seed"])]
        assert float(r[score_key(got["pair"])]) == pytest.approx(np.mean(returns[-final_window(len(returns)):]))
    if FINDINGS[name].peers is not None and not peer:
        assert "no peer run" in report and verdict["verdict"] == "inconclusive"
    # the numbers are the runs' numbers: recompute some seeds' values from metrics.jsonl by hand
    for r in rows[:2] + rows[-2:]:
        lines = [json.loads(l) for l in (Path(r["run"]) / "metrics.jsonl").read_text().splitlines()]
        mine = [l for l in lines if l["seed"] == int(r["seed"])]   # base seed 0: the row's seed is the index
        evals = [l["eval/episode_return"] for l in mine if isinstance(l.get("eval/episode_return"), float)]
        assert float(r["eval_return"]) == pytest.approx(np.mean(evals[-final_window(len(evals)):]))
        if "eval_mean" in r:
            assert float(r["eval_mean"]) == pytest.approx(np.mean(evals))
        if r.get("train_return"):   # sanity: the training return, the CleanRL pairs' score
            train = [l["episode_return"] for l in mine if isinstance(l.get("episode_return"), float)]
            assert float(r["train_return"]) == pytest.approx(np.mean(train[-final_window(len(train)):]))
        if CHECKED[name]:
            column, key = CHECKED[name]
            vals = [l[key] for l in mine if isinstance(l.get(key), float)]
            assert float(r[f"{column}_first"]) == pytest.approx(vals[0])
            assert float(r[f"{column}_final"]) == pytest.approx(np.mean(vals[-final_window(len(vals)):]))

    # again with --analyse-only: nothing runs, the same runs give the same verdict
    assert validate(args + ["--analyse-only"]) == 0
    assert json.loads((out / stem / "verdict.json").read_text())["verdict"] == verdict["verdict"]


def test_summary_lists_every_finding(tmp_path):
    from experiments.validation.report import summary_rows, write_summary
    out = tmp_path / "validation"
    (out / "dormancy").mkdir(parents=True)
    (out / "dormancy" / "verdict.json").write_text(json.dumps({"verdict": "inconclusive", "scale": "laptop"}))
    rows = summary_rows(FINDINGS, out)
    assert [r["number"] for r in rows] == list(range(1, 8))
    text = write_summary(out).read_text()
    assert "| 1 | Dormancy grows; ReDo and ReGraMa hold it down | `dormancy` | inconclusive | laptop | " \
           "[dormancy.md](validation/dormancy.md) |" in text


@pytest.mark.parametrize("args,message", [
    (["nope"], "unknown finding 'nope'; valid: " + ", ".join(FINDINGS)),
    ([], "give a finding"),
    (["dormancy", "--jobs", "0"], "--jobs must be >= 1"),
    (["dormancy", "--emit-sbatch"], "--emit-sbatch writes a Slurm script"),
])
def test_bad_input_one_line(args, message, tmp_path, capsys):
    code = validate([*args, "--root", str(tmp_path / "r"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


def test_the_script_runs_from_a_checkout(tmp_path):
    """experiments/validate.py as a script (the tests above call its main): bad input, one line, exit code 2."""
    res = subprocess.run([sys.executable, "experiments/validate.py", "--jobs", "0", "dormancy", "--root",
                          str(tmp_path / "r"), "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and "--jobs must be >= 1" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


def test_first_and_final_skip_nulls():
    run = {"metrics": {"rows": {0: [{"step": 1, "k": None}, {"step": 2, "k": 0.5}, {"step": 3, "k": 0.25},
                                    {"step": 4, "k": float("nan")}, {"step": 5, "k": 0.75}]}}}
    assert first_and_final(run, 0, "k") == (0.5, 0.75)
    assert first_and_final(run, 0, "missing") == (None, None)


def test_tail_mean_windows_like_the_report():
    """A finding's final value and experiments/report.py's final score average the same window: 0.1 * 30 is 3
    values, not the 4 a float ceiling gives."""
    thirty = np.arange(30.0)
    assert final_window(30) == 3 and final_window(31) == 4 and final_window(3) == 1
    assert tail_mean(thirty) == 28.0
    rows = [{"step": i, "episode_return": v} for i, v in enumerate(thirty)]
    assert final_return(rows)[0] == tail_mean(thirty)


def test_metrics_off_names_every_metric_group():
    """METRICS_OFF turns off every `*_every` period of the metrics config, and names nothing else."""
    import dataclasses

    from plastic.config import MetricsConfig
    periods = {f"metrics.{f.name}" for f in dataclasses.fields(MetricsConfig) if f.name.endswith("_every")}
    assert set(METRICS_OFF) == periods and set(METRICS_OFF.values()) == {0}


def test_cleanrl_peer_keeps_finished_seeds(tmp_path, monkeypatch):
    """An interrupted CleanRL peer resumes at its first unfinished seed; a changed spec does not reuse them."""
    from experiments.validation import cleanrl_peer
    ran = []

    def fake(spec, seed, scratch):
        ran.append(seed)
        if seed == 2 and len(ran) == 3:
            raise SystemExit("stopped")              # the first attempt dies on seed 2
        return [1000 * (seed + 1)], [float(seed)], 1.0
    monkeypatch.setattr(cleanrl_peer, "run_seed", fake)
    spec = {"script": "s.py", "seeds": [0, 1, 2], "args": {"total-timesteps": 100}}
    with pytest.raises(SystemExit):
        cleanrl_peer.main(spec, tmp_path)
    out = cleanrl_peer.main(spec, tmp_path)
    assert ran == [0, 1, 2, 2]                       # seeds 0 and 1 were not run again
    assert out["returns"] == [[0.0], [1.0], [2.0]] and out["steps"] == [[1000], [2000], [3000]]
    cleanrl_peer.main({**spec, "args": {"total-timesteps": 200}}, tmp_path)
    assert ran == [0, 1, 2, 2, 0, 1, 2]             # another budget: nothing reused
