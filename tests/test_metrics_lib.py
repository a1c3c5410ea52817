"""Metric library (metrics/activity, rank, ntk, norms, churn; units.set_overlap / dormant_masks) against
straightforward NumPy references written here (loops, np.linalg), the reference values of docs/metrics.md §10,
invariances, and jit / vmap agreement with eager calls.

Network A (docs/metrics.md §10.1) is rebuilt with plain jnp functions: x = [1, 2], hidden Dense 1->3 kernel
[[1, -1, 2]], bias 0, ReLU; output Dense 3->1 kernel [[1], [1], [0.5]], bias 0; L = mean_b 0.5 y_b².
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metrics
import metrics.rank as rank_mod
from metrics.activity import (
    ACTIVE_TESTS, active_mask, fau_logs, linearised_fraction, linearised_logs, positive_preactivation,
)
from metrics.churn import action_change, categorical_kl, churn_logs, gaussian_kl, greedy_churn
from metrics.norms import (
    feature_norm, grad_stats, grad_to_param_ratio, layer_groups, norm_logs, param_dist_init_rms, param_rms,
    update_to_param_ratio,
)
from metrics.ntk import jacobian, ntk_logs, ntk_rank
from metrics.rank import (
    approx_rank, effective_rank, fallback_if_nonfinite, feature_rank, host_singular_values, matrix_rank, rank_logs,
    singular_values, srank,
)
from metrics.units import dormant_masks, dormant_scores, ratio_logs, set_overlap
from plastic.networks import MLP

F32 = np.float32
SQRT2 = math.sqrt(2.0)
LAYERS = MLP((4, 3), 1).layer_map()[:2]                # hidden_0 (4 units), hidden_1 (3 units), no ensemble
LAYERS_E = MLP((4, 3), 1, ensemble=2).layer_map()[:2]  # same with a leading member axis E = 2


@dataclasses.dataclass(frozen=True)
class Spec:
    """The two LayerSpec fields the activity metrics read."""
    name: str
    ensemble: int


# ----------------------------------------------------------------------------------------- NumPy references

def np_is_active(v: float, activation: str) -> bool:
    v = F32(v)
    if activation in ("relu", "swish", "crelu"):
        return bool(v > 0)
    if activation == "tanh":
        return not bool(abs(v) > F32(0.99))
    if activation == "sigmoid":
        return not bool(v < F32(0.01) or v > F32(0.99))
    if activation == "dff":
        return not bool(abs(v) > F32(SQRT2 - 0.01))
    raise AssertionError(activation)


def np_fau(acts: dict, activation: str) -> dict:
    out, act_all, n_all = {}, 0, 0
    for name, h in acts.items():
        flat = np.asarray(h).reshape(-1)
        a = sum(np_is_active(v, activation) for v in flat)
        out[name] = a / flat.size
        act_all, n_all = act_all + a, n_all + flat.size
    out[None] = act_all / n_all
    return out


def np_linearised(acts: dict, layers, activation: str, frac: float) -> dict:
    """Loop over units (and members): count samples (x positions) with positive pre-activation."""
    thr = 0.5 if activation == "sigmoid" else 0.0
    out, flagged, total = {}, 0, 0
    for l in layers:
        h = np.asarray(acts[l.name])
        members = h if l.ensemble else h[None]
        k, units = 0, 0
        for m in members:
            rows = m.reshape(-1, m.shape[-1])
            for j in range(rows.shape[1]):
                pos = sum(1 for v in rows[:, j] if v > thr)
                k += pos >= frac * rows.shape[0] - 1e-9
                units += 1
        out[l.name] = k / units
        flagged, total = flagged + k, total + units
    out[None] = flagged / total
    return out


def np_ranks(phi, delta=0.01, p=0.99, eps=0.01):
    """The five §5 ranks of one [n, d] matrix, by loops over np.linalg.svd's singular values."""
    phi = np.asarray(phi, F32)
    n, d = phi.shape
    s = np.linalg.svd(phi.astype(np.float64), compute_uv=False)
    if s.sum() == 0:
        return dict(srank=0, approx=0, eff=0.0, feat=0, mat=0)

    def min_k(w, level):
        acc = 0.0
        for k, v in enumerate(w, 1):
            acc += v
            if acc / w.sum() >= level:
                return k
        return len(w)

    q = s / s.sum()
    ent = -sum(v * math.log(v) for v in q if v > 0)
    return dict(srank=min_k(s, 1 - delta), approx=min_k(s ** 2, p), eff=math.exp(ent),
                feat=int(sum(v / math.sqrt(n) > eps for v in s)), mat=int(np.linalg.matrix_rank(phi)))


def np_group_ratio(grads_layers, params_layers, eps=1e-12):
    """grad_to_param_ratio from explicit per-layer lists of leaves."""
    num = den = 0.0
    for gl, pl in zip(grads_layers, params_layers):
        n = sum(np.size(x) for x in pl)
        gn = math.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in gl))
        pn = math.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in pl))
        num += n * gn / (pn + eps)
        den += n
    return num / den


# ------------------------------------------------------------------------------------------------ Network A

A_X = np.array([[1.0], [2.0]], F32)


def net_a_params():
    return {"hidden_0": {"kernel": np.array([[1.0, -1.0, 2.0]], F32), "bias": np.zeros(3, F32)},
            "output": {"kernel": np.array([[1.0], [1.0], [0.5]], F32), "bias": np.zeros(1, F32)}}


def net_a_hidden(params, x):
    return jax.nn.relu(x @ params["hidden_0"]["kernel"] + params["hidden_0"]["bias"])


def net_a_q(params, x):
    """Scalar output for ONE example x [1]."""
    return (net_a_hidden(params, x) @ params["output"]["kernel"] + params["output"]["bias"])[0]


def net_a_loss(params):
    y = jax.vmap(net_a_q, (None, 0))(params, A_X)
    return jnp.mean(0.5 * jnp.square(y))


