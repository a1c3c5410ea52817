"""TRAC (docs/interventions.md, TRAC): erfi against SciPy, the optimizer step by step against a float64 NumPy
transcription of the authors' update, unit resets re-anchoring θ_ref, which networks each agent wraps, the
one-line errors. Its resume and its composition with resets, recycling and injection: tests/test_stacks.py."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import erfi as scipy_erfi

from helpers import assert_cli_error
from plastic.core import Net
from plastic.networks import MLP
from plastic.optim import TracSpec, TracState, erfi, trac_scale, trac_states, trac_wrap
from plastic.surgery import reset_units


def test_erfi_matches_scipy_in_float32_wherever_it_is_finite():
    x = np.concatenate([np.linspace(-9.2, 9.2, 737), [0.0, 1e-7, 1 / np.sqrt(2)]]).astype(np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(erfi)(x)), scipy_erfi(x.astype(np.float64)), rtol=1e-5, atol=0)
    assert np.isposinf(erfi(jnp.float32(9.6))) and np.isneginf(erfi(jnp.float32(-9.6)))


def reference_step(x, g, base_step, st, spec):
    """The authors' `_step` in float64 NumPy: Δ recovered from the parameters, h = <Δ, g> before the base update
    `base_step` is added, then the tuners and x = θ_ref + max(Σs, 0)·Δ. `st` = (θ_ref, s, v, σ); returns the new
    parameters and (s, v, σ)."""
    ref, s, var, sigma = st
    betas = np.asarray(spec.betas)
    delta = (x - ref) / (s.sum() + spec.eps)
    h = float(delta @ g)
    delta = delta + base_step
    var = betas ** 2 * var + h * h
    sigma = betas * sigma - h
    s = spec.s_init / scipy_erfi(1 / np.sqrt(2)) * scipy_erfi(sigma / (np.sqrt(2) * np.sqrt(var) + spec.eps))
    return ref + max(s.sum(), 0.0) * delta, (s, var, sigma)


def test_the_wrapper_follows_the_authors_update_step_by_step():
    """A noisy quadratic, 300 steps of trac_wrap(sgd) in float32: each step equals the float64 transcription applied
    to the same state; θ_ref stays the initial parameters; the scale grows from 0, overshoots and comes back (the
    gradient turns against the displacement), so the tuners are exercised both ways. Some entries start at 0, as
    biases do: while the scale is ~1e-8 only there is the displacement θ_ref + S·Δ representable in float32 (as in
    the reference's float32 parameters), and <Δ, g> non-zero."""
    spec, lr = TracSpec(("w",)), 0.01
    rng = np.random.default_rng(0)
    target, noise, x0 = rng.normal(size=7), rng.normal(size=(300, 7)) * 0.3, rng.normal(size=7) * (np.arange(7) > 3)
    tx = trac_wrap(optax.sgd(lr), spec)
    params = {"w": jnp.asarray(x0, jnp.float32)}
    state = tx.init(params)
    np.testing.assert_array_equal(state.sigma, np.full(6, 1e-8, np.float32))
    step = jax.jit(lambda g, st, p: tx.update({"w": g}, st, p))
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    sums = []
    for t in range(300):
        x = f64(params["w"])
        g = jnp.asarray(2 * (x - target) + noise[t], jnp.float32)
        want_x, want_st = reference_step(x, f64(g), -lr * f64(g), (f64(state.ref["w"]), f64(state.s),
                                                                   f64(state.variance), f64(state.sigma)), spec)
        upd, state = step(g, state, params)
        params = optax.apply_updates(params, upd)
        np.testing.assert_allclose(f64(params["w"]), want_x, rtol=1e-5, atol=1e-6)
        for got, want in zip((state.s, state.variance, state.sigma), want_st):
            np.testing.assert_allclose(f64(got), want, rtol=1e-4, atol=1e-12)
        np.testing.assert_array_equal(state.ref["w"], np.float32(x0))
        sums.append(float(jnp.sum(state.s)))
    peak = int(np.argmax(sums))
    assert sums[0] < 1e-6 and max(sums) > 1e-2 and min(sums[peak:]) < 0.9 * sums[peak]
    assert float(trac_scale(state)) == max(sums[-1], 0.0)


def test_a_unit_reset_restarts_the_anchor_of_the_entries_it_writes():
    """reset_units on a TRAC-wrapped Adam: at touched entries θ_ref becomes the fresh value and Adam's moments
    zero; every other entry of θ_ref is kept (zeroing θ_ref, as a generic moment reset would, rescales the
    fresh weights on the next update)."""
    net = Net.of("critic", MLP((6, 4), 1), trac_wrap(optax.adam(1e-2), TracSpec(("critic",))))
    ns = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 3))
    loss = lambda p: jnp.mean(jnp.square(net.apply(p, x)[0] - 1.0))  # noqa: E731
    step = jax.jit(lambda p, o: net.tx.update(jax.grad(loss)(p), o, p))
    for _ in range(5):
        upd, opt = step(ns.params, ns.opt_state)
        ns = ns.replace(params=optax.apply_updates(ns.params, upd), opt_state=opt)
    masks = {"hidden_0": jnp.array([True, False, False, True, False, False]), "hidden_1": jnp.zeros(4, bool)}
    out = jax.jit(lambda ns: reset_units(net, ns, masks, jax.random.PRNGKey(2)))(ns)
    before, after = ns.opt_state, out.opt_state
    assert isinstance(after, TracState)
    col = np.asarray(masks["hidden_0"])
    for leaf in ("kernel",):
        ref0, ref1 = (np.asarray(s.ref["hidden_0"][leaf]) for s in (before, after))
        np.testing.assert_array_equal(ref1[:, col], np.asarray(out.params["hidden_0"][leaf])[:, col])
        np.testing.assert_array_equal(ref1[:, ~col], ref0[:, ~col])
        assert np.all(np.asarray(after.base[0].mu["hidden_0"][leaf])[:, col] == 0)
    np.testing.assert_array_equal(after.ref["hidden_1"]["kernel"][~col], before.ref["hidden_1"]["kernel"][~col])
    np.testing.assert_array_equal(after.s, before.s)


