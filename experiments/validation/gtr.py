"""Finding 5: GTR (reconstructed variant) against PPO-Clip and PPO + KL penalty (Liu et al., arXiv 2606.03382):
on a stream of permuted-observation CartPole phases PPO+GTR >= PPO-Clip and >= PPO+KL; on the stationary task
GTR is within noise of PPO. Each method's one hyperparameter is searched with the same budget (five values) on
half of the seeds; the verdict is read on the other half, with the chosen settings."""
from __future__ import annotations

import numpy as np

from experiments.validation import (METRICS_OFF, Finding, Outcome, add_eval_mean, fmt_ci, iqm_ci, panels,
                                    per_seed_rows, phase_means, poi_ci, rule_tests, run_value, save)

ENV = "gymnax:CartPole-v1"
PERIOD = 49_152            # env steps per phase (96 PPO iterations of 4 x 128 steps), as the former demo
PHASES = 10
# each method's searched hyperparameter and its five values (the same budget for every method)
SEARCH = {"PPO-Clip": ("ppo.clip_coef", (0.1, 0.2, 0.3, 0.5, 0.8)),
          "PPO+KL": ("kl_penalty.beta", (0.03, 0.1, 0.3, 1.0, 3.0)),
          "GTR": ("gtr.beta", (0.01, 0.03, 0.1, 0.3, 1.0))}
INTERVENTION = {"PPO-Clip": "none", "PPO+KL": "kl_penalty", "GTR": "gtr"}
STREAMS = {"permute_obs": "permuted stream", "none": "stationary"}
PPO_DEFAULT = 0.2          # PPO's clip ε as shipped (the stationary comparison is against PPO as a user runs it)
GTR_SPEC_BETA = 1.0        # the spec's recommended β (docs/interventions.md, GTR), the former demo's setting


def sweep(name: str, steps: int, seeds: int, eval_every: int, period: int = PERIOD, search: dict = SEARCH,
          extra: dict | None = None) -> dict:
    return {"name": name, "agents": "ppo", "envs": ENV, "seeds": seeds, "steps": steps,
            "overrides": {"ppo.anneal_lr": False, "env.period": period, "env.per_seed": True,
                          "run.log_every": eval_every, "run.eval_every": eval_every, "run.eval_episodes": 5,
                          **METRICS_OFF, **(extra or {})},
            "grid": {"env.nonstationary": list(STREAMS)},
            "runs": [{"interventions": INTERVENTION[m], "grid": {key: list(values)}}
                     for m, (key, values) in search.items()]}


def family(run) -> str:
    return {v: k for k, v in INTERVENTION.items()}[run["intervention"]]


def setting(run) -> float:
    return float(run_value(run, SEARCH[family(run)][0]))


def stream(run) -> str:
    return STREAMS[run_value(run, "env.nonstationary")]


def label(run) -> str:
    return f"{family(run)} {SEARCH[family(run)][0].split('.')[-1]}={setting(run):g} | {stream(run)}"


