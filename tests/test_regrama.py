"""ReGraMa (docs/interventions.md, ReGraMa; docs/mechanics.md §3-4).

The section comments number the method's test invariants (items 2 to 11)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import assert_cli_error
from metrics.units import grama_scores
from plastic import fields
from plastic.core import Hooks, Net, NetState, UpdateContext, gradient_step
from plastic.interventions.regrama import ReGraMa, ReGraMaConfig
from plastic.networks import MLP
from plastic.surgery import cap_mask

X_A = jnp.array([[1.0], [2.0]])
T_A = jnp.zeros((2, 1))
KEY = jax.random.PRNGKey(42)


class StubAgent:
    """Just what ReGraMa.init needs: `.nets` (name -> Net) and `.role(name)`."""

    def __init__(self, *nets, roles=None):
        self.nets = {n.name: n for n in nets}
        self._roles = roles or {}

    def role(self, name):
        return self._roles.get(name, name)


def regrama(**kw):
    cfg = ReGraMaConfig(**{"tau": 0.0, "period": 1, **kw})
    fields.check(cfg, "grama")   # the declared ranges and switches (plastic.config checks them for a run)
    iv = ReGraMa(cfg, "sac")
    iv.validate(None, None)
    return iv


def net_a(kernel=((1.0, -1.0, 2.0),), bias=(0.0, 0.0, 0.0), out=((1.0,), (1.0,), (0.5,))):
    """Network A of docs/metrics.md §10.1 (optionally with modified parameters), Adam(1e-2)."""
    params = {"hidden_0": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)},
              "output": {"kernel": jnp.asarray(out, jnp.float32), "bias": jnp.zeros(1)}}
    return NET_A, NetState(params, NET_A.tx.init(params))


def mse_loss(net, x, t, scale=1.0):
    def loss_fn(params, probes):
        y, acts = net.apply(params, x, probes)
        return scale * jnp.mean(0.5 * jnp.square(y - t)), acts
    return loss_fn


@partial(jax.jit, static_argnums=(0,))
def _score(net, params, x, t, scale):
    probes = net.zero_probes(x.shape[0])
    (loss, _), (gp, gpr) = jax.value_and_grad(mse_loss(net, x, t, scale), argnums=(0, 1), has_aux=True)(params, probes)
    return gp, gpr, grama_scores(net.layers, gpr, gp, net.probe_point), loss


def score_ctx(net, params, x, t, count=1, scale=1.0):
    """The UpdateContext gradient_step builds for an update on (x, t) at `params` (one compile per net)."""
    gp, gpr, scores, loss = _score(net, params, x, t, jnp.float32(scale))
    return UpdateContext(count=jnp.asarray(count, jnp.int32), grads=gp, probe_grads=gpr, scores=scores, loss=loss,
                         inputs=x)


@partial(jax.jit, static_argnums=(0, 1))
def _post_update(iv, net, ns, ctx, state, key):
    return iv.post_update(net, ns, ctx, state, key)


def run_post_update(iv, net, ns, ctx, key=KEY, agent=None):
    """The hook under jit (compiled once per (intervention, net) pair)."""
    return _post_update(iv, net, ns, ctx, iv.init(KEY, agent or StubAgent(net)), key)


@partial(jax.jit, static_argnums=(0,))
def apply(net, params, x):
    return net.apply(params, x)


def forward(net, params, x):
    return apply(net, params, x)[0]


@partial(jax.jit, static_argnums=(0,))
def _train_step(net, ns, count, x, t):
    ns, _, count, _, _ = gradient_step(net, ns, mse_loss(net, x, t), batch_size=x.shape[0], count=count, key=KEY)
    return ns, count


def train_steps(net, ns, x, t, n):
    count = jnp.zeros((), jnp.int32)
    for _ in range(n):
        ns, count = _train_step(net, ns, count, x, t)
    return ns


def adam_state(opt_state) -> optax.ScaleByAdamState:
    s = opt_state[0]
    assert isinstance(s, optax.ScaleByAdamState)
    return s


def assert_tree_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def leaf_mask(params, touched: dict):
    """Boolean tree like params: True at the entries listed in `touched` (path -> numpy bool array)."""
    out = jax.tree.map(lambda p: np.zeros(p.shape, bool), params)
    for (a, b), m in touched.items():
        out[a][b] = np.broadcast_to(m, out[a][b].shape).copy()
    return out


def assert_only_touched_changed(before, after, touched_tree, zero_touched=True):
    """Untouched entries bit-identical; touched entries exactly 0 (for moments) if zero_touched."""
    for pb, pa, t in zip(jax.tree.leaves(before), jax.tree.leaves(after), jax.tree.leaves(touched_tree)):
        pb, pa = np.asarray(pb), np.asarray(pa)
        np.testing.assert_array_equal(pa[~t], pb[~t])
        if zero_touched:
            np.testing.assert_array_equal(pa[t], 0.0)


def random_params(net, in_dim, seed, dead=None):
    """Hand-built random params for `net` (LeCun-scaled normal kernels, zero biases, LN identity); the units
    listed in `dead` (layer -> unit indices, or one list per ensemble member) get bias -100 (dead ReLUs)."""
    rng = np.random.default_rng(seed)
    m = net.module
    lead = (m.ensemble,) if m.ensemble else ()
    params, fan_in = {}, in_dim
    for i, w in enumerate((*m.hidden, m.out)):
        name = f"hidden_{i}" if i < len(m.hidden) else "output"
        params[name] = {"kernel": (rng.normal(size=(*lead, fan_in, w)) / np.sqrt(fan_in)).astype(np.float32),
                        "bias": np.zeros((*lead, w), np.float32)}
        if m.layer_norm and i < len(m.hidden):
            params[f"ln_{i}"] = {"scale": np.ones((*lead, w), np.float32), "bias": np.zeros((*lead, w), np.float32)}
        fan_in = w
    for layer, units in (dead or {}).items():
        if m.ensemble:
            for e, us in enumerate(units):
                params[layer]["bias"][e, us] = -100.0
        else:
            params[layer]["bias"][units] = -100.0
    params = jax.tree.map(jnp.asarray, params)
    expected = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, in_dim)))["params"]
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), expected)
    return params


def make_data(seed, batch, in_dim, out):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(batch, in_dim)), jnp.float32),
            jnp.asarray(rng.normal(size=(batch, out)), jnp.float32))


def setup(net, in_dim, seed, batch, dead=None):
    params = random_params(net, in_dim, seed, dead)
    x, t = make_data(seed + 1000, batch, in_dim, net.module.out)
    return NetState(params, net.tx.init(params)), x, t


# Networks shared by several tests (jitted helpers are compiled once per network object)
NET_A = Net.of("critic", MLP((3,), 1), optax.adam(1e-2))
NET_R = Net.of("critic", MLP((16, 16), 2), optax.adam(1e-3))
NET_E = Net.of("critic", MLP((8,), 1, ensemble=2), optax.adam(1e-3))
NET_LN = Net.of("critic", MLP((8,), 1, layer_norm=True), optax.adam(1e-3))
NET_S = Net.of("critic", MLP((8,), 1), optax.adam(1e-3))
IV = regrama()
IV_CAP = regrama(max_reset_fraction=0.25)


A_TOUCHED = {("hidden_0", "kernel"): np.array([[False, True, False]]),
             ("hidden_0", "bias"): np.array([False, True, False]),
             ("output", "kernel"): np.array([[False], [True], [False]])}
X_WIDE = jnp.array([[1.0], [-1.0], [2.0], [-2.0]])      # every unit of Network A active on some sample
T_WIDE = jnp.array([[1.0], [0.0], [-1.0], [0.5]])


# ---------------------------------------------------------------------------------------------
# Network A (docs/metrics.md §10.1; items 5 and 7)

def test_network_a_reset_at_tau0():
    # bias of the dead unit set to -0.5 (still dead on x = [1, 2]) so that "bias -> 0" is observable
    net, ns = net_a(bias=(0.0, -0.5, 0.0))
    np.testing.assert_allclose(forward(net, ns.params, X_A)[:, 0], [2, 4])
    ctx = score_ctx(net, ns.params, X_A, T_A)
    np.testing.assert_allclose(ctx.scores["hidden_0"][0], [2, 0, 1], rtol=1e-6)
    np.testing.assert_array_equal(IV.masks(net, ctx.scores)["hidden_0"], [False, True, False])
    new, state = run_post_update(IV, net, ns, ctx)
    k0, k1 = np.asarray(ns.params["hidden_0"]["kernel"]), np.asarray(new.params["hidden_0"]["kernel"])
    # unit 1: incoming weight redrawn (differs, non-zero), bias 0, outgoing weight 0
    assert k1[0, 1] != k0[0, 1] and k1[0, 1] != 0.0 and np.isfinite(k1[0, 1])
    assert float(new.params["hidden_0"]["bias"][1]) == 0.0
    assert float(new.params["output"]["kernel"][1, 0]) == 0.0
    # every other entry bit-identical; the output layer's own units (bias) untouched
    assert_only_touched_changed(ns.params, new.params, leaf_mask(ns.params, A_TOUCHED), zero_touched=False)
    np.testing.assert_array_equal(new.params["output"]["bias"], ns.params["output"]["bias"])
    # function preserved on the scoring batch
    np.testing.assert_array_equal(forward(net, new.params, X_A)[:, 0], [2, 4])
    # bookkeeping
    assert int(state["critic"]["events"]) == 1
    np.testing.assert_allclose(state["critic"]["reset_fraction"]["hidden_0"], 1 / 3, rtol=1e-6)
    logs = IV.logs(state)
    assert int(logs["grama/events/critic"]) == 1
    np.testing.assert_allclose(logs["reset_fraction/critic/hidden_0"], 1 / 3, rtol=1e-6)
    # the fresh weight is a deterministic function of the key
    same, _ = run_post_update(IV, net, ns, ctx)
    other, _ = run_post_update(IV, net, ns, ctx, key=jax.random.PRNGKey(7))
    assert float(same.params["hidden_0"]["kernel"][0, 1]) == k1[0, 1]
    assert float(other.params["hidden_0"]["kernel"][0, 1]) != k1[0, 1]


def test_adam_moments_zeroed_at_touched_entries_only():
    net, ns = net_a()
    ns = train_steps(net, ns, X_WIDE, T_WIDE, 3)        # real Adam steps -> non-zero moments everywhere
    before = adam_state(ns.opt_state)
    assert int(before.count) == 3
    ctx = score_ctx(net, ns.params, X_A, T_A, count=4)
    np.testing.assert_array_equal(IV.masks(net, ctx.scores)["hidden_0"], [False, True, False])
    touched = leaf_mask(ns.params, A_TOUCHED)
    for tree in (before.mu, before.nu):                  # precondition: the touched moments are non-zero
        for leaf, t in zip(jax.tree.leaves(tree), jax.tree.leaves(touched)):
            assert np.all(np.asarray(leaf)[t] != 0.0)
    new, _ = run_post_update(IV, net, ns, ctx)
    after = adam_state(new.opt_state)
    assert_only_touched_changed(before.mu, after.mu, touched)
    assert_only_touched_changed(before.nu, after.nu, touched)
    np.testing.assert_array_equal(after.count, before.count)
    assert after.count.dtype == before.count.dtype
    assert_tree_identical(new.opt_state[1:], ns.opt_state[1:])


@pytest.mark.parametrize("outgoing", ["zero", "keep"])
def test_moments_zeroed_only_where_the_reset_wrote(outgoing):
    """Adam moments are zeroed at the entries the reset wrote (docs/mechanics.md §3.1): with `outgoing=keep`
    the consumer rows keep their weights and so their mu / nu; with `zero` both go to 0."""
    net, ns = net_a()
    ns = train_steps(net, ns, X_WIDE, T_WIDE, 3)
    before = adam_state(ns.opt_state)
    ctx = score_ctx(net, ns.params, X_A, T_A, count=4)
    new, _ = run_post_update(regrama(outgoing=outgoing), net, ns, ctx)
    after = adam_state(new.opt_state)
    written = {k: v for k, v in A_TOUCHED.items() if outgoing == "zero" or k[0] != "output"}
    touched = leaf_mask(ns.params, written)
    assert_only_touched_changed(ns.params, new.params, touched, zero_touched=False)
    assert_only_touched_changed(before.mu, after.mu, touched)
    assert_only_touched_changed(before.nu, after.nu, touched)
    row = (np.asarray(after.mu["output"]["kernel"][1]), np.asarray(after.nu["output"]["kernel"][1]))
    assert all(np.all(r == 0) if outgoing == "zero" else np.all(r != 0) for r in row)


# ---------------------------------------------------------------------------------------------
# Scores: scale invariance, permutation, normalisation (items 2, 3)

def test_scores_scale_permutation_normalisation():
    ns, x, t = setup(NET_R, 4, 1, 32)
    p = ns.params
    ctx1 = score_ctx(NET_R, p, x, t)
    ctx7 = score_ctx(NET_R, p, x, t, scale=7.0)
    for layer in ("hidden_0", "hidden_1"):
        G, g = ctx1.scores[layer]
        assert float(jnp.mean(g)) > 0
        np.testing.assert_allclose(jnp.mean(G), 1.0, atol=1e-6)
        np.testing.assert_allclose(ctx7.scores[layer][1], 7 * g, rtol=1e-5)
        np.testing.assert_allclose(ctx7.scores[layer][0], G, rtol=1e-5, atol=1e-7)
    perm = np.random.default_rng(0).permutation(16)
    pp = {"hidden_0": {"kernel": p["hidden_0"]["kernel"][:, perm], "bias": p["hidden_0"]["bias"][perm]},
          "hidden_1": {"kernel": p["hidden_1"]["kernel"][perm, :], "bias": p["hidden_1"]["bias"]},
          "output": p["output"]}
    ctxp = score_ctx(NET_R, pp, x, t)
    np.testing.assert_allclose(ctxp.scores["hidden_0"][0], ctx1.scores["hidden_0"][0][perm], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ctxp.scores["hidden_1"][0], ctx1.scores["hidden_1"][0], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Equivalence and function preservation on a random ReLU MLP (items 4, 5, 7)

def test_random_relu_mlp_dead_units_flagged_and_function_preserved():
    dead = {"hidden_0": [3, 7, 12], "hidden_1": [0, 5, 11]}
    ns, x, t = setup(NET_R, 4, 3, 32, dead)
    y0, acts = apply(NET_R, ns.params, x)
    ctx = score_ctx(NET_R, ns.params, x, t)
    masks = IV.masks(NET_R, ctx.scores)
    for layer, units in dead.items():
        is_dead = np.all(np.asarray(acts[layer]) == 0.0, axis=0)
        assert is_dead[units].all()
        m = np.asarray(masks[layer])
        assert np.all(m[is_dead]), f"{layer}: a unit with zero activation on the batch was not flagged"
        np.testing.assert_array_equal(m, is_dead)        # on this random net, flagged == dead exactly
    new, state = run_post_update(IV, NET_R, ns, ctx)
    y1, _ = apply(NET_R, new.params, x)
    np.testing.assert_allclose(y1, y0, rtol=0, atol=1e-6)
    m0, m1 = np.asarray(masks["hidden_0"]), np.asarray(masks["hidden_1"])
    old, nw = jax.tree.map(np.asarray, ns.params), jax.tree.map(np.asarray, new.params)
    for layer, m in (("hidden_0", m0), ("hidden_1", m1)):
        cols_old, cols_new = old[layer]["kernel"][:, m], nw[layer]["kernel"][:, m]
        assert np.all(np.any(cols_new != cols_old, axis=0)) and np.all(np.any(cols_new != 0, axis=0))
        np.testing.assert_array_equal(nw[layer]["bias"][m], 0.0)
        np.testing.assert_array_equal(nw[layer]["bias"][~m], old[layer]["bias"][~m])
    np.testing.assert_array_equal(nw["hidden_0"]["kernel"][:, ~m0], old["hidden_0"]["kernel"][:, ~m0])
    # outgoing rows are zero, except where a row crosses the redrawn incoming column of a reset unit of the
    # next layer (reset_units processes layers in order; the later incoming redraw wins)
    np.testing.assert_array_equal(nw["output"]["kernel"][m1], 0.0)
    np.testing.assert_array_equal(nw["hidden_1"]["kernel"][np.ix_(m0, ~m1)], 0.0)
    np.testing.assert_array_equal(nw["hidden_1"]["kernel"][np.ix_(~m0, ~m1)],
                                  old["hidden_1"]["kernel"][np.ix_(~m0, ~m1)])
    np.testing.assert_array_equal(nw["output"]["kernel"][~m1], old["output"]["kernel"][~m1])
    np.testing.assert_array_equal(nw["output"]["bias"], old["output"]["bias"])
    np.testing.assert_allclose(state["critic"]["reset_fraction"]["hidden_0"], 3 / 16, rtol=1e-6)
    np.testing.assert_allclose(state["critic"]["reset_fraction"]["hidden_1"], 3 / 16, rtol=1e-6)
    # the logged output jump is the (zero) change of the output on the scoring batch
    assert float(IV.logs(state)["grama/output_jump/critic"]) <= 1e-6


def test_ensemble_masks_are_per_member():
    ns, x, t = setup(NET_E, 3, 5, 16, {"hidden_0": [[2, 4], [4, 6]]})
    s = adam_state(ns.opt_state)                          # non-zero moments so the surgery is visible
    ones = jax.tree.map(jnp.ones_like, s.mu)
    ns = ns.replace(opt_state=(s._replace(mu=ones, nu=ones), *ns.opt_state[1:]))
    y0, _ = apply(NET_E, ns.params, x)
    assert y0.shape == (2, 16, 1)
    ctx = score_ctx(NET_E, ns.params, x, t)
    assert ctx.scores["hidden_0"][0].shape == (2, 8)
    expected = np.zeros((2, 8), bool)
    expected[0, [2, 4]] = expected[1, [4, 6]] = True
    np.testing.assert_array_equal(IV.masks(NET_E, ctx.scores)["hidden_0"], expected)
    new, state = run_post_update(IV, NET_E, ns, ctx)
    k0, k1 = np.asarray(ns.params["hidden_0"]["kernel"]), np.asarray(new.params["hidden_0"]["kernel"])
    assert np.all(k1[0, :, 2] != k0[0, :, 2]) and np.all(k1[1, :, 6] != k0[1, :, 6])
    np.testing.assert_array_equal(k1[1, :, 2], k0[1, :, 2])     # unit 2 reset in member 0 only
    np.testing.assert_array_equal(k1[0, :, 6], k0[0, :, 6])     # unit 6 reset in member 1 only
    assert np.all(k1[0, :, 4] != k1[1, :, 4])                   # each member draws its own weights
    touched = leaf_mask(ns.params, {("hidden_0", "kernel"): expected[:, None, :],
                                    ("hidden_0", "bias"): expected,
                                    ("output", "kernel"): expected[:, :, None]})
    assert_only_touched_changed(ns.params, new.params, touched, zero_touched=False)
    np.testing.assert_array_equal(np.asarray(new.params["hidden_0"]["bias"])[expected], 0.0)
    np.testing.assert_array_equal(np.asarray(new.params["output"]["kernel"])[expected], 0.0)
    a = adam_state(new.opt_state)
    assert_only_touched_changed(ones, a.mu, touched)
    assert_only_touched_changed(ones, a.nu, touched)
    y1, _ = apply(NET_E, new.params, x)
    np.testing.assert_allclose(y1, y0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(state["critic"]["reset_fraction"]["hidden_0"], 4 / 16, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Cap, no-op, guard (items 8, 9, 10)

def test_cap_keeps_lowest_scores():
    G = jnp.array([0.004, 0.5, 0.001, 0.003, 2.0, 0.0, 1.0, 2.492])
    scores = {"hidden_0": (G, G)}
    flagged = np.asarray(regrama(tau=0.01).masks(NET_S, scores)["hidden_0"])
    np.testing.assert_array_equal(np.flatnonzero(flagged), [0, 2, 3, 5])
    capped = np.asarray(regrama(tau=0.01, max_reset_fraction=0.25).masks(NET_S, scores)["hidden_0"])
    np.testing.assert_array_equal(np.flatnonzero(capped), [2, 5])             # floor(0.25 * 8) = 2, lowest G
    capped3 = np.asarray(regrama(tau=0.01, max_reset_fraction=0.4).masks(NET_S, scores)["hidden_0"])
    np.testing.assert_array_equal(np.flatnonzero(capped3), [2, 3, 5])         # floor(3.2) = 3
    none = np.asarray(regrama(tau=0.01, max_reset_fraction=0.1).masks(NET_S, scores)["hidden_0"])
    assert not none.any()                                                     # floor(0.8) = 0
    loose = np.asarray(regrama(tau=0.01, max_reset_fraction=1.0).masks(NET_S, scores)["hidden_0"])
    np.testing.assert_array_equal(loose, flagged)
    # per row with an ensemble axis; ties broken by the lower index
    Ge = jnp.array([[0.0, 0.0, 0.0, 1.0], [1.0, 0.002, 0.001, 0.0]])
    m = np.asarray(cap_mask(Ge <= 0.01, Ge, 2))
    np.testing.assert_array_equal(m, [[True, True, False, False], [False, False, True, True]])


def test_eps_enters_the_score():
    """`grama.eps` is the score's denominator offset, G = g / (mean g + eps): a large eps shrinks every G."""
    g = jnp.array([0.0, 1e-3, 2e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    scores = {"hidden_0": (g / g.mean(), g)}
    np.testing.assert_array_equal(regrama(tau=0.5).masks(NET_S, scores)["hidden_0"], [True] + [False] * 7)
    np.testing.assert_array_equal(regrama(tau=0.5, eps=1.0).masks(NET_S, scores)["hidden_0"], [True] * 8)


def test_cap_on_real_scores():
    ns, x, t = setup(NET_R, 4, 9, 32, {"hidden_0": [0, 1, 3, 5, 6, 9]})
    ctx = score_ctx(NET_R, ns.params, x, t)
    np.testing.assert_array_equal(np.flatnonzero(IV.masks(NET_R, ctx.scores)["hidden_0"]), [0, 1, 3, 5, 6, 9])
    m = IV_CAP.masks(NET_R, ctx.scores)                                       # floor(0.25 * 16) = 4
    np.testing.assert_array_equal(np.flatnonzero(m["hidden_0"]), [0, 1, 3, 5])   # ties (G = 0): lower index
    assert not np.asarray(m["hidden_1"]).any()
    # the event applies exactly the capped mask
    new, state = run_post_update(IV_CAP, NET_R, ns, ctx)
    k0, k1 = np.asarray(ns.params["hidden_0"]["kernel"]), np.asarray(new.params["hidden_0"]["kernel"])
    np.testing.assert_array_equal(np.any(k1 != k0, axis=0), m["hidden_0"])
    np.testing.assert_allclose(state["critic"]["reset_fraction"]["hidden_0"], 0.25)


def test_empty_mask_is_bit_identical_noop():
    net, ns = net_a(kernel=((1.0, 0.5, 2.0),))          # every unit alive on x = [1, 2]
    ns = train_steps(net, ns, X_WIDE, T_WIDE, 2)         # non-trivial Adam state
    ctx = score_ctx(net, ns.params, X_A, T_A, count=3)
    assert not np.asarray(IV.masks(net, ctx.scores)["hidden_0"]).any()
    new, state = run_post_update(IV, net, ns, ctx)
    assert_tree_identical(new.params, ns.params)
    assert_tree_identical(new.opt_state, ns.opt_state)
    assert int(state["critic"]["events"]) == 1
    assert float(state["critic"]["reset_fraction"]["hidden_0"]) == 0.0


def test_zero_gradient_layer_guard():
    net, ns = net_a(out=((0.0,), (0.0,), (0.0,)))        # no gradient reaches the hidden layer
    ctx = score_ctx(net, ns.params, X_A, T_A)
    G, g = ctx.scores["hidden_0"]
    np.testing.assert_array_equal(g, 0.0)
    np.testing.assert_array_equal(G, 0.0)                # every unit would be "inactive" without the guard
    assert not np.asarray(IV.masks(net, ctx.scores)["hidden_0"]).any()
    new, state = run_post_update(IV, net, ns, ctx)
    assert_tree_identical(new.params, ns.params)
    assert_tree_identical(new.opt_state, ns.opt_state)
    assert float(state["critic"]["reset_fraction"]["hidden_0"]) == 0.0
    assert float(IV.logs(state)["grama/zero_grad_layer/critic/hidden_0"]) == 1.0   # the skip is logged
    # without the guard all three units would be flagged: the guard is what prevents it
    assert np.asarray(regrama(skip_zero_grad_layers=False).masks(net, ctx.scores)["hidden_0"]).all()
    # the guard is per layer and per ensemble member
    net2 = Net.of("critic", MLP((3, 2), 1, ensemble=2), optax.adam(1e-3))
    scores = {"hidden_0": (jnp.zeros((2, 3)), jnp.zeros((2, 3))),
              "hidden_1": (jnp.array([[0.0, 2.0], [0.0, 0.0]]), jnp.array([[0.0, 1.0], [0.0, 0.0]]))}
    m = IV.masks(net2, scores)
    assert not np.asarray(m["hidden_0"]).any()
    np.testing.assert_array_equal(m["hidden_1"], [[True, False], [False, False]])


# ---------------------------------------------------------------------------------------------
# State, validation, schedule under jit, compile once (item 11)

def test_init_only_selected_networks_and_validation():
    critic = Net.of("critic", MLP((4,), 1), optax.adam(1e-3))
    actor = Net.of("actor", MLP((5,), 2), optax.adam(1e-3))
    agent = StubAgent(critic, actor, roles={"critic": "critic", "actor": "actor"})
    st = regrama(networks=("critic",)).init(KEY, agent)
    assert set(st) == {"critic"} and set(st["critic"]["reset_fraction"]) == {"hidden_0"}
    assert set(IV.init(KEY, agent)) == {"critic", "actor"}
    for bad in (dict(tau=-1.0), dict(period=0), dict(max_reset_fraction=1.5), dict(score_target="x")):
        with pytest.raises(ValueError):
            regrama(**bad)


@pytest.mark.parametrize("argv, needle", [
    (["--agent", "dqn", "--grama.networks", "q"], "grama.networks=q is not valid; choose among: actor, critic"),
    (["--agent", "ppo", "--grama.networks", "value"], "grama.networks=value is not valid; choose among: actor, critic"),
    (["--grama.networks", "actor,critc"], "grama.networks=actor,critc is not valid; choose among: actor, critic"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    """A network name that is not a role would select no network: ReGraMa would silently do nothing."""
    assert_cli_error(["--intervention", "grama", *argv], needle, tmp_path, capsys)


def test_the_grama_metric_measures_where_regrama_acts():
    """metrics.grama_target follows grama.score_target when ReGraMa is on; an explicit contradiction is a
    one-line config error, an explicit agreement is fine, and without ReGraMa the metric is the user's."""
    from plastic.config import ConfigError, build
    assert build("sac", "grama", overrides={"grama.score_target": "post_activation"}).metrics.grama_target == "post_activation"
    assert build("sac", "grama", overrides={"metrics.grama_target": "pre_activation"}).metrics.grama_target == "pre_activation"
    assert build("sac", "none", overrides={"metrics.grama_target": "weight_grad"}).metrics.grama_target == "weight_grad"
    with pytest.raises(ConfigError, match=r"^metrics.grama_target='post_activation' contradicts grama.score_target="):
        build("sac", "grama", overrides={"metrics.grama_target": "post_activation"})


def test_schedule_under_jit_compiles_once():
    ns, x, t = setup(NET_S, 3, 11, 16, {"hidden_0": [2]})
    iv = regrama(period=3)
    istate = {"grama": iv.init(KEY, StubAgent(NET_S))}
    loss_fn = mse_loss(NET_S, x, t)
    traces = []

    @jax.jit
    def step(ns, istate, count):
        traces.append(1)                                 # Python side effect: runs only while tracing
        ns, hooks, count, _, _ = gradient_step(NET_S, ns, loss_fn, batch_size=16, count=count,
                                               key=jax.random.fold_in(KEY, count), hooks=Hooks(istate, (iv,)))
        return ns, hooks.state, count

    count = jnp.zeros((), jnp.int32)
    events, reset_at, bias2 = [], [], []
    for _ in range(10):
        prev = int(istate["grama"]["critic"]["events"])
        ns, istate, count = step(ns, istate, count)
        ev = int(istate["grama"]["critic"]["events"])
        assert ev - prev in (0, 1)
        if ev > prev:
            reset_at.append(int(count))
        events.append(ev)
        bias2.append(float(ns.params["hidden_0"]["bias"][2]))
    assert reset_at == [3, 6, 9]
    assert events == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert len(traces) == 1, f"train step traced {len(traces)} times"
    # the dead unit stays dead (zero gradient, so Adam leaves its bias alone) until the event at count 3
    assert bias2[0] == bias2[1] == -100.0 and bias2[2] == 0.0


# ---------------------------------------------------------------------------------------------
# LayerNorm: affine parameters of reset units

def test_layernorm_affine_reset():
    ns, x, t = setup(NET_LN, 3, 13, 16)
    m_dead = np.zeros(8, bool)
    m_dead[[3, 5]] = True
    # scale 0.5, offset 0.3 except units 3 and 5 (offset -10: dead after LN -> ReLU)
    p = {**ns.params, "ln_0": {"scale": jnp.full(8, 0.5), "bias": jnp.where(m_dead, -10.0, 0.3)}}
    s = adam_state(ns.opt_state)
    ones = jax.tree.map(jnp.ones_like, p)
    ns = NetState(p, (s._replace(mu=ones, nu=ones), *ns.opt_state[1:]))
    ctx = score_ctx(NET_LN, p, x, t)
    m = np.asarray(IV.masks(NET_LN, ctx.scores)["hidden_0"])
    np.testing.assert_array_equal(m, m_dead)
    new, _ = run_post_update(IV, NET_LN, ns, ctx)
    nl = jax.tree.map(np.asarray, new.params["ln_0"])
    np.testing.assert_array_equal(nl["scale"][m], 1.0)
    np.testing.assert_array_equal(nl["bias"][m], 0.0)
    np.testing.assert_array_equal(nl["scale"][~m], 0.5)
    np.testing.assert_array_equal(nl["bias"][~m], np.float32(0.3))
    touched = leaf_mask(p, {("hidden_0", "kernel"): m[None, :], ("hidden_0", "bias"): m,
                            ("ln_0", "scale"): m, ("ln_0", "bias"): m, ("output", "kernel"): m[:, None]})
    assert_only_touched_changed(p, new.params, touched, zero_touched=False)
    a = adam_state(new.opt_state)
    assert_only_touched_changed(ones, a.mu, touched)
    assert_only_touched_changed(ones, a.nu, touched)
    # with LayerNorm the output changes (the LN statistics move): the jump is logged
    y0, y1 = np.asarray(apply(NET_LN, p, x)[0]), np.asarray(apply(NET_LN, new.params, x)[0])
    assert np.all(np.isfinite(y1))
    _, state = run_post_update(IV, NET_LN, ns, ctx)
    jump = float(IV.logs(state)["grama/output_jump/critic"])
    assert jump > 0
    np.testing.assert_allclose(jump, np.mean(np.abs(y1 - y0)), rtol=1e-5)
    assert float(IV.logs(state)["grama/zero_grad_layer/critic/hidden_0"]) == 0.0


# ---------------------------------------------------------------------------------------------
# reset_unit_step_ratio (docs/metrics.md §8): mean |update| / lr on freshly reset entries

def test_reset_unit_step_ratio_window():
    """After a non-empty reset, each update adds mean |update| over the touched entries / lr; entries
    that were not touched do not count; the window closes after `step_ratio_window` updates; an empty
    reset leaves the window alone."""
    lr = 1e-2
    net = Net.of("critic", MLP((3,), 1), optax.adam(lr), lr)
    iv = regrama(period=100, step_ratio_window=2, step_ratio_every=1)
    state = iv.init(KEY, StubAgent(net))["critic"]
    fresh = {"hidden_0": jnp.array([False, True, False])}
    state = {**state, "fresh": fresh, "events": jnp.ones((), jnp.int32)}
    params = {"hidden_0": {"kernel": jnp.zeros((1, 3)), "bias": jnp.zeros(3)},
              "output": {"kernel": jnp.zeros((3, 1)), "bias": jnp.zeros(1)}}
    # touched entries of unit 1: kernel[0, 1], bias[1], output kernel[1, 0]; give them |u| = 2, 4, 6 lr
    upd = jax.tree.map(lambda p: jnp.full(p.shape, 100.0), params)   # untouched entries: huge, ignored
    upd["hidden_0"]["kernel"] = upd["hidden_0"]["kernel"].at[0, 1].set(-2 * lr)
    upd["hidden_0"]["bias"] = upd["hidden_0"]["bias"].at[1].set(4 * lr)
    upd["output"]["kernel"] = upd["output"]["kernel"].at[1, 0].set(6 * lr)
    ctx = UpdateContext(count=jnp.asarray(1), grads=None, probe_grads=None, scores=None, loss=jnp.zeros(()),
                        updates=upd)
    track = jax.jit(lambda s: iv.track_step_ratio(net, ctx, s))
    s1 = track(state)
    np.testing.assert_allclose(float(iv.logs({"critic": s1})["reset_unit_step_ratio/critic"]), 4.0, rtol=1e-6)
    s2 = track(s1)
    s3 = track(s2)                                     # window of 2 updates: the third is not counted
    assert int(s3["since"]) == 2 and float(s3["ratio_n"]) == 2.0
    np.testing.assert_allclose(float(s3["ratio_sum"]), 8.0, rtol=1e-6)


def test_reset_unit_step_ratio_shows_adam_scalar_count_effect():
    """Zeroed moments with the scalar count kept: on the first update after a reset at count k-1, an entry
    with gradient g steps lr * (1-b1)/(1-b1^k) / sqrt((1-b2)/(1-b2^k)) whatever g is (3.16 lr when
    k is large, docs/mechanics.md §3.3); touched entries that get no gradient step 0."""
    lr = 1e-3
    net = Net.of("critic", MLP((4,), 1), optax.adam(lr), lr)
    iv = regrama(period=50, step_ratio_window=1, step_ratio_every=1)
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    t = x[:, :1] * 3.0
    params = net.init(jax.random.PRNGKey(1), x).params
    params["hidden_0"]["bias"] = params["hidden_0"]["bias"].at[0].set(-100.0)   # unit 0 is dead
    ns = NetState(params, net.tx.init(params))
    istate = {"grama": iv.init(KEY, StubAgent(net))}

    @jax.jit
    def step(ns, istate, count):
        ns, hooks, count, _, _ = gradient_step(net, ns, mse_loss(net, x, t), batch_size=64, count=count,
                                               key=KEY, hooks=Hooks(istate, (iv,)), inputs=x)
        return ns, hooks.state, count

    count = jnp.zeros((), jnp.int32)
    for _ in range(51):                      # reset at update 50, then one update inside the window
        ns, istate, count = step(ns, istate, count)
    s = istate["grama"]["critic"]
    assert int(s["events"]) == 1 and np.flatnonzero(s["fresh"]["hidden_0"]).tolist() == [0]
    assert int(s["since"]) == 1
    # touched: 2 incoming weights + bias (no gradient: the outgoing weight is 0) + the outgoing weight
    k, b1, b2 = 51, 0.9, 0.999
    step_ratio = (1 - b1) / (1 - b1 ** k) / np.sqrt((1 - b2) / (1 - b2 ** k))
    ratio = float(iv.logs(istate["grama"])["reset_unit_step_ratio/critic"])
    np.testing.assert_allclose(ratio, step_ratio / 4, rtol=1e-3)


def test_reset_unit_step_ratio_subsamples_the_window():
    lr = 1e-2
    net = Net.of("critic", MLP((3,), 1), optax.adam(lr), lr)
    iv = regrama(period=100, step_ratio_window=25, step_ratio_every=10)
    state = {**iv.init(KEY, StubAgent(net))["critic"], "fresh": {"hidden_0": jnp.array([True, False, False])},
             "events": jnp.ones((), jnp.int32)}
    upd = {"hidden_0": {"kernel": jnp.full((1, 3), lr), "bias": jnp.full(3, lr)},
           "output": {"kernel": jnp.full((3, 1), lr), "bias": jnp.full(1, lr)}}
    ctx = UpdateContext(count=jnp.asarray(1), grads=None, probe_grads=None, scores=None, loss=jnp.zeros(()),
                        updates=upd)
    track = jax.jit(lambda s: iv.track_step_ratio(net, ctx, s))
    state["ratio_last"] = jnp.asarray(7.0)       # a fresh window shows the previous value until sampled
    assert float(iv.logs({"critic": state})["reset_unit_step_ratio/critic"]) == 7.0
    for _ in range(40):
        state = track(state)
    assert int(state["since"]) == 25 and float(state["ratio_n"]) == 3.0   # updates 0, 10, 20 of the window
    np.testing.assert_allclose(float(iv.logs({"critic": state})["reset_unit_step_ratio/critic"]), 1.0, rtol=1e-6)


def test_tau_default_follows_the_network():
    """τ defaults to 0.01 on LayerNorm / residual networks (paper Tables 3, 5), 0 on plain MLPs (Table 7); a
    value given on the command line or in a preset wins; PPO keeps its own period default."""
    from plastic.config import build
    assert build("sac", "grama").interventions["grama"].tau == 0.0
    for net in ("simba", "bronet"):
        assert build("sac", "grama", overrides={"sac.network": net}).interventions["grama"].tau == 0.01
    assert build("sac", "grama", overrides={"sac.network": "simba", "grama.tau": 0}).interventions["grama"].tau == 0
    assert build("sac", "grama", preset={"sac": {"network": "bronet"}, "grama": {"tau": 0.2}}
                 ).interventions["grama"].tau == 0.2
    ppo = build("ppo", "regrama", overrides={"ppo.network": "simba"}).interventions["grama"]
    assert (ppo.tau, ppo.period) == (0.01, 100)
