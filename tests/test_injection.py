"""Plasticity injection (docs/interventions.md, Plasticity injection; the method's test invariants)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import agents
from helpers import assert_cli_error, rows, tiny_trainer
from plastic import fields
from plastic.agent import init_counters
from plastic.core import Hooks, Update
from plastic.config import build
from plastic.core import Net
from plastic.interventions.injection import Injection, InjectionConfig
from plastic.networks import MLP, ConvNet, get_path, with_injection
from plastic.surgery import reset_units

KEY = jax.random.PRNGKey(0)
OBS, ACT, B = 3, 2, 16


def setup(name, cfg_over=None, iv_over=None, discrete=True):
    """An agent built with the injection heads the intervention asks for, the intervention, and both states."""
    cls = agents.get(name)
    cfg = cls.Config(**{"hidden": (8, 8), "learning_starts": 0, **(cfg_over or {})}) if name != "ppo" else \
        cls.Config(**{"hidden": (8, 8), **(cfg_over or {})})
    iv = Injection(InjectionConfig(**{"at": (10,), **(iv_over or {})}), name, cls.roles)
    fields.check(iv.cfg, "injection")  # the declared ranges and switches (plastic.config checks them)
    iv.validate(None, cfg)
    kw = {"discrete": discrete, "total_steps": 0} if name == "ppo" else {}
    agent = cls(cfg, OBS, ACT, options=iv.agent_options(), **kw)
    state = jax.jit(agent.init)(KEY)
    return agent, iv, state, iv.init(jax.random.PRNGKey(1), agent, state)


def batch(i, discrete=False):
    k = jax.random.split(jax.random.PRNGKey(100 + i), 4)
    action = (jax.random.randint(k[1], (B,), 0, ACT) if discrete else
              jax.random.uniform(k[1], (B, ACT), minval=-1, maxval=1))
    return {"obs": jax.random.normal(k[0], (B, OBS)), "action": action, "reward": jax.random.normal(k[2], (B,)),
            "next_obs": jax.random.normal(k[3], (B, OBS)), "terminated": jnp.zeros(B)}


_JITTED = {}


def jitted(kind, agent, iv):
    """One compiled update / scheduled_event per (agent, intervention) of a test."""
    key = (kind, id(agent), id(iv))
    if key not in _JITTED:
        if kind == "update":
            def fn(st, s, b, c, k):
                u = agent.update(Update(st, Hooks({iv.name: s}, (iv,)), c), b, k)
                return u.state, u.hooks.state, u.counters

            fn = jax.jit(fn)
        else:
            fn = jax.jit(lambda st, s, c, e: iv.scheduled_event(agent, st, s, {**c, "env_steps": e}, KEY))
        _JITTED[key] = (fn, agent, iv)  # keep agent and iv alive so their ids stay theirs
    return _JITTED[key][0]


def train(agent, iv, state, s, counters, n, start=0, discrete=False):
    step = jitted("update", agent, iv)
    for i in range(start, start + n):
        state, istate, counters = step(state, s, batch(i, discrete), counters, jax.random.PRNGKey(i))
        s = istate[iv.name]
    return state, s, counters


def event(agent, iv, env_steps):
    """The scheduled_event hook at `env_steps` (jitted once per agent)."""
    fn = jitted("event", agent, iv)
    return lambda st, s, c: fn(st, s, c, jnp.asarray(env_steps, jnp.int32))


def outputs(agent, params, x):
    return {n: jax.jit(agent.nets[n].apply)(p, x)[0] for n, p in params.items()}


def group(params, spec, g):
    return get_path(params, getattr(spec, g))


def adam_moments(opt_state):
    return [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)][0]


def trainable_count(spec, params):
    ones = jax.tree.map(jnp.ones_like, params)
    return int(sum(jnp.sum(x) for x in jax.tree.leaves(spec.frozen(ones, params))))


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def assert_changed(a, b):
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("targets", ["mirror", pytest.param("keep", marks=pytest.mark.slow)])
def test_td3_injection_invariants(targets):
    """The injection invariants on TD3's actor and twin critics: outputs (and target outputs) bit-identical
    across the injection, trainable count unchanged, fresh zero moments for the heads, frozen head and
    reference head exactly unchanged over later updates while the new head and the encoder train."""
    agent, iv, state, s = setup("td3", iv_over={"targets": targets})
    counters = init_counters(agent)
    specs = {n: agent.nets[n].module.inject_spec() for n in ("actor", "critic")}
    before_train = state
    state, s, counters = train(agent, iv, state, s, counters, 4)
    for n, spec in specs.items():  # before injection only the old head (and the body) train
        p0, p1 = before_train.nets[n].params, state.nets[n].params
        for g in ("new", "ref", "flag"):
            assert_same(group(p0, spec, g), group(p1, spec, g))
        assert_changed(group(p0, spec, "head"), group(p1, spec, "head"))

    x = jnp.concatenate([batch(99)["obs"], batch(99)["action"]], -1)
    xs = {"actor": batch(99)["obs"], "critic": x}
    out = lambda st: {n: outputs(agent, {n: st.nets[n].params}, xs[n])[n] for n in specs}  # noqa: E731
    tgt = lambda st: {n: outputs(agent, {n: st.targets[n]}, xs[n])[n] for n in specs}  # noqa: E731
    counts = {n: trainable_count(spec, state.nets[n].params) for n, spec in specs.items()}

    injected, s = event(agent, iv, 10)(state, s, counters)
    assert int(s["count"]) == 1 and int(s["last_env_step"]) == 10
    for n, spec in specs.items():
        np.testing.assert_array_equal(out(injected)[n], out(state)[n])          # 1. unchanged outputs
        np.testing.assert_array_equal(tgt(injected)[n], tgt(state)[n])          #    (targets too)
        p = injected.nets[n].params
        assert float(get_path(p, spec.flag)) == 1.0
        assert_same(group(p, spec, "new"), group(p, spec, "ref"))
        assert_same(group(p, spec, "head"), group(state.nets[n].params, spec, "head"))
        assert_changed(group(p, spec, "new"), group(state.nets[n].params, spec, "new"))
        assert trainable_count(spec, p) == counts[n]                              # 2. trainable count
        adam, adam_before = adam_moments(injected.nets[n].opt_state), adam_moments(state.nets[n].opt_state)
        for g in ("head", "new", "ref"):                                          # 4. fresh moments
            for m in (adam.mu, adam.nu):
                assert not any(np.any(np.asarray(v)) for v in jax.tree.leaves(group(m, spec, g)))
        assert int(adam.count) == int(adam_before.count)
        assert_same(adam.mu["hidden_0"], adam_before.mu["hidden_0"])           # the encoder's are kept
        tflag = float(get_path(injected.targets[n], spec.flag))
        assert tflag == (1.0 if targets == "mirror" else 0.0)

    later, s, counters = train(agent, iv, injected, s, counters, 6, start=4)
    for n, spec in specs.items():                                                 # 3. frozen parts
        p0, p1 = injected.nets[n].params, later.nets[n].params
        assert_same(group(p0, spec, "head"), group(p1, spec, "head"))
        assert_same(group(p0, spec, "ref"), group(p1, spec, "ref"))
        assert_same(group(p0, spec, "flag"), group(p1, spec, "flag"))
        assert_changed(group(p0, spec, "new"), group(p1, spec, "new"))
        assert_changed(p0["hidden_0"], p1["hidden_0"])
        tflag = float(get_path(later.targets[n], spec.flag))                      # Polyak cannot blend the flag
        assert tflag == (1.0 if targets == "mirror" else 0.0)


@pytest.mark.parametrize("network", ["mlp", "simba"])
def test_second_injection_folds_the_trained_difference(network):
    """A second injection moves the trained h_new - h_ref into the old head (outputs equal up to rounding),
    then starts a fresh pair; the first injection is exact on any architecture."""
    agent, iv, state, s = setup("dqn", {"network": network, "blocks": 1}, {"at": (5, 8)})
    counters = init_counters(agent)
    spec = agent.q.module.inject_spec()
    obs = batch(50)["obs"]
    y0 = outputs(agent, {"q": state.nets["q"].params}, obs)["q"]
    st1, s = event(agent, iv, 5)(state, s, counters)
    np.testing.assert_array_equal(outputs(agent, {"q": st1.nets["q"].params}, obs)["q"], y0)
    st1, s, counters = train(agent, iv, st1, s, counters, 5, discrete=True)
    p1 = st1.nets["q"].params
    st2, s = event(agent, iv, 8)(st1, s, counters)
    p2 = st2.nets["q"].params
    assert int(s["count"]) == 2
    np.testing.assert_allclose(outputs(agent, {"q": p2}, obs)["q"], outputs(agent, {"q": p1}, obs)["q"],
                               rtol=1e-5, atol=1e-6)
    for leaf in ("kernel", "bias"):
        np.testing.assert_array_equal(
            group(p2, spec, "head")[leaf],
            group(p1, spec, "head")[leaf] + (group(p1, spec, "new")[leaf] - group(p1, spec, "ref")[leaf]))
    assert_same(group(p2, spec, "new"), group(p2, spec, "ref"))


def test_schedule_fires_once_per_point_with_unbatched_counters():
    """Off-policy: the hook runs at every learning env step (the first at learning_starts + 1), points
    before that fire at the first call; PPO: once per rollout, at the first rollout end at or after a point."""
    agent, iv, state, s = setup("dqn", {"learning_starts": 3}, {"at": (2, 3, 7)})
    fired = []
    for e in range(4, 12):
        _, s2 = event(agent, iv, e)(state, s, init_counters(agent))
        if int(s2["count"]) > int(s["count"]):
            fired.append(e)
        s = s2
    assert fired == [4, 7]
    agent, iv, state, s = setup("ppo", {"num_envs": 2, "num_steps": 25, "minibatches": 2}, {"at": (30, 120)})
    fired = []
    for e in range(50, 301, 50):
        _, s2 = event(agent, iv, e)(state, s, init_counters(agent))
        if int(s2["count"]) > int(s["count"]):
            fired.append(e)
        s = s2
    assert fired == [50, 150]


def test_ppo_gaussian_policy_outputs_are_unchanged():
    """The continuous PPO policy's mean head (inside GaussianHead) is injected; the free log-std is not."""
    agent, iv, state, s = setup("ppo", {"num_envs": 2, "num_steps": 25, "minibatches": 2}, {"at": (50,)},
                                discrete=False)
    assert agent.actor.module.inject_spec().head == ("mlp", "output")
    obs = batch(7)["obs"]
    before = {n: agent.nets[n].apply(state.nets[n].params, obs)[0] for n in agent.nets}
    after_state, s = event(agent, iv, 50)(state, s, init_counters(agent))
    for n in agent.nets:
        assert_same(agent.nets[n].apply(after_state.nets[n].params, obs)[0], before[n])
    assert float(after_state.nets["actor"].params["mlp"]["inject_flag"]) == 1.0


