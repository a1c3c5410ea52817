"""L2-init and weight decay (docs/interventions.md, L2-init; the method's test invariants)."""
from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import NETS, assert_cli_error, rows, tiny_trainer
from plastic import fields
from plastic.core import Hooks, Net, NetState, gradient_step
from plastic.interventions.l2 import L2Init, L2InitConfig, WeightDecay, WeightDecayConfig, kernel_mask
from plastic.networks import MLP

X = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
Y = jax.random.normal(jax.random.PRNGKey(2), (16, 2))


def net_of(tx, lr=None):
    return Net.of("critic", MLP((8, 8), 2, "relu"), tx, lr)


def task_loss(net):
    def loss(params, probes):
        y, _ = net.apply(params, X, probes)
        return jnp.mean(jnp.square(y - Y)), None
    return loss


def zero_loss(params, probes):
    return jnp.zeros(()), None


def setup(iv_cls, cfg, tx, lr=None, shift=0.0):
    """A network, its intervention state built by `init` from θ₀, and θ = θ₀ + shift·noise."""
    net = net_of(tx, lr)
    iv = iv_cls(cfg, "td3")
    fields.check(iv.cfg, iv.name)  # the declared ranges and switches (plastic.config checks them)
    iv.validate(None, None)
    ns0 = net.init(jax.random.PRNGKey(0), X)
    agent = SimpleNamespace(nets={"critic": net}, role=lambda n: "critic")
    state = iv.init(jax.random.PRNGKey(3), agent, SimpleNamespace(nets={"critic": ns0}))
    leaves, tdef = jax.tree.flatten(ns0.params)
    keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
    params = jax.tree.unflatten(tdef, [p + shift * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return net, iv, NetState(params, net.tx.init(params)), ns0.params, state


def step(net, ns, loss, ivs, istate):
    out = gradient_step(net, ns, loss, batch_size=16, count=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(9),
                        hooks=Hooks(istate, tuple(ivs)))
    return out[0], out[1].state


def close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


# ---- L2-init ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["squared", "unsquared_norm"])
def test_l2init_zero_at_anchor(form):
    net, iv, ns, theta0, st = setup(L2Init, L2InitConfig(form=form), optax.sgd(1.0))
    assert float(iv.penalty(theta0, st["critic"]["anchor"])) == 0.0
    g = jax.grad(iv.penalty)(theta0, st["critic"]["anchor"])
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(g))
    new, _ = step(net, ns, zero_loss, [iv], {"l2init": st})  # no task gradient, θ = θ₀: nothing moves
    jax.tree.map(np.testing.assert_array_equal, new.params, theta0)


@pytest.mark.parametrize("conv,factor,hook", [("lambda", 2.0, "loss_term"), ("half_lambda", 1.0, "loss_term"),
                                              ("lambda", 2.0, "grad_transform")])
def test_l2init_gradient_through_gradient_step(conv, factor, hook):
    """With SGD(lr=1) the step is −(∇task + factor·λ·(θ − θ₀)), computed by hand."""
    lam = 0.3
    net, iv, ns, theta0, st = setup(L2Init, L2InitConfig(lam=lam, scale_convention=conv, hook=hook),
                                    optax.sgd(1.0), shift=0.1)
    g_task = jax.grad(lambda p: task_loss(net)(p, None)[0])(ns.params)
    want = jax.tree.map(lambda p, g, a: p - (g + factor * lam * (p - a)), ns.params, g_task, theta0)
    new, s = step(net, ns, task_loss(net), [iv], {"l2init": st})
    close(new.params, want, rtol=1e-5, atol=1e-6)
    d = np.sqrt(sum(float(jnp.sum(jnp.square(p - a))) for p, a in zip(jax.tree.leaves(new.params),
                                                                      jax.tree.leaves(theta0))))
    np.testing.assert_allclose(float(s["l2init"]["critic"]["dist"]), d, rtol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, s["l2init"]["critic"]["anchor"], theta0)  # the anchor stays


def test_l2init_unsquared_norm_and_kernels_only():
    lam = 0.5
    net, iv, ns, theta0, st = setup(L2Init, L2InitConfig(lam=lam, form="unsquared_norm", params="kernels"),
                                    optax.sgd(1.0), shift=0.1)
    mask = kernel_mask(ns.params)
    delta = jax.tree.map(lambda p, a, m: (p - a) if m else jnp.zeros_like(p), ns.params, theta0, mask)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(d)) for d in jax.tree.leaves(delta)))
    new, _ = step(net, ns, zero_loss, [iv], {"l2init": st})
    close(new.params, jax.tree.map(lambda p, d: p - lam * d / norm, ns.params, delta), rtol=1e-5, atol=1e-7)
    for path in (("hidden_0", "bias"), ("output", "bias")):  # biases carry no penalty in `kernels` mode
        np.testing.assert_array_equal(new.params[path[0]][path[1]], ns.params[path[0]][path[1]])


