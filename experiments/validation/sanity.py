"""Finding 7: learning sanity against a peer. This project's agents learn as well as an independent
implementation on the same work: the same env, budget, hyperparameters, network and evaluation protocol, run
side by side on the same machine. Peer: rejax 0.1.3 (in its own environment, never a dependency of the
package; experiments/validation/rejax_peer.py) for DQN on CartPole and PPO on CartPole and a MinAtar game."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from experiments.validation import (Finding, Outcome, column, fmt_ci, iqm_ci, panels, per_seed_rows, poi_ci,
                                    rule_tests, run_value, save, seed_series, tail_mean)

REJAX_PYTHON_VAR = "PLASTIC_REJAX_PYTHON"        # the python of rejax's environment
REJAX_PYTHON_DEFAULT = "/tmp/rejax-env/bin/python"
REJAX_SETUP = 'python -m venv /tmp/rejax-env && /tmp/rejax-env/bin/pip install "rejax==0.1.3" "gymnax<1.0"'
PEER_SCRIPT = Path(__file__).with_name("rejax_peer.py")
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

# pair -> (agent, env id here, env id in rejax, our overrides, rejax's config)
PAIRS = {"dqn-cartpole": ("dqn", "gymnax:CartPole-v1", "CartPole-v1", DQN, DQN_REJAX),
         "ppo-cartpole": ("ppo", "gymnax:CartPole-v1", "CartPole-v1", PPO, PPO_REJAX),
         "ppo-breakout": ("ppo", "gymnax:Breakout-MinAtar", "Breakout-MinAtar", PPO, PPO_REJAX)}


def sweep(name: str, budgets: dict, seeds: int, evals: int, extra: dict | None = None) -> dict:
    """This project's side: one block per pair, `budgets[pair]` env steps per seed, `evals` evaluations."""
    blocks = []
    for pair, steps in budgets.items():
        agent, env, _, ours, _ = PAIRS[pair]
        every = steps // evals
        ov = {**ours, "run.eval_every": every, "run.log_every": every, **(extra or {}).get(agent, {})}
        if agent == "dqn":
            ov["dqn.epsilon_decay_steps"] = steps // 2      # rejax: exploration_fraction 0.5 of the budget
        blocks.append({"agents": agent, "envs": env, "steps": steps, "overrides": ov})
    off = {f"metrics.{k}_every": 0 for k in ("activity", "grad", "rank", "churn", "ntk")}
    return {"name": name, "interventions": "none", "seeds": seeds,
            "overrides": {"run.eval_episodes": EVAL_EPISODES, **off}, "runs": blocks}


def rejax_spec(pair: str, steps: int, evals: int, seeds: int, extra: dict | None = None) -> dict:
    agent, _, env, _, theirs = PAIRS[pair]
    cfg = {**theirs, "env": env, "total_timesteps": steps, "eval_freq": steps // evals, **(extra or {})}
    return {"algo": agent, "config": cfg, "seeds": seeds, "seed": 0, "eval_episodes": EVAL_EPISODES}


def run_peers(scale: str, root: Path, sweep_: dict) -> None:
    """rejax on every pair of the scale's sweep (its budgets and seeds), skipping pairs already done:
    ROOT/peers/PAIR.json."""
    python = os.environ.get(REJAX_PYTHON_VAR, REJAX_PYTHON_DEFAULT)
    if not Path(python).exists():
        raise FileNotFoundError(f"rejax's python {python} does not exist; create it with `{REJAX_SETUP}` or set "
                                f"{REJAX_PYTHON_VAR}")
    out = root / "peers"
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # this project's site must not shadow gymnax
    for block in sweep_["runs"]:
        pair = pair_for(block["agents"], block["envs"])
        path = out / f"{pair}.json"
        if path.is_file():
            continue
        evals = block["steps"] // block["overrides"]["run.eval_every"]
        spec = rejax_spec(pair, block["steps"], evals, sweep_["seeds"], PEER_EXTRA.get(scale, {}).get(pair))
        res = subprocess.run([python, str(PEER_SCRIPT), json.dumps(spec)], capture_output=True, text=True, env=env,
                             cwd=out)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"rejax failed on {pair}: {last}")
        got = json.loads(res.stdout.strip().splitlines()[-1])
        path.write_text(json.dumps({"pair": pair, "peer": "rejax 0.1.3", "spec": spec, **got}, indent=1))


def load_peers(root: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "peers").glob("*.json"))}


def pair_for(agent: str, env: str) -> str:
    return next(p for p, (a, e, *_) in PAIRS.items() if a == agent and e == env)


def pair_of(run) -> str:
    return pair_for(run["agent"], run_value(run, "run.env"))


