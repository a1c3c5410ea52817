"""Finding 3: Sample Weight Decay (Wu et al., ICLR 2026): at an update-to-data ratio above 1, replay that
favours fresh transitions (SWD) beats uniform replay, and the reverse control that favours old ones (SWA) falls
below it, on return and on the critic's gradient L1; the bucketed sampler matches the exact one."""
from __future__ import annotations

from experiments.validation import (Finding, Outcome, add_eval_mean, column, fmt_ci, iqm_ci, per_method_block,
                                    per_seed_rows, plot_curves, poi_ci, rule_tests, run_value)

ENV = "gymnax:Pendulum-v1"
GRAD = "grad_l1/critic"
KEYS = {"grad_l1": GRAD}
T_FRACTION = 0.08           # the authors' T = 80,000 for a 1M-step run: T is 8 % of the budget
ARMS = ("SWA", "uniform", "SWD exact", "SWD bucketed")


def sweep(name: str, steps: int, seeds: int, log_every: int, eval_every: int, utd=(2,), extra: dict | None = None,
          env=ENV, T: int | None = None, agent_extra: dict | None = None, swd_extra: dict | None = None) -> dict:
    """Uniform replay, SWD with the exact and the bucketed sampler, and SWA (T < 0), at the given UTD(s)."""
    T = T if T is not None else max(1, round(T_FRACTION * steps))
    return {"name": name, "agents": "sac", "envs": env, "seeds": seeds, "steps": steps,
            "overrides": {"run.log_every": log_every, "run.eval_every": eval_every, "run.eval_episodes": 10,
                          "metrics.rank_every": 0, "metrics.churn_every": 0, "metrics.ntk_every": 0,
                          "metrics.activity_every": 0, **(agent_extra or {}), **(extra or {})},
            "grid": {"sac.utd": list(utd)},
            "runs": [{"interventions": "none"},
                     {"interventions": "swd", "grid": {"swd.T": [T, -T], "swd.sampler": ["exact"]}},
                     {"interventions": "swd", "grid": {"swd.T": [T], "swd.sampler": ["bucketed"]},
                      "overrides": dict(swd_extra or {})}]}


def arm(run) -> str:
    if run["intervention"] == "none":
        return "uniform"
    if run_value(run, "swd.T") < 0:
        return "SWA"
    return f"SWD {run_value(run, 'swd.sampler')}"


def label(run) -> str:
    return f"{arm(run)} UTD={run_value(run, 'sac.utd', 1)}"


def analyse(runs: list) -> Outcome:
    rows = add_eval_mean(per_seed_rows(runs, label, KEYS), runs)
    utds = sorted({run_value(r, "sac.utd", 1) for r in runs})
    u = max(utds)
    col = {(a, k): column(rows, f"{a} UTD={u}", k) for a in ARMS for k in ("eval_mean", "grad_l1_final")}
    tests = []
    for k, what in (("eval_mean", "mean eval return over the run"), ("grad_l1_final", "final critic grad L1")):
        tests.append((f"P(SWD > uniform), {what}", poi_ci(col["SWD exact", k], col["uniform", k]), "above"))
        tests.append((f"P(uniform > SWA), {what}", poi_ci(col["uniform", k], col["SWA", k]), "above"))
    tests.append(("P(bucketed > exact), mean eval return over the run (≈: CI contains 0.5)",
                  poi_ci(col["SWD bucketed", "eval_mean"], col["SWD exact", "eval_mean"]), "contains"))
    held = [(v[1] > 0.5) if want == "above" else (v[1] <= 0.5 <= v[2]) for _, v, want in tests]
    reversed_order = any(v[2] < 0.5 for (_, v, want) in tests[:2] if want == "above")
    bucket_differs = not held[-1]
    if all(held):
        verdict = "reproduced"
    elif reversed_order or bucket_differs:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    why, tests_block = rule_tests([(n, v, "holds" if h else "does not hold") for (n, v, _), h in zip(tests, held)])
    table = ["| replay | UTD | seeds | eval return over the run, IQM [95 % CI] | final eval return | "
             "final critic grad L1 |", "|---|---|---|---|---|---|"]
    for utd in utds:
        for a in ARMS:
            lab = f"{a} UTD={utd}"
            auc = column(rows, lab, "eval_mean")
            if not len(auc):
                continue
            table.append(f"| {a} | {utd} | {len(auc)} | {fmt_ci(iqm_ci(auc))} | "
                         f"{fmt_ci(iqm_ci(column(rows, lab, 'eval_return')))} | "
                         f"{fmt_ci(iqm_ci(column(rows, lab, 'grad_l1_final')))} |")
    panel = {"line": arm, "panel": lambda r: f"UTD {run_value(r, 'sac.utd', 1)}"}
    figures = {"eval_return.png": lambda path: plot_curves(runs, "eval/episode_return", path, **panel),
               "grad_l1.png": lambda path: plot_curves(runs, GRAD, path, **panel)}
    return Outcome(verdict, why, tables=[per_method_block(table, "evaluations / measurements"), tests_block],
                   figures=figures, csv={"runs.csv": rows})


