"""DQN: probe environments with analytic Q-values, ε schedule, learning CartPole, and the agent/env checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make, rows
from plastic.config import ConfigError, build
from plastic.core import Update


def train_probe(env, tmp_path, steps=1500, **ov):
    overrides = {"dqn.learning_starts": 200, "dqn.gamma": 0.5, "dqn.lr": 3e-3, "dqn.train_frequency": 1,
                 "dqn.target_update_period": 10, "dqn.epsilon_decay_steps": 1, "dqn.epsilon_end": 0.5,
                 "run.log_every": steps}
    overrides.update(ov)
    _, trainer = make("dqn", env, steps, overrides=overrides)
    trainer.run(tmp_path / "run")
    return trainer


def q_values(trainer, obs):
    ts, _ = trainer.final_state
    state = jax.tree.map(lambda x: x[0], ts.agent)
    return np.asarray(trainer.agent.q_values(state, jnp.asarray(obs, jnp.float32)))


def test_action_dependent_reward(tmp_path):
    q = q_values(train_probe("probe:d_action", tmp_path), [[0.0]])[0]
    np.testing.assert_allclose(q, [0.0, 1.0], atol=0.05)


def test_two_step_discounting(tmp_path):
    q = q_values(train_probe("probe:d_two_step", tmp_path, steps=2000), [[0.0], [1.0]])
    np.testing.assert_allclose(q, [[0.5, 0.5], [1.0, 1.0]], atol=0.07)


def test_truncation_bootstraps(tmp_path):
    q = q_values(train_probe("probe:d_truncated", tmp_path, steps=2500), [[0.0]])[0]
    np.testing.assert_allclose(q, [2.0, 2.0], atol=0.15)  # 1 / (1 - γ) with γ = 0.5


@pytest.mark.parametrize("n_step", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_n_step_returns_keep_the_probe_values(tmp_path, n_step):
    """n-step targets on the 2-step probe (windows stop at the episode end) and on the truncated probe
    (windows cross no episode boundary; the bootstrap after a truncation stays)."""
    q = q_values(train_probe("probe:d_two_step", tmp_path / "a", steps=2000, **{"dqn.n_step": n_step}),
                 [[0.0], [1.0]])
    np.testing.assert_allclose(q, [[0.5, 0.5], [1.0, 1.0]], atol=0.07)
    q = q_values(train_probe("probe:d_truncated", tmp_path / "b", steps=2500, **{"dqn.n_step": n_step}), [[0.0]])
    np.testing.assert_allclose(q[0], [2.0, 2.0], atol=0.15)


def test_gather_nstep_windows():
    """Rewards 1..6 in slots 0..5 (newest 5); slot 2 ends an episode by termination, slot 4 by truncation."""
    from plastic.replay import Replay
    example = {"obs": jnp.zeros(1), "action": jnp.zeros((), jnp.int32), "reward": jnp.zeros(()),
               "next_obs": jnp.zeros(1), "terminated": jnp.zeros(()), "done": jnp.zeros(())}
    rb = Replay.create(8, example)
    for t in range(6):
        rb = rb.add({"obs": jnp.full(1, t), "action": jnp.int32(0), "reward": jnp.float32(t + 1),
                     "next_obs": jnp.full(1, 10 + t), "terminated": jnp.float32(t == 2),
                     "done": jnp.float32(t in (2, 4))})
    g = 0.5
    out = rb.gather_nstep(jnp.arange(6), 3, g)
    np.testing.assert_allclose(out["reward"], [1 + g * 2 + g * g * 3, 2 + g * 3, 3, 4 + g * 5, 5, 6])
    np.testing.assert_allclose(out["discount"], [g ** 3, g ** 2, g, g ** 2, g, g])
    np.testing.assert_allclose(out["terminated"], [1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(out["next_obs"][:, 0], [12, 12, 12, 14, 14, 15])
    np.testing.assert_allclose(out["obs"][:, 0], np.arange(6))
    # a host resume restarts the episodes after slot 5: its cut ends slot 5's episode (not its bootstrap), so
    # windows from slots 4 and 5 no longer run into the new episode's slots 6 and 7
    for stacked in (False, True):
        r = jax.tree.map(lambda x: x[None], rb) if stacked else rb
        r = r.cut_at_newest()
        r = jax.tree.map(lambda x: x[0], r) if stacked else r
        for t in (6, 7):
            r = r.add({"obs": jnp.full(1, t), "action": jnp.int32(0), "reward": jnp.float32(t + 1),
                       "next_obs": jnp.full(1, 10 + t), "terminated": jnp.float32(0), "done": jnp.float32(0)})
        out = r.gather_nstep(jnp.arange(3, 6), 3, g)
        np.testing.assert_allclose(out["reward"], [4 + g * 5, 5, 6])
        np.testing.assert_allclose(out["terminated"], [0, 0, 0])
        np.testing.assert_allclose(out["next_obs"][:, 0], [14, 14, 15])


@pytest.mark.parametrize("double", [True, False])
def test_double_dqn_target_uses_online_argmax(double):
    """Targets on a hand-built case: online prefers action 0, the target net values action 1 more."""
    _, tr = make("dqn", "probe:d_constant", 10, overrides={"dqn.double": double, "dqn.gamma": 1.0,
                                                                 "dqn.loss": "huber"})
    agent = tr.agent
    state = agent.init(jax.random.PRNGKey(0))
    # online: last layer makes Q = (1, 0); target: Q = (0, 5), whatever the input
    def fixed(params, values):
        last = sorted(params)[-1]
        out = dict(params)
        out[last] = {"kernel": jnp.zeros_like(params[last]["kernel"]), "bias": jnp.asarray(values, jnp.float32)}
        return out
    state = state.replace(nets={"q": state.nets["q"].replace(params=fixed(state.nets["q"].params, [1.0, 0.0]))},
                          targets={"q": fixed(state.targets["q"], [0.0, 5.0])})
    batch = {"obs": jnp.zeros((4, 1)), "action": jnp.zeros(4, jnp.int32), "reward": jnp.zeros(4),
             "next_obs": jnp.zeros((4, 1)), "terminated": jnp.zeros(4)}
    counters = {"env_steps": jnp.zeros((), jnp.int32), "q": jnp.zeros((), jnp.int32)}
    state2 = agent.update(Update(state, counters=counters), batch, jax.random.PRNGKey(1)).state
    # loss = huber(Q(s, 0) - y) with Q(s, 0) = 1: y = 0 (double: target's value of online argmax 0) or 5 (max)
    expected = 0.5 if double else 3.5  # huber(1) = 0.5, huber(-4) = 4 - 0.5
    assert float(state2.logs["loss/q"]) == pytest.approx(expected)


def test_epsilon_schedule_is_linear_then_flat():
    _, tr = make("dqn", "probe:d_constant", 10, overrides={"dqn.epsilon_decay_steps": 100,
                                                           "dqn.epsilon_start": 1.0, "dqn.epsilon_end": 0.1})
    eps = [float(tr.agent.epsilon(s)) for s in (0, 50, 100, 1000)]
    assert eps == pytest.approx([1.0, 0.55, 0.1, 0.1])
    # Dopamine's and MinAtar's schedule: ε stays 1 through the warm-up, then decays over the next 100 steps
    _, tr = make("dqn", "probe:d_constant", 10, overrides={
        "dqn.epsilon_decay_steps": 100, "dqn.epsilon_start": 1.0, "dqn.epsilon_end": 0.1,
        "dqn.learning_starts": 40, "dqn.epsilon_decay_from": "learning_starts"})
    eps = [float(tr.agent.epsilon(s)) for s in (0, 40, 90, 140, 1000)]
    assert eps == pytest.approx([1.0, 1.0, 0.55, 0.1, 0.1])


def test_learns_cartpole(tmp_path):
    """3 vmapped seeds, 20k env steps: every seed's return over the last 8k steps is ≥ 100 (random ≈ 22)."""
    ov = {"dqn.learning_starts": 1000, "dqn.epsilon_decay_steps": 10_000, "dqn.train_frequency": 1,
          "dqn.lr": 1e-3, "dqn.target_update_period": 500, "dqn.hidden": "64,64", "dqn.batch_size": 64,
          "dqn.buffer_size": 20_000, "run.log_every": 2000}
    _, tr = make("dqn", "CartPole-v1", 20_000, overrides=ov, seeds=3)
    tr.run(tmp_path / "run")
    for seed in range(3):
        late = [r["episode_return"] for r in rows(tmp_path / "run") if r["seed"] == seed and r["step"] > 12_000]
        assert np.mean(late) >= 100, (seed, late)


def test_agent_and_env_action_kinds_must_match():
    with pytest.raises(ValueError, match="CartPole-v1 has discrete actions but td3 needs continuous ones; "
                                         "agents for this env: dqn"):
        make("td3", "CartPole-v1", 10)
    with pytest.raises(ValueError, match="needs discrete ones; agents for this env: sac, td3"):
        make("dqn", "Pendulum-v1", 10)


def test_bad_dqn_values():
    with pytest.raises(ConfigError, match="dqn.loss='l1' is not valid; choose one of: huber, mse"):
        build("dqn", "none", overrides={"dqn.loss": "l1"})
    with pytest.raises(ConfigError, match="dqn.train_frequency must be > 0"):
        build("dqn", "none", overrides={"dqn.train_frequency": 0})
