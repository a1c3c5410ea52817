"""Finding 7: learning sanity against a peer. This project's agents learn as well as an independent
implementation on the same work: the same env, budget, hyperparameters, network and evaluation protocol, run
side by side on the same machine. Peers, each in its own environment and never a dependency of the package:
rejax 0.1.3 (experiments/validation/rejax_peer.py) for DQN on CartPole and PPO on CartPole and a MinAtar game;
CleanRL's single-file scripts (experiments/validation/cleanrl_peer.py) for TD3 and SAC on HalfCheetah."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from experiments.validation import (METRICS_OFF, Finding, Outcome, column, fmt_ci, iqm_ci, panels, per_seed_rows,
                                    poi_ci, rule_tests, run_value, save, seed_series, tail_mean)

REJAX_PYTHON_VAR = "PLASTIC_REJAX_PYTHON"        # the python of rejax's environment
REJAX_PYTHON_DEFAULT = "/tmp/rejax-env/bin/python"
REJAX_SETUP = 'python -m venv /tmp/rejax-env && /tmp/rejax-env/bin/pip install "rejax==0.1.3" "gymnax<1.0"'
PEER_SCRIPT = Path(__file__).with_name("rejax_peer.py")
CLEANRL_PYTHON_VAR = "PLASTIC_CLEANRL_PYTHON"    # the python of CleanRL's environment
CLEANRL_PYTHON_DEFAULT = "/tmp/cleanrl-env/bin/python"
CLEANRL_REPO_VAR = "PLASTIC_CLEANRL_REPO"        # a checkout of CleanRL at CLEANRL_COMMIT
CLEANRL_REPO_DEFAULT = "/tmp/cleanrl"
CLEANRL_COMMIT = "fe8d8a03"
CLEANRL_SETUP = (f"git clone https://github.com/vwxyzjn/cleanrl /tmp/cleanrl && git -C /tmp/cleanrl checkout "
                 f"{CLEANRL_COMMIT} && python -m venv /tmp/cleanrl-env && /tmp/cleanrl-env/bin/pip install "
                 f"'torch==2.4.1' 'numpy<2' 'gymnasium[mujoco]==0.29.1' 'mujoco==2.3.3' tensorboard 'tyro<0.6' "
                 f"'jax[cpu]==0.4.13' 'flax<0.8' 'optax<0.2' 'scipy<1.13'")
CLEANRL_SCRIPT = Path(__file__).with_name("cleanrl_peer.py")
EVAL_EPISODES = 10
FINAL_FRAC = 0.1

PPO = {"ppo.num_envs": 4, "ppo.num_steps": 128, "ppo.epochs": 4, "ppo.minibatches": 4,
       "ppo.lr": 2.5e-4, "ppo.anneal_lr": False, "ppo.max_grad_norm": 0.5, "ppo.gamma": 0.99, "ppo.gae_lambda": 0.95,
       "ppo.clip_coef": 0.2, "ppo.clip_vloss": True, "ppo.ent_coef": 0.01, "ppo.vf_coef": 0.5, "ppo.hidden": [64, 64],
       "ppo.activation": "tanh"}
PPO_REJAX = {"num_envs": 4, "num_steps": 128, "num_epochs": 4, "num_minibatches": 4, "learning_rate": 2.5e-4,
             "max_grad_norm": 0.5, "gamma": 0.99, "gae_lambda": 0.95, "clip_eps": 0.2, "ent_coef": 0.01,
             "vf_coef": 0.5, "agent_kwargs": {"activation": "tanh", "hidden_layer_sizes": [64, 64]}}
DQN = {"dqn.train_frequency": 1, "dqn.utd": 1, "dqn.learning_starts": 2048, "dqn.buffer_size": 10_000,
       "dqn.batch_size": 128, "dqn.lr": 2.5e-4, "dqn.gamma": 0.99, "dqn.target_update_period": 50,
       "dqn.hidden": [64, 64], "dqn.epsilon_start": 1.0, "dqn.epsilon_end": 0.05, "dqn.eval_epsilon": 0.005}
DQN_REJAX = {"num_envs": 1, "buffer_size": 10_000, "fill_buffer": 2048, "batch_size": 128, "learning_rate": 2.5e-4,
             "gamma": 0.99, "ddqn": True, "num_epochs": 1, "target_update_freq": 50, "polyak": 0.0, "eps_start": 1.0,
             "eps_end": 0.05, "exploration_fraction": 0.5, "agent_kwargs": {"activation": "relu"}}

# CleanRL's defaults, which are this project's TD3 and SAC defaults too: stated on our side all the same
TD3 = {"td3.hidden": [256, 256], "td3.actor_lr": 3e-4, "td3.critic_lr": 3e-4, "td3.batch_size": 256,
       "td3.gamma": 0.99, "td3.tau": 0.005, "td3.policy_delay": 2, "td3.exploration_noise": 0.1,
       "td3.target_noise": 0.2, "td3.noise_clip": 0.5, "td3.learning_starts": 25_000, "td3.buffer_size": 1_000_000}
SAC = {"sac.hidden": [256, 256], "sac.actor_lr": 3e-4, "sac.critic_lr": 1e-3, "sac.alpha_lr": 1e-3,
       "sac.batch_size": 256, "sac.gamma": 0.99, "sac.tau": 0.005, "sac.policy_delay": 2, "sac.autotune": True,
       "sac.alpha_init": 1.0, "sac.learning_starts": 5_000, "sac.buffer_size": 1_000_000}
TD3_CLEANRL = {"learning-starts": 25_000}
SAC_CLEANRL = {"learning-starts": 5_000}

# pair -> (agent, env id here, env id in rejax, our overrides, rejax's config)
PAIRS = {"dqn-cartpole": ("dqn", "gymnax:CartPole-v1", "CartPole-v1", DQN, DQN_REJAX),
         "ppo-cartpole": ("ppo", "gymnax:CartPole-v1", "CartPole-v1", PPO, PPO_REJAX),
         "ppo-breakout": ("ppo", "gymnax:Breakout-MinAtar", "Breakout-MinAtar", PPO, PPO_REJAX)}
# pair -> (agent, env id here, env id in CleanRL, our overrides, CleanRL's script, its arguments). CleanRL pins
# gymnasium 0.29.1, which has no v5: HalfCheetah-v4 there (bit-identical to v5 in gymnasium 1.x, see deviations)
CLEANRL_PAIRS = {"td3-halfcheetah": ("td3", "HalfCheetah-v5", "HalfCheetah-v4", TD3,
                                     "cleanrl/td3_continuous_action_jax.py", TD3_CLEANRL),
                 "sac-halfcheetah": ("sac", "HalfCheetah-v5", "HalfCheetah-v4", SAC,
                                     "cleanrl/sac_continuous_action.py", SAC_CLEANRL)}
TRAIN_RETURN = "episode_return"   # the CleanRL pairs' score: CleanRL's scripts only evaluate at the end


def sweep(name: str, budgets: dict, seeds: int, evals: int, extra: dict | None = None,
          pair_seeds: dict | None = None) -> dict:
    """This project's side: one block per pair, `budgets[pair]` env steps per seed, `evals` evaluations, `seeds`
    seeds (`pair_seeds[pair]` where given)."""
    blocks = []
    for pair, steps in budgets.items():
        agent, env, _, ours, *_ = PAIRS.get(pair) or CLEANRL_PAIRS[pair]
        every = steps // evals
        # a CleanRL pair scores training episodes: a log row per 1000-step HalfCheetah episode
        log = min(every, 1000) if pair in CLEANRL_PAIRS else every
        ov = {**ours, "run.eval_every": every, "run.log_every": log, **(extra or {}).get(agent, {})}
        if agent == "dqn":
            ov["dqn.epsilon_decay_steps"] = steps // 2      # rejax: exploration_fraction 0.5 of the budget
        block = {"agents": agent, "envs": env, "steps": steps, "overrides": ov}
        if (pair_seeds or {}).get(pair):
            block["seeds"] = pair_seeds[pair]
        blocks.append(block)
    return {"name": name, "interventions": "none", "seeds": seeds,
            "overrides": {"run.eval_episodes": EVAL_EPISODES, **METRICS_OFF}, "runs": blocks}


def rejax_spec(pair: str, steps: int, evals: int, seeds: int, extra: dict | None = None) -> dict:
    agent, _, env, _, theirs = PAIRS[pair]
    cfg = {**theirs, "env": env, "total_timesteps": steps, "eval_freq": steps // evals, **(extra or {})}
    return {"algo": agent, "config": cfg, "seeds": seeds, "seed": 0, "eval_episodes": EVAL_EPISODES}


def run_peers(scale: str, root: Path, sweep_: dict) -> None:
    """The peer of every pair of the scale's sweep (its budgets and seeds), skipping pairs already done:
    ROOT/peers/PAIR.json. rejax pairs run in rejax's environment, CleanRL pairs in CleanRL's."""
    out = root / "peers"
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # this project's site must not shadow theirs
    for block in sweep_["runs"]:
        pair = pair_for(block["agents"], block["envs"])
        path = out / f"{pair}.json"
        if path.is_file():
            continue
        if pair in CLEANRL_PAIRS:
            python, script, spec, peer = _python(CLEANRL_PYTHON_VAR, CLEANRL_PYTHON_DEFAULT, CLEANRL_SETUP), \
                CLEANRL_SCRIPT, cleanrl_spec(pair, block["steps"], block.get("seeds", sweep_["seeds"]),
                                             PEER_EXTRA.get(scale, {}).get(pair)), f"CleanRL {CLEANRL_COMMIT}"
        else:
            evals = block["steps"] // block["overrides"]["run.eval_every"]
            python, script, peer = _python(REJAX_PYTHON_VAR, REJAX_PYTHON_DEFAULT, REJAX_SETUP), PEER_SCRIPT, \
                "rejax 0.1.3"
            spec = rejax_spec(pair, block["steps"], evals, block.get("seeds", sweep_["seeds"]),
                              PEER_EXTRA.get(scale, {}).get(pair))
        # finished seeds survive a stop (absolute: the peer runs in `out`)
        extra = [str((out / ".cleanrl-seeds").resolve())] if pair in CLEANRL_PAIRS else []
        res = subprocess.run([python, str(script), json.dumps(spec), *extra], capture_output=True, text=True,
                             env=env, cwd=out)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{peer} failed on {pair}: {last}")
        got = json.loads(res.stdout.strip().splitlines()[-1])
        path.write_text(json.dumps({"pair": pair, "peer": peer, "spec": spec, **got}, indent=1))


def _python(var: str, default: str, setup: str) -> str:
    python = os.environ.get(var, default)
    if not Path(python).exists():
        raise FileNotFoundError(f"the peer's python {python} does not exist; create it with `{setup}` or set {var}")
    return python


def cleanrl_spec(pair: str, steps: int, seeds: int, extra: dict | None = None) -> dict:
    repo = Path(os.environ.get(CLEANRL_REPO_VAR, CLEANRL_REPO_DEFAULT))
    if not (repo / ".git").exists():
        raise FileNotFoundError(f"no CleanRL checkout at {repo}; create it with `{CLEANRL_SETUP}` or set "
                                f"{CLEANRL_REPO_VAR}")
    _, _, env, _, script, theirs = CLEANRL_PAIRS[pair]
    return {"repo": str(repo), "commit": CLEANRL_COMMIT, "script": script, "seeds": list(range(seeds)),
            "args": {"env-id": env, "total-timesteps": steps, **theirs, **(extra or {})}}


def load_peers(root: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "peers").glob("*.json"))}


def pair_for(agent: str, env: str) -> str:
    return next(p for p, (a, e, *_) in {**PAIRS, **CLEANRL_PAIRS}.items() if a == agent and e == env)


def pair_of(run) -> str:
    return pair_for(run["agent"], run_value(run, "run.env"))


def peer_name(pair: str) -> str:
    return "CleanRL" if pair in CLEANRL_PAIRS else "rejax"


def score_key(pair: str) -> str:
    """The column a pair is judged on: final eval return (rejax pairs), final training return (CleanRL pairs)."""
    return "train_return" if pair in CLEANRL_PAIRS else "eval_return"


def analyse(runs: list, root: Path, sweep_: dict) -> Outcome:
    """Every pair of the scale's sweep: a pair without this project's runs or without its peer's is missing."""
    peers = load_peers(root)
    rows = per_seed_rows(runs, lambda r: f"plastic {pair_of(r)}", {}, FINAL_FRAC)
    by_path = {str(r["path"]): r for r in runs}
    for row in rows:   # training return: the mean over the last 10 % of log rows (CleanRL pairs' score)
        run = by_path[row["run"]]
        _, v = seed_series(run, row["seed"] - run["seed_base"], TRAIN_RETURN)
        row["train_return"] = tail_mean(v, FINAL_FRAC) if len(v) else None
    for pair, got in peers.items():
        rows += [{"method": f"{peer_name(pair)} {pair}", "seed": i, "run": str(root / "peers" / f"{pair}.json"),
                  score_key(pair): tail_mean(r, FINAL_FRAC)} for i, r in enumerate(got["returns"])]
    pairs = [pair_for(b["agents"], b["envs"]) for b in sweep_["runs"]]
    tests, table = [], ["| pair | side | seeds | score | final, IQM [95 % CI] | wall time of the run |",
                        "|---|---|---|---|---|---|"]
    for pair in pairs:
        key, peer = score_key(pair), peer_name(pair)
        what = "training return" if key == "train_return" else "eval return"
        ours, theirs = column(rows, f"plastic {pair}", key), column(rows, f"{peer} {pair}", key)
        table.append(f"| {pair} | plastic | {len(ours)} | {what} | {fmt_ci(iqm_ci(ours))} | — |")
        if not len(ours):
            tests.append((f"{pair}: no run of this project", (float("nan"),) * 3, "missing"))
        elif len(theirs):
            wall = float(np.sum(peers[pair]["wall_s"]))
            table.append(f"| {pair} | {peers[pair]['peer']} | {len(theirs)} | {what} | {fmt_ci(iqm_ci(theirs))} | "
                         f"{wall:.0f} s{' (compile included)' if peer == 'rejax' else ', seeds one after another'} |")
            t = poi_ci(ours, theirs)
            tests.append((f"{pair}: P(plastic > {peer}), CI not below 0.5", t, "holds" if t[2] >= 0.5 else
                          "does not hold"))
        else:
            tests.append((f"{pair}: no peer run", (float("nan"),) * 3, "missing"))
    if any(res == "missing" for *_, res in tests):
        verdict = "inconclusive"
    elif all(res == "holds" for *_, res in tests):
        verdict = "reproduced"
    else:
        verdict = "not reproduced"
    why, tests_block = rule_tests(tests)
    block = ("**Per side** (final = the mean of the last 10 % of a seed's evaluations, 10 episodes each, or of its "
             "training episodes' returns for the CleanRL pairs; IQM over seeds with 95 % stratified-bootstrap "
             "CIs)\n\n" + "\n".join(table))
    figures = {"returns.png": lambda path: _plot(runs, peers, pairs, path)}
    return Outcome(verdict, why, tables=[block, tests_block], figures=figures, csv={"runs.csv": rows})


