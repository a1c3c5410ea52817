"""CReLU and deep Fourier features (docs/interventions.md, CReLU and deep Fourier features): two outputs per unit.
The forward pass against NumPy, the next layer's doubled fan-in, a unit reset equal to cutting both of the unit's
outgoing rows (MLP, twin critic, conv torso with its flatten), the per-unit probes, the metrics on a run."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import assert_cli_error, rows, tiny_trainer
from plastic.core import Net
from plastic.networks import MLP, ConvNet, get_path, set_path
from plastic.surgery import reset_units

PAIRS = {"crelu": lambda z: (np.maximum(z, 0), np.maximum(-z, 0)), "dff": lambda z: (np.sin(z), np.cos(z))}
X = jax.random.normal(jax.random.PRNGKey(1), (7, 3))


def mlp(act, ensemble=0, probe_point="pre_activation"):
    net = Net.of("critic", MLP((6, 5), 2, act, ensemble=ensemble, probe_point=probe_point), optax.adam(1e-3))
    return net, net.init(jax.random.PRNGKey(0), X[:1])


@pytest.mark.parametrize("act", sorted(PAIRS))
@pytest.mark.parametrize("ensemble", [0, 2])
def test_forward_is_both_outputs_of_every_unit_into_a_doubled_fan_in(act, ensemble):
    net, ns = mlp(act, ensemble)
    y, acts = net.apply(ns.params, X)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), ns.params)
    for e in range(max(ensemble, 1)):
        m = (lambda a: a[e]) if ensemble else (lambda a: a)
        h = np.asarray(X, np.float64)
        for i in range(2):
            z = h @ m(p[f"hidden_{i}"]["kernel"]) + m(p[f"hidden_{i}"]["bias"])
            f, g = PAIRS[act](z)
            np.testing.assert_allclose(m(np.asarray(acts[f"hidden_{i}"])), np.stack([f, g], 1), rtol=1e-5, atol=1e-6)
            h = np.concatenate([f, g], 1)
        want = h @ m(p["output"]["kernel"]) + m(p["output"]["bias"])
        np.testing.assert_allclose(m(np.asarray(y)), want, rtol=1e-5, atol=1e-5)
    assert get_path(ns.params, ("hidden_1", "kernel")).shape[-2:] == (12, 5)   # 6 units, 12 outputs
    assert [l.consumer_tiles for l in net.layers] == [(2,), (2,)]


def cut_rows(params, path, rows_):
    """The kernel at `path` with the given input rows set to 0 (indices computed here, not by the layer map)."""
    k = get_path(params, path)
    return set_path(params, path, k.at[..., np.asarray(rows_, int), :].set(0.0))


@pytest.mark.parametrize("act", sorted(PAIRS))
def test_a_unit_reset_cuts_both_of_its_outputs(act):
    """Resetting units (fresh incoming weights, zero outgoing rows) leaves the output equal to the network whose
    reset units' two outgoing rows (j and H + j) are cut: a wrong tiling would cut another unit's row."""
    net, ns = mlp(act, ensemble=2)
    masks = {"hidden_0": jnp.array([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]], bool),
             "hidden_1": jnp.array([[0, 0, 1, 0, 0], [0, 0, 0, 0, 1]], bool)}
    new = reset_units(net, ns, masks, jax.random.PRNGKey(3))
    ref = ns.params
    for e in range(2):
        for layer, width, nxt in (("hidden_0", 6, "hidden_1"), ("hidden_1", 5, "output")):
            units = np.flatnonzero(np.asarray(masks[layer][e]))
            k = get_path(ref, (nxt, "kernel"))
            k = k.at[e, np.concatenate([units, units + width]), :].set(0.0)
            ref = set_path(ref, (nxt, "kernel"), k)
    np.testing.assert_allclose(net.apply(new.params, X)[0], net.apply(ref, X)[0], rtol=1e-5, atol=1e-6)


def test_a_conv_channel_reset_cuts_its_outputs_at_every_position():
    """CReLU in a conv torso: a conv channel c of C feeds the next conv's input channels c and C + c, and after the
    flatten the Dense rows (position·2 + s)·C + c for every position and both outputs s."""
    shape = (9, 9, 2)
    module = ConvNet(shape, ((3, 3, 2), (4, 3, 1)), (5,), 3, "crelu")   # 9x9 -> 4x4x3 -> 2x2x4 -> 32 rows
    net = Net.of("q", module, optax.adam(1e-3))
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, int(np.prod(shape))))
    ns = net.init(jax.random.PRNGKey(0), x[:1])
    assert [l.consumer_tiles for l in net.layers] == [(2,), (8,), (2,)]
    _, acts = net.apply(ns.params, x)
    assert acts["conv_1"].shape == (6, 2, 2, 2, 4) and acts["hidden_0"].shape == (6, 2, 5)
    masks = {"conv_0": jnp.array([0, 1, 0], bool), "conv_1": jnp.array([1, 0, 0, 1], bool),
             "hidden_0": jnp.array([0, 0, 1, 0, 0], bool)}
    new = reset_units(net, ns, masks, jax.random.PRNGKey(3))
    ref = cut_rows(ns.params, ("conv_1", "kernel"), [1, 3 + 1])
    ref = cut_rows(ref, ("hidden_0", "kernel"), [(pos * 2 + s) * 4 + c for pos in range(4) for s in (0, 1)
                                                 for c in (0, 3)])
    ref = cut_rows(ref, ("output", "kernel"), [2, 5 + 2])
    np.testing.assert_allclose(net.apply(new.params, x)[0], net.apply(ref, x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act", sorted(PAIRS))
def test_probes_give_per_unit_gradients(act):
    """A pre-activation probe is one value per unit ([B, H]): its gradients summed over the batch are the bias
    gradient. A post-activation probe has the pair axis ([B, 2, H]): summed over the pair and the batch it is the
    gradient of the loss with respect to scaling both outputs of a unit together, which a finite difference of
    that scaling checks."""
    net, ns = mlp(act)
    target = jax.random.normal(jax.random.PRNGKey(5), (7, 2))
    loss = lambda p, probes: jnp.sum(jnp.square(net.apply(p, X, probes)[0] - target))  # noqa: E731
    gp, gb = jax.grad(loss, argnums=(1, 0))(ns.params, net.zero_probes(7))
    for name in ("hidden_0", "hidden_1"):
        assert gp[name].shape == (7, 6 if name == "hidden_0" else 5)
        np.testing.assert_allclose(gp[name].sum(0), gb[name]["bias"], rtol=1e-4, atol=1e-5)
    net, ns = mlp(act, probe_point="post_activation")
    probes = net.zero_probes(7)
    assert probes["hidden_1"].shape == (7, 2, 5)
    g = jax.grad(loss, argnums=1)(ns.params, probes)["hidden_1"]
    unit = jnp.zeros((7, 2, 5)).at[:, :, 3].set(1.0)

    def shifted(eps):
        return loss(ns.params, {**probes, "hidden_1": eps * unit})
    fd = (shifted(1e-3) - shifted(-1e-3)) / 2e-3
    assert float(jnp.sum(g[:, :, 3])) == pytest.approx(float(fd), rel=2e-2, abs=1e-3)


def test_a_run_measures_units_not_outputs(tmp_path):
    """TD3 with CReLU, ReDo and the activity metrics on: FAU is 1/2 exactly (one output of each pair is a positive
    ReLU unless z = 0), dormant ratios are fractions of the units, and no linearised ratio (the pre-activation's
    sign is not read from a pair)."""
    t = tiny_trainer("td3", "redo", 300, {"td3.activation": "crelu", "redo.period": 10,
                                          "metrics.activity_every": 100})
    t.run(tmp_path / "crelu")
    last = rows(tmp_path / "crelu")[-1]
    assert last["fau/critic"] == pytest.approx(0.5, abs=1e-3)
    units = last["dormant_ratio_tau_0.025/critic/hidden_0"] * 32     # a count of 16 units x 2 members
    assert units == pytest.approx(round(units), abs=1e-4)
    assert not any(k.startswith("linearised_ratio") for k in last)


def test_residual_networks_refuse_a_paired_activation(tmp_path, capsys):
    assert_cli_error(["--agent", "sac", "--sac.network", "simba", "--sac.activation", "dff"],
                     "sac.activation=dff applies to sac.network=mlp", tmp_path, capsys)
