"""The evaluation protocol (plastic/evaluation.py): complete episodes of the evaluation policy on separate
envs, the same episode seeds for every training seed, logged at the scheduled log points; it never changes
training, a resumed run evaluates as an uninterrupted one, non-stationary envs evaluate in the current phase."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import rows, strip_timing, tiny_trainer
from plastic.config import build
from plastic.evaluation import HostEvaluation, JaxEvaluation, eval_due, make_evaluation
from plastic.sharding import SeedPlacement

EVAL = {"run.eval_every": 200, "run.eval_episodes": 3}
KEYS = ("eval/episode_return", "eval/episode_length")


def test_schedule_is_the_first_log_point_after_each_multiple_and_the_end():
    run = build("td3", "none", steps=1000, overrides={"run.eval_every": 250, "run.log_every": 100}).run
    points = [d for d in range(100, 1001, 100) if eval_due(run, d - 100, d)]
    assert points == [300, 500, 800, 1000]
    run.eval_every = 0
    assert not any(eval_due(run, d - 100, d) for d in range(100, 1001, 100))


@pytest.mark.parametrize("driver", ["jit", "host"])
def test_rows_hold_the_evaluation_at_its_points(tmp_path, driver):
    """probe:truncated pays 1 per step for 5 steps whatever the policy: every evaluation reads 5 / 5, only at
    the scheduled log points (200, and 300: the end)."""
    tr = tiny_trainer("td3", "none", 300, extra={"run.driver": driver, **EVAL}, env="probe:truncated")
    tr.run(tmp_path / "r")
    for r in rows(tmp_path / "r"):
        if r["step"] == 100:
            assert not any(k in r for k in KEYS)
        else:
            assert (r["eval/episode_return"], r["eval/episode_length"]) == (5.0, 5.0)


@pytest.mark.parametrize("driver", ["jit", "host"])
def test_evaluation_plays_the_deterministic_policy(tmp_path, driver):
    """On probe:action (one step, reward -(a - 0.5)²) the evaluation return is that of the actor's action
    without exploration noise, for every episode and seed."""
    tr = tiny_trainer("td3", "none", 300, extra={"run.driver": driver, **EVAL}, env="probe:action")
    tr.run(tmp_path / "r")
    agent_states = tr.final_state[0].agent
    for r in rows(tmp_path / "r"):
        if r["step"] != 300:
            continue
        state = jax.tree.map(lambda x: x[r["seed"]], agent_states)
        a = float(tr.agent.act(state, jnp.zeros(1), jax.random.PRNGKey(0), explore=False)[0])
        assert r["eval/episode_return"] == pytest.approx(-(a - 0.5) ** 2, rel=1e-5, abs=1e-7)
        assert r["eval/episode_length"] == 1.0


def _training_view(run_dir):
    return [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in strip_timing(rows(run_dir))]


@pytest.mark.parametrize("agent,driver,env", [
    ("sac", "jit", "probe:obs"), ("dqn", "host", "CartPole-v1"), ("ppo", "jit", "gymnax:CartPole-v1")])
def test_evaluation_never_changes_training(tmp_path, agent, driver, env):
    """With evaluation on or off the training rows and the final training state are bit-identical (a host
    env evaluates on its own gymnasium envs; PPO through its jitted driver)."""
    runs = {}
    for name, every in (("on", 100), ("off", 0)):
        tr = tiny_trainer(agent, "none", 300, env=env, extra={"run.driver": driver, "run.eval_every": every,
                                                              "run.eval_episodes": 2})
        tr.run(tmp_path / name)
        runs[name] = tr
    assert _training_view(tmp_path / "on") == _training_view(tmp_path / "off")
    assert all("eval/episode_return" in r for r in rows(tmp_path / "on"))
    for a, b in zip(jax.tree.leaves(runs["on"].final_state), jax.tree.leaves(runs["off"].final_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# a resumed run evaluates as an uninterrupted one: tests/test_stacks.py::test_a_stack_trains_and_resumes


@pytest.mark.parametrize("cls", [JaxEvaluation, HostEvaluation])
def test_episode_seeds_are_shared_by_every_training_seed(cls):
    """Two seeds with the same parameters get the same evaluation (the episodes' env seeds do not depend on
    the training seed), and another `run.seed` changes nothing; `eval_seed` picks another set of episodes."""
    cfg = build("dqn", "none", env="probe:d_obs", seeds=2, seed=5,
                overrides={"dqn.hidden": "8", "dqn.eval_epsilon": 0.5, "run.eval_episodes": 8})
    from plastic.setup import build_agent
    from plastic.jaxenvs import make_jax_env
    agent = build_agent(cfg, make_jax_env(cfg.run.env))
    one = agent.init(jax.random.PRNGKey(1))
    both = jax.tree.map(lambda x: jnp.stack([x, x]), one)
    out = cls(cfg, agent, SeedPlacement(1, 2))(both, 1000)
    np.testing.assert_array_equal(out["eval/episode_return"][0], out["eval/episode_return"][1])
    cfg.run.seed = 9
    again = cls(cfg, agent, SeedPlacement(1, 2))(both, 1000)
    np.testing.assert_array_equal(again["eval/episode_return"], out["eval/episode_return"])
    # probe:d_obs pays the first observation (±1): other eval seeds, other episodes
    means = set()
    for eval_seed in (1, 2, 3):
        cfg.run.eval_seed = eval_seed
        means.add(float(cls(cfg, agent, SeedPlacement(1, 2))(both, 1000)["eval/episode_return"][0]))
    assert len(means | {float(out["eval/episode_return"][0])}) > 1


def test_dqn_eval_epsilon_and_ppo_mode():
    """DQN acts ε-greedily with `eval_epsilon` (1: uniformly random, 0: greedy); PPO plays the mode unless
    `ppo.eval_sample`."""
    from plastic.setup import build_agent
    from plastic.jaxenvs import make_jax_env
    for eps, lo, hi in ((0.0, None, None), (1.0, 0.2, 0.8)):
        cfg = build("dqn", "none", env="probe:d_action", overrides={"dqn.hidden": "8", "dqn.eval_epsilon": eps,
                                                                    "run.eval_episodes": 200})
        agent = build_agent(cfg, make_jax_env(cfg.run.env))
        state = jax.tree.map(lambda x: x[None], agent.init(jax.random.PRNGKey(0)))
        ret = make_evaluation(cfg, agent, SeedPlacement(1, 1))(state, 10)["eval/episode_return"][0]
        if lo is None:  # greedy: every episode takes the same (argmax) action
            greedy = int(agent.act(jax.tree.map(lambda x: x[0], state), jnp.zeros(1), None, explore=False))
            assert ret == float(greedy)
        else:
            assert lo < ret < hi
    cfg = build("ppo", "none", overrides={"ppo.hidden": "8"})
    agent = build_agent(cfg, make_jax_env(cfg.run.env))
    state = agent.init(jax.random.PRNGKey(0))
    obs, key = jnp.ones(4), jax.random.PRNGKey(3)
    assert int(agent.eval_act(state, obs, key)) == int(agent.act(state, obs, key, explore=False))


@pytest.mark.parametrize("driver", ["jit", "host"])
def test_nonstationary_env_evaluates_in_the_current_phase(tmp_path, driver):
    """flip_reward with a period of 100 env steps on probe:truncated (1 per step, 5 steps): the evaluation
    after step 200 plays in the phase of step 199 (odd: -5), the one after 300 in the phase of step 299 (+5)."""
    tr = tiny_trainer("td3", "none", 300, env="probe:truncated",
                      extra={"run.driver": driver, **EVAL, "env.nonstationary": "flip_reward", "env.period": 100})
    tr.run(tmp_path / "r")
    got = {r["step"]: r["eval/episode_return"] for r in rows(tmp_path / "r") if "eval/episode_return" in r}
    assert got == {200: -5.0, 300: 5.0}