def _plot(runs, peers, pairs, path):
    fig, axes = panels(len(pairs), 4.6, 3.5, sharey=False)
    for ax, pair in zip(axes, pairs):
        key = "eval/episode_return" if score_key(pair) == "eval_return" else TRAIN_RETURN
        series = [seed_series(r, s, key) for r in runs if pair_of(r) == pair for s in r["metrics"]["seeds"]]
        if series:
            n = min(len(s) for s, _ in series)
            ax.plot(series[0][0][:n], np.mean([v[:n] for _, v in series], 0), label=f"plastic ({len(series)} seeds)")
        if pair in peers:
            got = peers[pair]
            steps = got["steps"][0] if pair in CLEANRL_PAIRS else got["steps"]   # CleanRL: per seed
            n = min([len(r) for r in got["returns"]] + [len(steps)])
            r = np.asarray([r[:n] for r in got["returns"]])
            ax.plot(steps[:n], r.mean(0), label=f"{got['peer']} ({len(r)} seeds)")
        ax.set_title(f"{pair} ({'training' if key == TRAIN_RETURN else 'eval'} return)")
        ax.set_xlabel("env steps")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("return (mean over seeds)")
    save(fig, path)


LAPTOP = {"dqn-cartpole": 100_000, "ppo-cartpole": 500_000, "ppo-breakout": 1_000_000, "td3-halfcheetah": 100_000,
          "sac-halfcheetah": 100_000}
