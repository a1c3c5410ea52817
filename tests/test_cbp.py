"""Continual Backprop (docs/interventions.md, Continual Backprop; AdamGnT arithmetic in plastic.optim).

The section comments number the method's test invariants (1) to (8)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import NETS, assert_cli_error, assert_resume_identical, tiny_trainer
from plastic import fields, optim
from plastic.core import Net, NetState, UpdateContext
from plastic.interventions.cbp import CBP, CBPConfig, outgoing_magnitude
from plastic.networks import MLP, ConvNet, GaussianHead
from plastic.surgery import touched_entries

KEY = jax.random.PRNGKey(0)
ETA = 0.99
X16 = jnp.asarray(np.random.default_rng(0).uniform(size=(16, 3)), jnp.float32)   # the default batch


class Jitted(CBP):
    """CBP with its statistics and selection jitted (eager JAX is slow on this machine)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.statistics = jax.jit(super().statistics, static_argnums=0)
        self.select = jax.jit(super().select, static_argnums=0)


def cbp(**kw):
    iv = Jitted(CBPConfig(**{"maturity": 0, **kw}), "td3")
    fields.check(iv.cfg, "cbp")  # the declared ranges and switches (plastic.config checks them)
    iv.validate(None, None)
    return iv


_NETS = {}


def mlp_net(hidden=(8, 8), out=2, tx=None, **kw):
    """A critic MLP; with optax's Adam the same object per architecture, so tests share compilations."""
    if tx is not None:
        return Net.of("critic", MLP(hidden, out, **kw), tx, 1e-2)
    key = (hidden, out, tuple(sorted(kw.items())))
    if key not in _NETS:
        _NETS[key] = Net.of("critic", MLP(hidden, out, **kw), optax.adam(1e-2), 1e-2)
    return _NETS[key]


def agent_of(net):
    return SimpleNamespace(nets={net.name: net}, role=lambda n: "critic")


_JIT = {}   # (what, objects...) -> jitted function, so that a test reuses its compilations


def jitted(what, *objs):
    key = (what, *map(id, objs))
    if key not in _JIT:
        _JIT[key] = (objs, _BUILD[what](*objs))   # keep the objects alive: their ids stay unique
    return _JIT[key][1]


def _runner(iv, net):
    """`n` consecutive post_update calls on the batch `x` (n traced: one compilation for any n)."""
    def run(ns, st, pb, x, key, n):
        def body(i, carry):
            ns, st, pb = carry
            ctx = UpdateContext(count=i + 1, grads=None, probe_grads=None, scores={}, loss=None, inputs=x,
                                params_before=pb)
            new, st = iv.post_update(net, ns, ctx, st, jax.random.fold_in(key, i))
            return new, st, new.params
        ns, st, _ = jax.lax.fori_loop(0, n, body, (ns, st, pb))
        return ns, st
    return jax.jit(run)


_BUILD = {"calls": _runner, "init": lambda net: jax.jit(net.init),
          "apply": lambda net: jax.jit(net.apply)}


def setup(iv, net, x, key=KEY):
    ns = jitted("init", net)(key, x)
    return ns, iv.init(key, agent_of(net), SimpleNamespace(nets={net.name: ns}))


def apply(net, params, x):
    return jitted("apply", net)(params, x)


def set_layer(st, net_name, layer, **fields):
    s = st[net_name]
    lay = {**s["layers"][layer], **{k: jnp.asarray(v, s["layers"][layer][k].dtype) for k, v in fields.items()}}
    return {**st, net_name: {**s, "layers": {**s["layers"], layer: lay}}}


def calls(iv, net, ns, st, x, n=1, key=KEY, params_before=None):
    """`n` consecutive post_update calls on the same batch; `params_before` (first call only) defaults to
    the current parameters, later calls start from the previous call's result."""
    pb = ns.params if params_before is None else params_before
    return jitted("calls", iv, net)(ns, st, pb, x, key, n)


def stats_and_masks(iv, net, params, x, st, key=KEY):
    """The statistics and the selection the hook computes on `x` (weights and activations from `params`)."""
    layers, uhat = iv.statistics(net, params, apply(net, params, x)[1], st[net.name]["layers"], key)
    masks, _ = iv.select(net, layers, uhat, key)
    return layers, uhat, masks


def assert_untouched_identical(net, before, after, masks):
    touched = touched_entries(net, before, masks)
    for a, b, t in zip(*(jax.tree.leaves(z) for z in (before, after, touched))):
        t = np.asarray(t)
        np.testing.assert_array_equal(np.asarray(a)[~t], np.asarray(b)[~t])


