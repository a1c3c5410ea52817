"""Unit-score metrics (docs/metrics.md §1, §2, §10.1, §10.3) on hand-built networks.

Network A (docs/metrics.md §10.1): x = [1, 2], hidden Dense 1->3 kernel [[1, -1, 2]], bias 0, ReLU;
output Dense 3->1 kernel [[1], [1], [0.5]], bias 0; targets 0; L = mean_b 0.5 (y_b - t_b)^2.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metrics.units import dormant_scores, grama_scores, normalize_scores, ratio_logs, unit_magnitude
from plastic.core import Hooks, Net, NetState, gradient_step
from plastic.interventions.base import Intervention
from plastic.networks import MLP

X = jnp.array([[1.0], [2.0]])
TGT = jnp.zeros((2, 1))
A_KERNEL = [[1.0, -1.0, 2.0]]
A_OUT = [[1.0], [1.0], [0.5]]
EXPECTED_G = {"pre_activation": [2.0, 0.0, 1.0], "post_activation": [1.2, 1.2, 0.6],
              "weight_grad": [2.0, 0.0, 1.0]}
EXPECTED_RATIO0 = {"pre_activation": 1 / 3, "post_activation": 0.0, "weight_grad": 1 / 3}
TARGETS = tuple(EXPECTED_G)


def net_a_params(kernel=A_KERNEL, out=A_OUT):
    return {"hidden_0": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.zeros(3)},
            "output": {"kernel": jnp.asarray(out, jnp.float32), "bias": jnp.zeros(1)}}


_GRAD_FNS = {}


def grads_at(module, params, x=X, t=TGT, scale=1.0):
    """loss, outputs, activations, param grads, probe grads (one value_and_grad, probes as an argument).
    Jitted once per module configuration; `scale` multiplies the loss."""
    cfg = (module.hidden, module.out, module.ensemble, module.probe_point)
    if cfg not in _GRAD_FNS:
        def f(params, x, t, scale):
            probes = {k: jnp.zeros(s) for k, s in module.probe_shapes(x.shape[0]).items()}

            def loss_fn(params, probes):
                y, acts = module.apply({"params": params}, x, probes)
                return scale * jnp.mean(0.5 * jnp.square(y - t)), (y, acts)

            return jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, probes)
        _GRAD_FNS[cfg] = jax.jit(f)
    (loss, (y, acts)), (gp, gprobe) = _GRAD_FNS[cfg](params, x, t, jnp.float32(scale))
    return loss, y, acts, gp, gprobe


class Recorder(Intervention):
    """Captures what gradient_step hands to post_update hooks."""
    name = "rec"

    def post_update(self, net, ns, ctx, state, key):
        return ns, {"scores": ctx.grama(), "probe_grads": ctx.probe_grads, "grads": ctx.grads,
                    "count": ctx.count, "loss": ctx.loss}


def step_network_a(target, params=None, scale=1.0):
    module = MLP((3,), 1, probe_point=target)
    net = Net.of("critic", module, optax.sgd(0.0))
    params = net_a_params() if params is None else params
    ns = NetState(params, net.tx.init(params))

    def loss_fn(p, probes):
        y, acts = net.apply(p, X, probes)
        return scale * jnp.mean(0.5 * jnp.square(y - TGT)), acts

    hooks = Hooks({"rec": {}}, (Recorder(None, "sac"),))
    _, hooks, count, aux, logs = gradient_step(net, ns, loss_fn, batch_size=2, count=jnp.zeros((), jnp.int32),
                                               key=jax.random.PRNGKey(0), hooks=hooks)
    return hooks.state["rec"], count, aux, logs


def test_network_a_params_match_module_structure():
    init = jax.eval_shape(MLP((3,), 1).init, jax.random.PRNGKey(0), X)["params"]
    ref = net_a_params()
    assert jax.tree.structure(init) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(ref)):
        assert a.shape == b.shape


def test_network_a_forward_and_gradients():
    loss, y, acts, gp, g_pre = grads_at(MLP((3,), 1, probe_point="pre_activation"), net_a_params())
    np.testing.assert_allclose(acts["hidden_0"], [[1, 0, 2], [2, 0, 4]])
    np.testing.assert_allclose(y[:, 0], [2, 4])
    np.testing.assert_allclose(loss, 5.0)
    np.testing.assert_allclose(g_pre["hidden_0"], [[1, 0, 0.5], [2, 0, 1]])             # dL/dz
    np.testing.assert_allclose(gp["hidden_0"]["kernel"], [[5, 0, 2.5]])
    np.testing.assert_allclose(gp["hidden_0"]["bias"], [3, 0, 1.5])
    np.testing.assert_allclose(gp["output"]["kernel"], [[5], [0], [10]])
    np.testing.assert_allclose(gp["output"]["bias"], [3])
    _, _, _, _, g_post = grads_at(MLP((3,), 1, probe_point="post_activation"), net_a_params())
    np.testing.assert_allclose(g_post["hidden_0"], [[1, 1, 0.5], [2, 2, 1]])            # dL/dh


@pytest.mark.parametrize("target", TARGETS)
def test_network_a_grama_scores_direct(target):
    module = MLP((3,), 1, probe_point=target)
    _, _, _, gp, gprobe = grads_at(module, net_a_params())
    scores = grama_scores(module.layer_map(), gprobe, gp, target)
    G, g = scores["hidden_0"]
    np.testing.assert_allclose(G, EXPECTED_G[target], rtol=1e-6)
    np.testing.assert_allclose(jnp.mean(G), 1.0, rtol=1e-6)
    logs = ratio_logs("grama_ratio", "critic", {k: v[0] for k, v in scores.items()}, (0.0,))
    np.testing.assert_allclose(logs["grama_ratio_tau_0/critic"], EXPECTED_RATIO0[target])
    np.testing.assert_allclose(logs["grama_ratio_tau_0/critic/hidden_0"], EXPECTED_RATIO0[target])


@pytest.mark.parametrize("target", TARGETS)
def test_network_a_grama_through_gradient_step(target):
    rec, count, aux, logs = step_network_a(target)
    assert int(count) == 1 and int(rec["count"]) == 1
    np.testing.assert_allclose(rec["loss"], 5.0)
    np.testing.assert_allclose(aux["hidden_0"], [[1, 0, 2], [2, 0, 4]])
    np.testing.assert_allclose(rec["scores"]["hidden_0"][0], EXPECTED_G[target], rtol=1e-6)
    np.testing.assert_allclose(rec["grads"]["hidden_0"]["kernel"], [[5, 0, 2.5]])
    assert set(logs) == {"loss/critic"}  # the GraMa ratios are the metrics collector's (tests/test_monitor.py)
    np.testing.assert_allclose(logs["loss/critic"], 5.0)
    ratios = ratio_logs("grama_ratio", "critic", {k: v[0] for k, v in rec["scores"].items()}, (0.0, 0.01))
    np.testing.assert_allclose(ratios["grama_ratio_tau_0/critic/hidden_0"], EXPECTED_RATIO0[target])
    # tau = 0.01 flags the same units on Network A (all non-zero scores are >= 1)
    np.testing.assert_allclose(ratios["grama_ratio_tau_0.01/critic"], EXPECTED_RATIO0[target])


def test_gradient_step_reduces_the_probe_gradients_only_for_a_hook_that_reads_the_scores():
    """The GraMa scores (|probe gradient| averaged over the batch) cost a reduction per layer and update: the
    core computes them only inside the hooks that call `ctx.grama()` (ReGraMa's event, the metrics
    collector's gradient group), never on an update nobody measures. Network A's loss and its backward
    pass have no `abs`; the scores do."""
    module = MLP((3,), 1)
    net = Net.of("critic", module, optax.sgd(0.0))
    ns = NetState(net_a_params(), net.tx.init(net_a_params()))

    class Ignores(Intervention):
        name = "ignores"

    def jaxpr(reader):
        def step(ns):
            def loss_fn(p, probes):
                y = net.apply(p, X, probes)[0]
                return jnp.mean(0.5 * jnp.square(y - TGT)), None
            return gradient_step(net, ns, loss_fn, batch_size=X.shape[0], count=jnp.zeros((), jnp.int32),
                                 key=jax.random.PRNGKey(0), hooks=Hooks({reader.name: {}}, (reader,)))[0]
        return str(jax.make_jaxpr(step)(ns))

    assert "abs" not in jaxpr(Ignores(None, "sac")) and "abs" in jaxpr(Recorder(None, "sac"))


def test_network_a_dormant_scores_and_ratios():
    module = MLP((3,), 1)
    _, _, acts, _, _ = grads_at(module, net_a_params())
    s = dormant_scores(acts, module.layer_map())
    np.testing.assert_allclose(s["hidden_0"], [1.0, 0.0, 2.0], rtol=1e-6)
    logs = ratio_logs("dormant_ratio", "critic", s, (0.0, 0.025, 0.1, 1.0))
    for tau in ("0", "0.025", "0.1"):
        np.testing.assert_allclose(logs[f"dormant_ratio_tau_{tau}/critic"], 1 / 3)
        np.testing.assert_allclose(logs[f"dormant_ratio_tau_{tau}/critic/hidden_0"], 1 / 3)
    # the test is `s <= tau`: unit 0's score is 1 (up to eps) so tau = 1 flags units 0 and 1
    assert float(s["hidden_0"][0]) <= 1.0
    np.testing.assert_allclose(logs["dormant_ratio_tau_1/critic"], 2 / 3)


@pytest.mark.parametrize("target", TARGETS)
def test_loss_scale_invariance(target):
    module = MLP((3,), 1, probe_point=target)
    _, _, _, gp1, pr1 = grads_at(module, net_a_params())
    _, _, _, gp10, pr10 = grads_at(module, net_a_params(), scale=10.0)
    G1, g1 = grama_scores(module.layer_map(), pr1, gp1, target)["hidden_0"]
    G10, g10 = grama_scores(module.layer_map(), pr10, gp10, target)["hidden_0"]
    np.testing.assert_allclose(g10, 10.0 * g1, rtol=1e-6)    # raw magnitudes do scale
    np.testing.assert_allclose(G10, G1, rtol=1e-6)           # normalised scores do not
    np.testing.assert_allclose(G10, EXPECTED_G[target], rtol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
def test_unit_swap_permutes_scores(target):
    perm = [2, 1, 0]
    kernel = np.asarray(A_KERNEL)[:, perm]
    out = np.asarray(A_OUT)[perm, :]
    module = MLP((3,), 1, probe_point=target)
    loss, y, acts, gp, gprobe = grads_at(module, net_a_params(kernel, out))
    np.testing.assert_allclose(y[:, 0], [2, 4])
    G = grama_scores(module.layer_map(), gprobe, gp, target)["hidden_0"][0]
    np.testing.assert_allclose(G, np.asarray(EXPECTED_G[target])[perm], rtol=1e-6)
    s = dormant_scores(acts, module.layer_map())["hidden_0"]
    np.testing.assert_allclose(s, [2.0, 0.0, 1.0], rtol=1e-6)


def test_dormant_small_case_10_3():
    layers = MLP((4,), 1).layer_map()
    acts = {"hidden_0": jnp.array([[0.0, 1.0, 2.0, -1.0], [0.0, -1.0, 2.0, 1.0]])}   # mean |h| = [0, 1, 2, 1]
    np.testing.assert_allclose(unit_magnitude(acts["hidden_0"]), [0, 1, 2, 1])
    s = dormant_scores(acts, layers)
    np.testing.assert_allclose(s["hidden_0"], [0, 1, 2, 1], rtol=1e-6)
    logs = ratio_logs("dormant_ratio", "actor", s, (0.0, 0.025, 0.1))
    np.testing.assert_allclose(logs["dormant_ratio_tau_0.025/actor"], 0.25)
    np.testing.assert_allclose(logs["dormant_ratio_tau_0/actor"], 0.25)
    np.testing.assert_allclose(logs["dormant_ratio_tau_0.1/actor/hidden_0"], 0.25)


def test_pooled_vs_mean_of_layers():
    # layer widths 4 and 2: 1/4 and 1/2 flagged -> pooled 2/6, mean of layers 3/8
    scores = {"hidden_0": jnp.array([0.0, 1.0, 2.0, 1.0]), "hidden_1": jnp.array([0.0, 2.0])}
    pooled = ratio_logs("dormant_ratio", "critic", scores, (0.0,), "pooled")
    mol = ratio_logs("dormant_ratio", "critic", scores, (0.0,), "mean_of_layers")
    np.testing.assert_allclose(pooled["dormant_ratio_tau_0/critic"], 2 / 6, rtol=1e-6)
    np.testing.assert_allclose(mol["dormant_ratio_tau_0/critic"], 3 / 8, rtol=1e-6)
    for logs in (pooled, mol):
        np.testing.assert_allclose(logs["dormant_ratio_tau_0/critic/hidden_0"], 0.25)
        np.testing.assert_allclose(logs["dormant_ratio_tau_0/critic/hidden_1"], 0.5)
    # end-to-end with a real 2-layer MLP of widths 4 and 2
    layers = MLP((4, 2), 1).layer_map()
    acts = {"hidden_0": jnp.array([[0.0, 1.0, 2.0, 1.0]]), "hidden_1": jnp.array([[0.0, 3.0]])}
    s = dormant_scores(acts, layers)
    np.testing.assert_allclose(ratio_logs("d", "n", s, (0.0,), "pooled")["d_tau_0/n"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(ratio_logs("d", "n", s, (0.0,), "mean_of_layers")["d_tau_0/n"], 0.375, rtol=1e-6)


def test_ensemble_axis_scores_per_member():
    module = MLP((3,), 1, ensemble=2)
    layers = module.layer_map()
    assert layers[0].mask_shape == (2, 3)
    # [E, B, H]: member 0 is Network A's activations, member 1 something else
    acts = {"hidden_0": jnp.array([[[1.0, 0.0, 2.0], [2.0, 0.0, 4.0]],
                                   [[3.0, 3.0, 0.0], [3.0, -3.0, 0.0]]])}
    mag = unit_magnitude(acts["hidden_0"], ensemble=2)
    assert mag.shape == (2, 3)
    np.testing.assert_allclose(mag, [[1.5, 0, 3], [3, 3, 0]])
    s = dormant_scores(acts, layers)["hidden_0"]
    np.testing.assert_allclose(s, [[1, 0, 2], [1.5, 1.5, 0]], rtol=1e-6)   # normalised per member
    logs = ratio_logs("dormant_ratio", "critic", {"hidden_0": s}, (0.0,))
    np.testing.assert_allclose(logs["dormant_ratio_tau_0/critic"], 2 / 6)     # pooled over E * H


@pytest.mark.parametrize("target", TARGETS)
def test_ensemble_network_a_grama(target):
    # member 0 = Network A, member 1 = Network A with units 0 and 2 swapped
    perm = [2, 1, 0]
    k = np.asarray(A_KERNEL, np.float32)
    o = np.asarray(A_OUT, np.float32)
    params = {"hidden_0": {"kernel": jnp.stack([k, k[:, perm]]), "bias": jnp.zeros((2, 3))},
              "output": {"kernel": jnp.stack([o, o[perm]]), "bias": jnp.zeros((2, 1))}}
    module = MLP((3,), 1, ensemble=2, probe_point=target)
    init = jax.eval_shape(module.init, jax.random.PRNGKey(0), X)["params"]
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, params)
    _, y, _, gp, gprobe = grads_at(module, params)
    assert y.shape == (2, 2, 1)
    if target != "weight_grad":
        assert gprobe["hidden_0"].shape == (2, 2, 3)
    G, g = grama_scores(module.layer_map(), gprobe, gp, target)["hidden_0"]
    assert G.shape == (2, 3)
    e = np.asarray(EXPECTED_G[target])
    np.testing.assert_allclose(G, np.stack([e, e[perm]]), rtol=1e-6)


def test_unit_magnitude_spatial_axes():
    x = jnp.arange(2 * 3 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 3, 4) - 30.0
    np.testing.assert_allclose(unit_magnitude(x), np.abs(np.asarray(x)).mean(axis=(0, 1, 2)), rtol=1e-6)
    xe = jnp.stack([x, 2 * x])        # [E, B, H, W, C]
    np.testing.assert_allclose(unit_magnitude(xe, ensemble=2),
                               np.abs(np.asarray(xe)).mean(axis=(1, 2, 3)), rtol=1e-6)


def test_all_zero_gradient_layer_ratio_is_one():
    layers = MLP((3,), 1).layer_map()
    zero = {"hidden_0": jnp.zeros((5, 3))}
    G, g = grama_scores(layers, zero, None, "pre_activation")["hidden_0"]
    np.testing.assert_array_equal(G, np.zeros(3))
    np.testing.assert_array_equal(normalize_scores(jnp.zeros(4)), np.zeros(4))
    logs = ratio_logs("grama_ratio", "critic", {"hidden_0": G}, (0.0, 0.01))
    np.testing.assert_allclose(logs["grama_ratio_tau_0/critic/hidden_0"], 1.0)
    np.testing.assert_allclose(logs["grama_ratio_tau_0.01/critic"], 1.0)
    # end to end: zero output kernel -> no gradient reaches the hidden layer
    for target in TARGETS:
        rec, _, _, _ = step_network_a(target, net_a_params(out=[[0.0], [0.0], [0.0]]))
        np.testing.assert_array_equal(rec["scores"]["hidden_0"][1], np.zeros(3))
        logs = ratio_logs("grama_ratio", "critic", {k: v[0] for k, v in rec["scores"].items()}, (0.0,))
        np.testing.assert_allclose(logs["grama_ratio_tau_0/critic/hidden_0"], 1.0)
        np.testing.assert_allclose(logs["grama_ratio_tau_0/critic"], 1.0)
