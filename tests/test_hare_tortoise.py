"""Hare & Tortoise (docs/interventions.md, Hare & Tortoise): the Tortoise is the EMA of the Hare after each of its
updates, and every `period` updates the Hare becomes the Tortoise, its optimizer state kept (the release) or its Adam
moments restarted with the step count kept (`reset_optimizer`). (Event counts on every agent and driver:
tests/test_census.py; a resumed stack: tests/test_stacks.py.)"""
from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import assert_cli_error
from plastic.core import Net, NetState
from plastic.interventions.hare_tortoise import HareTortoise, HareTortoiseConfig
from plastic.networks import MLP


@pytest.mark.parametrize("reset_optimizer", [False, True])
def test_the_tortoise_follows_by_ema_and_the_hare_restarts_from_it(reset_optimizer):
    net = Net.of("critic", MLP((6,), 1), optax.adam(1e-2))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    params = net.init(jax.random.PRNGKey(0), x).params
    cfg = HareTortoiseConfig(momentum=0.9, period=4, networks=("critic",), reset_optimizer=reset_optimizer)
    iv = HareTortoise(cfg, "td3", {"critic": "critic"})
    agent = SimpleNamespace(nets={"critic": net}, role=lambda name: "critic")
    state = iv.init(jax.random.PRNGKey(2), agent, SimpleNamespace(nets={"critic": NetState(params, None)}))
    ns = NetState(params, net.tx.init(params))
    tortoise = jax.tree.map(np.asarray, params)

    @jax.jit
    def step(ns, state, count):
        g = jax.grad(lambda p: jnp.mean(jnp.square(net.apply(p, x)[0] - 1.0)))(ns.params)
        u, o = net.tx.update(g, ns.opt_state, ns.params)
        ns = NetState(optax.apply_updates(ns.params, u), o)
        return iv.post_update(net, ns, SimpleNamespace(count=count), state, jax.random.PRNGKey(0))

    for count in range(1, 10):
        before = ns
        ns, state = step(ns, state, count)
        grad = jax.grad(lambda p: jnp.mean(jnp.square(net.apply(p, x)[0] - 1.0)))(before.params)
        upd, opt_after = net.tx.update(grad, before.opt_state, before.params)
        hare = jax.tree.map(np.asarray, optax.apply_updates(before.params, upd))
        tortoise = jax.tree.map(lambda t, h: 0.9 * t + 0.1 * h, tortoise, hare)
        for t, s in zip(jax.tree.leaves(tortoise), jax.tree.leaves(state["critic"]["tortoise"])):
            np.testing.assert_allclose(s, t, rtol=1e-5, atol=1e-7)
        if count % 4 == 0:  # the Hare is the Tortoise; its moments kept or restarted, its step count kept
            for a, b in zip(jax.tree.leaves(ns.params), jax.tree.leaves(state["critic"]["tortoise"])):
                np.testing.assert_array_equal(a, b)
            adam, kept = ns.opt_state[0], opt_after[0]
            if reset_optimizer:
                assert all(not np.any(np.asarray(m)) for m in jax.tree.leaves((adam.mu, adam.nu)))
            else:
                for a, b in zip(jax.tree.leaves((adam.mu, adam.nu)), jax.tree.leaves((kept.mu, kept.nu))):
                    np.testing.assert_array_equal(a, b)
                assert any(np.any(np.asarray(m)) for m in jax.tree.leaves(adam.mu))
            assert int(adam.count) == count
            assert float(state["critic"]["distance"]) == 0.0
        else:
            for a, h in zip(jax.tree.leaves(ns.params), jax.tree.leaves(hare)):
                np.testing.assert_allclose(a, h, rtol=1e-6)
            assert float(state["critic"]["distance"]) > 0.0
    assert int(state["critic"]["events"]) == 2
    assert iv.expected_events(agent, {"critic": 9}) == {"critic": 2}


@pytest.mark.parametrize("argv, needle", [
    (["--intervention", "hare_tortoise", "--hare_tortoise.momentum", "1"], "hare_tortoise.momentum must be in [0, 1)"),
    (["--intervention", "ht", "--hare_tortoise.networks", "policy"], "choose one of: actor, critic, temperature"),
])
def test_bad_settings_are_one_line_errors(argv, needle, tmp_path, capsys):
    assert_cli_error(["--agent", "td3", *argv], needle, tmp_path, capsys)