# ---- invariant (1): utility arithmetic -----------------------------------------------------------
W0 = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]], np.float32)
B0 = np.array([0.0, 0.1, -0.2], np.float32)
W1 = np.array([[1.0, -2.0], [0.5, 0.5], [-3.0, 1.0]], np.float32)
X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]], np.float32)


def hand_net():
    net = mlp_net((3,), 2)
    params = {"hidden_0": {"kernel": jnp.asarray(W0), "bias": jnp.asarray(B0)},
              "output": {"kernel": jnp.asarray(W1), "bias": jnp.zeros(2)}}
    return net, NetState(params, net.tx.init(params))


def test_utility_arithmetic_at_age_one():
    net, ns = hand_net()
    h = np.maximum(X @ W0 + B0, 0.0)
    y = {"contribution": np.abs(W1).mean(1) * np.abs(h).mean(0),
         "weight": np.abs(W1).mean(1),
         "adaptation": 1.0 / np.abs(W0).mean(0)}
    y["instantaneous_contribution"] = y["contribution"]
    for utility, want in y.items():
        iv = cbp(utility=utility, maturity=100)      # nothing is eligible: statistics only
        eta_u = 0.0 if utility == "instantaneous_contribution" else ETA
        layers, uhat, _ = stats_and_masks(iv, net, ns.params, jnp.asarray(X), iv.init(KEY, agent_of(net)))
        # age 1: the bias correction 1 - eta exactly undoes the (1 - eta) weight of the first sample
        np.testing.assert_allclose(uhat["hidden_0"], want, rtol=1e-6)
        np.testing.assert_allclose(layers["hidden_0"]["u"], (1 - eta_u) * want, rtol=1e-6)
        np.testing.assert_allclose(layers["hidden_0"]["m"], (1 - ETA) * h.mean(0), rtol=1e-6)
        assert layers["hidden_0"]["age"].tolist() == [1, 1, 1]
    # through the hook, twice on the same batch; the first update started from other parameters (`before`):
    # h comes from the parameters the update started from (the loss's forward pass), |W_out| from after it
    before = {**ns.params, "hidden_0": {"kernel": jnp.asarray(W0), "bias": jnp.asarray(B0 + 1.0)}}
    h_before = np.maximum(X @ W0 + B0 + 1.0, 0.0)
    c_before = np.abs(W1).mean(1) * np.abs(h_before).mean(0)
    iv = cbp(maturity=100)
    new, st2 = calls(iv, net, ns, iv.init(KEY, agent_of(net)), jnp.asarray(X), n=2, params_before=before)
    s = st2["critic"]["layers"]["hidden_0"]
    np.testing.assert_allclose(s["u"], ETA * (1 - ETA) * c_before + (1 - ETA) * y["contribution"], rtol=1e-6)
    np.testing.assert_allclose(s["m"], ETA * (1 - ETA) * h_before.mean(0) + (1 - ETA) * h.mean(0), rtol=1e-6)
    assert s["age"].tolist() == [2, 2, 2]
    jax.tree.map(np.testing.assert_array_equal, new, ns)


def test_activations_after_step():
    net, ns = hand_net()
    before = {**ns.params, "hidden_0": {"kernel": jnp.asarray(W0), "bias": jnp.asarray(B0 + 1.0)}}
    h = np.maximum(X @ W0 + B0, 0.0)
    iv = cbp(maturity=100, activations="after_step")
    _, st = calls(iv, net, ns, iv.init(KEY, agent_of(net)), jnp.asarray(X), params_before=before)
    s = st["critic"]["layers"]["hidden_0"]
    np.testing.assert_allclose(s["m"], (1 - ETA) * h.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s["u"], (1 - ETA) * np.abs(W1).mean(1) * np.abs(h).mean(0), rtol=1e-6)


def test_outgoing_magnitude_conv_flatten_and_ensemble():
    rng = np.random.default_rng(1)
    # a 4-channel conv on 5x5 inputs (3x3 kernel: 3x3 positions) flattened into an 8-unit Dense
    conv = ConvNet((5, 5, 2), ((4, 3, 1),), (8,), 2).layer_map()[0]
    k = rng.normal(size=(9 * 4, 8)).astype(np.float32)           # row s * 4 + c reads channel c
    got = jax.jit(outgoing_magnitude, static_argnums=0)(conv, {"hidden_0": {"kernel": jnp.asarray(k)}})
    np.testing.assert_allclose(got, [np.abs(k[c::4]).mean() for c in range(4)], rtol=1e-6)
    # twin critics: one value per member and unit
    layer = MLP((6,), 1, ensemble=2).layer_map()[0]
    k = rng.normal(size=(2, 6, 3)).astype(np.float32)
    got = jax.jit(outgoing_magnitude, static_argnums=0)(layer, {"output": {"kernel": jnp.asarray(k)}})
    np.testing.assert_allclose(got, np.abs(k).mean(-1), rtol=1e-6)