def test_l2init_lambda_zero_and_wd_zero_are_bit_identical_to_baseline():
    net, iv, ns, _, st = setup(L2Init, L2InitConfig(lam=0.0), optax.adam(1e-2), shift=0.1)
    wd = WeightDecay(WeightDecayConfig(lam=0.0), "td3")
    wst = {"critic": {"param_norm": jnp.zeros(())}}
    base, _ = step(net, ns, task_loss(net), [], {})
    with_iv, _ = step(net, ns, task_loss(net), [iv, wd], {"l2init": st, "weight_decay": wst})
    jax.tree.map(np.testing.assert_array_equal, base.params, with_iv.params)
    jax.tree.map(np.testing.assert_array_equal, base.opt_state, with_iv.opt_state)


def test_l2init_anchor_refresh_follows_resets():
    """With anchor_refresh_on_reset, entries changed after the optimizer step (a reset) become the anchor."""
    net, iv, ns, theta0, st = setup(L2Init, L2InitConfig(anchor_refresh_on_reset=True), optax.sgd(0.1), shift=0.1)

    class ZeroFirstBias:  # stands in for a unit reset running before l2init in post_update
        name = "zb"

        def loss_term(self, *a):
            return jnp.zeros(())

        def grad_transform(self, net, g, p, s):
            return g

        def post_update(self, net, ns, ctx, s, key):
            p = dict(ns.params)
            p["hidden_0"] = {**p["hidden_0"], "bias": ns.params["hidden_0"]["bias"].at[0].set(7.0)}
            return ns.replace(params=p), s

    _, s = step(net, ns, task_loss(net), [ZeroFirstBias(), iv], {"zb": {}, "l2init": st})
    anchor = s["l2init"]["critic"]["anchor"]
    assert float(anchor["hidden_0"]["bias"][0]) == 7.0
    np.testing.assert_array_equal(anchor["hidden_0"]["bias"][1:], theta0["hidden_0"]["bias"][1:])
    jax.tree.map(np.testing.assert_array_equal, anchor["output"], theta0["output"])


# ---- weight decay ----------------------------------------------------------------------------------
def test_decoupled_decay_is_minus_lr_wd_theta_and_matches_adamw():
    lr, wd = 1e-2, 0.1
    net, iv, ns, _, st = setup(WeightDecay, WeightDecayConfig(lam=wd), optax.adam(lr), lr=lr, shift=0.1)
    new, s = step(net, ns, zero_loss, [iv], {"weight_decay": st})  # zero task gradient: Adam's step is 0
    close(new.params, jax.tree.map(lambda p: p - lr * wd * p, ns.params), rtol=1e-6, atol=1e-9)
    norm = np.sqrt(sum(float(jnp.sum(jnp.square(p))) for p in jax.tree.leaves(new.params)))
    np.testing.assert_allclose(float(s["weight_decay"]["critic"]["param_norm"]), norm, rtol=1e-5)
    # with a task gradient, two steps equal optax.adamw
    ref = net_of(optax.adamw(lr, weight_decay=wd))
    a, r = ns, NetState(ns.params, ref.tx.init(ns.params))
    for _ in range(2):
        a, st2 = step(net, a, task_loss(net), [iv], {"weight_decay": st})
        r, _ = step(ref, r, task_loss(ref), [], {})
    close(a.params, r.params, rtol=1e-5, atol=1e-7)