def test_network_a_reference_values():
    params = net_a_params()
    h = np.maximum(A_X @ params["hidden_0"]["kernel"], 0)
    np.testing.assert_allclose(h, [[1, 0, 2], [2, 0, 4]])
    logs = fau_logs("critic", {"hidden_0": h}, "relu")
    np.testing.assert_allclose(logs["fau/critic"], 4 / 6, rtol=1e-6)
    np.testing.assert_allclose(logs["fau/critic/hidden_0"], 4 / 6, rtol=1e-6)
    g = jax.jit(jax.grad(net_a_loss))(params)
    np.testing.assert_allclose(g["hidden_0"]["kernel"], [[5, 0, 2.5]])
    st = grad_stats(g)
    np.testing.assert_allclose(st["sparsity"], 0.3, rtol=1e-6)
    np.testing.assert_allclose(st["l1"], 30.0, rtol=1e-6)
    np.testing.assert_allclose(st["l2"], math.sqrt(176.5), rtol=1e-6)
    J = jacobian(net_a_q, params, A_X)
    assert J.shape == (2, 10)
    K = np.asarray(J, np.float64) @ np.asarray(J, np.float64).T
    np.testing.assert_allclose(K, [[8.5, 14.75], [14.75, 27.25]], rtol=1e-6)
    np.testing.assert_allclose(np.square(singular_values(J)), [35.352, 0.3978], rtol=1e-4)
    np.testing.assert_allclose(np.linalg.svd(K, compute_uv=False), [35.352, 0.3978], rtol=1e-4)
    a, r = ntk_rank(J)
    assert int(a) == 2 and int(r) == 2 and a.dtype == jnp.int32
    assert {k: float(v) for k, v in ntk_logs("critic", J).items()} == {"ntk_rank_abs/critic": 2.0,
                                                                        "ntk_rank_rel/critic": 2.0}
    # grad_to_param_ratio: layers = hidden_0 (kernel + bias, 6 entries) and output (4 entries)
    gl = [[g["hidden_0"]["kernel"], g["hidden_0"]["bias"]], [g["output"]["kernel"], g["output"]["bias"]]]
    pl = [[params["hidden_0"]["kernel"], params["hidden_0"]["bias"]],
          [params["output"]["kernel"], params["output"]["bias"]]]
    np.testing.assert_allclose(grad_to_param_ratio(g, params), np_group_ratio(gl, pl), rtol=1e-6)
    # by hand: ||g_h|| = sqrt(25+6.25+9+2.25) = sqrt(42.5), ||θ_h|| = sqrt(6); ||g_o|| = sqrt(134), ||θ_o|| = 1.5
    np.testing.assert_allclose(grad_to_param_ratio(g, params),
                               (6 * math.sqrt(42.5) / math.sqrt(6) + 4 * math.sqrt(134) / 1.5) / 10, rtol=1e-6)


# ----------------------------------------------------------------------------------------------- FAU (§4)

def test_active_mask_table_and_errors():
    cases = {
        "relu": ([-1.0, 0.0, 1e-6, 3.0], [0, 0, 1, 1]),
        "swish": ([-0.2, 0.0, 0.1, 2.0], [0, 0, 1, 1]),
        "tanh": ([0.995, -0.5, 0.2, -0.999, 0.99, -0.99, 0.0], [0, 1, 1, 0, 1, 1, 1]),
        "sigmoid": ([0.005, 0.01, 0.5, 0.99, 0.995, 1.0], [0, 1, 1, 1, 0, 0]),
        "dff": ([SQRT2, -SQRT2, SQRT2 - 0.02, 0.0, -1.0], [0, 0, 1, 1, 1]),
        "crelu": ([0.0, 1e-6, 2.0], [0, 1, 1]),
    }
    assert set(cases) == set(ACTIVE_TESTS)
    for act, (h, want) in cases.items():
        m = active_mask(np.array(h, F32), act)
        assert m.dtype == jnp.bool_ and m.shape == (len(h),)
        np.testing.assert_array_equal(m, np.array(want, bool), err_msg=act)
        np.testing.assert_array_equal(m, [np_is_active(v, act) for v in h])
    with pytest.raises(ValueError, match="relu"):
        active_mask(np.zeros(3, F32), "gelu")
    # docs/metrics.md §10.3: tanh activations [0.995, -0.5, 0.2, -0.999] (one sample, 4 units) -> fau = 0.5
    logs = fau_logs("actor", {"hidden_0": np.array([[0.995, -0.5, 0.2, -0.999]], F32)}, "tanh")
    np.testing.assert_allclose(logs["fau/actor"], 0.5)


NP_ACT = {"relu": lambda z: np.maximum(z, 0), "swish": lambda z: z / (1 + np.exp(-z)), "tanh": np.tanh,
          "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "dff": lambda z: SQRT2 * np.sin(z),
          "crelu": lambda z: np.maximum(z, 0)}   # one of a unit's two outputs


def _random_acts(rng, activation, shapes):
    return {k: NP_ACT[activation](3 * rng.normal(size=s)).astype(F32) for k, s in shapes.items()}


@pytest.mark.parametrize("activation", sorted(ACTIVE_TESTS))
def test_fau_random_vs_numpy(activation):
    rng = np.random.default_rng(len(activation))
    # dense [B, H], conv [B, h, w, C] and ensemble [E, B, H]: every axis pooled
    acts = _random_acts(rng, activation, {"d": (7, 5), "conv": (3, 2, 2, 4), "ens": (2, 6, 3)})
    logs = fau_logs("net", acts, activation)
    ref = np_fau(acts, activation)
    assert set(logs) == {"fau/net", "fau/net/d", "fau/net/conv", "fau/net/ens"}
    for name in acts:
        np.testing.assert_allclose(logs[f"fau/net/{name}"], ref[name], rtol=1e-6)
    np.testing.assert_allclose(logs["fau/net"], ref[None], rtol=1e-6)


