"""JAX-native envs: termination vs truncation, auto-reset, action rescaling, probes, and the host adapter."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastic.envs import HostEnvs, episode_seed, is_jax_native, make_env
from plastic.jaxenvs import PROBES, HostJaxEnv, JaxEnvState, make_jax_env

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def cartpole():
    env = make_jax_env("gymnax:CartPole-v1")
    return env, jax.jit(env.reset), jax.jit(env.step)


def test_cartpole_termination_auto_resets(cartpole):
    env, reset, step = cartpole
    assert (env.observation_size, env.action_size, env.discrete, env.max_episode_steps) == (4, 2, True, 500)
    state, obs = reset(KEY)
    assert obs.shape == (4,) and obs.dtype == jnp.float32 and state.t.dtype == jnp.int32
    for i in range(200):  # always pushing right: the pole falls within a few dozen steps
        key = jax.random.fold_in(KEY, i + 1)
        new, nxt, r, term, trunc, final = step(state, jnp.int32(1), key)
        assert r.dtype == jnp.float32 and r.shape == () and term.dtype == trunc.dtype == jnp.bool_
        if term:
            break
        assert not trunc and int(new.t) == i + 1 and np.array_equal(nxt, final)
        state = new
    assert term and not trunc and float(r) == 1.0
    assert abs(float(final[2])) > 12 * 2 * np.pi / 360 or abs(float(final[0])) > 2.4  # terminal obs
    _, fresh = env.reset(jax.random.split(key)[1])  # reset with the key derived from the step's key
    np.testing.assert_array_equal(nxt, fresh)
    assert np.all(np.abs(nxt) <= 0.05) and int(new.t) == 0


def test_cartpole_time_limit_is_truncation():
    env = make_jax_env("gymnax:CartPole-v1")
    env.max_episode_steps = 3
    step = jax.jit(env.step)
    state, _ = env.reset(KEY)
    for i, a in enumerate([0, 1, 0]):  # balanced pushes: the pole stays up
        state, nxt, _, term, trunc, final = step(state, jnp.int32(a), jax.random.fold_in(KEY, i))
        assert not term and bool(trunc) == (i == 2)
    assert int(state.t) == 0 and not np.array_equal(nxt, final)


def test_gymnax_time_is_not_termination(cartpole):
    # gymnax's own step would cut the episode at time 500; ours reports neither (our t is still small)
    env, reset, step = cartpole
    state, _ = reset(KEY)
    late = state.replace(inner=state.inner.replace(time=jnp.int32(499)))
    _, _, _, _, gym_trunc, _ = env.base_env.step(KEY, late.inner, 0, env.base_env.default_params)
    assert gym_trunc
    new, _, _, term, trunc, _ = step(late, jnp.int32(0), KEY)
    assert not term and not trunc and int(new.t) == 1
    # and our time limit counts our own steps
    at_limit = state.replace(t=jnp.int32(499))
    new, _, _, term, trunc, _ = step(at_limit, jnp.int32(0), KEY)
    assert not term and trunc and int(new.t) == 0


def test_force_truncate_never_with_termination(cartpole):
    env, reset, _ = cartpole
    step = jax.jit(jax.vmap(env.step))
    states, _ = jax.vmap(env.reset)(jax.random.split(KEY, 4))
    force = jnp.array([True, False, True, False])
    new, nxt, _, term, trunc, final = step(states, jnp.zeros(4, jnp.int32), jax.random.split(KEY, 4), force)
    np.testing.assert_array_equal(trunc, force)
    assert not term.any()
    np.testing.assert_array_equal(new.t, [0, 1, 0, 1])
    assert not np.array_equal(nxt[0], final[0]) and np.array_equal(nxt[1], final[1])

    probe = make_jax_env("probe:constant")  # terminates on every step
    state, _ = probe.reset(KEY)
    _, _, _, term, trunc, _ = jax.jit(probe.step)(state, jnp.zeros(1), KEY, jnp.bool_(True))
    assert term and not trunc


def test_continuous_actions_are_clipped_and_rescaled():
    env = make_jax_env("gymnax:Pendulum-v1")
    assert not env.discrete and env.action_size == 1 and env.max_episode_steps == 200
    np.testing.assert_array_equal(env.action_low, [-2.0])
    np.testing.assert_array_equal(env.action_high, [2.0])
    state, _ = env.reset(KEY)
    step = jax.jit(env.step)

    def after(a):
        new, _, r, _, _, final = step(state, jnp.array([a], jnp.float32), KEY)
        return np.asarray(final), float(r)

    def raw(u):  # gymnax's own dynamics with torque u
        obs, _, r, _, _ = env.base_env.step_env(KEY, state.inner, jnp.array([u], jnp.float32), env.base_env.default_params)
        return np.asarray(obs), float(r)

    for a, u in [(1.0, 2.0), (5.0, 2.0), (0.5, 1.0), (0.0, 0.0), (-1.0, -2.0), (-7.0, -2.0)]:
        (o, r), (o_raw, r_raw) = after(a), raw(u)
        np.testing.assert_allclose(o, o_raw, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(r, r_raw, rtol=1e-6, atol=1e-6)
    assert not np.allclose(after(0.5)[0], raw(2.0)[0])  # the rescale is visible in the dynamics
    np.testing.assert_array_equal(after(1.0)[0], after(5.0)[0])


def expected_probe(name, obs, action):
    """(reward, terminated, obs reached) from the analytic description, for one step from `obs`."""
    base = name[2:] if name.startswith("d_") else name
    if base == "constant":
        return 1.0, True, 0.0
    if base == "obs":
        return obs, True, 0.0
    if base == "action":
        return (float(action == 1), True, 0.0) if name.startswith("d_") else \
            (-(np.clip(action, -1, 1) - 0.5) ** 2, True, 0.0)
    if base == "two_step":
        return (0.0, False, 1.0) if obs == 0.0 else (1.0, True, 0.0)
    return 1.0, False, 0.0  # truncated


@pytest.mark.parametrize("name", PROBES)
def test_probes_match_analytic_values_under_jit_and_vmap(name):
    env = make_jax_env(f"probe:{name}")
    n, steps = 4, 12
    assert env.observation_size == 1 and env.action_size == (2 if name.startswith("d_") else 1)
    assert env.max_episode_steps == (5 if name.endswith("truncated") else 1000)
    reset, step = jax.jit(jax.vmap(env.reset)), jax.jit(jax.vmap(env.step))
    state, obs = reset(jax.random.split(KEY, n))
    actions = jnp.array([0, 1, 0, 1], jnp.int32) if env.discrete else jnp.array([[-1.0], [0.0], [0.5], [3.0]])
    t = np.zeros(n, int)
    for i in range(steps):
        o = np.asarray(obs)[:, 0]
        if name.endswith("obs"):  # every step ends the episode, so every observation is a reset one
            assert np.isin(o, [-1.0, 1.0]).all()
        state, obs, r, term, trunc, final = step(state, actions, jax.random.split(jax.random.fold_in(KEY, i), n))
        t += 1
        for j in range(n):
            a = int(actions[j]) if env.discrete else float(actions[j, 0])
            er, eterm, efinal = expected_probe(name, float(o[j]), a)
            etrunc = bool(not eterm and t[j] >= env.max_episode_steps)
            assert (float(r[j]), bool(term[j]), bool(trunc[j]), float(final[j, 0])) == \
                pytest.approx((er, eterm, etrunc, efinal)), (name, i, j)
            if eterm or etrunc:
                t[j] = 0
        np.testing.assert_array_equal(state.t, t)
    if name.endswith("obs"):  # the initial observation is ±1, both signs occur
        _, first = jax.vmap(env.reset)(jax.random.split(KEY, 64))
        assert set(np.unique(first).tolist()) == {-1.0, 1.0}


def test_vmapped_cartpole_auto_reset_per_env(cartpole):
    env = cartpole[0]
    n = 8
    state, obs = jax.vmap(env.reset)(jax.random.split(KEY, n))
    step = jax.jit(jax.vmap(env.step))
    actions = jnp.ones(n, jnp.int32)
    t = np.zeros(n, int)
    ends = 0
    for i in range(60):
        state, obs, r, term, trunc, final = step(state, actions, jax.random.split(jax.random.fold_in(KEY, i), n))
        assert obs.shape == final.shape == (n, 4) and obs.dtype == final.dtype == jnp.float32
        assert r.shape == term.shape == trunc.shape == (n,) and r.dtype == jnp.float32 and term.dtype == jnp.bool_
        assert state.t.dtype == jnp.int32 and not trunc.any()
        t = np.where(np.asarray(term), 0, t + 1)
        np.testing.assert_array_equal(state.t, t)
        ends += int(term.sum())
    assert ends >= n  # every env fell at least once, each on its own schedule


@pytest.fixture(scope="module")
def pendulum_brax():
    env = make_jax_env("brax:inverted_pendulum")
    env.max_episode_steps = 10
    return env


def test_vmapped_brax_terminates_truncates_and_resets(pendulum_brax):
    env = pendulum_brax
    assert not env.discrete and env.action_size == 1 and env.observation_size == 4
    n = 8
    state, obs = jax.jit(jax.vmap(env.reset))(jax.random.split(KEY, n))
    assert isinstance(state, JaxEnvState) and obs.shape == (n, 4) and obs.dtype == jnp.float32
    step = jax.jit(jax.vmap(env.step))
    actions = jnp.repeat(jnp.array([[1.0], [0.0]]), n // 2, axis=0)  # half push hard (falls), half do nothing
    terms, truncs = [], []
    for i in range(10):
        state, obs, r, term, trunc, final = step(state, actions, jax.random.split(jax.random.fold_in(KEY, i), n))
        assert obs.shape == final.shape == (n, 4) and r.shape == (n,) and r.dtype == jnp.float32
        assert term.dtype == trunc.dtype == jnp.bool_ and state.t.dtype == jnp.int32
        assert not (term & trunc).any()
        assert (np.asarray(state.t)[np.asarray(term | trunc)] == 0).all()
        terms.append(np.asarray(term))
        truncs.append(np.asarray(trunc))
    terms, truncs = np.array(terms), np.array(truncs)
    assert terms[:, : n // 2].any(axis=0).all()       # pushed pendulums fall: brax's done is termination
    assert not terms[:, n // 2:].any() and truncs[-1, n // 2:].all()  # the others hit the time limit


def host_episode(host, seed, actions):
    out = [host.reset(seed)]
    for a in actions:
        obs, r, term, trunc = host.step(a)
        out.append((obs, r, term, trunc))
        if term or trunc:
            break
    return out


def pure_episode(env, seed, actions):
    state, obs = env.reset(jax.random.split(jax.random.PRNGKey(seed))[0])
    out = [np.asarray(obs)]
    for i, a in enumerate(actions):
        state, _, r, term, trunc, final = env.step(state, a, jax.random.PRNGKey(i))
        out.append((np.asarray(final), float(r), bool(term), bool(trunc)))
        if term or trunc:
            break
    return out


@pytest.mark.parametrize("env_id, limit", [("probe:two_step", None), ("probe:truncated", None),
                                           ("gymnax:CartPole-v1", None), ("gymnax:CartPole-v1", 4)])
def test_host_adapter_reproduces_pure_functions(env_id, limit):
    env = make_jax_env(env_id)
    if limit:
        env.max_episode_steps = limit
    host = HostJaxEnv(env)
    assert (host.observation_size, host.action_size, host.discrete) == \
        (env.observation_size, env.action_size, env.discrete)
    rng = np.random.default_rng(0)
    actions = [int(a) for a in rng.integers(0, 2, 200)] if env.discrete else [rng.uniform(-1, 1, 1) for _ in range(20)]
    for seed in (3, 2 ** 32 - 1):  # episode seeds are uint32
        for _ in range(2):  # a second episode after the first ended
            got, want = host_episode(host, seed, actions), pure_episode(env, seed, actions)
            assert len(got) == len(want) and (got[-1][2] or got[-1][3])
            np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
            for g, w in zip(got[1:], want[1:]):
                np.testing.assert_allclose(g[0], w[0], rtol=1e-5, atol=1e-6)
                assert g[1:] == pytest.approx(w[1:])
    if env_id == "probe:truncated" or limit:
        assert len(got) - 1 == env.max_episode_steps and got[-1][3] and not got[-1][2]


def test_host_adapters_share_compiled_functions():
    a, b = make_env("gymnax:CartPole-v1"), make_env("gymnax:CartPole-v1")
    assert isinstance(a, HostJaxEnv) and a.step_fn is b.step_fn and a.reset_fn is b.reset_fn
    shorter = make_jax_env("gymnax:CartPole-v1")
    shorter.max_episode_steps = 7
    assert HostJaxEnv(shorter).step_fn is not a.step_fn


def test_host_envs_truncate_probe_at_step_five():
    envs = HostEnvs("probe:truncated", 2, 0)
    assert (envs.observation_size, envs.action_size, envs.discrete) == (1, 1, False)
    obs = envs.reset()
    assert obs.shape == (2, 1) and obs.dtype == np.float32
    for i in range(1, 11):
        nxt, r, term, trunc, final = envs.step(np.zeros((2, 1), np.float32))
        np.testing.assert_array_equal(r, [1.0, 1.0])
        assert not term.any() and trunc.tolist() == [i % 5 == 0] * 2
    assert envs.episodes == [2, 2]


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "dmc:cheetah-run"])
def test_host_adapters_clip_actions_before_rescaling(env_id):
    """PPO's Gaussian samples leave [-1, 1]; the env must get the clipped action (CleanRL's ClipAction):
    HalfCheetah's control cost is taken on the action it is handed, so an unclipped 2 costs 4x a clipped 1."""
    env, got = make_env(env_id), []
    inner = env.env.step
    env.env.step = lambda a: got.append(np.array(a)) or inner(a)  # noqa: E731
    outs = []
    for a in (2.0, 1.0, -3.0, -1.0):
        env.reset(seed=0)
        outs.append(env.step(np.full(env.action_size, a, np.float32)))
    high, low = env.high, env.low
    np.testing.assert_array_equal(got[0], np.broadcast_to(high, got[0].shape))
    np.testing.assert_array_equal(got[2], np.broadcast_to(low, got[2].shape))
    for clipped, inside in ((outs[0], outs[1]), (outs[2], outs[3])):
        np.testing.assert_array_equal(clipped[0], inside[0])
        assert clipped[1:] == inside[1:]


