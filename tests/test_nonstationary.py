"""Non-stationary envs: the JAX wrapper under jit(vmap) against the unwrapped env, the host wrapper on
MuJoCo / dm_control / classic control, the schedule helpers and the config validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastic.envs import make_env
from plastic.jaxenvs import make_jax_env
from plastic.nonstationary import (EnvConfig, NonstationaryState, check_dynamics_support, permutation, phase_info,
                                   preset, scale, switch_index, switch_steps, validate, wrap_host, wrap_jax)

N_ENVS = 4


def rollout(env, n_steps, seed=0, **reset_kwargs):
    """n_steps of N_ENVS envs under jit(vmap(scan)), random actions from the step keys (the same for any
    env with the same action space). Returns (reset obs, per-step outputs [envs, steps, ...], last state)."""
    def action(k):
        k = jax.random.fold_in(k, 99)
        if env.discrete:
            return jax.random.randint(k, (), 0, env.action_size)
        return jax.random.uniform(k, (env.action_size,), minval=-1.0, maxval=1.0)

    def one(key):
        state, obs = env.reset(key, **reset_kwargs)

        def body(state, i):
            k = jax.random.fold_in(key, i)
            a = action(k)
            new, nobs, r, term, trunc, final = env.step(state, a, k)
            return new, dict(state=state, action=a, key=k, next_obs=nobs, reward=r, term=term, trunc=trunc,
                             final_obs=final)
        last, out = jax.lax.scan(body, state, jnp.arange(n_steps))
        return obs, out, last

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(seed), N_ENVS))


# ---------------------------------------------------------------------------------------------- JAX

@pytest.fixture(scope="module")
def cartpole():
    return make_jax_env("gymnax:CartPole-v1")


def test_permute_obs_jax(cartpole):
    n, period = 40, 7
    cfg = EnvConfig(nonstationary="permute_obs", period=period)
    env = wrap_jax(cartpole, cfg)
    obs0, out, last = rollout(env, n)
    bobs0, bout, _ = rollout(cartpole, n)
    perms = [permutation(cfg, k, 4) for k in range(n // period + 2)]
    np.testing.assert_array_equal(perms[0], np.arange(4))  # first_phase=base: phase 0 is the identity
    assert all(not np.array_equal(perms[k], perms[k + 1]) for k in range(len(perms) - 1))  # changes at switches
    np.testing.assert_array_equal(obs0, bobs0)
    assert bool(np.any(bout["term"]))  # episodes end inside the window: auto-reset keeps the phase counter
    np.testing.assert_array_equal(last.step, n)
    for key in ("reward", "term", "trunc"):
        np.testing.assert_array_equal(out[key], bout[key])
    for i in range(n):
        k, k_next = i // period, (i + 1) // period
        np.testing.assert_array_equal(out["final_obs"][:, i], bout["final_obs"][:, i][:, perms[k]])
        np.testing.assert_array_equal(out["next_obs"][:, i], bout["next_obs"][:, i][:, perms[k_next]])
        # a permutation: the multiset of values is the unwrapped env's
        np.testing.assert_array_equal(np.sort(out["final_obs"][:, i], -1), np.sort(bout["final_obs"][:, i], -1))


def test_permute_schedule_seed_and_per_seed():
    drawn = EnvConfig(nonstationary="permute_obs", first_phase="drawn", seed=3)
    assert not np.array_equal(permutation(drawn, 0, 50), np.arange(50))
    assert not np.array_equal(permutation(drawn, 1, 50), permutation(EnvConfig(**{**drawn.__dict__, "seed": 4}), 1, 50))
    # schedule ids matter only with per_seed
    np.testing.assert_array_equal(permutation(drawn, 1, 50, schedule=0), permutation(drawn, 1, 50, schedule=7))
    per = EnvConfig(**{**drawn.__dict__, "per_seed": True})
    assert not np.array_equal(permutation(per, 1, 50, schedule=0), permutation(per, 1, 50, schedule=7))


def test_flip_reward_across_episode_boundaries():
    base = make_jax_env("probe:d_truncated")  # reward 1 every step, truncated after 5 steps
    n, period = 20, 3
    env = wrap_jax(base, EnvConfig(nonstationary="flip_reward", period=period))
    _, out, last = rollout(env, n)
    _, bout, _ = rollout(base, n)
    expected = np.array([(-1.0) ** (i // period) for i in range(n)], np.float32)
    np.testing.assert_array_equal(out["reward"], bout["reward"] * expected)
    np.testing.assert_array_equal(out["trunc"], bout["trunc"])  # episode ends (every 5 steps) are the env's
    assert out["trunc"][:, 4].all() and not out["trunc"][:, 2].any()
    np.testing.assert_array_equal(last.step, n)
    # resume: a reset at step 9 starts in phase 3
    _, out, _ = rollout(env, 4, step=9)
    np.testing.assert_array_equal(out["reward"][0], [-1, -1, -1, 1])


def test_envs_per_seed_counts_seed_steps():
    base = make_jax_env("probe:d_truncated")
    env = wrap_jax(base, EnvConfig(nonstationary="flip_reward", period=4), envs_per_seed=2)
    _, out, last = rollout(env, 8)
    np.testing.assert_array_equal(out["reward"][0], [1, 1, -1, -1, 1, 1, -1, -1])  # phase of call n: 2n // 4
    np.testing.assert_array_equal(last.step, 16)


def _classic_expected(genv, cfg, out, manual_params):
    """Step gymnax directly with manually scaled params from the wrapped run's states and keys."""
    n = out["reward"].shape[1]
    scales = jnp.array([scale(cfg, i // cfg.period) for i in range(n)], jnp.float32)

    def one(inner, action, key, s):
        a = genv.env_action(action)
        obs, _, _, _, _ = genv.base_env.step_env(jax.random.split(key)[0], inner, a, manual_params(genv.env_params, s))
        return jnp.ravel(obs)
    f = jax.vmap(jax.vmap(one), in_axes=(0, 0, 0, None))
    return f(out["state"].env.inner, out["action"], out["key"], scales), np.asarray(scales)


@pytest.mark.parametrize("env_id, dynamics, manual", [
    ("gymnax:CartPole-v1", "mass", lambda p, s: p.replace(
        masscart=p.masscart * s, masspole=p.masspole * s, total_mass=(p.masscart + p.masspole) * s,
        polemass_length=p.masspole * s * p.length)),
    ("gymnax:Pendulum-v1", "gravity", lambda p, s: p.replace(g=p.g * s)),
])
def test_dynamics_gymnax_matches_manually_scaled_params(env_id, dynamics, manual):
    genv = make_jax_env(env_id)
    n, period = 15, 5
    cfg = EnvConfig(nonstationary="dynamics", dynamics=dynamics, period=period, scale_low=0.2, scale_high=0.4)
    validate(cfg, env_id)
    env = wrap_jax(genv, cfg)
    _, out, _ = rollout(env, n)
    live = ~(out["term"] | out["trunc"])  # final_obs of ended episodes is compared too (it is the step's)
    expected, scales = _classic_expected(genv, cfg, out, manual)
    assert scales[0] == 1.0 and all(0.2 <= s <= 0.4 for s in scales[period:])
    np.testing.assert_allclose(out["final_obs"], expected, rtol=1e-5, atol=1e-6)
    _, bout, _ = rollout(genv, n)  # phase 0 (scale 1) is the unwrapped env, up to float rounding
    np.testing.assert_allclose(out["final_obs"][:, :period], bout["final_obs"][:, :period], rtol=1e-5, atol=1e-6)
    # and the unscaled physics would have predicted something else after the first switch
    unscaled, _ = _classic_expected(genv, EnvConfig(nonstationary="dynamics", period=10 ** 9), out, manual)
    np.testing.assert_allclose(out["final_obs"][:, :period], unscaled[:, :period], rtol=1e-5, atol=1e-6)
    assert np.abs(out["final_obs"][:, period:] - unscaled[:, period:]).max() > 1e-3
    assert live.any()


def test_tasks_jax_switch_and_truncate():
    ids = ("probe:d_truncated", "probe:d_action")  # action 0: reward 1 forever / reward 0, terminal
    env = wrap_jax(make_jax_env(ids[0]), EnvConfig(nonstationary="tasks", tasks=ids, period=4))
    assert isinstance(env.reset(jax.random.PRNGKey(0))[0], NonstationaryState)
    n = 14

    def one(key):
        state, _ = env.reset(key)

        def body(state, i):
            new, nobs, r, term, trunc, final = env.step(state, jnp.int32(0), jax.random.fold_in(key, i))
            return new, (r, term, trunc)
        return jax.lax.scan(body, state, jnp.arange(n))[1]
    r, term, trunc = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(1), N_ENVS))
    phase = np.arange(n) // 4
    np.testing.assert_array_equal(r[0], np.where(phase % 2 == 0, 1.0, 0.0))
    np.testing.assert_array_equal(term[0], phase % 2 == 1)
    # the switch out of d_truncated (after step 3, and 11) truncates; d_truncated's own limit (5) never hits
    np.testing.assert_array_equal(trunc[0], np.isin(np.arange(n), [3, 11]))
    assert (r == r[:1]).all()


def test_tasks_errors():
    with pytest.raises(ValueError, match="must share their spaces: gymnax:CartPole-v1 and gymnax:Acrobot-v1 have "
                                         "discrete actions 2 vs discrete actions 3") as e:
        wrap_jax(make_jax_env("gymnax:CartPole-v1"),
                 EnvConfig(nonstationary="tasks", tasks=("gymnax:CartPole-v1", "gymnax:Acrobot-v1"), period=5))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="continuous"):
        wrap_jax(make_jax_env("probe:d_constant"),
                 EnvConfig(nonstationary="tasks", tasks=("probe:d_constant", "probe:constant")))
    with pytest.raises(ValueError, match="JAX-native"):
        wrap_jax(make_jax_env("probe:d_constant"), EnvConfig(nonstationary="tasks", tasks=("probe:d_constant",
                                                                                            "CartPole-v1")))
    with pytest.raises(ValueError, match="not one of env.tasks"):
        wrap_jax(make_jax_env("probe:d_obs"), EnvConfig(nonstationary="tasks", tasks=("probe:d_constant",
                                                                                       "probe:d_action")))