def test_each_agent_wraps_the_networks_of_the_selected_roles():
    """TD3's actor and critic, SAC's too (its temperature keeps plain Adam unless its role is selected), DQN's
    Q-network; PPO's actor after its gradient clipping. The run, its logged scales and the resume:
    tests/test_stacks.py."""
    from plastic.config import build
    from plastic.setup import build_agent, jax_envs

    def nets(cfg):
        return build_agent(cfg, jax_envs(cfg)).init(jax.random.PRNGKey(0)).nets

    def states(cfg):
        return {n: trac_states(ns.opt_state) for n, ns in nets(cfg).items()}

    def wrapped(cfg):
        return {n for n, found in states(cfg).items() if found}
    td3 = states(build("td3", "trac", env="probe:obs"))
    assert {n for n, f in td3.items() if f} == {"actor", "critic"} and np.shape(td3["critic"][0].s) == (6,)
    assert wrapped(build("sac", "trac", env="probe:obs")) == {"actor", "critic"}
    assert wrapped(build("sac", "trac", env="probe:obs", overrides={"trac.networks": "temperature"})) == {"alpha"}
    assert wrapped(build("dqn", "trac", env="probe:d_obs")) == {"q"}
    clip, trac = nets(build("ppo", "trac"))["actor"].opt_state   # optax.chain(clip_by_global_norm, TRAC(adam))
    assert isinstance(trac, TracState) and not isinstance(clip, TracState)


@pytest.mark.parametrize("argv, needle", [
    (["--agent", "td3", "--intervention", "trac", "--trac.betas", "0.9,1.0"], "trac.betas entries must be"),
    (["--agent", "dqn", "--intervention", "trac", "--trac.s_init", "0"], "trac.s_init must be > 0"),
    (["--agent", "td3", "--intervention", "trac", "--trac.networks", "policy"], "trac.networks entry='policy'"),
])
def test_bad_trac_settings_are_one_line_errors(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)