@pytest.mark.parametrize("module", [MLP((8, 8), 2, inject=True), ConvNet((5, 5, 2), ((4, 3, 1),), (), 2, inject=True)])
def test_unit_resets_zero_the_rows_of_every_head_copy(module):
    """The last hidden layer feeds all three heads: a unit reset zeroes its rows in each, so after an
    injection h_new - h_ref stays exactly 0 on the reset units (ReDo/ReGraMa stacked with injection)."""
    net = Net.of("q", module, with_injection(optax.adam(1e-3), module))
    x = jax.random.normal(KEY, (4, 8 if isinstance(module, MLP) else 50))
    ns = jax.jit(net.init)(KEY, x)
    last = net.layers[-1]
    assert [c[0] for c in last.consumers] == ["output", "output_new", "output_ref"]
    masks = {l.name: jnp.zeros(l.mask_shape, bool) for l in net.layers}
    masks[last.name] = masks[last.name].at[1].set(True)
    new = jax.jit(partial(reset_units, net))(ns, masks, KEY)
    tile = last.consumer_rows()[0][1](masks[last.name])[..., 0]
    for c in ("output", "output_new", "output_ref"):
        k = new.params[c]["kernel"]
        assert np.all(np.asarray(k)[np.asarray(tile)] == 0) and np.any(np.asarray(k)[~np.asarray(tile)] != 0)