# --------------------------------------------------------------------------------------------- host

def test_host_mujoco_friction_and_mass():
    cfg = EnvConfig(nonstationary="dynamics", dynamics="friction", period=4, scale_low=0.02, scale_high=2.0)
    env = wrap_host(make_env("Ant-v5"), cfg)
    model = env.envs[0].env.unwrapped.model
    base = model.geom_friction[:, 0].copy()
    base_rest = model.geom_friction[:, 1:].copy()
    env.reset(5)
    np.testing.assert_array_equal(model.geom_friction[:, 0], base)
    rng = np.random.default_rng(0)
    for i in range(10):
        env.step(rng.uniform(-1, 1, env.action_size))
        k = i // 4
        np.testing.assert_allclose(model.geom_friction[:, 0], base * scale(cfg, k), rtol=1e-12)
        np.testing.assert_array_equal(model.geom_friction[:, 1:], base_rest)  # torsional/rolling kept
    assert scale(cfg, 1) != 1.0 and scale(cfg, 2) != scale(cfg, 1)

    cfg = EnvConfig(nonstationary="dynamics", dynamics="mass", period=3)
    env = wrap_host(make_env("HalfCheetah-v5"), cfg)
    model = env.envs[0].env.unwrapped.model
    mass, inertia = model.body_mass.copy(), model.body_inertia.copy()
    env.reset(0)
    for _ in range(4):
        env.step(np.zeros(env.action_size))
    np.testing.assert_allclose(model.body_mass, mass * scale(cfg, 1), rtol=1e-12)
    np.testing.assert_allclose(model.body_inertia, inertia * scale(cfg, 1), rtol=1e-12)


