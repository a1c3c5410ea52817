"""`--AGENT.norm layer` (docs/interventions.md, Network architectures): a LayerNorm between every hidden Dense of
an mlp and its activation, on every agent; the layer map names it (so unit resets restore its affine
parameters); ReGraMa's τ default follows; invalid combinations are one-line errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import NETS, assert_cli_error, tiny_trainer
from plastic.config import build
from plastic.core import Net
from plastic.networks import MLP


def test_an_mlp_with_layer_norm_computes_dense_norm_act():
    net = Net.of("critic", MLP((6,), 2, "relu", layer_norm=True), optax.sgd(1.0))
    ns = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
    p = jax.tree.map(np.asarray, ns.params)  # (LayerNorm eps 1e-5, docs/interventions.md)
    p["ln_0"] = {"scale": np.linspace(0.5, 1.5, 6, dtype=np.float32),
                 "bias": np.linspace(-0.2, 0.3, 6, dtype=np.float32)}
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    z = x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"]
    z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)
    h = np.maximum(z * p["ln_0"]["scale"] + p["ln_0"]["bias"], 0)
    y, _ = net.apply(jax.tree.map(jnp.asarray, p), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), h @ p["output"]["kernel"] + p["output"]["bias"], rtol=1e-4, atol=1e-5)
    assert net.layers[0].layer_norm == (("ln_0", "scale"), ("ln_0", "bias"))


@pytest.mark.parametrize("agent", ["td3", "sac", "dqn", "ppo"])
def test_every_agent_builds_layer_norm_mlps_and_grama_tau_follows(agent):
    cfg = build(agent, "grama", overrides={f"{agent}.norm": "layer", f"{agent}.hidden": "8,8"})
    assert cfg.interventions["grama"].tau == 0.01  # the paper's value on LayerNorm networks
    assert build(agent, "grama").interventions["grama"].tau == 0.0
    nets = tiny_trainer(agent, "none", 100, {f"{agent}.norm": "layer"}).agent.nets
    for name in NETS[agent]:
        assert [spec.layer_norm is not None for spec in nets[name].layers] == [True, True], name


@pytest.mark.parametrize("argv, needle", [
    (["--agent", "sac", "--sac.network", "simba", "--sac.norm", "layer"], "sac.norm=layer applies to sac.network=mlp"),
    (["--agent", "dqn", "--env", "gymnax:Breakout-MinAtar", "--dqn.torso", "minatar", "--dqn.norm", "layer"],
     "not the minatar conv torso"),
    (["--agent", "td3", "--td3.norm", "batch"], "td3.norm='batch' is not valid; choose one of: none, layer"),
])
def test_bad_norm_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)


def test_unit_resets_on_a_layer_norm_mlp_restore_the_units_affine_parameters(tmp_path):
    """DQN with norm=layer and ReGraMa firing every 10 updates at τ = 1 (every unit is reset) on 2 vmapped
    seeds: after the last event the LayerNorm scale is 1 and the offset 0 wherever no update followed."""
    t = tiny_trainer("dqn", "grama", 200, {"dqn.norm": "layer", "grama.period": 1, "grama.tau": 1e9})
    t.run(tmp_path / "run")
    ts = t.final_state[0]
    assert np.all(np.asarray(ts.interventions["grama"]["q"]["events"]) > 0)
    ln = ts.agent.nets["q"].params["ln_0"]
    np.testing.assert_array_equal(np.asarray(ln["scale"]), 1.0)
    np.testing.assert_array_equal(np.asarray(ln["bias"]), 0.0)