def test_fau_dead_units_layernorm_residual():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype(F32)
    w = rng.normal(size=(5, 6)).astype(F32)
    b = np.zeros(6, F32)
    b[[1, 4]] = -100.0                                   # units 1 and 4 are dead
    h = np.maximum(x @ w + b, 0)
    ln = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6)
    block = np.maximum(ln @ rng.normal(size=(6, 8)), 0).astype(F32)   # LayerNorm then a ReLU expansion
    res = (x + np.tanh(x @ rng.normal(size=(5, 5)))).astype(F32)       # residual stream
    acts = {"h": h, "block": block}
    logs = fau_logs("critic", acts, "relu")
    ref = np_fau(acts, "relu")
    np.testing.assert_allclose(logs["fau/critic/h"], ref["h"], rtol=1e-6)
    np.testing.assert_allclose(logs["fau/critic"], ref[None], rtol=1e-6)
    assert float(logs["fau/critic/h"]) <= 4 / 6 + 1e-6
    specs = [Spec("h", 0), Spec("block", 0)]
    lin = linearised_logs("critic", acts, specs, "relu")
    np.testing.assert_array_equal(np.asarray(linearised_fraction(h, "relu"))[[1, 4]], [0.0, 0.0])
    ref_lin = np_linearised(acts, specs, "relu", 0.9)
    np.testing.assert_allclose(lin["linearised_ratio/critic"], ref_lin[None], rtol=1e-6)
    np.testing.assert_allclose(lin["linearised_ratio/critic/h"], ref_lin["h"], rtol=1e-6)
    np.testing.assert_allclose(fau_logs("c", {"r": res}, "tanh")["fau/c"], np_fau({"r": res}, "tanh")[None])


# ---------------------------------------------------------------------------------------- linearised (§4)

def test_positive_preactivation():
    z = np.array([-2.0, -0.1, 0.0, 0.3], F32)
    for act in ("relu", "tanh", "swish", "sigmoid"):
        np.testing.assert_array_equal(positive_preactivation(NP_ACT[act](z).astype(F32), act),
                                      [False, False, False, True], err_msg=act)
    h = z
    with pytest.raises(ValueError):
        positive_preactivation(h, "dff")


def test_linearised_hand_cases():
    # hidden_0: unit 0 positive on 9/10 samples, unit 1 on 8/10, unit 2 dead, unit 3 always positive
    col = lambda k: np.r_[np.ones(k), -np.ones(10 - k)].astype(F32)  # noqa: E731
    h0 = np.maximum(np.stack([col(9), col(8), col(0), col(10)], axis=1), 0)
    h1 = np.maximum(np.stack([col(10), col(2), col(9)], axis=1), 0)
    logs = linearised_logs("actor", {"hidden_0": h0, "hidden_1": h1}, LAYERS, "relu")
    np.testing.assert_allclose(linearised_fraction(h0, "relu"), [0.9, 0.8, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(logs["linearised_ratio/actor/hidden_0"], 2 / 4)
    np.testing.assert_allclose(logs["linearised_ratio/actor/hidden_1"], 2 / 3)
    np.testing.assert_allclose(logs["linearised_ratio/actor"], 4 / 7, rtol=1e-6)   # pooled over units
    np.testing.assert_allclose(linearised_logs("a", {"hidden_0": h0}, LAYERS[:1], "relu", frac=0.8)
                               ["linearised_ratio/a"], 3 / 4)
    # the boundary is exact for any n: a unit positive on exactly frac * n samples counts, one sample fewer
    # does not (a float32 k / n can round just below frac); one layer of n samples per (n, k, frac) case
    for frac, cases in ((0.99, ((100, 99), (200, 198))), (0.5, ((82, 41), (94, 47))), (0.75, ((244, 183),))):
        acts = {f"n{n}": np.stack([np.r_[np.ones(k), -np.ones(n - k)],
                                   np.r_[np.ones(k - 1), -np.ones(n - k + 1)]], 1).astype(F32)
                for n, k in cases}
        specs = [Spec(name, 0) for name in acts]
        for got in (linearised_logs("a", acts, specs, "relu", frac),
                    jax.jit(linearised_logs, static_argnums=(0, 2, 3, 4))("a", acts, tuple(specs), "relu", frac)):
            for name in acts:
                assert float(got[f"linearised_ratio/a/{name}"]) == 0.5, (name, frac)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "swish"])
def test_linearised_random_ensemble_and_conv_vs_numpy(activation):
    rng = np.random.default_rng(1)
    fn = NP_ACT[activation]
    # ensemble [E, B, H] layers; per-unit offsets of the pre-activation make some units mostly positive
    z = {"hidden_0": rng.normal(size=(2, 20, 4)) + [-2.0, 0.0, 1.5, 3.0],
         "hidden_1": rng.normal(size=(2, 20, 3)) + [2.0, -0.5, 1.2]}
    acts = {k: fn(v).astype(F32) for k, v in z.items()}
    for frac in (0.5, 0.9):
        logs = linearised_logs("critic", acts, LAYERS_E, activation, frac)
        ref = np_linearised(acts, LAYERS_E, activation, frac)
        for l in LAYERS_E:
            np.testing.assert_allclose(logs[f"linearised_ratio/critic/{l.name}"], ref[l.name], rtol=1e-6)
        np.testing.assert_allclose(logs["linearised_ratio/critic"], ref[None], rtol=1e-6)
        assert 0.0 < float(logs["linearised_ratio/critic"]) < 1.0
    lf = linearised_fraction(acts["hidden_0"], activation, ensemble=2)
    assert lf.shape == (2, 4)
    np.testing.assert_allclose(lf, (z["hidden_0"] > 0).mean(axis=1), rtol=1e-6)   # sign of z recovered
    # conv: [B, h, w, C] -> one value per channel over batch and positions
    zc = rng.normal(size=(3, 2, 2, 4)) + [-1.0, 0.0, 1.0, 2.0]
    frac = linearised_fraction(fn(zc).astype(F32), activation)
    np.testing.assert_allclose(frac, (zc > 0).reshape(-1, 4).mean(0), rtol=1e-6)


# ------------------------------------------------------------------------------- dormant invariances (§1)

