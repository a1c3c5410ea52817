"""Named continual suites (plastic/suites.py): resolution, precedence and errors; the pieces they add (MinAtar's
full action set, padded task observations, string-valued log fields); a suite end to end with resume and the
per-phase report."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from plastic import suites
from plastic.cli import main
from plastic.config import ConfigError, build
from plastic.envs import make_env
from plastic.jaxenvs import make_jax_env
from plastic.nonstationary import EnvConfig, wrap_host, wrap_jax

AGENT = {"dmc": "sac", "playground": "ppo", "minatar": "dqn", "cartpole": "dqn", "brax": "ppo", "slippery": "sac"}


def _agent(name):
    return next(a for k, a in AGENT.items() if k in name)


# slow variants: playground_chain_humanoid builds three more MJX models (~13 s) on playground_chain's path,
# dmc_chain_dog four dog models (~13 s) on dmc_chain's
SLOW_SUITES = ("playground_chain_humanoid", "dmc_chain_dog")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SUITES else n
                                  for n in suites.NAMES])
def test_every_suite_resolves_to_its_fields_and_budget(name):
    suite = suites.SUITES[name]
    cfg = build(_agent(name), None, env=f"continual:{name}")  # validates: builds every task env, checks spaces
    for k, v in suite.env.items():
        assert getattr(cfg.env, k) == v, k
    assert cfg.env.suite == name
    assert cfg.run.env == (suite.run_env or suite.env["tasks"][0])
    assert cfg.run.steps == suite.phases * suite.env["period"]
    again = build(_agent(name), None, env=f"continual:{name}", overrides={"env.period": "1000"}, steps=None)
    assert again.env.period == 1000 and again.run.steps == suite.phases * 1000


def test_overrides_beat_the_suite_and_contradictions_are_errors():
    cfg = build("dqn", None, env="continual:permuted_cartpole", steps=7000, overrides={"env.per_seed": "false"})
    assert cfg.run.steps == 7000 and cfg.env.per_seed is False and cfg.env.period == 50_000
    same = build("dqn", None, overrides={"env.suite": "permuted_cartpole"})  # the field is the suite too
    assert same.run.env == "gymnax:CartPole-v1" and same.run.steps == 500_000
    with pytest.raises(ConfigError, match="contradicts env.suite=slippery_ant; set one of them"):
        build("dqn", None, env="continual:permuted_cartpole", overrides={"env.suite": "slippery_ant"})
    with pytest.raises(ConfigError, match="--env CartPole-v1 contradicts env.suite=permuted_cartpole, whose env is"):
        build("dqn", None, env="CartPole-v1", overrides={"env.suite": "permuted_cartpole"})


@pytest.mark.parametrize("argv, needle", [
    (["--env", "continual:nope"], "unknown continual suite 'nope'; valid: continual:dmc_chain, "),
    (["--env.suite", "nope"], "unknown continual suite 'nope'; valid: continual:dmc_chain, "),
    (["--env", "gymnax:Breakout-MinAtar:fast"], "the only option is :full, for MinAtar games"),
    (["--env", "gymnax:CartPole-v1", "--env.pad_obs", "true"], "env.pad_obs pads the observations of env.tasks"),
    (["--env.nonstationary", "tasks", "--env.tasks", "gymnax:Breakout-MinAtar:full,gymnax:Asterix-MinAtar:full,"
      "gymnax:SpaceInvaders-MinAtar:full"], "observation size 400 vs 600 (env.pad_obs true pads"),
])
def test_bad_suite_input_is_one_line_error_and_writes_nothing(argv, needle, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["--agent", "dqn", *argv, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err
    assert not run_dir.exists()


@pytest.mark.parametrize("game", ["Breakout", "SpaceInvaders", "Freeway"])
def test_minatar_full_action_set_means_the_same_actions_in_every_game(game):
    """`:full` action a does what the minimal set's action does where the game has it, and nothing (action 0)
    where it does not: stepped from the same state with the same key, the next states are equal."""
    full, minimal = make_jax_env(f"gymnax:{game}-MinAtar:full"), make_jax_env(f"gymnax:{game}-MinAtar")
    assert full.action_size == 6 and full.observation_shape == minimal.observation_shape
    key = jax.random.PRNGKey(3)
    state, _ = full.reset(key)
    for _ in range(5):  # a state a few steps in
        state, *_ = full.transition(state, jnp.int32(1), key)
    sets = [int(a) for a in minimal.base_env.action_set]
    for a in range(6):
        want = sets.index(a) if a in sets else 0
        _, obs_full, r_full, *_ = full.transition(state, jnp.int32(a), key)
        _, obs_min, r_min, *_ = minimal.transition(state, jnp.int32(want), key)
        np.testing.assert_array_equal(obs_full, obs_min)
        assert float(r_full) == float(r_min)


def test_padded_task_observations_on_both_drivers():
    """A 4-channel game after a 6-channel one: its observation is its own, zeros in the 2 extra channels,
    the same on the jitted and the host wrapper."""
    ids = ("gymnax:SpaceInvaders-MinAtar:full", "gymnax:Breakout-MinAtar:full")
    cfg = EnvConfig(nonstationary="tasks", tasks=ids, period=4, pad_obs=True)
    env = wrap_jax(make_jax_env(ids[0]), cfg)
    assert env.observation_shape == (10, 10, 6) and env.observation_size == 600
    breakout = make_jax_env(ids[1])
    key = jax.random.PRNGKey(0)
    state, obs = env.reset(key, step=4)  # phase 1: breakout
    _, raw = breakout.reset(key)
    padded = np.asarray(obs).reshape(10, 10, 6)
    np.testing.assert_array_equal(padded[..., :4], np.asarray(raw).reshape(10, 10, 4))
    assert not padded[..., 4:].any()
    host = wrap_host(make_env(ids[0]), cfg, start_step=4)
    assert host.observation_shape == (10, 10, 6)
    want = np.zeros((10, 10, 6), np.float32)
    want[..., :4] = np.asarray(make_env(ids[1]).reset(0)).reshape(10, 10, 4)
    np.testing.assert_array_equal(host.reset(0), want.reshape(-1))


def test_a_suite_runs_resumes_across_switches_and_reports_per_phase(tmp_path, capsys):
    """PPO on the MinAtar sequence, phases of 128 steps: 3 phases, then resumed (repeating --env
    continual:...) to all 6; every row names its phase and game; the report has a phase table, the change
    between the two visits of each game, phases.csv and phases.png."""
    run_dir = tmp_path / "seq"
    argv = ["--agent", "ppo", "--env", "continual:minatar_sequence", "--env.period", "128", "--seeds", "2",
            "--ppo.num_envs", "2", "--ppo.num_steps", "32", "--ppo.hidden", "16", "--run.log_every", "64",
            "--run.eval_every", "0", "--run.progress", "off", "--run-dir", str(run_dir)]
    assert main(argv + ["--steps", "384"]) == 0
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["env"]["suite"] == "minatar_sequence" and cfg["env"]["pad_obs"] is True
    assert cfg["run"]["env"] == "gymnax:SpaceInvaders-MinAtar:full"
    assert main(argv + ["--resume", "--steps", "768"]) == 0
    rs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rs if r["seed"] == 0] == list(range(64, 769, 64))
    games = ["SpaceInvaders", "Asterix", "Breakout"] * 2
    for r in rs:
        k = (r["step"] - 1) // 128
        assert r["nonstationary/phase"] == k and r["nonstationary/task"] == f"gymnax:{games[k]}-MinAtar:full"
    capsys.readouterr()

    from experiments.report import main as report
    out = tmp_path / "report"
    assert report([str(run_dir), "--out", str(out), "--reps", "50", "--score", "train"]) == 0
    md = (out / "report.md").read_text()
    assert "## Phases" in md and "### continual:minatar_sequence [tasks, period=128]" in md
    assert "| ppo | gymnax:Asterix-MinAtar:full | 1 | 4 |" in md
    lines = (out / "phases.csv").read_text().splitlines()
    assert lines[0].startswith("method,task,run,seed,phase,label,final_return")
    assert len(lines) - 1 <= 12 and {l.split(",")[4] for l in lines[1:]} <= set("012345")
    assert (out / "phases.png").stat().st_size > 0


def test_phase_scores_are_the_final_score_rule_per_phase(tmp_path):
    """Synthetic rows with known returns: each phase's score is the mean of the last 10% of its log points
    (here one), the table averages seeds, and the change of a task between its visits is last minus first."""
    from experiments.report import aggregate, load_scores
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "agent": "dqn", "intervention": "none", "run": {"env": "a", "seed": 0},
        "env": {"nonstationary": "tasks", "period": 10, "tasks": ["a", "b"], "suite": ""}}))
    returns = {0: [1, 2, 10, 20, 3, 4], 1: [1, 4, 30, 40, 5, 2]}  # two log points per phase, 3 phases
    with (run / "metrics.jsonl").open("w") as f:
        for i in range(6):
            for seed in (0, 1):
                f.write(json.dumps({"step": 5 * (i + 1), "seed": seed, "episode_return": returns[seed][i],
                                    "nonstationary/phase": i // 2, "nonstationary/task": "ab"[(i // 2) % 2]}) + "\n")
    rep = aggregate(load_scores([run], score="train"), reps=20)
    ((task, per_method),) = rep.phases.table.items()
    cells = per_method["dqn"]
    assert [(k, label) for k, label, *_ in cells] == [(0, "a"), (1, "b"), (2, "a")]
    assert [c[2] for c in cells] == [3.0, 30.0, 3.0]  # means of (2, 4), (20, 40), (4, 2)
    ((label, first, last, change, lo, hi),) = rep.phases.visits[task]["dqn"]
    assert (label, first, last) == ("a", 0, 2) and change == pytest.approx(0.0)  # (4-2 + 2-4) / 2
    assert lo <= change <= hi