def test_default_at_is_half_the_budget_and_is_saved():
    cfg = build("dqn", "injection", overrides={"run.progress": "off"}, env="probe:d_obs", steps=3000)
    assert cfg.interventions["injection"].at == (1500,)
    assert cfg.to_dict()["injection"]["at"] == (1500,)
    cfg = build("dqn", "inject", overrides={"inject.at": "700,900"}, env="probe:d_obs", steps=3000)
    assert cfg.interventions["injection"].at == (700, 900)


def short(agent, steps, extra=None, seeds=2):
    return tiny_trainer(agent, "injection", steps, {"injection.at": "150", **(extra or {})}, seeds)


# td3 and sac repeat the off-policy path of dqn with a longer compile: run them with -m slow
@pytest.mark.parametrize("agent", [pytest.param("td3", marks=pytest.mark.slow),
                                   pytest.param("sac", marks=pytest.mark.slow), "dqn", "ppo"])
def test_short_run_every_agent(tmp_path, agent):
    t = short(agent, 300)
    t.run(tmp_path / "r")
    rs = rows(tmp_path / "r")
    last = [r for r in rs if r["step"] == 300]
    assert len(last) == 2 and all(r["injection/count"] == 1 and r["injection/last_env_step"] == 150 for r in last)
    assert all(r["injection/count"] == 0 for r in rs if r["step"] == 100)
    ts = t.final_state[0]
    for n in agents.get(agent).roles:
        net = t.agent.nets[n]
        spec = net.module.inject_spec() if net.module is not None else None
        if spec is None:
            continue
        np.testing.assert_array_equal(get_path(ts.agent.nets[n].params, spec.flag), [1.0, 1.0])
        if n in ts.agent.targets:
            np.testing.assert_array_equal(get_path(ts.agent.targets[n], spec.flag), [1.0, 1.0])
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(ts.agent.nets[n].params))


