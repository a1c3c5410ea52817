"""Shrink & Perturb (docs/interventions.md, Shrink & Perturb; the method's test invariants)."""
from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import NETS, assert_cli_error, rows, tiny_trainer
from plastic import fields
from plastic.core import Hooks, Net, NetState, UpdateContext, gradient_step
from plastic.interventions.shrink_perturb import ShrinkPerturb, ShrinkPerturbConfig
from plastic.networks import MLP

X = jnp.zeros((4, 3))


def setup(width=8, tx=None, shift=0.1, **cfg):
    """A one-network agent, the intervention and its state from θ₀, and θ = θ₀ + shift·noise."""
    net = Net.of("critic", MLP((width, width), 2, "relu"), tx or optax.adam(1e-3), 1e-3)
    agent = SimpleNamespace(nets={"critic": net}, role=lambda n: "critic",
                            init=lambda k: SimpleNamespace(nets={"critic": net.init(k, X)}))
    iv = ShrinkPerturb(ShrinkPerturbConfig(**cfg), "td3")
    fields.check(iv.cfg, "shrink_perturb")  # the declared ranges and switches (plastic.config checks them)
    iv.validate(None, None)
    ns0 = net.init(jax.random.PRNGKey(0), X)
    state = iv.init(jax.random.PRNGKey(1), agent, SimpleNamespace(nets={"critic": ns0}))
    leaves, tdef = jax.tree.flatten(ns0.params)
    ks = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree.unflatten(tdef, [p + shift * jax.random.normal(k, p.shape) for p, k in zip(leaves, ks)])
    return net, iv, NetState(params, net.tx.init(params)), ns0.params, state


def event(iv, net, ns, state, count=1):
    ctx = UpdateContext(count=jnp.asarray(count, jnp.int32), grads=None, probe_grads=None, scores={}, loss=None)
    return iv.post_update(net, ns, ctx, state, jax.random.PRNGKey(5))


@pytest.mark.parametrize("mode", ["toward_init", "fresh_noise"])
def test_identity(mode):
    net, iv, ns, _, st = setup(mode=mode, shrink=1.0, perturb=0.0, period=1, params="all")
    new, s = event(iv, net, ns, st)
    jax.tree.map(np.testing.assert_array_equal, new.params, ns.params)
    jax.tree.map(np.testing.assert_array_equal, new.opt_state, ns.opt_state)
    assert int(s["critic"]["events"]) == 1


def test_toward_init_formula_and_defaults():
    lam = 0.7
    net, iv, ns, theta0, st = setup(mode="toward_init", shrink=lam, perturb=1 - lam)
    new, s = event(iv, net, ns, st)
    for p, q, a in zip(jax.tree.leaves(ns.params), jax.tree.leaves(new.params), jax.tree.leaves(theta0)):
        np.testing.assert_allclose(q - a, lam * (p - a), rtol=1e-5, atol=1e-7)
    jax.tree.map(np.testing.assert_array_equal, s["critic"]["theta0"], theta0)
    norm = np.sqrt(sum(float(jnp.sum(jnp.square(p))) for p in jax.tree.leaves(new.params)))
    np.testing.assert_allclose(float(s["critic"]["weight_norm"]), norm, rtol=1e-5)
    assert ShrinkPerturb(ShrinkPerturbConfig(), "td3").resolved == (0.999999, 1e-6, 1, "all")
    assert ShrinkPerturb(ShrinkPerturbConfig(mode="fresh_noise"), "td3").resolved == (0.8, 0.01, 1000, "kernels")


@pytest.mark.parametrize("noise_init,var", [("layer_init", 1.0), ("he_uniform", 2.0)])
def test_fresh_noise_scale_selection_determinism(noise_init, var):
    """θ_new − λθ has mean ≈ 0 and variance μ²·Var(init) (lecun_normal: 1/fan_in; He-uniform: 2/fan_in);
    biases are untouched in `kernels` mode; the same key gives the same draw, another count another one."""
    lam, mu, width = 0.8, 0.5, 256
    net, iv, ns, _, st = setup(width=width, mode="fresh_noise", shrink=lam, perturb=mu, period=1,
                               noise_init=noise_init)
    new, _ = event(iv, net, ns, st, count=3)
    xi = (new.params["hidden_1"]["kernel"] - lam * ns.params["hidden_1"]["kernel"]) / mu
    assert abs(float(jnp.mean(xi))) < 0.01 * np.sqrt(var / width) * 10
    np.testing.assert_allclose(float(jnp.var(xi)), var / width, rtol=0.05)
    for layer in ("hidden_0", "hidden_1", "output"):
        np.testing.assert_array_equal(new.params[layer]["bias"], ns.params[layer]["bias"])
    again, _ = event(iv, net, ns, st, count=3)
    jax.tree.map(np.testing.assert_array_equal, again.params, new.params)
    other, _ = event(iv, net, ns, st, count=4)
    assert not np.array_equal(other.params["hidden_1"]["kernel"], new.params["hidden_1"]["kernel"])


