"""MuJoCo Playground (`playground:NAME[:BACKEND]`): the env's semantics under jit(vmap), its host adapter, its
non-stationary physics against MuJoCo's own model building, a jitted-driver run with vmapped seeds, and its
one-line errors. CartpoleBalance on the jax (MJX) backend: the cheapest task on a CPU."""
import copy
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import rows, tiny_trainer
from plastic.checkpoint import latest_checkpoint
from plastic.envs import is_jax_native
from plastic.jaxenvs import PlaygroundEnv, make_jax_env, playground_default_backend
from plastic.nonstationary import EnvConfig, check_dynamics_support, scale, validate, wrap_jax

ENV = "playground:CartpoleBalance:jax"
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def cartpole():
    return make_jax_env(ENV)


def test_cartpole_balance_under_vmap_truncates_and_resets(cartpole):
    env = copy.copy(cartpole)
    assert isinstance(env, PlaygroundEnv) and env.backend == "jax" and env.max_episode_steps == 1000
    assert (env.observation_size, env.action_size, env.discrete, env.action_repeat) == (5, 1, False, 1)
    env.max_episode_steps = 6  # the base class's time limit, reached quickly
    n = 4
    state, obs = jax.jit(jax.vmap(env.reset))(jax.random.split(KEY, n))
    assert obs.shape == (n, 5) and obs.dtype == jnp.float32
    step = jax.jit(jax.vmap(env.step))
    actions = jnp.linspace(-1.0, 1.0, n)[:, None]
    for i in range(1, 13):
        state, nxt, r, term, trunc, final = step(state, actions, jax.random.split(jax.random.fold_in(KEY, i), n))
        assert nxt.shape == final.shape == (n, 5) and r.dtype == jnp.float32 and term.dtype == jnp.bool_
        assert not term.any()                                   # the Control Suite tasks never terminate
        assert trunc.tolist() == [i % 6 == 0] * n               # the time limit, as truncation
        assert ((r >= 0) & (r <= 1)).all()                      # Control Suite rewards are in [0, 1]
        if i % 6 == 0:  # a fresh episode starts: next_obs is the reset's, final_obs the state reached
            assert not np.allclose(nxt, final) and (state.t == 0).all()


def test_action_repeat_steps_the_simulator_k_times_and_sums_the_rewards(cartpole):
    env = copy.copy(cartpole)
    env.action_repeat = 3
    inner, _ = env.reset_inner(KEY)
    a = jnp.array([0.7])
    got = jax.jit(env.step_inner)(inner, a, KEY)
    s, total, step = inner, 0.0, jax.jit(cartpole.base_env.step)
    for _ in range(3):
        s = step(s, a)
        total += float(s.reward)
    np.testing.assert_allclose(got[1], s.obs, rtol=1e-5, atol=1e-6)
    assert float(got[2]) == pytest.approx(total, rel=1e-5) and float(got[3]) == 0.0


@pytest.mark.parametrize("dynamics", ["friction", "gravity"])
def test_scaled_physics_equal_mujocos_own_model(cartpole, dynamics):
    """The wrapper's scaled MJX model in phase 1 equals the model MJX builds from a MuJoCo model scaled on the
    host (every float field), and phase 0 runs the unmodified env."""
    from mujoco import mjx
    cfg = EnvConfig(nonstationary="dynamics", dynamics=dynamics, period=3, scale_low=0.3, scale_high=3.0)
    wrapped = wrap_jax(cartpole, cfg)
    s = float(scale(cfg, 1))
    assert s != 1.0
    ref = copy.deepcopy(cartpole.base_env.mj_model)
    if dynamics == "friction":
        ref.geom_friction[:, 0] *= s
        ref.pair_friction[:, :2] *= s
    else:
        ref.opt.gravity[:] *= s
    want = mjx.put_model(ref, impl="jax")
    base = cartpole.base_env.mjx_model
    flat = lambda m: jax.tree_util.tree_flatten_with_path(m)[0]  # noqa: E731
    for k, ref_model in ((0, base), (1, want)):
        got = wrapped.env_for(jnp.int32(k), jnp.uint32(0)).base_env.mjx_model
        changed = 0
        for (path, a), (_, b), (_, c) in zip(flat(got), flat(ref_model), flat(base)):
            a, b, c = np.asarray(a), np.asarray(b), np.asarray(c)
            if a.dtype.kind == "f":
                np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=jax.tree_util.keystr(path))
                changed += not np.array_equal(a, c)
        assert changed == (k == 1)  # phase 0: the unmodified env; phase 1: one field scaled


def test_dynamics_support_and_errors():
    validate(EnvConfig(nonstationary="dynamics", dynamics="gravity"), ENV)
    check_dynamics_support(ENV, "friction")
    for env_id, dyn, words in [(ENV, "mass", ["mass", "friction|gravity"]),
                               ("playground:CartpoleBalance:warp", "friction", ["jax", "playground:CartpoleBalance:jax"])]:
        with pytest.raises(ValueError) as e:
            check_dynamics_support(env_id, dyn)
        assert "\n" not in str(e.value) and all(w in str(e.value) for w in words)


def test_default_backend_runs_under_vmap():
    assert playground_default_backend() == "jax" and is_jax_native("playground:CheetahRun")


def test_sac_on_two_vmapped_seeds_with_permuted_observations(tmp_path, caplog):
    """The jitted driver runs SAC on Playground with two vmapped seeds and permuted observations, a new
    permutation every 100 steps ending the episode: log rows for both seeds with their own returns, and
    checkpoints written (MJX's state holds zero-size arrays; their round trip: tests/test_trainer.py).
    The chunk program compiles once: MJX puts its model on the device, and a fresh carry that mixed those
    committed arrays with uncommitted ones made its second chunk compile it again."""
    trainer = tiny_trainer("sac", "none", 400, env=ENV, extra={
        "run.log_every": 200, "env.nonstationary": "permute_obs", "env.period": 100, "env.truncate_at_switch": True,
        "run.checkpoint_every": 200})
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        trainer.run(tmp_path)
    compiled = [r.getMessage()[:40] for r in caplog.records if r.getMessage().startswith("Compiling jit(program)")]
    assert len(compiled) == 1, compiled
    got = rows(tmp_path)
    train = [r for r in got if r.get("episode_return") is not None]
    assert sorted({r["seed"] for r in train}) == [0, 1] and {r["step"] for r in got} == {200, 400}
    assert all(0 <= r["episode_return"] <= 100 for r in train)  # 100-step episodes, rewards in [0, 1]
    assert len({r["episode_return"] for r in train}) > 1
    assert latest_checkpoint(tmp_path) == 400


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["td3", "ppo"])
def test_td3_and_ppo_run_on_two_vmapped_seeds(tmp_path, agent):
    """The other agents the issue names, on the same path as SAC above (slow: the same driver code)."""
    tiny_trainer(agent, "none", 400, env=ENV, extra={"run.log_every": 200, "env.nonstationary": "permute_obs",
                                                     "env.period": 100, "env.truncate_at_switch": True}).run(tmp_path)
    train = [r for r in rows(tmp_path) if r.get("episode_return") is not None]
    assert sorted({r["seed"] for r in train}) == [0, 1] and all(0 <= r["episode_return"] <= 100 for r in train)