def test_dormant_invariances_and_permutation():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 4)).astype(F32)
    w = rng.normal(size=(4, 4)).astype(F32)
    h0 = np.maximum(x @ w + np.array([0, -50, 0, 0], F32), 0)             # unit 1 dead
    h1 = np.tanh(h0 @ rng.normal(size=(4, 3))).astype(F32)
    acts = {"hidden_0": h0, "hidden_1": h1}
    taus = (0.0, 0.025, 0.1, 0.5)
    base = ratio_logs("dormant_ratio", "critic", dormant_scores(acts, LAYERS), taus)
    assert float(base["dormant_ratio_tau_0/critic/hidden_0"]) == 0.25
    for c in (0.01, 7.0):
        scaled = ratio_logs("dormant_ratio", "critic", dormant_scores({**acts, "hidden_0": F32(c) * h0}, LAYERS),
                            taus)
        for k in base:
            np.testing.assert_allclose(scaled[k], base[k], err_msg=k)
    perm = [2, 0, 3, 1]
    s = dormant_scores(acts, LAYERS)["hidden_0"]
    sp = dormant_scores({**acts, "hidden_0": h0[:, perm]}, LAYERS)["hidden_0"]
    np.testing.assert_allclose(sp, np.asarray(s)[perm], rtol=1e-6)
    lf = linearised_fraction(h0, "relu")
    np.testing.assert_allclose(linearised_fraction(h0[:, perm], "relu"), np.asarray(lf)[perm])
    masks = dormant_masks(dormant_scores(acts, LAYERS), 0.0)
    np.testing.assert_array_equal(masks["hidden_0"], [False, True, False, False])
    assert masks["hidden_1"].dtype == jnp.bool_ and masks["hidden_1"].shape == (3,)


# --------------------------------------------------------------------------------------- set_overlap (§8)

def test_set_overlap():
    prev, now = np.zeros(12, bool), np.zeros(12, bool)
    prev[[1, 4, 7]] = True
    now[[4, 7, 9, 10]] = True
    np.testing.assert_allclose(set_overlap(prev, now), 0.5)                  # docs/metrics.md §10.3
    np.testing.assert_allclose(set_overlap(now, prev), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(set_overlap(prev, np.zeros(12, bool)), 0.0)    # empty D_t -> 0
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 3, 5)) < 0.4, rng.random((2, 3, 5)) < 0.4           # [E, H] masks
    np.testing.assert_allclose(set_overlap(a, b),
                               len({i for i in range(30) if a.flat[i] and b.flat[i]}) / max(b.sum(), 1),
                               rtol=1e-6)
    m = dormant_masks({"x": jnp.array([0.0, 0.02, 0.5]), "y": jnp.array([[0.0, 1.0], [0.3, 0.0]])}, 0.025)
    np.testing.assert_array_equal(m["x"], [True, True, False])
    np.testing.assert_array_equal(m["y"], [[True, False], [False, True]])


# ---------------------------------------------------------------------------------------------- ranks (§5)

TABLE_10_2 = [  # (Phi, singular values, srank, approx, effective, feature, matrix)
    ([[3, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], [3, 1, 0], 2, 2, 1.75477, 2, 2),
    (np.eye(4), [1, 1, 1, 1], 4, 4, 4.0, 4, 4),
    ([[10, 0], [0, 1]], [10, 1], 2, 1, 1.35613, 2, 2),
]


def _all_ranks(phi):
    phi = jnp.asarray(phi, jnp.float32)
    sv = singular_values(phi)
    n, d = phi.shape[-2:]
    return sv, [srank(sv), approx_rank(sv), effective_rank(sv), feature_rank(sv, n), matrix_rank(sv, n, d)]


@pytest.mark.parametrize("row", range(3))
def test_rank_table_10_2_and_scale(row):
    phi, svs, *want = TABLE_10_2[row]
    sv, got = _all_ranks(phi)
    np.testing.assert_allclose(sv, svs, atol=1e-6)
    assert [int(g) for i, g in enumerate(got) if i != 2] == [w for i, w in enumerate(want) if i != 2]
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5)
    assert got[0].dtype == got[1].dtype == got[3].dtype == got[4].dtype == jnp.int32
    assert got[2].dtype == jnp.float32
    ref = np_ranks(phi)
    assert [ref["srank"], ref["approx"], ref["feat"], ref["mat"]] == [int(got[i]) for i in (0, 1, 3, 4)]
    np.testing.assert_allclose(ref["eff"], want[2], rtol=1e-5)
    _, got5 = _all_ranks(np.asarray(phi, F32) * 5)
    for i in (0, 1, 2, 4):                          # everything but feature_rank is scale-invariant
        np.testing.assert_allclose(got5[i], got[i], rtol=1e-5)


def test_rank_random_known_rank_duplicates_layernorm():
    rng = np.random.default_rng(4)
    n, d = 24, 8
    cases = {
        "random": rng.normal(size=(n, d)),
        "relu": np.maximum(rng.normal(size=(n, d)), 0),
        "rank3": rng.normal(size=(n, 3)) @ rng.normal(size=(3, d)),
        "dup": np.repeat(rng.normal(size=(n, 4)), 2, axis=1),           # duplicated features: rank 4
        "dead": np.maximum(rng.normal(size=(n, d)), 0) * (np.arange(d) % 2),   # 4 dead (all-zero) units
        "small": 0.002 * rng.normal(size=(n, d)) + np.outer(rng.normal(size=n), rng.normal(size=d)),
        "tanh": np.tanh(3 * rng.normal(size=(n, d))),
    }
    h = np.maximum(rng.normal(size=(n, d)), 0)
    cases["layernorm"] = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-6)  # rank d-1
    x = rng.normal(size=(n, d))
    cases["residual"] = x + np.maximum(x @ rng.normal(size=(d, d)), 0)
    for name, phi in cases.items():
        phi = phi.astype(F32)
        _, got = _all_ranks(phi)
        ref = np_ranks(phi)
        assert [int(got[i]) for i in (0, 1, 3, 4)] == [ref["srank"], ref["approx"], ref["feat"], ref["mat"]], name
        np.testing.assert_allclose(got[2], ref["eff"], rtol=1e-4, err_msg=name)
    assert int(_all_ranks(cases["rank3"].astype(F32))[1][4]) == 3
    assert int(_all_ranks(cases["dup"].astype(F32))[1][4]) == 4
    assert int(_all_ranks(cases["dead"].astype(F32))[1][4]) == 4
    assert int(_all_ranks(cases["layernorm"].astype(F32))[1][4]) == d - 1
    # feature_rank is the only scale-dependent one: the small-noise directions cross eps when scaled
    sv = singular_values(cases["small"].astype(F32))
    assert int(feature_rank(np.asarray(sv) * 5, n)) > int(feature_rank(sv, n))
    for f in (lambda s: srank(s), lambda s: approx_rank(s), lambda s: matrix_rank(s, n, d)):
        assert int(f(singular_values(5 * cases["small"].astype(F32)))) == int(f(sv))


