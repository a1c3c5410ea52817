"""Probe environments with analytic action values: the critics must learn them (rejax-style probes)."""
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make


def critic_values(trainer, obs, action):
    ts, _ = trainer.final_state
    params = jax_tree_first(ts.agent.nets["critic"].params)
    x = jnp.concatenate([jnp.asarray(obs, jnp.float32), jnp.asarray(action, jnp.float32)], -1)
    return np.asarray(trainer.agent.critic.apply(params, x)[0][..., 0])  # [2, B]


def jax_tree_first(tree):
    import jax
    return jax.tree.map(lambda x: x[0], tree)


def train(agent, env, tmp_path, steps=1500, **ov):
    overrides = {f"{agent}.learning_starts": 200, f"{agent}.gamma": 0.5, f"{agent}.critic_lr": 3e-3,
                 f"{agent}.actor_lr": 3e-3, "run.log_every": steps}
    overrides.update(ov)
    _, trainer = make(agent, env, steps, overrides=overrides)
    trainer.run(tmp_path / "run")
    return trainer


@pytest.mark.parametrize("agent", ["td3", "sac"])
def test_constant_reward_terminal(agent, tmp_path):
    t = train(agent, "probe:constant", tmp_path)
    q = critic_values(t, [[0.0], [0.0]], [[-0.5], [0.5]])
    np.testing.assert_allclose(q, 1.0, atol=0.08)


def test_observation_dependent_value_sac(tmp_path):
    t = train("sac", "probe:obs", tmp_path)
    q = critic_values(t, [[-1.0], [1.0]], [[0.0], [0.0]])
    np.testing.assert_allclose(q, [[-1.0, 1.0]] * 2, atol=0.1)


def test_two_step_discounting_td3(tmp_path):
    t = train("td3", "probe:two_step", tmp_path, steps=2500)
    q = critic_values(t, [[0.0], [1.0]], [[0.0], [0.0]])
    np.testing.assert_allclose(q, [[0.5, 1.0]] * 2, atol=0.1)  # Q(s0) = γ · 1, Q(s1) = 1


def test_truncation_bootstraps_td3(tmp_path):
    # reward 1 forever, episodes cut by a time limit: Q = 1 / (1 - γ) = 2, not the 5-step sum
    t = train("td3", "probe:truncated", tmp_path, steps=2500)
    q = critic_values(t, [[0.0]], [[0.0]])
    np.testing.assert_allclose(q, 2.0, atol=0.15)


def test_actor_finds_best_action_td3(tmp_path):
    t = train("td3", "probe:action", tmp_path, steps=2000)
    ts, _ = t.final_state
    a = t.agent.act(jax_tree_first(ts.agent), jnp.zeros((1,)), None, explore=False)
    assert abs(float(a[0]) - 0.5) < 0.1