def test_coupled_decay_is_adam_normalised_and_matches_add_decayed_weights():
    lr, wd = 1e-2, 0.1
    net, iv, ns, _, st = setup(WeightDecay, WeightDecayConfig(lam=wd, kind="coupled"), optax.adam(lr), lr=lr,
                               shift=0.1)
    new, _ = step(net, ns, zero_loss, [iv], {"weight_decay": st})
    for p, q in zip(jax.tree.leaves(ns.params), jax.tree.leaves(new.params)):  # first step: −lr·sign(θ)
        nz = np.abs(np.asarray(p)) > 1e-3
        np.testing.assert_allclose(np.asarray(q - p)[nz], -lr * np.sign(np.asarray(p))[nz], rtol=1e-3)
    ref = net_of(optax.chain(optax.add_decayed_weights(wd), optax.adam(lr)))
    a, r = ns, NetState(ns.params, ref.tx.init(ns.params))
    for _ in range(2):
        a, _ = step(net, a, task_loss(net), [iv], {"weight_decay": st})
        r, _ = step(ref, r, task_loss(ref), [], {})
    close(a.params, r.params, rtol=1e-5, atol=1e-7)


def test_decay_kernels_only_leaves_biases():
    net, iv, ns, _, st = setup(WeightDecay, WeightDecayConfig(lam=0.5, mask="kernels_only"), optax.adam(0.1),
                               lr=0.1, shift=0.1)
    new, _ = step(net, ns, zero_loss, [iv], {"weight_decay": st})
    for layer in ("hidden_0", "hidden_1", "output"):
        np.testing.assert_array_equal(new.params[layer]["bias"], ns.params[layer]["bias"])
        np.testing.assert_allclose(new.params[layer]["kernel"], ns.params[layer]["kernel"] * (1 - 0.05), rtol=1e-6)


# ---- config errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--intervention", "l2init", "--l2init.form", "cube"],
     "l2init.form='cube' is not valid; choose one of: squared, unsquared_norm"),
    (["--intervention", "l2init", "--l2init.lam", "-1"], "l2init.lam must be >= 0"),
    (["--intervention", "l2init", "--l2init.networks", "policy"], "choose one of: actor, critic, temperature"),
    (["--intervention", "weight_decay", "--weight_decay.kind", "adamw"],
     "weight_decay.kind='adamw' is not valid; choose one of: decoupled, coupled"),
    (["--intervention", "weight_decay", "--weight_decay.mask", "bias"], "choose one of: all, kernels_only"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)


# ---- short runs under the jitted driver ------------------------------------------------------------
def trainer(agent, steps, intervention, extra=None, seeds=2):
    return tiny_trainer(agent, intervention, steps, extra, seeds)


# td3 and sac are `slow` variants (run them with -m "") to keep this file short; dqn resumes in tests/test_stacks.py
@pytest.mark.parametrize("agent", [pytest.param("td3", marks=pytest.mark.slow),
                                   pytest.param("sac", marks=pytest.mark.slow), "dqn", "ppo"])
def test_short_run_every_agent(tmp_path, agent):
    """l2init + decoupled weight decay on 2 vmapped seeds: anchors stay at θ₀, params move away."""
    t = trainer(agent, 200, "l2init+weight_decay")
    init_nets = t.init_carry()[0].agent.nets if hasattr(t, "init_carry") else None
    t.run(tmp_path / "run")
    ts = t.final_state[0]
    for net in NETS[agent]:
        s = ts.interventions["l2init"][net]
        if init_nets is not None:
            jax.tree.map(np.testing.assert_array_equal, s["anchor"], init_nets[net].params)
        assert np.all(np.asarray(s["dist"]) > 0) and np.all(np.isfinite(np.asarray(s["dist"])))
        assert np.all(np.asarray(ts.interventions["weight_decay"][net]["param_norm"]) > 0)
    assert "alpha" not in ts.interventions["l2init"]  # SAC's temperature is not regularised by default
    r = rows(tmp_path / "run")[-1]
    assert f"l2init/dist_to_init/{NETS[agent][0]}" in r and f"weight_decay/param_norm/{NETS[agent][0]}" in r


# resume: tests/test_stacks.py::test_a_stack_trains_and_resumes (DQN, l2init + weight_decay in a stack)
