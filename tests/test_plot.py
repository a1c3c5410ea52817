"""experiments/plot.py on synthetic metrics.jsonl files: curves against NumPy, events, PNGs, summary.csv, errors."""
import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from experiments.plot import curve, load_run, main, plot_runs
from experiments import plot as plot_mod

ROOT = Path(__file__).resolve().parent.parent
STEPS = [100, 200, 300, 400, 500, 600]
N = None

# per run, key and seed: the value at each of STEPS (None = null; a shorter list = the seed is behind)
RUN_A = {
    "episode_return": {0: [N, 2, 3, 4, 5, 6], 1: [1, 3, 5, 7, 9, 11], 2: [2, 4, N, 8, 10, 12]},
    "dormant_ratio_tau_0.025/critic": {0: [.1, .2, .3, .4, .5, .6], 1: [.2, N, .4, .4, .4, .4],
                                       2: [.3, .3, .3, .3, .3, .3]},
    "dormant_ratio_tau_0.025/actor": {0: [.0, .1, .1, .2, .2, .3], 1: [.1, .1, .1, .1, .1, .1],
                                      2: [.2, .2, .2, .2, .2, .2]},
    "dormant_ratio_tau_0.025/critic/hidden_0": {s: [.1 * s] * 6 for s in range(3)},
    "fau/critic/hidden_0": {s: [.5 + .1 * s] * 6 for s in range(3)},
    "loss/critic": {0: [3, 2, 1, 1, 1, 1], 1: [4, 3, 2, 2, 2, 2], 2: [5, 4, 3, 3, 3, N]},
    "q_mean": {s: [float(s)] * 6 for s in range(3)},
    "episode_length": {s: [200.0] * 6 for s in range(3)},
    "grama/events/critic": {0: [0, 0, 1, 1, 2, 2], 1: [0, 1, 1, 1, 1, 1], 2: [0, 0, 1, N, 1, 1]},
    "grama/events/actor": {s: [0] * 6 for s in range(3)},
    "nonstationary/task": {s: ["run"] * 3 + ["walk"] * 3 for s in range(3)},
    "nonstationary/phase": {s: [0, 0, 0, 1, 1, 1] for s in range(3)},
}
RUN_B = {  # seed 2 is one log point behind (no step 600); written shuffled, as after a resume
    "episode_return": {0: [0, 1, 2, 3, 4, 5], 1: [N, N, 2, 4, 6, 8], 2: [1, 1, 1, 1, 1]},
    "dormant_ratio_tau_0.025/critic": {0: [.5, .4, .3, .2, .1, .0], 1: [N, .2, .2, .2, .2, .2],
                                       2: [N, .1, .1, .1, .1]},
    "dormant_ratio_tau_0.025/actor": {s: [.1] * (6 - (s == 2)) for s in range(3)},
    "loss/critic": {0: [1, 1, 1, 1, 1, 1], 1: [2, 2, 2, 2, 2, 2], 2: [3, 3, 3, 3, 3]},
    "q_mean": {s: [1.0] * (6 - (s == 2)) for s in range(3)},
    "episode_length": {s: [100.0] * (6 - (s == 2)) for s in range(3)},
    "grama/events/critic": {0: [1, 1, 1, 2, 2, 2], 1: [0, 0, 0, 0, 0, 3], 2: [0, 0, 0, 0, 0]},
    "nonstationary/task": {0: ["run"] * 2 + ["walk"] * 4, 1: ["run"] * 2 + ["walk"] * 4,
                           2: ["run"] * 4 + ["walk"]},
}
EXPECTED_EVENTS = {"a": {"grama/events/critic": [200, 300, 500], "grama/events/actor": []},
                   "b": {"grama/events/critic": [100, 400, 600]}}
EXPECTED_SWITCHES = {"a": [400], "b": [300, 500]}


def rows_of(table):
    rows = []
    for seed in range(3):
        for i, step in enumerate(STEPS):
            if i >= len(table["episode_return"][seed]):
                continue
            row = {"step": step, "seed": seed, "sps": 1000.0, "episodes": i}
            row.update({k: v[seed][i] for k, v in table.items()})
            rows.append(row)
    return rows