def analyse(runs: list) -> Outcome:
    rows = add_eval_mean(per_seed_rows(runs, label, {}), runs)
    by_path = {str(r["path"]): r for r in runs}
    seeds_of = {}
    for row in rows:
        seeds_of.setdefault(row["method"], []).append(row["seed"])
    for row in rows:      # the first half of a setting's seeds searches, the second half tests
        run = by_path[row["run"]]
        seeds = sorted(seeds_of[row["method"]])
        row["split"] = "search" if seeds.index(row["seed"]) < len(seeds) // 2 else "test"
        row.update(family=family(run), setting=setting(run), stream=stream(run))
        row.update(phase_means(run, row["seed"] - run["seed_base"], int(run_value(run, "env.period"))))

    def scores(fam, value, strm, split, key="eval_mean"):
        return np.asarray([r[key] for r in rows if r["family"] == fam and r["setting"] == value
                           and r["stream"] == strm and r["split"] == split and r[key] is not None])

    chosen = {}
    search_table = ["| method | setting | search seeds | permuted stream: mean eval return | stationary |",
                    "|---|---|---|---|---|"]
    for fam, (key, _) in SEARCH.items():
        values = sorted({r["setting"] for r in rows if r["family"] == fam})
        means = {v: scores(fam, v, STREAMS["permute_obs"], "search").mean() for v in values}
        chosen[fam] = max(values, key=lambda v: means[v])
        for v in values:
            mark = " **(chosen)**" if v == chosen[fam] else ""
            s, st = scores(fam, v, STREAMS["permute_obs"], "search"), scores(fam, v, STREAMS["none"], "search")
            search_table.append(f"| {fam} | `{key}={v:g}`{mark} | {len(s)} | {fmt_ci(iqm_ci(s))} | "
                                f"{fmt_ci(iqm_ci(st)) if len(st) else '—'} |")

    perm, stat = STREAMS["permute_obs"], STREAMS["none"]
    test = {fam: scores(fam, chosen[fam], perm, "test") for fam in SEARCH}
    ppo_stat = scores("PPO-Clip", PPO_DEFAULT, stat, "test")
    gtr_stat = scores("GTR", chosen["GTR"], stat, "test")
    t1 = poi_ci(test["GTR"], test["PPO-Clip"])
    t2 = poi_ci(test["GTR"], test["PPO+KL"])
    t3 = poi_ci(gtr_stat, ppo_stat)
    if t1[1] > 0.5 and t2[1] > 0.5 and t3[2] >= 0.5:
        verdict = "reproduced"
    elif t1[2] < 0.5 or t2[2] < 0.5 or t3[2] < 0.5:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"

    def word(t, want):
        if want == "above":
            return "holds" if t[1] > 0.5 else ("reversed" if t[2] < 0.5 else "within noise")
        return "holds" if t[2] >= 0.5 else "does not hold"
    g = f"GTR (β={chosen['GTR']:g})"
    why, tests_block = rule_tests([
        (f"permuted stream: P({g} > PPO-Clip (ε={chosen['PPO-Clip']:g})), CI above 0.5", t1, word(t1, "above")),
        (f"permuted stream: P({g} > PPO+KL (β={chosen['PPO+KL']:g})), CI above 0.5", t2, word(t2, "above")),
        (f"stationary: P({g} > PPO (ε={PPO_DEFAULT:g})), CI not below 0.5", t3, word(t3, "not below"))])

    arms = [(f, chosen[f]) for f in SEARCH] + [("GTR", GTR_SPEC_BETA), ("PPO-Clip", PPO_DEFAULT)]
    arms = list(dict.fromkeys(arms))
    phases = sorted({int(k.split("_")[1]) for r in rows for k in r if k.startswith("phase_")})
    head = "| method | setting | stream | seeds | mean eval return, IQM [95 % CI] | after a switch | " + \
        " | ".join(f"phase {k}" for k in phases) + " |"
    table = [head, "|" + "---|" * (6 + len(phases))]
    for strm in (perm, stat):
        for fam, v in arms:
            sel = [r for r in rows if r["family"] == fam and r["setting"] == v and r["stream"] == strm
                   and r["split"] == "test"]
            if not sel:
                continue
            s = np.asarray([r["eval_mean"] for r in sel])
            after = np.asarray([r["after_switch"] for r in sel if r["after_switch"] is not None])
            per = [np.mean([r[f"phase_{k}"] for r in sel if f"phase_{k}" in r]) for k in phases]
            table.append(f"| {fam} | `{SEARCH[fam][0]}={v:g}` | {strm} | {len(sel)} | {fmt_ci(iqm_ci(s))} | "
                         f"{fmt_ci(iqm_ci(after)) if len(after) else '—'} | " + " | ".join(f"{p:.0f}" for p in per)
                         + " |")
    search_block = ("**The search** (each method's hyperparameter, five values, on the search seeds; chosen: the "
                    "best mean eval return over the permuted stream)\n\n" + "\n".join(search_table))
    test_block = ("**Per method, test seeds** (the chosen settings, the spec's GTR β = 1 and PPO's ε = 0.2; IQM over "
                  "seeds with 95 % stratified-bootstrap CIs; 'after a switch' = the first evaluation of each phase "
                  "after the first; phase columns = mean over seeds)\n\n" + "\n".join(table))
    figures = {"per_phase.png": lambda path: _plot_phases(rows, arms, phases, path),
               "search.png": lambda path: _plot_search(rows, chosen, path)}
    return Outcome(verdict, why, tables=[search_block, test_block, tests_block], figures=figures,
                   csv={"runs.csv": rows})


def _plot_phases(rows, arms, phases, path):
    fig, axes = panels(2, 5.5, 3.8)
    for ax, strm in zip(axes, STREAMS.values()):
        for fam, v in arms:
            sel = [r for r in rows if r["family"] == fam and r["setting"] == v and r["stream"] == strm
                   and r["split"] == "test"]
            if sel:
                y = [np.mean([r[f"phase_{k}"] for r in sel if f"phase_{k}" in r]) for k in phases]
                ax.plot(phases, y, marker="o", label=f"{fam} {SEARCH[fam][0].split('.')[-1]}={v:g}")
        ax.set_title(f"{strm} (test seeds)")
        ax.set_xlabel("phase")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("mean eval return in the phase")
    save(fig, path)