def analyse(runs: list, root: Path) -> Outcome:
    peers = load_peers(root)
    rows = per_seed_rows(runs, lambda r: f"plastic {pair_of(r)}", {}, FINAL_FRAC)
    for pair, got in peers.items():
        rows += [{"method": f"rejax {pair}", "seed": i, "run": str(root / "peers" / f"{pair}.json"),
                  "eval_return": tail_mean(r, FINAL_FRAC)} for i, r in enumerate(got["returns"])]
    pairs = [p for p in PAIRS if any(pair_of(r) == p for r in runs)]
    tests, table = [], ["| pair | side | seeds | final eval return, IQM [95 % CI] | wall time of the run |",
                        "|---|---|---|---|---|"]
    for pair in pairs:
        ours, theirs = column(rows, f"plastic {pair}", "eval_return"), column(rows, f"rejax {pair}", "eval_return")
        table.append(f"| {pair} | plastic | {len(ours)} | {fmt_ci(iqm_ci(ours))} | — |")
        if len(theirs):
            table.append(f"| {pair} | rejax 0.1.3 | {len(theirs)} | {fmt_ci(iqm_ci(theirs))} | "
                         f"{peers[pair]['wall_s']:.0f} s (compile included) |")
            t = poi_ci(ours, theirs)
            tests.append((f"{pair}: P(plastic > rejax), CI not below 0.5", t, "holds" if t[2] >= 0.5 else
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
    block = ("**Per side** (final = the mean of the last 10 % of a seed's evaluations, 10 episodes each; IQM over "
             "seeds with 95 % stratified-bootstrap CIs)\n\n" + "\n".join(table))
    figures = {"eval_return.png": lambda path: _plot(runs, peers, pairs, path)}
    return Outcome(verdict, why, tables=[block, tests_block], figures=figures, csv={"runs.csv": rows})


def _plot(runs, peers, pairs, path):
    fig, axes = panels(len(pairs), 4.6, 3.5, sharey=False)
    for ax, pair in zip(axes, pairs):
        series = [seed_series(r, s, "eval/episode_return") for r in runs if pair_of(r) == pair
                  for s in r["metrics"]["seeds"]]
        if series:
            n = min(len(s) for s, _ in series)
            ax.plot(series[0][0][:n], np.mean([v[:n] for _, v in series], 0), label=f"plastic ({len(series)} seeds)")
        if pair in peers:
            r = np.asarray(peers[pair]["returns"])
            ax.plot(peers[pair]["steps"], r.mean(0), label=f"rejax 0.1.3 ({len(r)} seeds)")
        ax.set_title(pair)
        ax.set_xlabel("env steps")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("eval return (mean over seeds)")
    save(fig, path)


LAPTOP = {"dqn-cartpole": 100_000, "ppo-cartpole": 500_000, "ppo-breakout": 1_000_000}
PEER_EXTRA = {"smoke": {"dqn-cartpole": {"fill_buffer": 256}}}   # scale -> pair -> rejax settings

FINDING = Finding(
    name="sanity", number=7,
    title="Learning sanity against peers (rejax) on the same budget",
    claim=("This project's DQN and PPO learn as well as an independent JAX implementation given the same work: the "
           "same env, budget, hyperparameters, network and evaluation protocol, run side by side on one machine."),
    source="rejax 0.1.3 (Liesen et al., github.com/keraJLi/rejax), run in its own environment "
           "(experiments/validation/rejax_peer.py); its defaults follow PureJaxRL and CleanRL.",
    rule=("Per seed: the final eval return (mean of the last 10 % of evaluations; 10 episodes each on both sides). "
          "For each pair, P(plastic > rejax) with a 95 % bootstrap CI (2000 replications). **Reproduced**: no "
          "pair's CI lies below 0.5 (this project is not worse). **Not reproduced**: some pair's CI lies below "
          "0.5. **Inconclusive**: a pair has no peer run."),
    deviations=("no paper to reproduce: the reference is a peer implementation on this machine",
                "DQN: rejax 0.1.3 fixes its network at 64-64 ReLU, so this project's DQN runs 64-64 (its default is "
                "CleanRL's 120-84); one update per env step after 2048 random steps, double Q, hard target copy "
                "every 50 updates, ε 1 → 0.05 over half the budget; evaluation ε 0.005 (rejax's)",
                "PPO: the CleanRL/PureJaxRL CartPole settings on both sides (4 envs x 128 steps, 4 epochs x 4 "
                "minibatches, 64-64 tanh, lr 2.5e-4 without annealing: rejax 0.1.3 does not anneal), the same on "
                "MinAtar Breakout (flattened observations, MLP)",
                "evaluation: this project's protocol (the deterministic policy; the same 10 episode seeds at every "
                "point) and rejax's (`make_act`, 10 episodes from the run's key) differ in their episode seeds",
                "5 seeds per side, vmapped on both", "TD3 and SAC on HalfCheetah-v5 against CleanRL are not part of "
                "this report yet (issue #21)"),
    sweeps={"laptop": sweep("validation-sanity-laptop", LAPTOP, seeds=5, evals=20),
            "paper": {**sweep("validation-sanity-paper", {"dqn-cartpole": 500_000, "ppo-cartpole": 500_000,
                                                          "ppo-breakout": 10_000_000}, seeds=10, evals=50),
                      "resources": {"time": "12:00:00", "gpus": 1, "cpus": 4, "mem": "16G"}},
            "smoke": sweep("validation-sanity-smoke", {"dqn-cartpole": 4096, "ppo-cartpole": 4096}, seeds=2, evals=2,
                           extra={"dqn": {"dqn.learning_starts": 256}})},
    analyse=analyse,
    peers=run_peers,
    notes=(f"The peer runs in its own environment: `{REJAX_SETUP}` (or set {REJAX_PYTHON_VAR} to its python); "
           "`experiments/validate.py sanity` runs it after this project's runs and stores its returns under the "
           "runs' root (peers/PAIR.json). The peer is not a Slurm task: at paper scale run both sides on one GPU "
           "machine with `python experiments/validate.py sanity --scale paper --launcher local` (the emitted "
           "array runs this project's side only, and a report without the peer is inconclusive).",),
)
