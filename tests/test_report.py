"""experiments/report.py: final scores, method/task labels, normalisation, rliable aggregates against hand
computations, probability of improvement, profiles and curves, byte-identical outputs, one-line CLI errors, and
a report on two real tiny training runs."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread
from scipy.stats import trim_mean

from experiments import report as rp
from experiments.report import ReportError, aggregate, final_return, load_scores, main, write_report

ROOT = Path(__file__).resolve().parent.parent
REPS = 200  # enough for CIs in tests, quick


def write_run(path: Path, returns: dict, agent="sac", intervention="none", env="Pendulum-v1", seed=0,
              hp=None, env_cfg=None, steps=None, metrics=None, evals=None) -> Path:
    """A run directory as experiments/run.py writes it: config.yaml and metrics.jsonl.

    returns: {seed index: [episode_return per log point, None = null]}; steps: the log steps (default 100,
    200, ...); hp: {section: {field: value}} merged into the config; metrics: {key: fn(seed, i) -> value};
    evals: {seed index: {log point index: eval/episode_return}}: only those rows hold eval/* keys."""
    path.mkdir(parents=True)
    n = max(len(v) for v in returns.values())
    steps = steps or [100 * (i + 1) for i in range(n)]
    cfg = {"agent": agent, "intervention": intervention,
           "run": {"env": env, "driver": "jit", "seeds": len(returns), "seed": seed, "steps": steps[-1],
                   "run_dir": str(path), "log_every": 100, "progress": "off", "pipelined_acting": False,
                   "eval_every": 200 if evals else 0, "eval_episodes": 5, "eval_seed": 0},
           "metrics": {"activity_every": 1000, "dormant_taus": [0.0, 0.025, 0.1]},
           "env": {"nonstationary": "none", "period": 100000, "seed": 0},
           agent: {"hidden": [16, 16], "lr": 0.0003}}
    for name in intervention.split("+"):
        if name != "none":
            cfg[name] = {"tau": 0.1, "period": 1000}
    for section, fields in (hp or {}).items():
        cfg.setdefault(section, {}).update(fields)
    cfg["env"].update(env_cfg or {})
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rows = []
    for i, step in enumerate(steps):
        for s, vals in sorted(returns.items()):
            if i < len(vals):
                row = {"step": step, "seed": s, "sps": 10.0, "episode_return": vals[i]}
                row.update({k: f(s, i) for k, f in (metrics or {}).items()})
                if i in (evals or {}).get(s, {}):
                    row.update({"eval/episode_return": evals[s][i], "eval/episode_length": 200.0})
                rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def const(values, n=10):
    """{seed: n log points whose last one (the final 10 %) is values[seed]; earlier ones are noise}."""
    return {s: [float(-100 - s - i) for i in range(n - 1)] + [float(v)] for s, v in enumerate(values)}


# --------------------------------------------------------------------------------------------------
# Scores and labels
# --------------------------------------------------------------------------------------------------

def test_final_return_is_the_mean_over_the_last_fraction_of_log_points():
    rows = [{"step": 100 * (i + 1), "episode_return": float(i)} for i in range(20)]
    assert final_return(rows) == (18.5, 2)                 # ceil(0.1 * 20) = 2 points: 18, 19
    assert final_return(rows, 0.25) == (17.0, 5)           # 15..19
    assert final_return(rows, 1.0) == (9.5, 20)
    assert final_return(rows[:3], 0.1) == (2.0, 1)         # at least one point
    rows[19]["episode_return"] = None                      # a null in the window is skipped, not read as 0
    assert final_return(rows) == (18.0, 1)
    rows[18]["episode_return"] = float("nan")
    assert final_return(rows) == (None, 0)                 # nothing finite there: no score
    thirty = [{"step": i, "episode_return": float(i)} for i in range(30)]
    assert final_return(thirty) == (28.0, 3)               # 0.1 * 30 rounds to 3 points, not 4


def test_the_evaluation_score_averages_the_last_fraction_of_the_evaluations():
    # 20 log points, an evaluation at every other one (indices 1, 3, ..., 19): 10 evaluations, 101 + i
    rows = [{"step": 100 * (i + 1), "episode_return": float(i)} for i in range(20)]
    for i in range(1, 20, 2):
        rows[i].update({"eval/episode_return": 101.0 + i, "eval/episode_length": 5.0})
    ev = "eval/episode_return"
    assert final_return(rows, 0.1, ev) == (120.0, 1)                        # ceil(0.1 * 10) = 1: the last one
    assert final_return(rows, 0.25, ev) == ((116 + 118 + 120) / 3, 3)       # ceil(2.5) = 3 evaluations
    assert final_return(rows, 1.0, ev) == (float(np.mean([102 + 2 * j for j in range(10)])), 10)
    assert final_return(rows, 0.1) == (18.5, 2)                             # the training return: log points
    # the last log point without an evaluation: the window is still the last evaluation, not the last row
    del rows[19]["eval/episode_return"], rows[19]["eval/episode_length"]
    assert final_return(rows, 0.1, ev) == (118.0, 1)
    assert final_return(rows[:1], 0.1, ev) == (None, 0)                    # no evaluation yet


def test_load_scores_absolute_seeds_and_a_seed_without_final_return(tmp_path):
    write_run(tmp_path / "r", {0: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 1: [1, 2, 3, 4, 5, 6, 7, 8, 9, None]}, seed=4)
    s = load_scores([tmp_path])
    assert [(r["seed"], r["final_return"]) for r in s.rows] == [(4, 10.0)]
    assert s.methods == ["sac"] and s.tasks == ["Pendulum-v1"]
    assert any("seed 5: no episode_return" in n for n in s.notes)
    assert list(s.frame().columns) == ["method", "task", "run", "seed", "final_return", "n_returns"]


@pytest.fixture
def sweep(tmp_path):
    """sac on Pendulum in two run dirs (seeds 0-1, 2-3), sac+grama with tau 0.1 and 0.0, sac on HalfCheetah
    with another width (a hyperparameter that differs only between tasks), a non-stationary Pendulum."""
    root = tmp_path / "sweep"
    write_run(root / "sac-a", const([1, 2]))
    write_run(root / "sac-b", const([3, 4]), seed=2)
    write_run(root / "grama-t01", const([5, 6]), intervention="grama")
    write_run(root / "grama-t0", const([7, 8]), intervention="grama", hp={"grama": {"tau": 0.0}})
    write_run(root / "cheetah" / "sac", const([10, 20]), env="HalfCheetah-v5", hp={"sac": {"hidden": [32, 32]}})
    write_run(root / "ns", const([0, 1]), env_cfg={"nonstationary": "permute_obs", "period": 500})
    (root / ".sweep").mkdir()  # the sweep's own bookkeeping is skipped
    (root / ".sweep" / "config.yaml").write_text("not: a run\n")
    return root


def test_methods_tasks_and_pooling(sweep):
    s = load_scores([sweep])
    assert s.methods == ["sac", "sac+grama(tau=0.0)", "sac+grama(tau=0.1)"]
    assert s.params["sac+grama(tau=0.1)"] == {"grama.tau": "0.1"} and s.params["sac"] == {}
    assert s.tasks == ["HalfCheetah-v5", "Pendulum-v1", "Pendulum-v1 [permute_obs, period=500]"]
    pooled = [(Path(r["run"]).name, r["seed"], r["final_return"]) for r in s.rows
              if r["method"] == "sac" and r["task"] == "Pendulum-v1"]
    assert pooled == [("sac-a", 0, 1.0), ("sac-a", 1, 2.0), ("sac-b", 2, 3.0), ("sac-b", 3, 4.0)]
    assert len(s.runs) == 6

    s = load_scores([sweep], group_by=["agent", "intervention"])
    assert s.methods == ["sac", "sac+grama"]
    assert sorted(r["final_return"] for r in s.rows if r["method"] == "sac+grama") == [5, 6, 7, 8]
    s = load_scores([sweep / "grama-t0", sweep / "grama-t01"], group_by=["grama.tau"])
    assert s.methods == ["tau=0.0", "tau=0.1"]
    with pytest.raises(ReportError, match="--group-by 'grama.tua' is in no run's config.yaml"):
        load_scores([sweep], group_by=["grama.tua"])


def test_a_glob_pattern_and_a_run_given_twice(sweep):
    s = load_scores([str(sweep / "grama-*"), sweep / "grama-t0"])
    assert [Path(r["path"]).name for r in s.runs] == ["grama-t0", "grama-t01"]


# --------------------------------------------------------------------------------------------------
# Normalisation and aggregates
# --------------------------------------------------------------------------------------------------

def test_minmax_and_file_normalisation(sweep, tmp_path):
    s = load_scores([sweep / "sac-a", sweep / "grama-t01", sweep / "cheetah"])
    bounds, _ = rp.task_bounds(s, "minmax")
    assert bounds == {"Pendulum-v1": (1.0, 6.0), "HalfCheetah-v5": (10.0, 20.0)}
    rep = aggregate(s, reps=REPS)
    np.testing.assert_allclose(rep.matrices["sac"].values, [[0.0, 0.0], [1.0, 0.2]])  # tasks: cheetah, pendulum
    assert rep.matrices["sac"].tasks == ["HalfCheetah-v5", "Pendulum-v1"]

    f = tmp_path / "ref.yaml"
    f.write_text("Pendulum-v1: [-4, 6]\nHalfCheetah-v5: [0, 100]\n")
    rep = aggregate(s, normalize=str(f), reps=REPS)
    np.testing.assert_allclose(rep.matrices["sac"].values, [[0.1, 0.5], [0.2, 0.6]])
    np.testing.assert_allclose(rep.matrices["sac+grama"].values, [[0.9], [1.0]])
    raw = aggregate(s, normalize="none", reps=REPS)
    np.testing.assert_allclose(raw.matrices["sac"].values, [[10, 1], [20, 2]])

    f.write_text("Pendulum-v1: [-4, 6]\n")
    with pytest.raises(ReportError, match="has no \\[random_score, reference_score\\] for HalfCheetah-v5"):
        aggregate(s, normalize=str(f))
    f.write_text("Pendulum-v1: [6, 6]\nHalfCheetah-v5: [0, 1]\n")
    with pytest.raises(ReportError, match="random_score equals reference_score"):
        aggregate(s, normalize=str(f))
    with pytest.raises(ReportError, match="must be none, minmax or a YAML file"):
        aggregate(s, normalize="zscore")


@pytest.fixture
def two_methods(tmp_path):
    """Methods a (tau 0.1) and b (tau 0.0) on two tasks, 6 seeds each, known final returns."""
    rng = np.random.default_rng(3)
    finals = {(m, env): rng.normal(loc, scale, 6).round(3) for m, loc in (("a", 5.0), ("b", 3.0))
              for env, scale in (("Pendulum-v1", 2.0), ("HalfCheetah-v5", 4.0))}
    for (m, env), vals in finals.items():
        write_run(tmp_path / "runs" / f"{m}-{env}", const(vals), intervention="grama",
                  env=env, hp={"grama": {"tau": 0.1 if m == "a" else 0.0}})
    return tmp_path / "runs", finals


def by_hand(finals, method, tasks=("HalfCheetah-v5", "Pendulum-v1")):
    """(seeds x tasks) minmax-normalised matrix of `method` with NumPy."""
    cols = []
    for t in tasks:
        allv = np.concatenate([finals[(m, t)] for m in ("a", "b")])
        cols.append((finals[(method, t)] - allv.min()) / (allv.max() - allv.min()))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("gap", [1.0, 0.5])
def test_point_estimates_equal_hand_computations(two_methods, gap):
    root, finals = two_methods
    rep = aggregate(load_scores([root]), reps=REPS, gap_threshold=gap)
    for label, m in (("sac+grama(tau=0.1)", "a"), ("sac+grama(tau=0.0)", "b")):
        x = by_hand(finals, m)
        np.testing.assert_allclose(rep.matrices[label].values, x, rtol=1e-12)
        want = {"IQM": trim_mean(x.ravel(), 0.25), "mean": x.mean(axis=0).mean(),
                "median": np.median(x.mean(axis=0)), "optimality gap": gap - np.minimum(x, gap).mean()}
        for name, value in want.items():
            point, lo, hi = rep.aggregates[label][name]
            assert point == pytest.approx(value, rel=1e-12, abs=1e-12), name
            assert x.min() - 1 <= lo < hi <= x.max() + 1, name  # a real interval from the seeds' spread


def test_bootstrap_is_stratified_seeded_and_leaves_numpy_alone(tmp_path, two_methods):
    # seeds identical within each task, different between tasks: resampling seeds within tasks changes nothing,
    # so every CI has zero width (resampling tasks would not)
    write_run(tmp_path / "flat" / "p", const([2.0] * 4))
    write_run(tmp_path / "flat" / "h", const([8.0] * 4), env="HalfCheetah-v5")
    write_run(tmp_path / "flat" / "q", const([1.0, 3.0, 1.0, 3.0]), intervention="grama")
    write_run(tmp_path / "flat" / "i", const([5.0, 9.0, 5.0, 9.0]), intervention="grama", env="HalfCheetah-v5")
    rep = aggregate(load_scores([tmp_path / "flat"]), reps=REPS)
    for name in rp.AGGREGATES:
        point, lo, hi = rep.aggregates["sac"][name]
        assert lo == pytest.approx(point) and hi == pytest.approx(point)
        assert rep.aggregates["sac+grama"][name][2] > rep.aggregates["sac+grama"][name][1]

    np.random.seed(123)
    before = np.random.random(3)
    np.random.seed(123)
    s = load_scores([two_methods[0]])
    a = aggregate(s, reps=REPS, seed=0)
    assert np.array_equal(np.random.random(3), before)  # the global generator is given back untouched
    b = aggregate(s, reps=REPS, seed=0)
    c = aggregate(s, reps=REPS, seed=1)
    assert a.aggregates == b.aggregates and a.poi == b.poi
    assert a.aggregates != c.aggregates


def test_vectorised_statistics_equal_rliables():
    from rliable import library, metrics
    rng = np.random.default_rng(0)
    for nx, ny, tasks in ((5, 3, 2), (1, 1, 1), (4, 4, 3)):
        x = rng.integers(0, 4, (nx, tasks)).astype(float)  # small integers: many ties
        y = rng.integers(0, 4, (ny, tasks)).astype(float)
        assert rp.improvement_probability(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
        assert rp.improvement_probability(x, x) == metrics.probability_of_improvement(x, x) == 0.5
        taus = np.linspace(-1, 5, 13)
        np.testing.assert_array_equal(rp.score_distribution(x, taus), library.score_distributions(x, taus))
    for n in (1, 2, 3, 4, 5, 8, 11):
        cols = rng.normal(size=(n, 6))
        np.testing.assert_allclose(rp.iqm_columns(cols), [metrics.aggregate_iqm(c) for c in cols.T], rtol=1e-12)


def test_probability_of_improvement(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "best", const([10, 11, 12]), intervention="grama")                 # dominates
    write_run(root / "base", const([1, 2, 3]))
    write_run(root / "same", const([1, 2, 3]), intervention="redo")                     # identical to base
    write_run(root / "mixed", const([0, 4]), intervention="swd")  # vs base: 4 > 1, 2, 3 -> 3 of 6 pairs
    rep = aggregate(load_scores([root]), reps=REPS)
    poi = {(x, y): (p, lo, hi) for x, y, p, lo, hi in rep.poi}
    assert len(poi) == 12  # every ordered pair of 4 methods
    assert poi[("sac+grama", "sac")] == (1.0, 1.0, 1.0)
    assert poi[("sac", "sac+grama")] == (0.0, 0.0, 0.0)
    assert poi[("sac+redo", "sac")][0] == 0.5 and poi[("sac", "sac+redo")][0] == 0.5
    assert poi[("sac+swd", "sac")][0] == pytest.approx(0.5)
    assert poi[("sac+swd", "sac+grama")][0] == 0.0
    for (x, y), (p, lo, hi) in poi.items():
        assert lo <= p <= hi and poi[(y, x)][0] == pytest.approx(1 - p)

    rep = aggregate(load_scores([root]), reps=REPS, baseline="sac")
    assert [(x, y) for x, y, *_ in rep.poi] == [("sac+grama", "sac"), ("sac+redo", "sac"), ("sac+swd", "sac")]
    md = rp.markdown(rep, [])
    assert "| sac+grama | 1.000 [1.000, 1.000] |" in md


def test_profiles_curves_and_metric_curves(tmp_path):
    root = tmp_path / "runs"
    dormant = {"dormant_ratio_tau_0/critic": lambda s, i: 0.0, "dormant_ratio_tau_0.025/critic": lambda s, i: s + i,
               "dormant_ratio_tau_0.1/critic": lambda s, i: 1.0, "dormant_ratio_tau_0.025/critic/hidden_0":
               lambda s, i: 5.0, "grama_ratio_tau_0/critic": lambda s, i: 0.5 * i,
               "grama_ratio_tau_0.01/critic": lambda s, i: 0.0}
    # a: returns from step 100 to 1000; b: null at step 100, rows up to step 800 only
    write_run(root / "a", {0: [float(i) for i in range(10)], 1: [float(2 * i) for i in range(10)]},
              metrics=dormant)
    write_run(root / "b", {0: [None] + [float(i) for i in range(1, 8)], 1: [None, 3, None, 5, 5, 5, 5, 9]},
              intervention="grama", metrics=dormant)
    rep = aggregate(load_scores([root]), reps=REPS)
    a, b = rep.matrices["sac"], rep.matrices["sac+grama"]
    finals = {"sac": [9.0, 18.0], "sac+grama": [7.0, 9.0]}  # ceil(0.1 * 8) = 1 point for b
    lo, hi = 7.0, 18.0
    np.testing.assert_allclose(a.values.ravel(), (np.array(finals["sac"]) - lo) / (hi - lo))
    np.testing.assert_allclose(b.values.ravel(), (np.array(finals["sac+grama"]) - lo) / (hi - lo))

    allv = np.concatenate([a.values.ravel(), b.values.ravel()])
    assert rep.profile_taus[0] == 0.0 and rep.profile_taus[-1] == 1.0 and len(rep.profile_taus) == 101
    for m, mx in rep.matrices.items():
        prof = rep.profiles[m][0]
        np.testing.assert_allclose(prof, [(mx.values > t).mean() for t in rep.profile_taus])
    assert allv.min() == 0.0

    # a method's grid: every step its seeds logged, from their last first return to their first last row;
    # b: null returns at step 100, rows up to 800; seed 1's null at 300 carries its 3 from 200 on
    for m, grid, seeds in (("sac", range(100, 1001, 100), {0: [float(i) for i in range(10)],
                                                            1: [float(2 * i) for i in range(10)]}),
                           ("sac+grama", range(200, 801, 100), {0: [None] + [float(i) for i in range(1, 8)],
                                                                 1: [None, 3, 3, 5, 5, 5, 5, 9]})):
        steps, iqm, clo, chi = rep.curves[m]
        assert list(steps) == list(grid)
        for k, step in enumerate(steps):
            vals = (np.array([seeds[s][step // 100 - 1] for s in (0, 1)]) - lo) / (hi - lo)
            assert iqm[k] == pytest.approx(trim_mean(vals, 0.25))
            assert clo[k] <= iqm[k] <= chi[k]

    # default metrics: middle dormant threshold, lower-middle GraMa threshold, network level only
    assert rep.metric_keys == ["dormant_ratio_tau_0.025/critic", "grama_ratio_tau_0/critic"]
    steps, mean, mlo, mhi = rep.metric_curves["dormant_ratio_tau_0.025/critic"]["sac"]["Pendulum-v1"]
    np.testing.assert_array_equal(steps, np.arange(100, 1001, 100))
    np.testing.assert_allclose(mean, np.arange(10) + 0.5)  # seeds 0 and 1: i and 1 + i
    assert mhi[0] - mean[0] == pytest.approx(1.96 * np.std([0, 1], ddof=1) / np.sqrt(2))

    rep = aggregate(load_scores([root]), reps=REPS, metrics=["srank*", "dormant_ratio_tau_0.1/*", "fau/*"])
    assert rep.metric_keys == ["dormant_ratio_tau_0.1/critic"]
    assert any("'srank*' matches no metric" in n for n in rep.notes)
    rep = aggregate(load_scores([root]), reps=REPS, metrics=["dormant_ratio_tau_0.025/critic/*"])
    assert rep.metric_keys == ["dormant_ratio_tau_0.025/critic/hidden_0"]


# --------------------------------------------------------------------------------------------------
# Evaluation or training return (--score)
# --------------------------------------------------------------------------------------------------

def eval_run(path, base: float, **kw):
    """10 log points (steps 100..1000), training returns -1000 + i, evaluations at steps 200, 400, ..., 1000
    (indices 1, 3, 5, 7, 9) of base + 10 * seed + i for seeds 0 and 1."""
    train = {s: [-1000.0 + i for i in range(10)] for s in (0, 1)}
    evals = {s: {i: base + 10 * s + i for i in (1, 3, 5, 7, 9)} for s in (0, 1)}
    return write_run(path, train, evals=evals, **kw)


def test_auto_scores_the_evaluation_return_when_every_run_has_it(tmp_path, capsys):
    root = tmp_path / "runs"
    eval_run(root / "a", 0.0)
    eval_run(root / "b", 100.0, intervention="grama")
    s = load_scores([root])
    assert s.score == "eval" and s.key == "eval/episode_return"
    assert not any("--score" in n for n in s.notes)
    # the last of the 5 evaluations (ceil(0.1 * 5) = 1): base + 10 * seed + 9
    assert [(r["method"], r["seed"], r["final_return"], r["n_returns"]) for r in s.rows] == [
        ("sac", 0, 9.0, 1), ("sac", 1, 19.0, 1), ("sac+grama", 0, 109.0, 1), ("sac+grama", 1, 119.0, 1)]
    # --final-frac applies to the evaluations: ceil(0.5 * 5) = 3 of them (indices 5, 7, 9), not 5 log points
    s5 = load_scores([root], final_frac=0.5)
    assert [r["final_return"] for r in s5.rows][:2] == [7.0, 17.0]
    assert [r["n_returns"] for r in s5.rows] == [3] * 4
    t = load_scores([root], score="train")
    assert t.score == "train" and [r["final_return"] for r in t.rows] == [-991.0] * 4

    rep = aggregate(s, reps=REPS)
    lo, hi = 9.0, 119.0
    np.testing.assert_allclose(rep.matrices["sac"].values.ravel(), (np.array([9.0, 19.0]) - lo) / (hi - lo))
    # the sample-efficiency curve runs over the evaluation steps only
    steps, iqm, _, _ = rep.curves["sac"]
    assert list(steps) == [200, 400, 600, 800, 1000]
    for k, i in enumerate((1, 3, 5, 7, 9)):
        assert iqm[k] == pytest.approx(trim_mean((np.array([i, 10.0 + i]) - lo) / (hi - lo), 0.25))

    out = tmp_path / "out"
    for o in (out, tmp_path / "again"):
        assert main([str(root), "--out", str(o), "--reps", str(REPS)]) == 0
    assert "score: evaluation return (eval/episode_return)" in capsys.readouterr().out
    for f in out.iterdir():
        assert f.read_bytes() == (tmp_path / "again" / f.name).read_bytes(), f.name
    md = (out / "report.md").read_text()
    assert ("**Score:** evaluation return (`eval/episode_return`, the mean over 5 complete episodes of the "
            "deterministic policy per evaluation, every 200 env steps and at the end). The final score of a seed "
            "is the mean `eval/episode_return` over its last 10% of evaluations") in md
    with (out / "scores.csv").open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["method", "task", "run", "seed", "final_return", "normalized", "n_returns",
                              "in_matrix", "score"]
    assert {r["score"] for r in table} == {"eval"} and float(table[0]["final_return"]) == 9.0
    assert main([str(root), "--out", str(tmp_path / "train"), "--reps", str(REPS), "--score", "train"]) == 0
    assert "**Score:** training return (`episode_return`" in (tmp_path / "train" / "report.md").read_text()
    with (tmp_path / "train" / "scores.csv").open() as f:
        assert {r["score"] for r in csv.DictReader(f)} == {"train"}


def test_auto_falls_back_to_the_training_return_with_a_note(tmp_path, capsys):
    root = tmp_path / "runs"
    eval_run(root / "a", 0.0)
    write_run(root / "old", const([1, 2]), intervention="grama")  # no evaluations (run.eval_every 0)
    s = load_scores([root])
    assert s.score == "train" and s.key == "episode_return"
    assert sorted(r["final_return"] for r in s.rows) == [-991.0, -991.0, 1.0, 2.0]
    note = (f"--score auto: scoring the training return episode_return, not the evaluation return, because "
            f"{root / 'old'} has no eval/episode_return in its rows")
    assert note in s.notes
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out), "--reps", str(REPS)]) == 0
    printed = capsys.readouterr().out
    assert "score: training return (episode_return)" in printed and f"note: {note}" in printed
    md = (out / "report.md").read_text()
    assert "**Score:** training return (`episode_return`" in md and f"- {note}" in md


# --------------------------------------------------------------------------------------------------
# Outputs and the command line
# --------------------------------------------------------------------------------------------------

def read_png(path: Path):
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200 and img[..., :3].std() > 0.01
    return img


def test_outputs_exist_and_are_byte_identical(two_methods, tmp_path, capsys):
    root, _ = two_methods
    write_run(root / "metrics", const([4, 5, 6]), env="HalfCheetah-v5",
              metrics={"dormant_ratio_tau_0.025/critic": lambda s, i: 0.1 * s, "grama_ratio_tau_0/actor":
                       lambda s, i: 0.01 * i, "srank_delta_0.01/critic": lambda s, i: 10 + s})
    outs = [tmp_path / "out1", tmp_path / "out2"]
    for out in outs:
        assert main([str(root), "--out", str(out), "--reps", str(REPS)]) == 0
    assert "wrote 9 files" in capsys.readouterr().out
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == ["aggregates.png", "metric_dormant_ratio_tau_0.025.png", "metric_grama_ratio_tau_0.png",
                     "metric_srank_delta_0.01.png", "performance_profile.png", "probability_of_improvement.png",
                     "report.md", "sample_efficiency.png", "scores.csv"]
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
        if name.endswith(".png"):
            read_png(outs[0] / name)
            assert b"matplotlib" not in (outs[0] / name).read_bytes()  # no version string in the metadata
    md = (outs[0] / "report.md").read_text()
    for png in (n for n in names if n.endswith(".png")):
        assert f"]({png})" in md
    assert "| method | tasks | seeds | IQM | mean | median | optimality gap |" in md
    assert "| P(row > column) | sac | sac+grama(tau=0.0) | sac+grama(tau=0.1) |" in md
    with (outs[0] / "scores.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 27 and {r["method"] for r in table} == {"sac", "sac+grama(tau=0.0)", "sac+grama(tau=0.1)"}
    assert sorted(float(r["final_return"]) for r in table if r["method"] == "sac") == [4, 5, 6]


def test_one_method_and_one_task_still_report(tmp_path):
    write_run(tmp_path / "only", const([1, 2, 3]))
    rep = aggregate(load_scores([tmp_path / "only"]), reps=REPS)
    written = write_report(rep, tmp_path / "out")
    assert sorted(p.name for p in written) == ["aggregates.png", "performance_profile.png", "report.md",
                                              "sample_efficiency.png", "scores.csv"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "one method: no probability of improvement" in md and "one task" in md
    assert "no default plasticity metric" in md


def _error_case(tmp_path, case):
    one = write_run(tmp_path / "runs" / "one", const([1, 2]))
    if case == "empty_dir":
        (tmp_path / "empty").mkdir()
        return [str(tmp_path / "empty")], "no runs found"
    if case == "missing":
        return [str(tmp_path / "nope")], "nope: no such directory"
    if case == "no_metrics":
        (tmp_path / "runs" / "started").mkdir()
        (tmp_path / "runs" / "started" / "config.yaml").write_text((one / "config.yaml").read_text())
        return [str(tmp_path / "runs")], "started: a run without metrics.jsonl"
    if case == "empty_metrics":
        (one / "metrics.jsonl").write_text("")
        return [str(one)], "empty file"
    if case == "glob":
        return [str(tmp_path / "zz*")], "the pattern matches no directory"
    if case == "baseline_alone":
        return [str(one), "--baseline", "sac"], "--baseline needs at least 2 methods"
    if case == "baseline_unknown":
        write_run(tmp_path / "runs" / "two", const([1, 2]), intervention="grama")
        return [str(tmp_path / "runs"), "--baseline", "td3"], "'td3' is not a method of the runs; valid: sac, sac+grama"
    if case == "normalize":
        return [str(one), "--normalize", "zscore"], "--normalize must be none, minmax or a YAML file"
    if case == "final_frac":
        return [str(one), "--final-frac", "0"], "--final-frac must be in (0, 1]"
    if case == "reps":
        return [str(one), "--reps", "0"], "--reps must be >= 1"
    if case == "seed":
        return [str(one), "--seed", "-1"], "--seed must be in [0, 2**32)"
    if case == "group_by":
        return [str(one), "--group-by", "sac.width"], "--group-by 'sac.width' is in no run's config.yaml"
    if case == "score_eval":
        eval_run(tmp_path / "runs" / "evaluated", 0.0, intervention="grama")
        return [str(tmp_path / "runs"), "--score", "eval"], f"--score eval: {one} has no eval/episode_return"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["empty_dir", "missing", "no_metrics", "empty_metrics", "glob", "baseline_alone",
                                  "baseline_unknown", "normalize", "final_frac", "reps", "seed", "group_by",
                                  "score_eval"])
def test_errors_are_one_line_and_write_nothing(tmp_path, capsys, case):
    argv, needle = _error_case(tmp_path, case)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("report.py: error: ") and "Traceback" not in err
    assert needle in err, err
    assert not out.exists()


def test_script_runs_as_a_file_with_a_glob(sweep, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), str(sweep / "grama-*"),
                           str(sweep / "sac-a"), "--out", str(out), "--reps", "50", "--baseline", "sac"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 method(s), 1 task(s), 6 seed(s)" in proc.stdout
    md = (out / "report.md").read_text()
    assert "| method | P(method > sac) |" in md and "| sac+grama(tau=0.0) |" in md
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), str(tmp_path / "nope"),
                          "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such directory" in bad.stderr


# --------------------------------------------------------------------------------------------------
# End to end: two real tiny training runs
# --------------------------------------------------------------------------------------------------

def test_report_on_two_real_training_runs(tmp_path, capsys):
    from plastic.cli import main as run_main
    tiny = ["--env", "probe:d_action", "--seeds", "2", "--steps", "400", "--run.log_every", "100",
            "--dqn.hidden", "16,16", "--dqn.batch_size", "16", "--dqn.buffer_size", "1000",
            "--dqn.learning_starts", "100", "--dqn.train_frequency", "2", "--metrics.activity_every", "10",
            "--metrics.grad_every", "10", "--metrics.rank_every", "0", "--metrics.churn_every", "0",
            "--metrics.ntk_every", "0", "--run.progress", "off", "--run.tensorboard", "false",
            "--run.checkpoint_every", "0"]
    for iv in ("none", "grama"):
        assert run_main(["--agent", "dqn", "--intervention", iv, "--run-dir", str(tmp_path / "sweep" / iv)]
                        + tiny) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert main([str(tmp_path / "sweep"), "--out", str(out), "--reps", "100"]) == 0
    s = load_scores([tmp_path / "sweep"])
    assert s.methods == ["dqn", "dqn+grama"] and s.tasks == ["probe:d_action"]
    assert [(r["method"], r["seed"]) for r in s.rows] == [("dqn", 0), ("dqn", 1), ("dqn+grama", 0), ("dqn+grama", 1)]
    # evaluation on by default: the last log point evaluates, and that is the score
    assert s.score == "eval" and [r["n_returns"] for r in s.rows] == [1] * 4
    names = {p.name for p in out.iterdir()}
    assert {"aggregates.png", "probability_of_improvement.png", "performance_profile.png", "sample_efficiency.png",
            "metric_dormant_ratio_tau_0.025.png", "metric_grama_ratio_tau_0.png", "report.md",
            "scores.csv"} <= names
    read_png(out / "metric_dormant_ratio_tau_0.025.png")
    md = (out / "report.md").read_text()
    assert "| dqn | 1 | 2 |" in md and "| dqn+grama | 1 | 2 |" in md
    assert "**Score:** evaluation return (`eval/episode_return`, the mean over 10 complete episodes" in md