# Weight writers stacked with an injection, pushed hard enough that a flag written as a weight would fall below
# 0.5 within the run (weight decay ×0.75 per update; S&P's λ 0.4 every 5 updates; H&T copies a Tortoise whose
# flag average is near 0): the injection must hold, and a target must show the online flag. A reset after the
# injection makes a fresh, un-injected network, and its target (hard-copied at env step 300) follows it.
@pytest.mark.parametrize("stack, extra, flag", [
    ("weight_decay", {"weight_decay.lam": 1000.0}, 1.0),
    ("shrink_perturb", {"shrink_perturb.mode": "fresh_noise", "shrink_perturb.shrink": 0.4,
                        "shrink_perturb.period": 5, "shrink_perturb.params": "all"}, 1.0),
    ("hare_tortoise", {"hare_tortoise.period": 10}, 1.0),
    ("reset", {"reset.schedule": "at_env_steps", "reset.at_env_steps": "250"}, 0.0),
])
def test_weight_writers_leave_the_injection_flag_alone(stack, extra, flag, tmp_path):
    t = tiny_trainer("dqn", f"injection+{stack}", 300, {"injection.at": "150", **extra})
    t.run(tmp_path / "r")
    ts, net = t.final_state[0], t.agent.nets["q"]
    spec = net.module.inject_spec()
    np.testing.assert_array_equal(get_path(ts.agent.nets["q"].params, spec.flag), [flag, flag])
    np.testing.assert_array_equal(get_path(ts.agent.targets["q"], spec.flag), [flag, flag])


# resume across an injection: tests/test_stacks.py::test_a_stack_trains_and_resumes (DQN, in a stack)


@pytest.mark.parametrize("argv,needle", [
    (["--injection.split", "last_k_layers"], "injection.split=last_k_layers is not implemented"),
    (["--injection.split", "head"], "injection.split='head' is not valid; choose one of: last_layer"),
    (["--injection.targets", "copy"], "injection.targets='copy' is not valid; choose one of: mirror, keep"),
    (["--injection.at", "500,200"], "injection.at must be a non-empty increasing list of positive env steps"),
    (["--injection.networks", "temperature"], "injection.networks=temperature is not valid; choose among"),
    (["--inject.targets", "none"], "inject.targets='none' is not valid"),  # named as typed
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(["--agent", "dqn", "--intervention", "injection", *argv], needle, tmp_path, capsys)
