"""The notebooks run top to bottom headless (nbclient, a real Jupyter kernel) at a tiny size and produce their
figures: notebooks/sweep.ipynb runs a small sweep locally, notebooks/analysis.ipynb reports on its runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, env: dict) -> "nbformat.NotebookNode":
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return nb


def text_outputs(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_sweep_then_analysis_notebooks(tmp_path):
    root = tmp_path / "sweep"
    nb = execute("sweep.ipynb", {"PLASTIC_NB_ROOT": str(root), "PLASTIC_NB_STEPS": "600", "PLASTIC_NB_SEEDS": "2",
                                 "PLASTIC_NB_HIDDEN": "16,16"})
    out = text_outputs(nb)
    assert "3 task(s): 0 to run, 3 done" in out  # the table printed after the run
    assert (root / "figures" / "returns.png").stat().st_size > 1000
    names = sorted(p.name for p in root.iterdir() if (p / "metrics.jsonl").exists())
    assert names == ["dqn-grama-gymnax_CartPole-v1-s0-1", "dqn-none-gymnax_CartPole-v1-s0-1",
                     "dqn-redo-gymnax_CartPole-v1-s0-1"]

    report = tmp_path / "report"
    execute("analysis.ipynb", {"PLASTIC_NB_RUNS": str(root), "PLASTIC_NB_OUT": str(report), "PLASTIC_NB_REPS": "200"})
    assert (report / "report.md").read_text().count("dqn") >= 3
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert len(pngs) >= 4 and all((report / p).stat().st_size > 1000 for p in pngs)