# ---- invariant (2), (3): eligibility and replacement effects --------------------------------------
def test_units_at_or_below_maturity_are_never_replaced():
    net, x = mlp_net((8, 8)), X16
    iv = cbp(replacement_rate=1.0, maturity=5)       # n = #eligible: every eligible unit goes
    ns, st = setup(iv, net, x)
    ages = np.array([4, 5, 5, 4, 10, 0, 5, 6])       # +1 this call -> eligible: 1, 2, 4, 6, 7
    st = set_layer(st, "critic", "hidden_0", age=ages)
    new, st2 = calls(iv, net, ns, st, x)
    age = np.asarray(st2["critic"]["layers"]["hidden_0"]["age"])
    replaced = np.array([0, 1, 1, 0, 1, 0, 1, 1], bool)
    np.testing.assert_array_equal(age, np.where(replaced, 0, ages + 1))
    k_old, k_new = np.asarray(ns.params["hidden_0"]["kernel"]), np.asarray(new.params["hidden_0"]["kernel"])
    np.testing.assert_array_equal(k_old[:, ~replaced], k_new[:, ~replaced])
    assert np.all(k_old[:, replaced] != k_new[:, replaced])
    assert int(st2["critic"]["replaced_layer"]["hidden_0"]) == 5
    assert int(st2["critic"]["replaced_layer"]["hidden_1"]) == 0   # ages 0 -> 1, maturity 5
    # a fresh network: nothing replaced during the first `maturity` calls, everything on the next
    ns, st = setup(iv, net, x)
    _, st5 = calls(iv, net, ns, st, x, n=5)
    assert int(st5["critic"]["replaced"]) == 0
    _, st6 = calls(iv, net, ns, st, x, n=6)
    assert int(st6["critic"]["replaced"]) == 16


@pytest.mark.parametrize("init_bound, activation, gain, correction", [
    ("lecun_uniform", "relu", 1.0, "off"), ("kaiming_uniform", "relu", math.sqrt(2.0), "on"),
    ("kaiming_uniform", "tanh", 5.0 / 3.0, "off")])
def test_replacement_effects(init_bound, activation, gain, correction):
    net, x = mlp_net(activation=activation), X16
    iv = cbp(replacement_rate=0.5, init_bound=init_bound, next_bias_correction=correction)
    ns, st = setup(iv, net, x)
    ns1, st = calls(iv, net, ns, st, x, n=3)      # non-zero u, m
    # replace the 4 lowest-uhat units of each layer: compute the masks the hook will use
    _, _, masks = stats_and_masks(iv, net, ns1.params, x, st)
    new, st2 = calls(iv, net, ns1, st, x, key=jax.random.fold_in(KEY, 99))
    s2 = st2["critic"]["layers"]
    for l, fan_in in zip(net.layers, (3, 8)):
        m = np.asarray(masks[l.name])
        assert m.sum() == 4
        b = gain * math.sqrt(3.0 / fan_in)
        k_new = np.asarray(new.params[l.name]["kernel"])
        assert np.all(np.abs(k_new[:, m]) <= b) and np.abs(k_new[:, m]).max() > 0.5 * b
        assert np.all(np.any(k_new[:, m] != np.asarray(ns1.params[l.name]["kernel"])[:, m], axis=0))
        assert np.all(np.asarray(new.params[l.name]["bias"])[m] == 0)
        consumer = l.consumers[0][0]
        assert np.all(np.asarray(new.params[consumer]["kernel"])[m, :] == 0)
        for f in ("age", "u", "m"):
            assert np.all(np.asarray(s2[l.name][f])[m] == 0)
        assert np.all(np.asarray(s2[l.name]["age"])[~m] > 0)
    assert int(st2["critic"]["replaced"]) - int(st["critic"]["replaced"]) == 8
    before = ns1.params
    if correction == "on":  # the consumer biases are the only other change
        before = {**before, **{c: {**before[c], "bias": new.params[c]["bias"]} for c in ("hidden_1", "output")}}
    assert_untouched_identical(net, before, new.params, masks)


