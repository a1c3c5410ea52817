"""NE's `dense_layers=first_and_last` keeps the network's first layer and output head dense (docs/interventions.md,
Neuroplastic Expansion; after RLx2): the first and output kernels of an MLP; on a residual net (SimBa, BroNet) the input
projection `embed` and the head `output`, so that every block kernel is sparse."""
from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import optax
import pytest

from plastic.core import Net
from plastic.interventions.ne import NE, NEConfig
from plastic.networks import BroNet, SimBa, get_path

KEY = jax.random.PRNGKey(0)
X = jax.random.normal(jax.random.PRNGKey(1), (8, 6))


def _masked(module, dense_layers):
    net = Net.of("critic", module, optax.adam(1e-3))
    agent = SimpleNamespace(nets={"critic": net}, role=lambda n: "critic", critic_net="critic")
    ns = net.init(KEY, X)
    iv = NE(NEConfig(experience_review="off", dense_layers=dense_layers, initial_sparsity=0.8), "td3")
    state = iv.init(KEY, agent, SimpleNamespace(nets={"critic": ns}))
    return iv, iv.apply_masks(net, ns.params, state["nets"]["critic"]), ns.params


@pytest.mark.parametrize("cls", [SimBa, BroNet])
@pytest.mark.parametrize("ensemble", [0, 2])
def test_first_and_last_on_residual_nets_keeps_the_embedding_and_head_dense(cls, ensemble):
    module = cls(width=16, blocks=2, out=3, ensemble=ensemble)
    iv, params, raw = _masked(module, "first_and_last")
    p = iv.plans["critic"]
    blocks = [f"block_{i}_{k}" for k in ("hidden", "out") for i in range(2)]
    assert sorted(k.name for k in p.sparse) == sorted(blocks)  # every block kernel, the first and last included
    for name in ("block_0_hidden", "block_1_out"):
        w = np.asarray(params[name]["kernel"])
        assert 0 < np.count_nonzero(w) < 0.5 * w.size, name   # sparse from the start
    for name in ("embed", "output"):  # never masked: every entry as initialised
        np.testing.assert_array_equal(np.asarray(params[name]["kernel"]), np.asarray(raw[name]["kernel"]))
    # the two dense layers count toward the global density (20 % of all kernels' entries at the start)
    ends = sum(np.asarray(raw[n]["kernel"]).size for n in ("embed", "output"))
    assert p.dense_size == ends
    total = ends + sum(p.size[k] * p.rows[k] for k in p.size)
    active = sum(p.n_init[k] * p.rows[k] for k in p.n_init)
    assert abs(active + ends - 0.2 * total) <= max(ensemble, 1)
    assert active < 0.2 * sum(p.size[k] * p.rows[k] for k in p.size)  # the blocks got sparser to compensate


def test_none_on_residual_nets_is_unchanged_and_mlp_first_and_last_too():
    """`none`: every block kernel is masked (the embedding and head, outside NE's kernels, stay as they are);
    on an MLP `first_and_last` still means its first and output kernels."""
    from plastic.networks import MLP
    iv, params, raw = _masked(SimBa(width=8, blocks=2, out=3), "none")
    p = iv.plans["critic"]
    assert len(p.sparse) == 4 and p.dense_size == 0
    total = sum(p.size[k] * p.rows[k] for k in p.size)
    assert abs(sum(p.n_init[k] for k in p.n_init) - 0.2 * total) <= 1
    iv, params, raw = _masked(MLP((16, 16), 3), "first_and_last")
    p = iv.plans["critic"]
    assert [k.name for k in p.sparse] == ["hidden_1"]
    assert p.dense_size == 6 * 16 + 16 * 3
    for name in ("hidden_0", "output"):
        np.testing.assert_array_equal(np.asarray(get_path(params, (name, "kernel"))),
                                      np.asarray(get_path(raw, (name, "kernel"))))
    assert p.size["hidden_1"] == 256
