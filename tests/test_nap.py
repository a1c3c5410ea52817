"""Normalize-and-Project (docs/interventions.md, Normalize-and-Project): the projection against NumPy on a twin
critic with LayerNorm (per member, joint LayerNorm affine, biases kept, directions kept), a run whose every update
projects ends with every weight at its initial norm, the one-line errors. The event counts: tests/test_census.py."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import assert_cli_error, rows, tiny_trainer
from plastic.core import Net
from plastic.interventions.nap import part_norms, project, projected_parts
from plastic.networks import MLP


def test_projection_rescales_each_kernel_and_each_layernorm_pair_per_member_to_its_initial_norm():
    net = Net.of("critic", MLP((8, 5), 1, "relu", ensemble=2, layer_norm=True), optax.sgd(1.0))
    p0 = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3))).params
    parts = projected_parts(p0, 2)
    assert sorted(paths for paths, _ in parts) == [(("hidden_0", "kernel"),), (("hidden_1", "kernel"),),
                                                   (("ln_0", "scale"), ("ln_0", "bias")),
                                                   (("ln_1", "scale"), ("ln_1", "bias")), (("output", "kernel"),)]
    targets = part_norms(p0, parts)
    grown = jax.tree.map(lambda x: x * 3.0 + 0.1, p0)              # what training does to the norms
    out = project(grown, parts, targets)
    for e in range(2):
        for layer in ("hidden_0", "hidden_1", "output"):
            k0, k = (np.asarray(t[layer]["kernel"][e], np.float64) for t in (p0, grown))
            got = np.asarray(out[layer]["kernel"][e], np.float64)
            assert np.linalg.norm(got) == pytest.approx(np.linalg.norm(k0), rel=1e-5)
            np.testing.assert_allclose(got / np.linalg.norm(got), k / np.linalg.norm(k), rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(out[layer]["bias"], grown[layer]["bias"])     # biases kept
        for ln in ("ln_0", "ln_1"):
            pair0 = np.concatenate([np.asarray(p0[ln][k][e], np.float64) for k in ("scale", "bias")])
            pair = np.concatenate([np.asarray(grown[ln][k][e], np.float64) for k in ("scale", "bias")])
            got = np.concatenate([np.asarray(out[ln][k][e], np.float64) for k in ("scale", "bias")])
            assert np.linalg.norm(got) == pytest.approx(np.linalg.norm(pair0), rel=1e-5)   # sqrt(units): (1, 0)
            np.testing.assert_allclose(got * np.linalg.norm(pair) / np.linalg.norm(got), pair, rtol=1e-5)


def test_a_run_projecting_every_update_ends_with_every_weight_at_its_initial_norm(tmp_path):
    """TD3 with LayerNorm, 2 vmapped seeds, period 1: after the last update every kernel (per critic member) and
    LayerNorm pair is back at its initial norm, though the weights have moved; every update counted one event."""
    t = tiny_trainer("td3", "nap", 300, {"td3.norm": "layer", "nap.period": 1})
    ts0, _ = t.program.init_state()
    t.run(tmp_path / "nap")
    for name in ("actor", "critic"):
        for seed in range(2):
            p0, p = (jax.tree.map(lambda x: x[seed], s.agent.nets[name].params) for s in (ts0, t.final_state[0]))
            parts = projected_parts(p0, 2 if name == "critic" else 0)
            want, got = (np.concatenate([np.ravel(n) for n in part_norms(q, parts)]) for q in (p0, p))
            np.testing.assert_allclose(got, want, rtol=2e-5)
            assert max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p0))) > 1e-3
    counters = t.final_state[1]
    st = t.final_state[0].interventions["nap"]
    for name in ("actor", "critic"):
        assert np.asarray(st[name]["events"]).tolist() == [int(counters[name])] * 2
    assert {"nap/events/critic", "nap/weight_norm/actor"} <= set(rows(tmp_path / "nap")[-1])


@pytest.mark.parametrize("argv, needle", [
    (["--agent", "td3", "--intervention", "nap"], "nap normalises before each nonlinearity: add --td3.norm layer"),
    (["--agent", "sac", "--intervention", "nap", "--sac.norm", "layer", "--nap.networks", "temperature"],
     "nap.networks=temperature is not valid; choose among: actor, critic"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)