def test_rank_all_zero_and_batched():
    sv, got = _all_ranks(np.zeros((6, 4), F32))
    np.testing.assert_array_equal(sv, np.zeros(4))
    for g in got:
        assert np.isfinite(float(g)) and float(g) == 0.0
    logs = rank_logs("critic", np.zeros((2, 6, 4), F32))
    assert all(float(v) == 0.0 for v in logs.values())
    # batched sv [E, m] -> [E]
    rng = np.random.default_rng(5)
    phis = np.stack([rng.normal(size=(10, 3)) @ rng.normal(size=(3, 5)), rng.normal(size=(10, 5))]).astype(F32)
    sv = singular_values(phis)
    assert sv.shape == (2, 5)
    n, d = 10, 5
    for fn, key in ((srank, "srank"), (approx_rank, "approx"), (effective_rank, "eff"),
                    (lambda s: feature_rank(s, n), "feat"), (lambda s: matrix_rank(s, n, d), "mat")):
        out = fn(sv)
        assert out.shape == (2,)
        np.testing.assert_allclose(out, [np_ranks(p)[key] for p in phis], rtol=1e-4)


def test_rank_logs_keys_and_twin_mean():
    rng = np.random.default_rng(6)
    phi = rng.normal(size=(12, 4)).astype(F32)
    logs = rank_logs("critic", phi)
    assert set(logs) == {"srank_delta_0.01/critic", "approx_rank_0.99/critic", "effective_rank/critic",
                         "feature_rank_eps_0.01/critic", "matrix_rank/critic"}
    assert not any("stable" in k for k in logs)
    ref = np_ranks(phi)
    np.testing.assert_allclose(logs["effective_rank/critic"], ref["eff"], rtol=1e-5)
    assert float(logs["matrix_rank/critic"]) == ref["mat"]
    twin = np.stack([phi, np.repeat(phi[:, :2], 2, axis=1)])               # member 1 has rank 2
    tl = rank_logs("critic", twin, delta=0.05, p=0.9, eps=0.5)
    assert set(tl) == {"srank_delta_0.05/critic", "approx_rank_0.9/critic", "effective_rank/critic",
                       "feature_rank_eps_0.5/critic", "matrix_rank/critic"}
    r0, r1 = np_ranks(twin[0], 0.05, 0.9, 0.5), np_ranks(twin[1], 0.05, 0.9, 0.5)
    for key, rk in (("srank_delta_0.05", "srank"), ("approx_rank_0.9", "approx"), ("effective_rank", "eff"),
                    ("feature_rank_eps_0.5", "feat"), ("matrix_rank", "mat")):
        np.testing.assert_allclose(tl[f"{key}/critic"], (r0[rk] + r1[rk]) / 2, rtol=1e-5, err_msg=key)
        assert tl[f"{key}/critic"].dtype == jnp.float32
    with pytest.raises(ValueError):
        rank_logs("critic", np.zeros((2, 3, 4, 5), F32))


def test_singular_values_fallback():
    rng = np.random.default_rng(7)
    phi = rng.normal(size=(3, 9, 4)).astype(F32)
    ref = np.stack([np.linalg.svd(p, compute_uv=False) for p in phi])
    np.testing.assert_allclose(singular_values(phi), ref, rtol=1e-5)
    # the branch lax.cond selects on failure, called directly: eager, jit, vmap
    np.testing.assert_allclose(host_singular_values(phi[0]), ref[0], rtol=1e-5)
    np.testing.assert_allclose(jax.jit(host_singular_values)(phi[1]), ref[1], rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(host_singular_values)(phi), ref, rtol=1e-5)
    np.testing.assert_allclose(host_singular_values(phi), ref, rtol=1e-5)     # batched input
    # a non-finite matrix gives NaN (SciPy is not asked), without raising
    bad = phi.copy()
    bad[1, 0, 0] = np.nan
    out = np.asarray(singular_values(bad))
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()
    np.testing.assert_allclose(out[[0, 2]], ref[[0, 2]], rtol=1e-5)


def test_singular_values_cond_selects_host_only_on_failure(monkeypatch):
    calls = []
    real = rank_mod.scipy_svdvals
    # spy on the host SVD; the shapes below are used nowhere else, so every trace here sees the spy
    monkeypatch.setattr(rank_mod, "scipy_svdvals", lambda x: calls.append(np.shape(x)) or real(x))
    rng = np.random.default_rng(8)
    phi = rng.normal(size=(2, 7, 5)).astype(F32)
    ref = np.stack([np.linalg.svd(p, compute_uv=False) for p in phi])
    np.testing.assert_allclose(jax.jit(jax.vmap(singular_values))(phi), ref, rtol=1e-5)
    np.testing.assert_allclose(singular_values(phi[0]), ref[0], rtol=1e-5)
    assert calls == []                                           # healthy SVD: the callback never runs
    # what the cond does with a failed device SVD (NaN singular values)
    failed = np.full((2, 5), np.nan, F32)
    np.testing.assert_allclose(fallback_if_nonfinite(failed[0], phi[0]), ref[0], rtol=1e-5)
    assert calls == [(7, 5)]
    np.testing.assert_allclose(jax.jit(jax.vmap(fallback_if_nonfinite))(failed, phi), ref, rtol=1e-5)
    assert calls[1:] == [(2, 7, 5)]                              # one host call for the whole vmapped batch
    calls.clear()
    np.testing.assert_allclose(jax.jit(jax.vmap(fallback_if_nonfinite))(ref, phi), ref, rtol=1e-6)
    mixed = ref.copy()
    mixed[1, 2] = np.inf                                         # one member failed: all recomputed once
    np.testing.assert_allclose(jax.vmap(fallback_if_nonfinite, in_axes=(0, 0))(mixed, phi), ref, rtol=1e-5)
    assert calls == [(2, 7, 5)]
    np.testing.assert_allclose(jax.vmap(fallback_if_nonfinite, in_axes=(0, None))(mixed, phi[0]),
                               np.stack([ref[0], ref[0]]), rtol=1e-5)   # unbatched phi is broadcast