def test_host_envs_give_each_seed_its_own_env_streams():
    """Seed i of a run with several envs per seed (host PPO) is the run with seed `seed + i`: its envs'
    episode seeds are that run's, and no two envs of a run or of such overlapping runs share a stream."""
    two = HostEnvs("probe:truncated", 2 * 4, 0, per_seed=4)
    one = HostEnvs("probe:truncated", 4, 1, per_seed=4)
    seeds_of = lambda envs: [envs.episode_seed(i) for i in range(len(envs.envs))]  # noqa: E731
    assert seeds_of(two)[4:] == seeds_of(one) and len(set(seeds_of(two))) == 8
    # one env per seed (the off-policy drivers) keeps env i = the run with seed i
    assert seeds_of(HostEnvs("probe:truncated", 2, 0)) == [episode_seed(0, 0), episode_seed(1, 0)]


def test_is_jax_native():
    assert all(is_jax_native(e) for e in ("gymnax:CartPole-v1", "brax:ant", "probe:constant"))
    assert not any(is_jax_native(e) for e in ("CartPole-v1", "dmc:cheetah-run"))


@pytest.mark.parametrize("env_id, needle", [
    ("gymnax:Nope-v0", "unknown gymnax env 'gymnax:Nope-v0'; valid: gymnax:CartPole-v1, gymnax:Pendulum-v1"),
    ("brax:nope", "unknown brax env 'brax:nope'; valid: brax:ant, "),
    ("brax:ant:warp", "BACKEND one of positional, spring, generalized, mjx"),
    ("playground:Nope", "unknown playground env 'playground:Nope'; valid: playground:AcrobotSwingup, "),
    ("playground:CheetahRun:cuda", "BACKEND one of jax, warp"),
    ("probe:nope", "unknown probe env 'probe:nope'; valid: probe:constant, "),
    ("jax:CartPole-v1", "use gymnax:NAME"),
])
def test_unknown_ids_are_one_line_errors(env_id, needle):
    with pytest.raises(ValueError) as e:
        make_jax_env(env_id)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_import_is_lazy():
    code = ("import sys, plastic.envs, plastic.jaxenvs; "
            "print(*(m in sys.modules for m in ('gymnax', 'brax', 'mujoco_playground')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]