SMOKE = {"sac.learning_starts": 200, "sac.hidden": [16, 16], "run.eval_episodes": 1, "metrics.batch_size": 64,
         "metrics.grad_every": 50}

FINDING = Finding(
    name="swd", number=3,
    title="Sample Weight Decay: SWA < uniform < SWD at UTD > 1; bucketed = exact sampler",
    claim=("At an update-to-data ratio above 1, sampling replay with weights that decay linearly with a "
           "transition's age (SWD) gives a higher return than uniform replay, and the reverse weighting (SWA, "
           "old data favoured) a lower one; the critic's gradient L1 (the fresh data's contribution, which decays "
           "under uniform replay) is ordered the same way; the bucketed sampler performs like the exact one."),
    source="Wu et al., *Sample Weight Decay* (ICLR 2026, arXiv 2604.01913): SimBa-SAC on DMC Humanoid-Run at UTD "
           "1/2/5 (IQM +17.3 % at UTD 2), SWA below uniform with a lower gradient L1, App. D Table 2 (buckets); "
           "the authors' defaults T = 80,000, w_min = 0.1. The figures are from a secondary summary "
           "(graded [secondary, unverified]).",
    rule=("Per seed: the mean of all its evaluation returns (the return over the run) and the mean of its last 10 % "
          "of critic gradient-L1 measurements, at the largest UTD of the sweep; 95 % bootstrap CIs (2000 "
          "replications) of probabilities of improvement. Tests: (1) P(SWD > uniform) and (2) P(uniform > SWA), "
          "each on the return and on the gradient L1, CI above 0.5; (3) P(bucketed > exact) on the return, CI "
          "contains 0.5. **Reproduced**: all five hold. **Not reproduced**: a return or gradient ordering of (1) "
          "or (2) is reversed (its CI lies below 0.5), or (3)'s CI excludes 0.5. **Inconclusive**: otherwise."),
    deviations=("gymnax Pendulum-v1 (jitted driver), 20k env steps, instead of DMC Humanoid-Run at 1M: SAC at UTD 2 "
                "runs at a few dozen env steps/s per seed on this 2-core CPU",
                "the return is the mean over the whole run's evaluations, not the final one: Pendulum is solved "
                "within the budget by every arm, so only how fast it is solved can differ",
                "T = 8 % of the budget (1,600 env steps), as the authors' 80,000 is of their 1M; T = 80,000 would "
                "weight a 20k-step buffer almost uniformly (w >= 0.75); w_min 0.1 as the authors",
                "this project's SAC with its MLP critic (256-256, CleanRL's settings, but α autotuned from 0.2 "
                "(sac.alpha_init) and lecun-normal weights (sac.init), where CleanRL starts α at 1 and draws "
                "PyTorch's U(±1/sqrt(fan_in)): this project's defaults since 2026-12-05), not SimBa; "
                "UTD 2 only "
                "(the paper: 1, 2, 5)", "5 seeds (the paper's seed count is unknown)"),
    sweeps={"laptop": sweep("validation-swd-laptop", steps=20_000, seeds=5, log_every=1000, eval_every=1000,
                            agent_extra={"sac.alpha_init": 0.2, "sac.init": "lecun_normal"}),
            "paper": {**sweep("validation-swd-paper", steps=1_000_000, seeds=5, log_every=10_000, eval_every=20_000,
                              utd=(1, 2, 5), env="dmc:humanoid-run", T=80_000,
                              agent_extra={"sac.network": "simba"},
                              extra={"run.checkpoint_every": 100_000}, swd_extra={"swd.bucket_size": 1000}),
                      "resources": {"time": "96:00:00", "gpus": 1, "cpus": 4, "mem": "32G"}},
            "smoke": sweep("validation-swd-smoke", steps=600, seeds=2, log_every=100, eval_every=200, extra=SMOKE,
                           swd_extra={"swd.bucket_size": 50})},
    analyse=analyse,
    notes=("The bucketed sampler is a reconstruction (the paper's bucket design is not public; docs/interventions.md, "
           "SWD). The paper scale keeps this project's defaults where the authors' code differs from them (no action "
           "repeat: 1M env steps are 1M decisions here, 500k with the authors' repeat of 2).",
           "`grad_l1/critic` is the L1 norm of the critic's loss gradient on the update's training batch (the "
           "SWD-weighted batch under SWD; docs/metrics.md, gradient group), measured every 1000 critic updates.",
           "Observed after the laptop runs of 2026-12-05 (not part of the rule). Every arm solves Pendulum within "
           "2,000 env steps of learning: the evaluations read -1438 until SAC's 5,000-step warm-up ends and about "
           "-112 from step 7,000 on, for all four arms. The whole difference in the return over the run comes from "
           "the one evaluation at step 6,000 (mean over seeds: uniform -296, SWA -568, SWD exact -566, SWD "
           "bucketed -657). So this laptop setting measures how fast SAC leaves its warm-up, not plasticity at a "
           "high replay ratio, and its 'not reproduced' says little about the paper's claim; a task that takes "
           "most of the budget to learn (a MuJoCo task at 100k or more) is needed for a verdict that does."),
)
