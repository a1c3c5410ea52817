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


def test_sac_temperature_starts_where_cleanrl_starts_it():
    """Autotuned α starts at 1 (CleanRL's log_alpha = 0); `alpha` is the fixed temperature without autotune. A
    run saved before `alpha_init` existed started its autotune at `alpha`, and reloads that way."""
    import jax
    import jax.numpy as jnp
    from plastic.config import build, from_dict
    from plastic.drivers import make_trainer

    def alpha0(cfg):
        st = make_trainer(cfg).agent.init(jax.random.PRNGKey(0))
        return float(jnp.exp(st.nets["alpha"].params["log_alpha"]))
    assert alpha0(build("sac", "none", env="probe:obs")) == 1.0
    assert alpha0(build("sac", "none", env="probe:obs", overrides={"sac.autotune": False})) == pytest.approx(0.2)
    saved = build("sac", "none", env="probe:obs").to_dict()
    del saved["sac"]["alpha_init"]                              # a config.yaml written before the field existed
    old = from_dict(saved)
    assert old.agent_cfg.alpha_init == pytest.approx(0.2) and alpha0(old) == pytest.approx(0.2)
    assert from_dict(build("sac", "none", env="probe:obs").to_dict()).agent_cfg.alpha_init == 1.0