def _plot_search(rows, chosen, path):
    fig, axes = panels(len(SEARCH), 4.2, 3.4)
    for ax, (fam, (key, _)) in zip(axes, SEARCH.items()):
        for strm in STREAMS.values():
            values = sorted({r["setting"] for r in rows if r["family"] == fam and r["stream"] == strm})
            y = [np.mean([r["eval_mean"] for r in rows if r["family"] == fam and r["setting"] == v
                          and r["stream"] == strm and r["split"] == "search"]) for v in values]
            ax.plot(values, y, marker="o", label=strm)
        ax.axvline(chosen[fam], color="grey", ls=":")
        ax.set_xscale("log")
        ticks = sorted({r["setting"] for r in rows if r["family"] == fam})
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.minorticks_off()
        ax.set_xlabel(key)
        ax.set_title(fam)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("mean eval return (search seeds)")
    save(fig, path)


_SMOKE_SEARCH = {"PPO-Clip": ("ppo.clip_coef", (0.2,)), "PPO+KL": ("kl_penalty.beta", (1.0,)),
                 "GTR": ("gtr.beta", (0.1, 1.0))}

FINDING = Finding(
    name="gtr", number=5,
    title="GTR >= PPO-clip and PPO+KL under non-stationarity; = PPO when stationary",
    claim=("PPO adapts slowly when the task changes; a Gaussian-reshaped trust region around a mixture of recent "
           "policies (GTR) lets it make the larger consistent moves a change needs, so on a non-stationary stream "
           "PPO+GTR scores at least as well as PPO-Clip and PPO with a KL penalty, while on a stationary task it "
           "matches PPO."),
    source="Liu et al., *Local Guidance, Global Impact: Gaussian-Reshaped Trust Region Unlocks Behavior "
           "Transitions*, arXiv 2606.03382 (2026), abstract only; protocol: reconstructed "
           "(no numbers, domains or budgets are available).",
    rule=("Ten seeds per setting. Search: on seeds 0-4, each method's one hyperparameter over five values (PPO-Clip "
          "ε, PPO+KL fixed β, GTR β); each method's chosen value has the best mean over seeds of the mean eval "
          "return over the permuted stream. Test, on seeds 5-9 with the chosen values: (1) P(GTR > PPO-Clip) and "
          "(2) P(GTR > PPO+KL) on the permuted stream's mean eval return, 95 % bootstrap CIs (2000 replications); "
          "(3) on the stationary task P(GTR > PPO at ε = 0.2). **Reproduced**: the CIs of (1) and (2) lie above "
          "0.5 and (3)'s does not lie below 0.5. **Not reproduced**: any of the three CIs lies below 0.5. "
          "**Inconclusive**: otherwise (e.g. GTR within noise of the baselines)."),
    deviations=("gymnax CartPole-v1 with its observation vector re-permuted every 49,152 env steps, 10 phases "
                "(491,520 steps), each seed with its own permutations (phase 0 the identity), and the same budget "
                "stationary: the paper's domains (games, robot control, open-world, LLM post-training) and budgets "
                "are unknown",
                "PPO at its CleanRL/PureJaxRL CartPole defaults (4 envs x 128 steps, 4 epochs x 4 minibatches, "
                "64-64 tanh) without learning-rate annealing (a stream has no end to anneal towards); GTR's other "
                "switches at the spec's reconstructed defaults (penalty, no clip, log-ratio deviation, σ 0.2, "
                "M 4, geometric 0.5)", "evaluation: 5 episodes every 16,384 env steps, 3 per phase"),
    sweeps={"laptop": sweep("validation-gtr-laptop", steps=PHASES * PERIOD, seeds=10, eval_every=16_384),
            "paper": {**sweep("validation-gtr-paper", steps=40 * PERIOD, seeds=20, eval_every=16_384),
                      "resources": {"time": "4:00:00", "gpus": 1, "cpus": 4, "mem": "16G"}},
            "smoke": sweep("validation-gtr-smoke", steps=2048, seeds=2, eval_every=512, period=1024,
                           search=_SMOKE_SEARCH, extra={"run.eval_episodes": 1})},
    analyse=analyse,
    notes=("Every GTR equation is a reconstruction from the abstract (docs/interventions.md, GTR); the "
           "results say nothing about the paper's GTR, only about this variant at these settings.",
           "The paper scale cannot be the paper's (unknown): it is the same protocol with 40 phases and 20 seeds.",
           "Why the former demo had GTR at 100 against PPO's 237 (docs/interventions.md, GTR): the spec's σ = 0.2 "
           "is in log-ratio units, where one PPO iteration moves a sample's log-probability by a few hundredths; "
           "in that range the penalty is a spring β·Σ_k w_k d_k²/(2σ²) of stiffness 25β, about a KL penalty of "
           "coefficient 25β, pulling towards the last four policies. With β = 1 it holds the policy in place; "
           "the search above measures where β stops doing so."),
)