# scale -> pair -> the peer's settings (rejax's config, CleanRL's arguments)
PEER_EXTRA = {"smoke": {"dqn-cartpole": {"fill_buffer": 256}, "td3-halfcheetah": {"learning-starts": 500}}}

FINDING = Finding(
    name="sanity", number=7,
    title="Learning sanity against peers (rejax, CleanRL) on the same budget",
    claim=("This project's DQN, PPO, TD3 and SAC learn as well as an independent implementation given the same "
           "work: the same env, budget, hyperparameters, network and scoring, run side by side on one machine."),
    source="rejax 0.1.3 (Liesen et al., github.com/keraJLi/rejax; experiments/validation/rejax_peer.py), its "
           f"defaults following PureJaxRL and CleanRL; CleanRL at commit {CLEANRL_COMMIT} (Huang et al., "
           "github.com/vwxyzjn/cleanrl; its unmodified TD3-JAX and SAC scripts through "
           "experiments/validation/cleanrl_peer.py). Each peer runs in its own environment.",
    rule=("Per seed: the final eval return (mean of the last 10 % of evaluations; 10 episodes each on both sides); "
          "for the CleanRL pairs the final training return (mean return of the last 10 % of training episodes, "
          "both sides: CleanRL's scripts evaluate only at the end). For each pair, P(plastic > peer) with a 95 % "
          "bootstrap CI (2000 replications). **Reproduced**: no pair's CI lies below 0.5 (this project is not "
          "worse). **Not reproduced**: some pair's CI lies below 0.5. **Inconclusive**: a pair lacks this "
          "project's runs or its peer's."),
    deviations=("no paper to reproduce: the reference is a peer implementation on this machine",
                "DQN: rejax 0.1.3 fixes its network at 64-64 ReLU, so this project's DQN runs 64-64 (its default is "
                "CleanRL's 120-84); one update per env step after 2048 random steps, double Q, hard target copy "
                "every 50 updates, ε 1 → 0.05 over half the budget; evaluation ε 0.005 (rejax's)",
                "PPO: the CleanRL/PureJaxRL CartPole settings on both sides (4 envs x 128 steps, 4 epochs x 4 "
                "minibatches, 64-64 tanh, lr 2.5e-4 without annealing: rejax 0.1.3 does not anneal), the same on "
                "MinAtar Breakout (flattened observations, MLP)",
                "evaluation: this project's protocol (the deterministic policy; the same 10 episode seeds at every "
                "point) and rejax's (`make_act`, 10 episodes from the run's key) differ in their episode seeds",
                "5 seeds per side (the TD3 pair: 10), vmapped on both (CleanRL: its seeds one after another)",
                "TD3 and SAC: CleanRL's defaults on both sides (they are this project's defaults too), 100k env "
                "steps (the issue's minimum), scored on training returns (see the rule). CleanRL pins gymnasium "
                "0.29.1, which has no HalfCheetah-v5: it runs HalfCheetah-v4, which in gymnasium 1.x gives the same "
                "observations and rewards as v5 over 1000 random-action steps from one seed (checked). Its "
                "environment has jax 0.4.13 (CleanRL pins 0.4.8, whose jaxlib has no wheel here) and torch 2.4.1; "
                "both SAC sides draw weights as PyTorch's nn.Linear default, U(±1/sqrt(fan_in)) (CleanRL's SAC is PyTorch; "
                "this project's `sac.init: torch_default`, its default since 2026-12-05), but this project's biases "
                "start at zero where PyTorch draws them from the same uniform; both TD3 sides draw flax's LeCun "
                "normal with zero biases"),
    sweeps={"laptop": sweep("validation-sanity-laptop", LAPTOP, seeds=5, evals=20,
                            pair_seeds={"td3-halfcheetah": 10}),
            "paper": {**sweep("validation-sanity-paper", {"dqn-cartpole": 500_000, "ppo-cartpole": 500_000,
                                                          "ppo-breakout": 10_000_000}, seeds=10, evals=50),
                      "resources": {"time": "12:00:00", "gpus": 1, "cpus": 4, "mem": "16G"}},
            "smoke": sweep("validation-sanity-smoke", {"dqn-cartpole": 4096, "ppo-cartpole": 4096,
                                                       "td3-halfcheetah": 1200}, seeds=2, evals=2,
                           extra={"dqn": {"dqn.learning_starts": 256},
                                  "td3": {"td3.learning_starts": 500, "td3.hidden": [32, 32]}})},
    analyse=analyse,
    peers=run_peers,
    scores=("the evaluation protocol's `eval/episode_return` (plastic/evaluation.py) for the rejax pairs, the "
            "training episodes' `episode_return` for the CleanRL pairs (on both sides); a seed's final score is the "
            "mean over its last 10 % of evaluations, or of training episodes"),
    notes=(f"The peers run in their own environments: `{REJAX_SETUP}` (or set {REJAX_PYTHON_VAR} to its python); "
           f"`{CLEANRL_SETUP}` (or set {CLEANRL_PYTHON_VAR} and {CLEANRL_REPO_VAR}). "
           "`experiments/validate.py sanity` runs them after this project's runs and stores their returns under the "
           "runs' root (peers/PAIR.json). The peer is not a Slurm task: at paper scale run both sides on one GPU "
           "machine with `python experiments/validate.py sanity --scale paper --launcher local` (the emitted "
           "array runs this project's side only, and a report without the peer is inconclusive).",
           "SAC's early gap was the initializer. With LeCun-normal weights (3x PyTorch's variance; this project's "
           "SAC default until 2026-12-05) SAC learned HalfCheetah about 5k steps later than CleanRL's; drawing "
           "them as PyTorch does closed it. Mean training return over 5 seeds per 5k-step window (10-15k / "
           "15-20k / 20-25k / 25-30k): LeCun normal with α₀ 1: -92 / 273 / 797 / 1217; PyTorch's draw: "
           "242 / 1271 / 2430 / 3129 (this run); CleanRL: 210 / 1391 / 2271 / 2993. The LeCun-normal run, "
           "stopped at 50k, is kept in runs/measurements/ (not part of this report).",
           "The TD3 pair fails the rule at 5 seeds, but the curves agree until late: mean training return per "
           "window (25-40k / 40-55k / 55-70k / 70-85k / 85-100k), plastic -426 / 753 / 2016 / 2682 / 3221, "
           "CleanRL -393 / 868 / 1960 / 2958 / 3534. A line-by-line reading of CleanRL's TD3-JAX script against "
           "agents/td3.py found no difference (hyperparameters, delayed actor and target updates, the Q1 actor "
           "loss, clipped target noise, the initializer).",
           "Ten seeds a side (2026-12-06) do not close the gap: P(plastic > CleanRL) = 0.23 [0.04, 0.49], just "
           "below the rule's 0.5; IQM 3.26e+03 [2.99e+03, 3.5e+03] against 3.66e+03 [3.38e+03, 3.84e+03], about "
           "11 % lower. Seeds 0-4 are the 5-seed run's (their per-seed scores in runs.csv); seeds 5-9 ran on both "
           "sides on 2026-12-06 (this project at commit 20ef0ea, `--seed 5 --seeds 5` with the same block; CleanRL "
           "seeds 5-9, 5186 s), and the two halves agree (seeds 5-9 alone: P = 0.28 [0, 0.68]; windows as above "
           "for seeds 5-9: plastic -402 / 615 / 2156 / 2876 / 3172, CleanRL -409 / 744 / 2076 / 2778 / 3463). A "
           "second reading found no difference either in what the two sides feed the learner: truncated episodes "
           "bootstrap from the true final observation on both (plastic/envs.py keeps it apart from the reset "
           "observation), evaluation uses its own envs, warm-up actions are uniform on both, the twin critics' "
           "losses are summed per member (so each gets its own MSE gradient, as CleanRL's two optimizers), Adam "
           "and the Polyak step are optax's on both. The gap is small (the 40-55k window, just after learning "
           "starts, is the most consistent one: plastic lower in both halves) and unexplained.",
           "Two components were then swapped for a direct comparison (2026-12-06). The update: TD3.update "
           "against CleanRL's update_critic/update_actor from the same parameters, batches and target noise, "
           "256-256 networks, 8 updates: every parameter and target agrees to 3.4e-6 of its largest entry (float32 "
           "rounding; the actor moved 1.2e-3), run with CleanRL's own jax 0.4.13 / flax 0.7.4; "
           "tests/test_td3_reference.py keeps this comparison in the suite. The env: "
           "`experiments/validation/halfcheetah_versions.py` steps HalfCheetah-v5 (gymnasium 1.3, MuJoCo 3.17) "
           "from 20,000 states recorded in CleanRL's HalfCheetah-v4 (gymnasium 0.29.1, MuJoCo 2.3.3) with the "
           "recorded actions: the next state differs by at most 3.5e-6 and the reward by 1.1e-7 (0 within one "
           "MuJoCo version), and random-action returns agree within their standard errors (-285 ± 22 against "
           "-303 ± 21, 20 episodes). Neither the update nor the env explains the gap. What still differs is "
           "only the random streams (replay indices, exploration and target noise, initial weights: the same "
           "distributions, different draws); the rule's verdict for this pair stands as measured."),
)