def write_run(path: Path, table, shuffle=False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rows = rows_of(table)
    if shuffle:
        random.Random(0).shuffle(rows)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def runs(tmp_path):
    return write_run(tmp_path / "a", RUN_A), write_run(tmp_path / "b", RUN_B, shuffle=True)


def by_hand(table, key):
    """(steps, mean, std, n) from the table with NumPy: nulls and missing steps are NaN and left out."""
    m = np.full((3, len(STEPS)), np.nan)
    for seed, vals in table[key].items():
        for i, v in enumerate(vals):
            m[seed, i] = np.nan if v is None else v
    n = np.isfinite(m).sum(0)
    keep = n > 0
    m, n = m[:, keep], n[keep]
    mean = np.nanmean(m, axis=0)
    std = np.array([np.std(c[np.isfinite(c)], ddof=1) if k > 1 else 0.0 for c, k in zip(m.T, n)])
    return np.array(STEPS)[keep], mean, std, n


def test_load_run_groups_and_sorts_a_shuffled_file(runs):
    b = load_run(runs[1])
    assert b["label"] == "b" and b["seeds"] == [0, 1, 2]
    assert [r["step"] for r in b["rows"][0]] == STEPS
    assert [r["step"] for r in b["rows"][2]] == STEPS[:5]
    assert list(b["steps"]) == STEPS
    assert "nonstationary/task" in b["keys"] and "nonstationary/task" not in b["numeric"]
    assert "step" not in b["keys"] and "episode_return" in b["numeric"]


@pytest.mark.parametrize("name", ["a", "b"])
def test_events_and_switches_are_the_expected_steps(runs, name):
    run = load_run(runs[0] if name == "a" else runs[1])
    assert run["events"] == EXPECTED_EVENTS[name]
    assert run["switches"] == EXPECTED_SWITCHES[name]


@pytest.mark.parametrize("name, key", [(r, k) for r in "ab" for k in
                                       ["episode_return", "dormant_ratio_tau_0.025/critic", "loss/critic"]])
@pytest.mark.parametrize("band", ["ci95", "std", "none"])
def test_curve_matches_numpy(runs, name, key, band):
    table, run = (RUN_A, load_run(runs[0])) if name == "a" else (RUN_B, load_run(runs[1]))
    steps, mean, lo, hi = curve(run, key, band)
    want_steps, want_mean, std, n = by_hand(table, key)
    half = {"ci95": 1.96 * std / np.sqrt(n), "std": std, "none": 0 * std}[band]
    np.testing.assert_array_equal(steps, want_steps)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(lo, want_mean - half, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(hi, want_mean + half, rtol=1e-12, atol=1e-15)


def test_curve_skips_nulls_and_uses_per_step_n(runs):
    a, b = load_run(runs[0]), load_run(runs[1])
    steps, mean, lo, hi = curve(a, "episode_return")
    # step 100: seed 0 null -> mean of [1, 2] over n = 2 (not 1.0 as a zero would give)
    assert steps[0] == 100 and mean[0] == pytest.approx(1.5)
    assert lo[0] == pytest.approx(1.5 - 1.96 * np.std([1, 2], ddof=1) / np.sqrt(2))
    assert hi[0] == pytest.approx(2.48)
    # step 300: seed 2 null -> mean of [3, 5]; step 600: all three seeds
    assert mean[2] == pytest.approx(4.0) and mean[5] == pytest.approx(29 / 3)
    assert hi[5] - mean[5] == pytest.approx(1.96 * np.std([6, 11, 12], ddof=1) / np.sqrt(3))
    # b: only seed 0 measured the critic's dormant ratio at step 100 -> no band there
    steps, mean, lo, hi = curve(b, "dormant_ratio_tau_0.025/critic")
    assert steps[0] == 100 and mean[0] == lo[0] == hi[0] == pytest.approx(0.5)
    # b at step 600: seed 2 has no row -> n = 2
    steps, mean, lo, hi = curve(b, "episode_return")
    assert steps[-1] == 600 and mean[-1] == pytest.approx(6.5)
    assert hi[-1] - mean[-1] == pytest.approx(1.96 * np.std([5, 8], ddof=1) / np.sqrt(2))
    assert [len(x) for x in curve(b, "no/such_key")] == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="band"):
        curve(a, "q_mean", band="iqr")


def read_png(path: Path):
    assert path.stat().st_size > 5000
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return img


def test_plot_runs_writes_one_png_per_metric_family(runs, tmp_path):
    loaded = [load_run(p) for p in runs]
    written = plot_runs(loaded, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == sorted(["return.png", "dormant_ratio_tau_0.025.png", "loss.png", "q_mean.png", "summary.csv"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    shapes = {p.name: read_png(p).shape for p in written if p.suffix == ".png"}
    # one panel per network: the dormant figure (actor, critic) is about twice as wide as loss (critic)
    assert 1.8 < shapes["dormant_ratio_tau_0.025.png"][1] / shapes["loss.png"][1] < 2.2

    written = plot_runs(loaded, tmp_path / "layers", layers=True, band="none")
    names = {p.name for p in written}
    assert {"fau.png", "dormant_ratio_tau_0.025.png"} <= names
    width = read_png(tmp_path / "layers" / "dormant_ratio_tau_0.025.png").shape[1]
    assert 2.7 < width / shapes["loss.png"][1] < 3.3  # actor, critic, critic/hidden_0


def test_panels_draw_their_own_networks_events(runs):
    run = load_run(runs[0])
    fig = Figure()
    actor, critic = fig.subplots(1, 2)
    nets = {"actor", "critic"}
    plot_mod.draw_panel(actor, [run], "dormant_ratio_tau_0.025/actor", "actor", nets, "ci95", ["C0"], "t")
    plot_mod.draw_panel(critic, [run], "dormant_ratio_tau_0.025/critic", "critic", nets, "ci95", ["C0"], "t")

    def vlines(ax, kind):
        return sorted(float(seg[0][0]) for c in ax.collections if c.get_gid() == f"{kind}:a"
                      for seg in c.get_segments())
    assert vlines(critic, "resets") == [200, 300, 500]  # the critic's resets
    assert vlines(actor, "resets") == []                # the critic's resets stay off the actor's panel
    assert vlines(actor, "switches") == vlines(critic, "switches") == [400]  # task switches on every panel
    assert [line.get_label() for line in critic.get_lines()] == ["a"]


def test_summary_csv_holds_the_final_mean_per_run_and_key(runs, tmp_path):
    assert main([str(runs[0]), str(runs[1]), "--out", str(tmp_path / "out")]) == 0
    with (tmp_path / "out" / "summary.csv").open() as f:
        table = {(r["run"], r["key"]): r for r in csv.DictReader(f)}
    assert {k for _, k in table} == {"episode_return", "dormant_ratio_tau_0.025/critic",
                                     "dormant_ratio_tau_0.025/actor", "loss/critic", "q_mean"}
    want = {("a", "episode_return"): (600, 3, 29 / 3), ("b", "episode_return"): (600, 2, 6.5),
            ("a", "loss/critic"): (600, 2, 1.5), ("b", "loss/critic"): (600, 2, 1.5),
            ("a", "dormant_ratio_tau_0.025/critic"): (600, 3, (.6 + .4 + .3) / 3),
            ("b", "dormant_ratio_tau_0.025/critic"): (600, 2, 0.1), ("a", "q_mean"): (600, 3, 1.0)}
    for k, (step, n, mean) in want.items():
        assert int(table[k]["step"]) == step and int(table[k]["n_seeds"]) == n
        assert float(table[k]["mean"]) == pytest.approx(mean, rel=1e-12)


def test_metrics_patterns_restrict_the_figures(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(runs[0]), str(runs[1]), "--out", str(out), "--metrics", "loss/*", "sps"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "return.png", "sps.png", "summary.csv"]
    with (out / "summary.csv").open() as f:
        assert {r["key"] for r in csv.DictReader(f)} == {"episode_return", "loss/critic", "sps"}
    assert "wrote 4 files" in capsys.readouterr().out
    # a layer-level key only with --layers
    assert main([str(runs[0]), "--out", str(tmp_path / "l"), "--metrics", "fau/*", "--layers"]) == 0
    assert (tmp_path / "l" / "fau.png").is_file()


def test_help_describes_the_options():
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_help_text(capsys):
    with pytest.raises(SystemExit):
        main(["x", "--help"])
    out = capsys.readouterr().out
    for word in ("--out", "--metrics", "--x", "--band", "--layers", "--labels", "--score", "eval/episode_return",
                 "ci95", "summary.csv",
                 "return.png", "/events/", "nonstationary/", "null", "exit status 2"):
        assert word in out


def _case(tmp_path, runs, case):
    a = str(runs[0])
    if case == "no_file":
        (tmp_path / "nofile").mkdir()
        return [str(tmp_path / "nofile")], "no metrics.jsonl"
    if case == "no_dir":
        return [str(tmp_path / "missing")], "not a directory"
    if case == "empty":
        write_run(tmp_path / "e", RUN_A)
        (tmp_path / "e" / "metrics.jsonl").write_text("\n  \n")
        return [a, str(tmp_path / "e")], "empty"
    if case == "malformed":
        write_run(tmp_path / "m", RUN_A)
        lines = (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()
        lines[2] = lines[2][:40]
        (tmp_path / "m" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        return [str(tmp_path / "m")], f"{tmp_path / 'm' / 'metrics.jsonl'}:3: malformed line"
    if case == "no_step":
        write_run(tmp_path / "s", RUN_A)
        with (tmp_path / "s" / "metrics.jsonl").open("a") as f:
            f.write('{"seed": 0, "episode_return": 1.0}\n')
        return [str(tmp_path / "s")], "metrics.jsonl:19: malformed line, no integer 'step'"
    if case == "pattern":
        return [a, "--metrics", "loss/*", "nope*"], "--metrics 'nope*' matches no number key"
    if case == "layer_pattern":
        return [a, "--metrics", "fau/*"], "add --layers"
    if case == "labels":
        return [a, str(runs[1]), "--labels", "only-one"], "--labels got 1 labels for 2 RUN_DIRs"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no_file", "no_dir", "empty", "malformed", "no_step", "pattern",
                                  "layer_pattern", "labels"])
def test_errors_exit_2_with_one_line_and_keep_out(runs, tmp_path, capsys, case):
    argv, needle = _case(tmp_path, runs, case)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("plot.py: error: ") and "Traceback" not in err
    assert needle in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


# --------------------------------------------------------------------------------------------------
# The return that return.png draws: evaluation or training (--score)
# --------------------------------------------------------------------------------------------------

# eval/episode_return per seed at the evaluation steps only (the first log point past each 200 env steps and
# the last one); rows at other steps hold no eval/ key, as plastic/loop.py writes them
EVALS_A = {0: {200: 10.0, 400: 20.0, 600: 30.0}, 1: {200: 12.0, 400: 22.0, 600: 32.0},
           2: {200: 14.0, 400: 24.0, 600: 35.0}}
EVALS_B = {0: {200: 1.0, 400: 2.0, 600: 3.0}, 1: {200: 1.0, 400: 4.0, 600: 5.0}, 2: {200: 0.0, 400: 0.0, 500: 7.0}}


def add_evals(path: Path, evals) -> Path:
    """Add eval/episode_return (and eval/episode_length) to the rows of metrics.jsonl at `evals`' steps."""
    lines = []
    for line in (path / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        v = evals.get(row["seed"], {}).get(row["step"])
        if v is not None:
            row.update({"eval/episode_return": v, "eval/episode_length": 50.0})
        lines.append(json.dumps(row))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def eval_runs(tmp_path):
    return (add_evals(write_run(tmp_path / "ea", RUN_A), EVALS_A),
            add_evals(write_run(tmp_path / "eb", RUN_B, shuffle=True), EVALS_B))


def test_auto_score_draws_the_evaluation_return_when_every_run_has_it(eval_runs, runs, tmp_path, capsys):
    a, b = [load_run(p) for p in eval_runs]
    assert plot_mod.return_key([a, b]) == ("eval/episode_return", None)
    assert plot_mod.return_key([a, b], "train") == ("episode_return", None)
    # return.png's line: the mean over seeds at the evaluation steps only, with a marker at each
    fig = Figure()
    ax = fig.subplots()
    plot_mod.draw_panel(ax, [a], "eval/episode_return", None, set(), "ci95", ["C0"], "t", markers=True)
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [200, 400, 600] and line.get_marker() == "o"
    np.testing.assert_allclose(line.get_ydata(), [12.0, 22.0, 97 / 3])

    out = tmp_path / "out"
    assert main([str(eval_runs[0]), str(eval_runs[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "return.png: evaluation return (eval/episode_return)" in printed and "note:" not in printed
    # the eval keys are the return, not a metric family of their own
    assert sorted(p.name for p in out.iterdir()) == sorted(["return.png", "dormant_ratio_tau_0.025.png", "loss.png",
                                                           "q_mean.png", "summary.csv"])
    with (out / "summary.csv").open() as f:
        table = {(r["run"], r["key"]): r for r in csv.DictReader(f)}
    assert {k for _, k in table} == {"episode_return", "eval/episode_return", "dormant_ratio_tau_0.025/critic",
                                     "dormant_ratio_tau_0.025/actor", "loss/critic", "q_mean"}
    for k, (step, n, mean) in {("ea", "eval/episode_return"): (600, 3, 97 / 3),
                               ("eb", "eval/episode_return"): (600, 2, 4.0),
                               ("ea", "episode_return"): (600, 3, 29 / 3)}.items():
        assert int(table[k]["step"]) == step and int(table[k]["n_seeds"]) == n
        assert float(table[k]["mean"]) == pytest.approx(mean, rel=1e-12)

    # one run without evaluations: auto falls back to the training return and says why
    out = tmp_path / "mixed"
    assert main([str(eval_runs[0]), str(runs[0]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "return.png: training return (episode_return)" in printed
    assert f"note: --score auto: scoring the training return episode_return, not the evaluation return, because " \
           f"{runs[0]} has no eval/episode_return in its rows" in printed
    key, note = plot_mod.return_key([a, load_run(runs[0]), load_run(runs[1])])
    assert key == "episode_return" and f"{runs[0]} has no" in note and "(and 1 more of the 3 runs)" in note
    # with the training return drawn, the eval return can still be asked for as a metric
    assert main([str(eval_runs[0]), "--out", str(tmp_path / "t"), "--score", "train", "--metrics", "eval/*"]) == 0
    assert "return.png: training return (episode_return)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["eval.png", "return.png", "summary.csv"]
    # ... and with the evaluation return drawn, a pattern matching it plots only the rest
    assert plot_mod.select_keys([a], ["eval/*"], ret="eval/episode_return") == ["eval/episode_length"]


def test_score_eval_on_a_run_without_evaluations_is_a_one_line_error(eval_runs, runs, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main([str(eval_runs[0]), str(runs[1]), "--out", str(out), "--score", "eval"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("plot.py: error: --score eval: ") and "Traceback" not in err
    assert f"{runs[1]} has no eval/episode_return in its rows" in err
    assert not out.exists()
    with pytest.raises(plot_mod.PlotError, match="--score eval"):
        plot_runs([load_run(runs[0])], tmp_path / "out2", score="eval")
    assert not (tmp_path / "out2").exists()


def test_script_runs_as_a_file(runs, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "plot.py"), str(runs[0]), str(runs[1]),
                           "--out", str(out), "--labels", "base", "grama", "--band", "std",
                           "--metrics", "dormant*"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["dormant_ratio_tau_0.025.png", "return.png", "summary.csv"]
    read_png(out / "return.png")
    with (out / "summary.csv").open() as f:
        assert {r["run"] for r in csv.DictReader(f)} == {"base", "grama"}
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "plot.py"), str(tmp_path / "missing"),
                          "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a directory" in bad.stderr
