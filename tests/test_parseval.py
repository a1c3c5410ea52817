"""Parseval regularisation (docs/interventions.md, Parseval regularisation): the penalty against a NumPy
reference on dense, twin-critic and conv layers, zero on orthonormal rows, its gradient through the training
core, λ = 0 is the base agent, runs on every agent with vmapped seeds (resume: tests/test_stacks.py)."""
from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import NETS, assert_cli_error, rows, tiny_trainer
from plastic.core import Hooks, Net, gradient_step
from plastic.interventions.parseval import Parseval, ParsevalConfig, parseval_penalty
from plastic.networks import MLP, ConvNet, get_path


def reference(params, layers, s):
    """Plasticine's form in NumPy: a PyTorch weight W is [out, in]; sum ||W W^T - s I||_F^2."""
    total = 0.0
    for spec in layers:
        k = np.asarray(get_path(params, spec.kernel), np.float64)
        members = k if spec.ensemble else k[None]
        for m in members:
            w = m.reshape(-1, m.shape[-1]).T  # [out, fan_in]
            total += np.sum((w @ w.T - s * np.eye(w.shape[0])) ** 2)
    return total


def _net(module, x):
    net = Net.of("critic", module, optax.sgd(1.0))
    return net, net.init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("kind", ["mlp", "twin", "conv"])
def test_penalty_equals_the_reference(kind):
    if kind == "conv":
        net, ns = _net(ConvNet((6, 6, 2), ((4, 3, 1),), (8,), 3, "relu", "lecun_normal"), jnp.zeros((1, 72)))
    else:
        net, ns = _net(MLP((8, 5), 2, "relu", ensemble=2 if kind == "twin" else 0), jnp.zeros((1, 3)))
    assert [spec.kernel[0] for spec in net.layers] == (["conv_0", "hidden_0"] if kind == "conv"
                                                       else ["hidden_0", "hidden_1"])  # never the output layer
    for s in (1.0, 0.5):
        np.testing.assert_allclose(float(parseval_penalty(ns.params, net.layers, s)),
                                   reference(ns.params, net.layers, s), rtol=1e-5)


def test_orthonormal_rows_have_zero_penalty_and_the_gradient_is_4_gram_minus_s_times_w():
    net, ns = _net(MLP((4,), 1, "relu"), jnp.zeros((1, 6)))
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 4)))  # orthonormal columns: rows of W = q^T
    p = {**ns.params, "hidden_0": {**ns.params["hidden_0"], "kernel": jnp.asarray(q * np.sqrt(2.0), jnp.float32)}}
    assert float(parseval_penalty(p, net.layers, 2.0)) == pytest.approx(0.0, abs=1e-9)
    k = ns.params["hidden_0"]["kernel"]
    g = jax.grad(lambda k: parseval_penalty({**ns.params, "hidden_0": {**ns.params["hidden_0"], "kernel": k}},
                                            net.layers, 1.0))(k)
    w = np.asarray(k, np.float64).T
    np.testing.assert_allclose(np.asarray(g).T, 4 * (w @ w.T - np.eye(4)) @ w, rtol=1e-4, atol=1e-5)


def test_the_term_enters_the_loss_of_the_training_core_and_lambda_zero_is_the_base_agent():
    """With SGD(lr=1) and no task loss, one step of the core moves W by -λ·∇penalty; λ = 0 changes nothing."""
    net, ns = _net(MLP((8, 5), 2, "relu", ensemble=2), jnp.zeros((1, 3)))
    zero = lambda params, probes: (jnp.zeros(()), None)  # noqa: E731
    agent = SimpleNamespace(nets={"critic": net}, role=lambda n: "critic")
    for lam in (0.1, 0.0):
        iv = Parseval(ParsevalConfig(lam=lam), "td3")
        st = iv.init(jax.random.PRNGKey(1), agent)
        out = gradient_step(net, ns, zero, batch_size=1, count=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(2),
                            hooks=Hooks({"parseval": st}, (iv,)))
        grad = jax.grad(lambda p: parseval_penalty(p, net.layers, 1.0))(ns.params)
        want = jax.tree.map(lambda p, g: p - lam * g, ns.params, grad)
        for a, b in zip(jax.tree.leaves(out[0].params), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
        logged = float(out[1].state["parseval"]["critic"]["penalty"])
        assert logged == pytest.approx(float(parseval_penalty(out[0].params, net.layers, 1.0)), rel=1e-5)


@pytest.mark.parametrize("argv, needle", [
    (["--intervention", "parseval", "--parseval.s", "0"], "parseval.s must be > 0"),
    (["--intervention", "parseval", "--parseval.networks", "policy"], "choose one of: actor, critic, temperature"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)


# td3, sac and ppo are `slow` variants: dqn runs the same loss_term path (twin critics: the reference test above)
@pytest.mark.parametrize("agent", [pytest.param(a, marks=pytest.mark.slow) if a != "dqn" else a
                                   for a in ("td3", "sac", "dqn", "ppo")])
def test_training_keeps_rows_closer_to_orthogonal(tmp_path, agent):
    """On 2 vmapped seeds, a strong penalty (λ = 0.1) ends with a lower penalty than the same run with λ = 0,
    on every selected network, and logs it."""
    finals = {}
    for lam in (0.1, 0.0):
        t = tiny_trainer(agent, "parseval", 300, {"parseval.lam": lam})
        t.run(tmp_path / f"run{lam}")
        finals[lam] = {n: np.asarray(t.final_state[0].interventions["parseval"][n]["penalty"]) for n in NETS[agent]}
    for n in NETS[agent]:
        assert np.all(finals[0.1][n] < finals[0.0][n]), (n, finals)
    assert f"parseval/penalty/{NETS[agent][0]}" in rows(tmp_path / "run0.1")[-1]

# resume: tests/test_stacks.py::test_a_stack_trains_and_resumes stacks parseval with the other methods