def test_slippery_ant_preset():
    cfg = preset("slippery_ant")
    validate(cfg, "Ant-v5")
    assert (cfg.period, cfg.scale_low, cfg.scale_high, cfg.dynamics) == (2_000_000, 0.02, 2.0, "friction")
    s = [scale(cfg, k, schedule=sd) for sd in (0, 1) for k in range(20)]
    assert all(0.02 <= v <= 2.0 for v in s) and s[0] != 1.0 and s[0] != s[20]  # drawn in phase 0, per seed
    env = wrap_host(make_env("Ant-v5"), cfg, schedule=1, start_step=4_000_000)  # resume in phase 2
    env.reset(0)
    env.step(np.zeros(8))
    np.testing.assert_allclose(env.envs[0].env.unwrapped.model.geom_friction[:, 0], scale(cfg, 2, schedule=1))
    assert phase_info(cfg, 4_000_000, schedule=1) == {"phase": 2, "scale": scale(cfg, 2, schedule=1)}


def test_host_dmc_tasks_switch_reward_function():
    cfg = EnvConfig(nonstationary="tasks", tasks=("dmc:walker-walk", "dmc:walker-run"), period=5)
    validate(cfg, "dmc:walker-walk")
    env = wrap_host(make_env("dmc:walker-walk"), cfg)
    walk, run = make_env("dmc:walker-walk"), make_env("dmc:walker-run")
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (10, 6))

    def push(dmc_env):  # a forward speed of 2 m/s: walk's speed term is saturated, run's (8 m/s) is not
        dmc_env.env.physics.named.data.qvel["rootx"] = 2.0

    for seed, ref, steps in ((11, walk, range(5)), (12, run, range(5, 10))):
        np.testing.assert_array_equal(env.reset(seed), ref.reset(seed))
        push(env.active)
        push(ref)
        for i in steps:
            obs, r, term, trunc = env.step(actions[i])
            obs_ref, r_ref, _, _ = ref.step(actions[i])
            np.testing.assert_array_equal(obs, obs_ref)
            assert r == r_ref and not term and trunc == (i in (4, 9))  # each switch ends the episode
    # the two reward functions do differ on the same trajectory
    walk.reset(12)
    push(walk)
    rewards_walk = [walk.step(a)[1] for a in actions[5:10]]
    run.reset(12)
    push(run)
    rewards_run = [run.step(a)[1] for a in actions[5:10]]
    assert min(w - r for w, r in zip(rewards_walk, rewards_run)) > 0.05