# ------------------------------------------------------------------------------------------------ NTK (§6)

def test_ntk_linear_critic_10_3():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]], F32)
    J = jacobian(lambda w, x: w @ x, np.array([0.3, -0.7], F32), X)
    np.testing.assert_allclose(J, X)
    assert tuple(int(r) for r in ntk_rank(J)) == (2, 2)
    Jb = jacobian(lambda p, x: p["w"] @ x + p["b"], {"w": np.array([0.3, -0.7], F32), "b": F32(0.1)}, X)
    assert Jb.shape == (4, 3)
    assert tuple(int(r) for r in ntk_rank(Jb)) == (3, 3)
    K = np.asarray(Jb, np.float64) @ np.asarray(Jb, np.float64).T
    assert np.linalg.matrix_rank(K, tol=1e-6) == 3


def _mlp_q(params, x):
    """tanh MLP critic on ONE (obs, act) pair."""
    s, a = x
    h = jnp.tanh(jnp.concatenate([s, a]) @ params["l0"]["kernel"] + params["l0"]["bias"])
    return (h @ params["out"]["kernel"])[0] + params["out"]["bias"][0]


def test_ntk_random_vs_numpy_pytree_inputs_and_duplicates():
    rng = np.random.default_rng(9)
    params = {"l0": {"kernel": rng.normal(size=(3, 6)).astype(F32), "bias": np.zeros(6, F32)},
              "out": {"kernel": rng.normal(size=(6, 1)).astype(F32), "bias": np.zeros(1, F32)}}
    S = rng.normal(size=(8, 2)).astype(F32)
    A = rng.normal(size=(8, 1)).astype(F32)
    S[5], A[5] = S[1], A[1]                                       # duplicated input: rank 7
    J = jacobian(_mlp_q, params, (S, A))
    assert J.shape == (8, 3 * 6 + 6 + 6 + 1)
    grad = jax.jit(jax.grad(_mlp_q))
    for b in (0, 3):   # each row is the flattened per-example gradient
        g = grad(params, (S[b], A[b]))
        row = np.concatenate([np.asarray(x).reshape(-1) for x in jax.tree.leaves(g)])   # ravel_pytree order
        np.testing.assert_allclose(np.asarray(J)[b], row, rtol=1e-5, atol=1e-7)
    J64 = np.asarray(J, np.float64)
    K = J64 @ J64.T
    eig = np.sort(np.linalg.eigvalsh(K))[::-1]
    for tol in (1e-6, 1e-2):
        assert not np.any((eig > tol / 10) & (eig < tol * 10)) or tol == 1e-6 and eig[-1] < 1e-9
        a, r = ntk_rank(J, tol)
        assert int(a) == np.linalg.matrix_rank(K, tol=tol)
        assert int(r) == int(np.sum(eig > tol * eig[0]))
    assert int(ntk_rank(J)[0]) == 7
    # abs is scale-dependent, rel is not
    a_small, r_small = ntk_rank(np.asarray(J) * F32(1e-3))
    assert int(a_small) < 7 and int(r_small) == 7
    np.testing.assert_array_equal([int(v) for v in ntk_rank(np.zeros((4, 5), F32))], [0, 0])


# ---------------------------------------------------------------------------------------- norms (§3, §7)

def test_grad_stats_10_3_and_random():
    g = {"a": np.array([0.0, 1e-9, 1.0], F32), "b": np.array([2.0, 0.0], F32)}
    st = grad_stats(g)
    np.testing.assert_allclose(st["sparsity"], 0.6, rtol=1e-6)
    np.testing.assert_allclose(st["l1"], 3 + 1e-9, rtol=1e-6)
    np.testing.assert_allclose(st["l2"], math.sqrt(5), rtol=1e-6)
    rng = np.random.default_rng(10)
    tree = {"x": {"kernel": rng.normal(size=(4, 3)) * (rng.random((4, 3)) < 0.5), "bias": np.zeros(3)},
            "y": [rng.normal(size=5).astype(F32), np.array(1e-9, F32)]}
    tree = jax.tree.map(lambda v: np.asarray(v, F32), tree)
    flat = [float(v) for leaf in jax.tree.leaves(tree) for v in np.asarray(leaf).reshape(-1)]
    st = grad_stats(tree, threshold=1e-8)
    np.testing.assert_allclose(st["sparsity"], sum(abs(v) < 1e-8 for v in flat) / len(flat), rtol=1e-6)
    np.testing.assert_allclose(st["l1"], sum(abs(v) for v in flat), rtol=1e-5)
    np.testing.assert_allclose(st["l2"], math.sqrt(sum(v * v for v in flat)), rtol=1e-5)
    np.testing.assert_allclose(param_rms(tree), math.sqrt(sum(v * v for v in flat) / len(flat)), rtol=1e-5)
    ref = jax.tree.map(lambda v: v + F32(0.5), tree)
    np.testing.assert_allclose(param_dist_init_rms(tree, ref), 0.5, rtol=1e-5)
    np.testing.assert_allclose(param_dist_init_rms(tree, tree), 0.0)