def test_layernorm_affine_reset_or_kept():
    net, x = mlp_net((8,), 2, layer_norm=True), X16
    for mode in ("reset_unit_affine", "keep"):
        iv = cbp(replacement_rate=0.5, layernorm=mode)
        ns, st = setup(iv, net, x)
        ln = {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1.0, 1.0, 8)}
        ns = ns.replace(params={**ns.params, "ln_0": ln})
        new, st2 = calls(iv, net, ns, st, x)
        m = np.asarray(st2["critic"]["layers"]["hidden_0"]["age"]) == 0
        assert m.sum() == 4
        scale, offset = np.asarray(new.params["ln_0"]["scale"]), np.asarray(new.params["ln_0"]["bias"])
        if mode == "keep":
            jax.tree.map(np.testing.assert_array_equal, new.params["ln_0"], ln)
        else:
            assert np.all(scale[m] == 1) and np.all(offset[m] == 0)
            np.testing.assert_array_equal(scale[~m], np.asarray(ln["scale"])[~m])


def test_layer_init_uses_the_layers_own_initializer():
    net, x = mlp_net(), X16
    iv = cbp(replacement_rate=1.0, init_bound="layer_init")
    ns, st = setup(iv, net, x)
    new, _ = calls(iv, net, ns, st, x, key=jax.random.PRNGKey(4))
    # the hook's reset key for this call, then the layer's own lecun_normal draw (reset_units' convention)
    k_reset = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(4), 0), 2)
    fresh = net.layers[0].init(jax.random.fold_in(k_reset, 0), (3, 8), jnp.float32)
    np.testing.assert_array_equal(new.params["hidden_0"]["kernel"], fresh)


# ---- invariant (4), (5): no-op and ranking ----------------------------------------------------------
def test_rate_zero_is_a_bit_identical_noop():
    net, x = mlp_net(), X16
    iv = cbp(replacement_rate=0.0)
    ns, st = setup(iv, net, x)
    new, st2 = calls(iv, net, ns, st, x, n=3)
    jax.tree.map(np.testing.assert_array_equal, (new, st2), (ns, st))
    # rho > 0 with nothing eligible: parameters and optimizer state bit-identical too
    new, st2 = calls(cbp(replacement_rate=1.0, maturity=10), net, ns, st, x, n=3)
    jax.tree.map(np.testing.assert_array_equal, new, ns)
    assert int(st2["critic"]["replaced"]) == 0


def test_ranking_follows_uhat_not_u():
    net = mlp_net((4,), 2)
    x = jnp.zeros((16, 3))
    iv = cbp(replacement_rate=0.25)                  # 4 eligible -> exactly one replacement
    ns, st = setup(iv, net, x)
    ns = ns.replace(params={**ns.params, "hidden_0": {**ns.params["hidden_0"], "bias": jnp.zeros(4)}})
    # h = 0 on this batch, so y = 0 and uhat_i = eta u_i / (1 - eta^(age_i + 1))
    u, age = np.array([0.5, 0.3, 0.6, 0.7]), np.array([1000, 5, 1000, 1000])
    st = set_layer(st, "critic", "hidden_0", u=u, age=age)
    uhat = ETA * u / (1 - ETA ** (age + 1))
    assert np.argmin(u) == 1 and np.argmin(uhat) == 0
    _, st2 = calls(iv, net, ns, st, x)
    assert np.asarray(st2["critic"]["layers"]["hidden_0"]["age"]).tolist() == [0, 6, 1001, 1001]


def test_fractional_replacement_bernoulli_and_accumulate():
    net, x = mlp_net(), X16
    # every unit eligible (age 1 > maturity 0), so n = rho * 8 on every call

    def picked(iv, st, calls_=1):
        layers, uhat, _ = stats_and_masks(iv, net, setup(iv, net, x)[0].params, x, st)
        total = 0
        for i in range(calls_):
            masks, layers = iv.select(net, layers, uhat, jax.random.fold_in(KEY, i))
            total += int(masks["hidden_0"].sum())
        return total
    iv = cbp(replacement_rate=1 / 32, fractional="accumulate")
    st = setup(iv, net, x)[1]
    assert [picked(iv, st, n) for n in (3, 4, 8)] == [0, 1, 2]   # n = 0.25: one unit every fourth call
    iv = cbp(replacement_rate=0.3125)
    assert picked(iv, setup(iv, net, x)[1]) == 2                  # n = 2.5 >= 1: floor(n)
    iv = cbp(replacement_rate=1 / 32)                             # n = 0.25 < 1: Bernoulli(0.25)
    _, st = calls(iv, net, *setup(iv, net, x), x, n=400)
    assert 60 <= int(st["critic"]["replaced_layer"]["hidden_0"]) <= 140   # 100 +- 8.7