def test_schedule_through_gradient_step_and_optimizer_reset():
    """period 3, zero learning rate: over 7 updates only the events at updates 3 and 6 move θ, so
    θ − θ₀ = λ²(θ_start − θ₀); with reset_optimizer, Adam moments are zeroed and the count kept."""
    lam = 0.5
    net, iv, ns, theta0, st = setup(tx=optax.adam(0.0), mode="toward_init", shrink=lam, perturb=1 - lam,
                                    period=3, reset_optimizer=True)

    def loss(params, probes):
        y, _ = net.apply(params, jnp.ones((4, 3)), probes)
        return jnp.mean(jnp.square(y - 1.0)), None

    @jax.jit
    def one(ns, istate, count):
        out = gradient_step(net, ns, loss, batch_size=4, count=count, key=jax.random.PRNGKey(0),
                            hooks=Hooks(istate, (iv,)))
        return out[0], out[1].state, out[2]

    cur, istate, count = ns, {"shrink_perturb": st}, jnp.zeros((), jnp.int32)
    for i in range(7):
        cur, istate, count = one(cur, istate, count)
        if i == 5:  # right after the event of update 6: the moments are zero, the count is not
            adam = cur.opt_state[0]
            assert all(float(jnp.max(jnp.abs(m))) == 0.0 for m in jax.tree.leaves((adam.mu, adam.nu)))
            assert int(adam.count) == 6
    assert int(istate["shrink_perturb"]["critic"]["events"]) == 2
    for p, q, a in zip(jax.tree.leaves(ns.params), jax.tree.leaves(cur.params), jax.tree.leaves(theta0)):
        np.testing.assert_allclose(q - a, lam ** 2 * (p - a), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("argv, needle", [
    (["--intervention", "shrink_perturb", "--shrink_perturb.mode", "reset"],
     "shrink_perturb.mode='reset' is not valid; choose one of: toward_init, fresh_noise"),
    (["--intervention", "shrink_perturb", "--shrink_perturb.shrink", "1.5"], "shrink_perturb.shrink must be in [0, 1]"),
    (["--intervention", "shrink_perturb", "--shrink_perturb.perturb", "-0.5"], "shrink_perturb.perturb must be >= 0"),
    (["--intervention", "shrink_perturb", "--shrink_perturb.period", "-2"], "shrink_perturb.period must be a positive"),
    (["--intervention", "shrink_perturb", "--shrink_perturb.noise_init", "glorot"],
     "choose one of: layer_init, he_uniform"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)


# ---- short runs under the jitted driver ------------------------------------------------------------
def trainer(agent, steps, extra=None, seeds=2):
    return tiny_trainer(agent, "shrink_perturb", steps, {"shrink_perturb.mode": "fresh_noise",
                                                         "shrink_perturb.period": 7, **(extra or {})}, seeds)


# td3 and sac are `slow` variants (run them with -m "") to keep this file short; dqn resumes in tests/test_stacks.py
@pytest.mark.parametrize("agent", [pytest.param("td3", marks=pytest.mark.slow),
                                   pytest.param("sac", marks=pytest.mark.slow), "dqn", "ppo"])
def test_short_run_every_agent(tmp_path, agent):
    """fresh_noise every 7 updates on 2 vmapped seeds: the event count is exactly updates // 7."""
    t = trainer(agent, 200)
    t.run(tmp_path / "run")
    ts, counters = t.final_state[:2]
    for net in NETS[agent]:
        n = int(counters[net])
        assert n >= 7
        np.testing.assert_array_equal(np.asarray(ts.interventions["shrink_perturb"][net]["events"]), [n // 7] * 2)
        assert np.all(np.isfinite(np.asarray(ts.interventions["shrink_perturb"][net]["weight_norm"])))
    assert f"shrink_perturb/events/{NETS[agent][0]}" in rows(tmp_path / "run")[-1]


# resume across events: tests/test_stacks.py::test_a_stack_trains_and_resumes (DQN, in a stack)