def test_layer_groups_and_grad_to_param_ratio():
    rng = np.random.default_rng(11)
    r = lambda *s: np.asarray(rng.normal(size=s), F32)  # noqa: E731
    params = {"log_alpha": r(), "temp": r(2),                       # bare top-level leaves: own layers
              "mlp": {"hidden_0": {"kernel": r(3, 4), "bias": np.zeros(4, F32)},
                      "ln": {"scale": np.ones(4, F32), "offset": np.zeros(4, F32)}},
              "out": {"kernel": r(2, 4, 1), "bias": np.zeros((2, 1), F32)}}   # ensemble: members pooled
    grads = jax.tree.map(lambda p: r(*p.shape), params)
    groups = layer_groups(params)
    leaves = jax.tree.leaves(params)
    assert sorted(len(g) for g in groups) == [1, 1, 2, 2, 2] and sum(map(len, groups)) == len(leaves)
    gl = [[grads["log_alpha"]], [grads["temp"]], [grads["mlp"]["hidden_0"]["kernel"], grads["mlp"]["hidden_0"]["bias"]],
          [grads["mlp"]["ln"]["scale"], grads["mlp"]["ln"]["offset"]], [grads["out"]["kernel"], grads["out"]["bias"]]]
    pl = [[params["log_alpha"]], [params["temp"]], [params["mlp"]["hidden_0"]["kernel"], params["mlp"]["hidden_0"]["bias"]],
          [params["mlp"]["ln"]["scale"], params["mlp"]["ln"]["offset"]], [params["out"]["kernel"], params["out"]["bias"]]]
    np.testing.assert_allclose(grad_to_param_ratio(grads, params), np_group_ratio(gl, pl), rtol=1e-5)
    # a zero bias leaf alone does not blow the ratio up (the layer includes its kernel)
    assert np.isfinite(float(grad_to_param_ratio(grads, params)))
    upd = jax.tree.map(lambda g: F32(-1e-3) * g, grads)
    gnorm = math.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in jax.tree.leaves(upd)))
    pnorm = math.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in leaves))
    np.testing.assert_allclose(update_to_param_ratio(upd, params), gnorm / pnorm, rtol=1e-5)
    after = jax.tree.map(np.add, params, upd)
    logs = norm_logs("actor", grads, upd, params, after, params)
    assert set(logs) == {f"{k}/actor" for k in ("grad_sparsity", "grad_l1", "grad_l2", "grad_to_param_ratio",
                                                "update_to_param_ratio", "param_rms", "param_dist_init_rms")}
    np.testing.assert_allclose(logs["param_dist_init_rms/actor"],
                               gnorm / math.sqrt(sum(x.size for x in leaves)), rtol=1e-4)
    np.testing.assert_allclose(logs["grad_to_param_ratio/actor"], np_group_ratio(gl, pl), rtol=1e-5)
    np.testing.assert_allclose(logs["grad_l2/actor"], gnorm * 1e3, rtol=1e-5)


def test_feature_norm():
    rng = np.random.default_rng(12)
    phi = rng.normal(size=(2, 5, 3)).astype(F32)
    want = np.mean([math.sqrt(sum(float(v) ** 2 for v in row)) for m in phi for row in m])
    np.testing.assert_allclose(feature_norm(phi), want, rtol=1e-6)
    np.testing.assert_allclose(feature_norm(phi[0]), np.mean(np.linalg.norm(phi[0], axis=1)), rtol=1e-6)
    np.testing.assert_allclose(feature_norm(np.array([[3.0, 4.0], [0.0, 0.0]], F32)), 2.5)


# ------------------------------------------------------------------------------------------------ churn (§8)

def np_log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def test_churn_functions_vs_numpy():
    rng = np.random.default_rng(13)
    q0 = rng.normal(size=(9, 4)).astype(F32)
    q1 = q0 + 0.6 * rng.normal(size=(9, 4)).astype(F32)
    want = sum(int(np.argmax(a) != np.argmax(b)) for a, b in zip(q0, q1)) / 9
    np.testing.assert_allclose(greedy_churn(q0, q1), want, rtol=1e-6)
    np.testing.assert_allclose(greedy_churn(q0, q0 + 10.0), 0.0)
    np.testing.assert_allclose(greedy_churn(np.array([[1.0, 2.0], [3.0, 0.0]], F32),
                                            np.array([[2.0, 1.0], [3.0, 0.0]], F32)), 0.5)
    a0, a1 = rng.normal(size=(2, 6, 3)).astype(F32)
    np.testing.assert_allclose(action_change(a0, a1),
                               np.mean([sum((float(x) - float(y)) ** 2 for x, y in zip(r0, r1))
                                        for r0, r1 in zip(a0, a1)]), rtol=1e-5)
    m0, l0, m1, l1 = rng.normal(size=(4, 6, 3)).astype(F32) * 0.5
    kl = np.mean([sum(math.log(math.exp(c) / math.exp(a)) + (math.exp(a) ** 2 + (x - y) ** 2)
                      / (2 * math.exp(c) ** 2) - 0.5 for x, a, y, c in zip(*r))
                  for r in zip(m0.tolist(), l0.tolist(), m1.tolist(), l1.tolist())])
    np.testing.assert_allclose(gaussian_kl(m0, l0, m1, l1), kl, rtol=1e-5)
    np.testing.assert_allclose(gaussian_kl(m0, l0, m0, l0), 0.0, atol=1e-6)
    # independent 1-D check by numerical integration of p log(p / q)
    x = np.linspace(-12, 12, 200001)
    pdf = lambda m, s: np.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))  # noqa: E731
    p, q = pdf(0.3, 0.8), pdf(-0.4, 1.3)
    num = np.sum(p * np.log(p / q)) * (x[1] - x[0])
    one = lambda v: np.array([[v]], F32)  # noqa: E731
    np.testing.assert_allclose(gaussian_kl(one(0.3), one(math.log(0.8)), one(-0.4), one(math.log(1.3))), num,
                               rtol=1e-4)
    z0, z1 = (rng.normal(size=(2, 7, 5)) * 3).astype(F32)
    ckl = np.mean([sum(math.exp(a) * (a - b) for a, b in zip(np_log_softmax(r0.tolist()),
                                                                  np_log_softmax(r1.tolist())))
                   for r0, r1 in zip(z0, z1)])
    np.testing.assert_allclose(categorical_kl(z0, z1), ckl, rtol=1e-5)
    big = categorical_kl(np.array([[1000.0, 0.0, -1000.0]], F32), np.array([[0.0, 1000.0, 0.0]], F32))
    np.testing.assert_allclose(big, 1000.0, rtol=1e-5)                 # stable: finite, = 1000