def test_random_utility_redraws_and_still_respects_eligibility():
    net, x = mlp_net(), X16
    iv = cbp(replacement_rate=0.25, utility="random", maturity=3)
    ns, st = setup(iv, net, x)
    _, st2 = calls(iv, net, ns, st, x, n=3)
    assert int(st2["critic"]["replaced"]) == 0
    _, st2 = calls(iv, net, ns, st, x, n=40)
    ages = np.asarray(st2["critic"]["layers"]["hidden_0"]["age"])
    assert int(st2["critic"]["replaced"]) > 10 and len(set(ages.tolist())) > 2


# ---- invariant (6), (7): next-layer bias correction -----------------------------------------------
@pytest.mark.parametrize("correction", ["on", "off"])
def test_next_bias_correction(correction):
    net = mlp_net()
    x = jnp.tile(X16[:1], (16, 1))                  # constant batch: constant activations
    # hidden_1 stays young (not eligible): the layer after hidden_0 is only changed by the correction
    iv = cbp(replacement_rate=0.5, maturity=10, next_bias_correction=correction)
    ns, st = setup(iv, net, x)
    h0 = np.asarray(apply(net, ns.params, x)[1]["hidden_0"][0])
    assert np.count_nonzero(h0) >= 2
    age = 50  # the running mean of a constant: after this call m / (1 - eta^51) == h0
    st = set_layer(st, "critic", "hidden_0", age=np.full(8, age), m=h0 * (1 - ETA ** age), u=np.arange(8.0))
    new, st2 = calls(iv, net, ns, st, x)
    m = np.asarray(st2["critic"]["layers"]["hidden_0"]["age"]) == 0
    assert m.sum() == 4 and np.any(h0[m] != 0)
    assert int(st2["critic"]["replaced_layer"]["hidden_1"]) == 0

    def next_pre_activation(params):
        h = apply(net, params, x)[1]["hidden_0"]
        return np.asarray(h @ params["hidden_1"]["kernel"] + params["hidden_1"]["bias"])
    z_old, z_new = next_pre_activation(ns.params), next_pre_activation(new.params)
    if correction == "on":
        np.testing.assert_allclose(z_new, z_old, rtol=1e-5, atol=1e-5)
        expected = ns.params["hidden_1"]["bias"] + h0[m] @ np.asarray(ns.params["hidden_1"]["kernel"])[m]
        np.testing.assert_allclose(new.params["hidden_1"]["bias"], expected, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(new.params["hidden_1"]["bias"], ns.params["hidden_1"]["bias"])
        assert not np.allclose(z_new, z_old, atol=1e-4)
    np.testing.assert_array_equal(new.params["output"]["bias"], ns.params["output"]["bias"])


def test_gaussian_policy_head_paths():
    """PPO's continuous policy nests its MLP under `mlp` (and has a free log-std): same rules through it."""
    net = Net.of("actor", GaussianHead(MLP((8, 8), 2)), optax.adam(1e-2), 1e-2)
    iv = cbp(replacement_rate=0.5, next_bias_correction="on", init_bound="kaiming_uniform")
    ns, st = setup(iv, net, X16)
    layers, _, masks = stats_and_masks(iv, net, ns.params, X16, st)
    new, _ = calls(iv, net, ns, st, X16)
    p0, p1 = ns.params["mlp"], new.params["mlp"]
    for l, nxt, fan_in in (("hidden_0", "hidden_1", 3), ("hidden_1", "output", 8)):
        m, s = np.asarray(masks[l]), layers[l]
        assert m.sum() == 4 and np.all(np.asarray(p1[nxt]["kernel"])[m] == 0)
        assert np.all(np.abs(np.asarray(p1[l]["kernel"])[:, m]) <= math.sqrt(6 / fan_in))
        mhat = np.where(m, np.asarray(s["m"]) / (1 - ETA ** np.asarray(s["age"], np.float64)), 0.0)
        bias = np.asarray(p0[nxt]["bias"]) + mhat @ np.asarray(p0[nxt]["kernel"])
        if nxt == "hidden_1":   # replaced units of hidden_1 end with a zero bias
            bias = np.where(np.asarray(masks["hidden_1"]), 0.0, bias)
        np.testing.assert_allclose(p1[nxt]["bias"], bias, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(new.params["log_std"], ns.params["log_std"])


# ---- twin critics (ensemble axis) ------------------------------------------------------------------
def test_twin_critic_members_are_scored_and_replaced_separately():
    net, x = mlp_net((8,), 1, ensemble=2), X16
    iv = cbp(replacement_rate=0.25, maturity=5)
    ns, st = setup(iv, net, x)
    acts = apply(net, ns.params, x)[1]["hidden_0"]                        # [2, 16, 8]
    _, uhat, _ = stats_and_masks(iv, net, ns.params, x, st)
    w_out = np.abs(np.asarray(ns.params["output"]["kernel"])).mean(-1)    # [2, 8]
    np.testing.assert_allclose(uhat["hidden_0"], w_out * np.abs(np.asarray(acts)).mean(1), rtol=1e-6)
    # member 0 mature, member 1 young: only member 0 loses units, its two lowest-uhat ones
    st = set_layer(st, "critic", "hidden_0", age=np.array([[10] * 8, [0] * 8]))
    _, uhat, _ = stats_and_masks(iv, net, ns.params, x, st)
    new, st2 = calls(iv, net, ns, st, x)
    m = np.asarray(st2["critic"]["layers"]["hidden_0"]["age"]) == 0
    assert m[1].sum() == 0 and m[0].sum() == 2
    assert set(np.flatnonzero(m[0])) == set(np.argsort(np.asarray(uhat["hidden_0"][0]))[:2])
    for leaf_old, leaf_new in zip(jax.tree.leaves(ns.params), jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(leaf_old[1], leaf_new[1])
    k = np.asarray(new.params["hidden_0"]["kernel"][0])
    assert np.all(np.abs(k[:, m[0]]) <= math.sqrt(3 / 3))
    assert np.all(np.asarray(new.params["output"]["kernel"][0])[m[0]] == 0)


# ---- invariant (8): optimizer -----------------------------------------------------------------------
@pytest.mark.parametrize("mode, count", [("zero_moments_keep_count", "global"),
                                         ("zero_moments_per_element_count", "per_element"),
                                         ("adamgnt_released", "adamgnt_released")])
def test_optimizer_state_zeroed_at_touched_entries(mode, count):
    tx = optim.adam(1e-2, b1=0.99, b2=0.99, count=count)
    net, x = mlp_net((8, 8), tx=tx), X16
    iv = cbp(replacement_rate=0.5, optimizer=mode)
    assert iv.agent_options() == ({} if count == "global" else {"adam_count": count})
    # the optimizer state after 4 steps: random moments, count 4 (scalar, or per element)
    params = jitted("init", mlp_net())(KEY, x).params
    rng = np.random.default_rng(2)
    leaves, tdef = jax.tree.flatten(params)
    rand = lambda: jax.tree.unflatten(tdef, [jnp.asarray(rng.uniform(0.1, 1.0, p.shape), jnp.float32)  # noqa: E731
                                             for p in leaves])
    adam, *rest = tx.init(params)
    counts = (jnp.asarray(4, jnp.int32) if count == "global"
              else jax.tree.map(lambda p: jnp.full(p.shape, 4, jnp.int32), params))
    ns = NetState(params, (adam._replace(count=counts, mu=rand(), nu=rand()), *rest))
    st = iv.init(KEY, agent_of(net), SimpleNamespace(nets={"critic": ns}))   # accepts the optimizer it needs
    _, _, masks = stats_and_masks(iv, net, ns.params, x, st)
    new, _ = calls(iv, net, ns, st, x, key=jax.random.fold_in(KEY, 7))
    touched = touched_entries(net, ns.params, masks)
    # hidden_1's kernel: the outgoing rows of hidden_0's and the incoming columns of its own 4 units overlap
    assert sum(int(np.sum(t)) for t in jax.tree.leaves(touched)) == 12 + 4 + (32 + 32 - 16) + 4 + 8
    adam_old, adam_new = ns.opt_state[0], new.opt_state[0]
    fields = ("mu", "nu") if count == "global" else ("mu", "nu", "count")
    for f in fields:
        for a, b, t in zip(*(jax.tree.leaves(z) for z in (getattr(adam_old, f), getattr(adam_new, f), touched))):
            t = np.asarray(t)
            assert np.all(np.asarray(b)[t] == 0)
            np.testing.assert_array_equal(np.asarray(a)[~t], np.asarray(b)[~t])
    if count == "global":
        assert int(adam_new.count) == int(adam_old.count) == 4
    else:
        assert all(np.all(np.asarray(c) == 4) for c in jax.tree.leaves(adam_old.count))
        # the next step: touched entries are at their own t = 1, the others at t = 5
        upd, after = jax.jit(net.tx.update)(rand(), new.opt_state, new.params)
        for u, c, m, v, t in zip(*(jax.tree.leaves(z) for z in (upd, after[0].count, after[0].mu, after[0].nu,
                                                                 touched))):
            c, t = np.asarray(c), np.asarray(t)
            np.testing.assert_array_equal(c, np.where(t, 1, 5))
            m, v, tt = np.asarray(m, np.float64), np.asarray(v, np.float64), c.astype(np.float64)
            if count == "adamgnt_released":
                want = -1e-2 * (1 - 0.99 ** tt) * m / (np.sqrt(v) + 1e-8)
            else:
                want = -1e-2 * (m / (1 - 0.99 ** tt)) / (np.sqrt(v / (1 - 0.99 ** tt)) + 1e-8)
            np.testing.assert_allclose(np.asarray(u), want, rtol=2e-5, atol=1e-12)


def test_adamgnt_released_hand_computed_updates():
    """Constant gradient g, betas (0.99, 0.99): update_t = lr (1 - b2^t) m_t / (sqrt(v_t) + eps) with
    m_t = (1 - b1^t) g, v_t = (1 - b2^t) g^2: about 0.001 lr at t = 1 and 0.5 lr at t = 100
    (docs/interventions.md, Continual Backprop)."""
    lr, b1, b2, eps = 1e-4, 0.99, 0.99, 1e-8
    g = jnp.array([0.5, -2.0, 3e-3])
    p = {"w": jnp.zeros(3)}

    def hand(t):
        m, v = (1 - b1 ** t) * np.asarray(g, np.float64), (1 - b2 ** t) * np.asarray(g, np.float64) ** 2
        return -lr * (1 - b2 ** t) * m / (np.sqrt(v) + eps)

    tx = optim.adam(lr, b1=b1, b2=b2, eps=eps, count="adamgnt_released")

    @jax.jit
    def run(state):
        def body(s, _):
            u, s = tx.update({"w": g}, s, p)
            return s, u["w"]
        return jax.lax.scan(body, state, None, length=100)[1]
    ups = np.asarray(run(tx.init(p)))
    np.testing.assert_allclose(ups[0], hand(1), rtol=1e-5)
    np.testing.assert_allclose(ups[99], hand(100), rtol=1e-5)
    np.testing.assert_allclose(np.abs(ups[0][:2]) / lr, 0.001, rtol=1e-3)
    np.testing.assert_allclose(np.abs(ups[99][:2]) / lr, 0.5050, atol=1e-3)
    # standard per-element Adam takes ~lr steps from its first one
    tx = optim.adam(lr, b1=b1, b2=b2, eps=eps, count="per_element")
    u, _ = tx.update({"w": g}, tx.init(p), p)
    np.testing.assert_allclose(np.abs(u["w"][:2]), lr, rtol=1e-6)


def test_per_element_modes_refuse_an_agent_optimizer_without_per_element_counts():
    net, x = mlp_net(), X16
    with pytest.raises(ValueError, match=r"cbp.optimizer=adamgnt_released needs .*count='adamgnt_released'"):
        setup(cbp(optimizer="adamgnt_released"), net, x)
    net = mlp_net(tx=optim.adam(1e-3, count="per_element"))
    with pytest.raises(ValueError, match="ElementwiseAdamState"):
        setup(cbp(optimizer="adamgnt_released"), net, x)
    setup(cbp(optimizer="zero_moments_per_element_count"), net, x)


# ---- trainer-level: every agent jitted on 2 vmapped seeds, resume, CLI -----------------------------
EXTRA = {"cbp.replacement_rate": 0.05, "cbp.maturity": 20}


# All four agents with the default optimizer: `python -m pytest -m slow tests/test_cbp.py`. The default
# selection runs dqn (jitted driver, 2 vmapped seeds) in the resume test below, with the AdamGnT optimizer;
# the other agents repeat the same path (the post_update hook after every update of each covered network).
@pytest.mark.slow
@pytest.mark.parametrize("agent", ["td3", "sac", "dqn", "ppo"])
def test_runs_under_the_jitted_driver(tmp_path, agent):
    t = tiny_trainer(agent, "cbp", 200, EXTRA)
    t.run(tmp_path / "r")
    ist = t.final_state[0].interventions["cbp"]
    assert set(ist) == set(NETS[agent])
    for net in NETS[agent]:
        assert np.all(np.asarray(ist[net]["replaced"]) > 0), (net, ist[net]["replaced"])
        assert np.asarray(ist[net]["layers"]["hidden_0"]["age"]).shape[0] == 2   # per-seed unit state
    for leaf in jax.tree.leaves(t.final_state[0].agent.nets):
        assert np.all(np.isfinite(np.asarray(leaf)))


def test_resume_is_bit_identical_with_the_released_adamgnt_optimizer(tmp_path):
    """Also the agent wiring: `agent_options` makes the agent build its Adam with per-element counts."""
    extra = {**EXTRA, "cbp.optimizer": "adamgnt_released"}
    full = assert_resume_identical(lambda n: tiny_trainer("dqn", "cbp", n, extra), tmp_path, 200, 100)
    assert np.all(np.asarray(full.final_state[0].interventions["cbp"]["q"]["replaced"]) > 0)
    opt = full.final_state[0].agent.nets["q"].opt_state
    assert isinstance(opt[0], optim.AdamGnTState)
    counts = np.concatenate([np.asarray(c).ravel() for c in jax.tree.leaves(opt[0].count)])
    assert counts.min() < counts.max()   # the entries of replaced units restarted their own count


@pytest.mark.parametrize("argv, needle", [
    (["--cbp.utility", "zero_contribution"],
     "cbp.utility='zero_contribution' is not valid; choose one of: contribution, instantaneous_contribution"),
    (["--cbp.replacement_rate", "2"], "cbp.replacement_rate must be in [0, 1]"),
    (["--cbp.decay", "1"], "cbp.decay must be in [0, 1)"),
    (["--cbp.init_bound", "xavier"], "cbp.init_bound='xavier' is not valid; choose one of: lecun_uniform"),
    (["--cbp.optimizer", "adamw"], "cbp.optimizer='adamw' is not valid"),
    (["--cbp.fractional", "floor"], "cbp.fractional='floor' is not valid; choose one of: bernoulli, accumulate"),
    (["--cbp.next_bias_correction", "yes"], "cbp.next_bias_correction='yes' is not valid; choose one of: off, on"),
    (["--cbp.networks", "temperature"], "cbp.networks=temperature is not valid; choose among: actor, critic"),
    *[(["--agent", "td3", "--td3.activation", act, "--cbp.init_bound", "kaiming_uniform"],
       f"cbp.init_bound=kaiming_uniform needs a Kaiming gain for td3.activation={act}, which has none; use "
       f"td3.activation among: relu, swish, tanh, sigmoid") for act in ("crelu", "dff")],
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(["--intervention", "cbp", *argv], needle, tmp_path, capsys)


@pytest.mark.parametrize("agent", ["td3", "sac", "dqn", "ppo"])
def test_adam_betas_are_agent_settings(agent):
    """`--AGENT.b1` / `--AGENT.b2` reach every network's Adam (CBP's LOP setting uses 0.99, 0.99): after one
    update with gradient g, mu = (1 - b1) g and nu = (1 - b2) g²."""
    import agents
    from plastic.config import build
    from plastic.setup import build_agent
    from plastic.jaxenvs import make_jax_env
    clip = {"ppo.max_grad_norm": 0} if agent == "ppo" else {}  # no global-norm clipping before Adam
    cfg = build(agent, "none", overrides={f"{agent}.b1": 0.5, f"{agent}.b2": 0.75, f"{agent}.hidden": "4", **clip},
                env="probe:d_obs" if agent == "dqn" else "probe:obs")
    ag = build_agent(cfg, make_jax_env(cfg.run.env))
    state = ag.init(jax.random.PRNGKey(0))
    assert set(agents.get(agent).Config.__dataclass_fields__) >= {"b1", "b2"}
    for name, net in ag.nets.items():
        params = state.nets[name].params
        grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
        _, opt = net.tx.update(grads, state.nets[name].opt_state, params)
        adam = [s for s in jax.tree.leaves(opt, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                if isinstance(s, optax.ScaleByAdamState)]
        assert adam, name
        for mu, nu in zip(jax.tree.leaves(adam[0].mu), jax.tree.leaves(adam[0].nu)):
            np.testing.assert_allclose(mu, 1.0)      # (1 - 0.5) * 2
            np.testing.assert_allclose(nu, 1.0)      # (1 - 0.75) * 4