def test_host_tasks_of_jax_native_envs():
    ids = ("probe:d_truncated", "probe:d_action")
    env = wrap_host(make_env(ids[1]), EnvConfig(nonstationary="tasks", tasks=ids, period=3))
    assert env.envs[1].env.env_id == ids[1]  # the given env is reused for its own id
    out = []
    env.reset(0)
    for _ in range(9):
        _, r, term, trunc = env.step(0)
        out.append((r, term, trunc))
        if term or trunc:
            env.reset(1)
    assert out == [(1.0, False, False), (1.0, False, False), (1.0, False, True)] + [(0.0, True, False)] * 3 + \
        [(1.0, False, False), (1.0, False, False), (1.0, False, True)]


def test_host_permute_and_flip_match_unwrapped():
    cfg = EnvConfig(nonstationary="permute_obs", period=3)
    env, ref = wrap_host(make_env("Hopper-v5"), cfg), make_env("Hopper-v5")
    np.testing.assert_array_equal(env.reset(3), ref.reset(3))
    rng = np.random.default_rng(1)
    for i in range(8):
        a = rng.uniform(-1, 1, 3)
        obs, r, term, trunc = env.step(a)
        obs_ref, r_ref, term_ref, trunc_ref = ref.step(a)
        np.testing.assert_array_equal(obs, obs_ref[permutation(cfg, i // 3, obs_ref.size)])
        assert (r, term, trunc) == (r_ref, term_ref, trunc_ref)

    env = wrap_host(make_env("probe:d_truncated"), EnvConfig(nonstationary="flip_reward", period=3))
    rewards = []
    env.reset(0)
    for _ in range(12):
        _, r, term, trunc = env.step(0)
        rewards.append(r)
        if term or trunc:  # every 5 steps; the counter runs on across episodes
            env.reset(1)
    assert rewards == [(-1.0) ** (i // 3) for i in range(12)]


def test_host_classic_control_attributes():
    cfg = EnvConfig(nonstationary="dynamics", dynamics="gravity", period=2, truncate_at_switch=True)
    env = wrap_host(make_env("CartPole-v1"), cfg)
    un = env.envs[0].env.unwrapped
    env.reset(0)
    _, _, term, trunc = env.step(0)
    _, _, term2, trunc2 = env.step(1)
    assert un.gravity == 9.8 and not trunc and (trunc2 or term2)  # truncate_at_switch
    env.reset(1)
    env.step(0)
    assert un.gravity == pytest.approx(9.8 * scale(cfg, 1))
    env = wrap_host(make_env("CartPole-v1"), EnvConfig(nonstationary="dynamics", dynamics="mass", period=1))
    un = env.envs[0].env.unwrapped
    env.reset(0)
    env.step(0)
    env.step(0)
    s = scale(env.cfg, 1)
    assert (un.masscart, un.masspole) == pytest.approx((1.0 * s, 0.1 * s))
    assert (un.total_mass, un.polemass_length) == pytest.approx((1.1 * s, 0.05 * s))


# ---------------------------------------------------------------------------------- schedule, config

def test_switch_helpers():
    cfg = EnvConfig(nonstationary="flip_reward", period=100)
    assert [switch_index(cfg, s) for s in (0, 99, 100, 250)] == [0, 0, 1, 2]
    assert switch_steps(cfg, 350) == [100, 200, 300]
    assert switch_index(EnvConfig(), 10 ** 9) == 0 and switch_steps(EnvConfig(), 10 ** 6) == []
    assert phase_info(cfg, 150) == {"phase": 1, "reward_sign": -1.0}
    tasks = EnvConfig(nonstationary="tasks", tasks=("a", "b", "c"), period=10)
    assert phase_info(tasks, 35)["task"] == "a" and phase_info(tasks, 25)["task"] == "c"
    assert wrap_jax(make_jax_env("probe:d_obs"), EnvConfig()).__class__.__name__ == "ProbeJaxEnv"


@pytest.mark.parametrize("kwargs, env_id, words", [
    (dict(nonstationary="drift"), None, ["none", "permute_obs", "flip_reward", "dynamics", "tasks"]),
    (dict(nonstationary="flip_reward", period=0), None, ["period", "positive"]),
    (dict(nonstationary="dynamics", scale_low=2.0, scale_high=0.5), None, ["scale_low", "scale_high"]),
    (dict(nonstationary="dynamics", scale_low=0.0), None, ["scale_low"]),
    (dict(nonstationary="dynamics", dynamics="wind"), None, ["friction", "mass", "gravity"]),
    (dict(nonstationary="dynamics", first_phase="later"), None, ["base", "drawn"]),
    (dict(nonstationary="tasks", tasks=("dmc:walker-walk",)), None, ["at least 2"]),
    (dict(nonstationary="flip_reward", tasks=("a", "b")), None, ["env.nonstationary=tasks"]),
    (dict(nonstationary="dynamics", dynamics="friction"), "gymnax:CartPole-v1", ["mass", "gravity"]),
    (dict(nonstationary="dynamics"), "gymnax:Breakout-MinAtar", ["brax:", "dmc:", "CartPole"]),
    (dict(nonstationary="dynamics"), "probe:d_obs", ["brax:", "dmc:"]),
    (dict(nonstationary="dynamics", dynamics="mass"), "brax:ant", ["generalized", "mjx"]),
    (dict(nonstationary="dynamics", dynamics="gravity"), "MountainCarContinuous-v0", ["mass"]),
    (dict(nonstationary="dynamics"), "FrozenLake-v1", ["Ant-v5"]),
    (dict(nonstationary="tasks", tasks=("probe:d_obs", "probe:d_action")), "probe:d_constant", ["env.tasks[0]"]),
])
def test_validation_errors_are_one_line_and_name_options(kwargs, env_id, words):
    with pytest.raises(ValueError) as e:
        validate(EnvConfig(**kwargs), env_id)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_validation_accepts_supported():
    for env_id, dyn in [("Ant-v5", "friction"), ("dmc:walker-walk", "mass"), ("brax:ant", "friction"),
                        ("brax:ant:mjx", "mass"), ("gymnax:Acrobot-v1", "mass"), ("Pendulum-v1", "gravity")]:
        validate(EnvConfig(nonstationary="dynamics", dynamics=dyn), env_id)
        check_dynamics_support(env_id, dyn)
    validate(EnvConfig(nonstationary="permute_obs"), "gymnax:Breakout-MinAtar")