def test_churn_logs_views():
    rng = np.random.default_rng(14)
    q0, q1 = rng.normal(size=(2, 5, 3)).astype(F32)
    assert set(churn_logs("critic", {"q": q0}, {"q": q1})) == {"policy_churn/critic"}
    lg = churn_logs("actor", {"logits": q0}, {"logits": q1})
    np.testing.assert_allclose(lg["policy_churn/actor"], greedy_churn(q0, q1))
    np.testing.assert_allclose(lg["policy_churn_kl/actor"], categorical_kl(q0, q1))
    a = churn_logs("actor", {"action": q0}, {"action": q1})
    assert set(a) == {"policy_churn/actor"}
    np.testing.assert_allclose(a["policy_churn/actor"], action_change(q0, q1))
    g = churn_logs("actor", {"action": q0, "mean": q0, "log_std": q1 * 0.1},
                   {"action": q1, "mean": q1, "log_std": q0 * 0.1})
    np.testing.assert_allclose(g["policy_churn_kl/actor"], gaussian_kl(q0, q1 * 0.1, q1, q0 * 0.1))
    for bad in ({"mean": q0}, {"q": q0, "logits": q0}, {"action": q0, "mean": q0}):
        with pytest.raises(ValueError):
            churn_logs("actor", bad, bad)
    with pytest.raises(ValueError):
        churn_logs("actor", {"q": q0}, {"logits": q1})


# ---------------------------------------------------------------------------------- jit / vmap agreement

def _seed_data(seed):
    rng = np.random.default_rng(100 + seed)
    f = lambda *s: rng.normal(size=s).astype(F32)  # noqa: E731
    h0 = np.maximum(f(2, 8, 4), 0)                                          # ensemble layers [E, B, H]
    h0[:, :, 1] = 0.0                                                       # a dead unit
    # the critic has the shapes of test_ntk_random_vs_numpy's (eager op compilations are shared)
    params = {"l0": {"kernel": f(3, 6), "bias": np.zeros(6, F32)}, "out": {"kernel": f(6, 1), "bias": f(1)}}
    init = jax.tree.map(lambda v: v + 0.1 * f(*v.shape), params)
    return {"acts": {"hidden_0": h0, "hidden_1": np.tanh(f(2, 8, 3))},
            "phi": f(12, 4), "twin": np.stack([f(12, 4), np.repeat(f(12, 2), 2, axis=1)]),
            "params": params, "init": init, "upd": jax.tree.map(np.subtract, params, init),
            "grads": jax.tree.map(lambda v: f(*v.shape) * (rng.random(v.shape) < 0.7), params),
            "x": (f(8, 2), f(8, 1)), "q": f(6, 3), "q2": f(6, 3),
            "m": f(6, 2), "ls": 0.3 * f(6, 2), "m2": f(6, 2), "ls2": 0.3 * f(6, 2), "a": f(6, 2), "a2": f(6, 2),
            "prev": rng.random(7) < 0.5, "now": rng.random(7) < 0.5, "scores": rng.random(5) * 0.2,
            "now5": rng.random(5) < 0.5}


def _all_logs(d):
    acts = d["acts"]
    out = {}
    out.update(fau_logs("critic", {"hidden_0": acts["hidden_0"]}, "relu"))
    out.update(fau_logs("tanh", {"hidden_1": acts["hidden_1"]}, "tanh"))
    out.update(linearised_logs("critic", acts, LAYERS_E, "relu"))
    out.update(rank_logs("critic", d["phi"]))
    out.update(rank_logs("twin", d["twin"]))
    out.update(norm_logs("critic", d["grads"], d["upd"], d["init"], d["params"], d["init"]))
    out["feature_norm/twin"] = feature_norm(d["twin"])
    out.update(ntk_logs("critic", jacobian(_mlp_q, d["params"], d["x"])))
    out.update(churn_logs("q", {"q": d["q"]}, {"q": d["q2"]}))
    out.update(churn_logs("pi", {"action": d["a"], "mean": d["m"], "log_std": d["ls"]},
                          {"action": d["a2"], "mean": d["m2"], "log_std": d["ls2"]}))
    out.update(churn_logs("cat", {"logits": d["q"]}, {"logits": d["q2"]}))
    out["dormant_overlap/critic"] = set_overlap(d["prev"], d["now"])
    m = dormant_masks({"a": d["scores"]}, 0.1)["a"]
    out["dormant_overlap/masks"] = set_overlap(m, d["now5"])
    return out


def test_jit_and_vmap_match_eager():
    seeds = [_seed_data(i) for i in range(2)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *seeds)
    eager = [_all_logs(d) for d in seeds]
    keys = set(eager[0])
    assert len(keys) > 30
    jitted = jax.jit(_all_logs)
    vm = jax.vmap(_all_logs)(stacked)
    jvm = jax.jit(jax.vmap(_all_logs))(stacked)
    for i, d in enumerate(seeds):
        j = jitted(d)
        assert set(j) == keys == set(vm) == set(jvm)
        for k in keys:
            for other in (j[k], vm[k][i], jvm[k][i]):
                np.testing.assert_allclose(other, eager[i][k], rtol=2e-5, atol=1e-6, err_msg=k)
    # spot-check against the NumPy references
    for i, d in enumerate(seeds):
        np.testing.assert_allclose(eager[i]["fau/critic"], np_fau({"h": d["acts"]["hidden_0"]}, "relu")[None],
                                   rtol=1e-6)
        r = np_ranks(d["phi"])
        assert float(eager[i]["matrix_rank/critic"]) == r["mat"]
        assert float(eager[i]["srank_delta_0.01/critic"]) == r["srank"]


def test_package_reexports():
    for name in ("active_mask", "fau_logs", "positive_preactivation", "linearised_logs", "singular_values",
                 "srank", "approx_rank", "effective_rank", "feature_rank", "matrix_rank", "rank_logs", "jacobian",
                 "ntk_rank", "ntk_logs", "grad_stats", "param_rms", "param_dist_init_rms", "feature_norm",
                 "grad_to_param_ratio", "update_to_param_ratio", "norm_logs", "greedy_churn", "action_change",
                 "gaussian_kl", "categorical_kl", "churn_logs", "set_overlap", "dormant_masks",
                 "dormant_scores", "grama_scores", "normalize_scores", "ratio_logs", "unit_magnitude"):
        assert callable(getattr(metrics, name)), name
