"""Image torsos (Nature-CNN, MinAtar): a conv channel is a unit of the layer map, with its outgoing rows
tiled over spatial positions after the flatten; ReGraMa and the metrics work on it; Atari via ale-py."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metrics.units import grama_scores
from plastic.config import build
from plastic.core import Hooks, Net, NetState, gradient_step
from plastic.interventions.regrama import ReGraMa, ReGraMaConfig
from plastic.networks import ConvNet, get_path, set_path
from plastic.replay import Replay
from plastic.drivers import JitOffPolicy
from plastic.surgery import reset_units, touched_entries
from plastic.drivers import make_trainer
from tests.helpers import make, rows

SHAPE = (12, 12, 3)
KEY = jax.random.PRNGKey(0)


def conv_net(probe_point="pre_activation"):
    # 12x12 -> conv 3x3/2 -> 5x5x4 -> conv 3x3/1 -> 3x3x5 -> flatten 45 -> 6 -> 3
    module = ConvNet(SHAPE, ((4, 3, 2), (5, 3, 1)), (6,), 3, probe_point=probe_point)
    net = Net.of("q", module, optax.adam(1e-3), 1e-3)
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, int(np.prod(SHAPE))))
    return net, net.init(KEY, x[:1]), x


def test_layer_map_matches_the_parameters():
    net, ns, x = conv_net()
    assert [l.name for l in net.layers] == ["conv_0", "conv_1", "hidden_0"]
    assert [l.consumer_tiles for l in net.layers] == [(1,), (9,), (1,)]
    _, acts = net.apply(ns.params, x)
    for layer in net.layers:
        assert get_path(ns.params, layer.kernel).shape[-1] == layer.width
        (consumer, _), = layer.consumer_rows()
        assert get_path(ns.params, consumer).shape[-2] == layer.width * layer.consumer_tiles[0]
        assert acts[layer.name].shape == net.module.probe_shapes(8)[layer.name]


def silenced(net, params, masks):
    """The same network with the flagged units' incoming weights and bias at 0: ReLU(0) = 0, so each
    flagged unit contributes nothing downstream, whatever its outgoing weights."""
    for layer in net.layers:
        m = masks[layer.name]
        params = set_path(params, layer.kernel, jnp.where(m, 0.0, get_path(params, layer.kernel)))
        params = set_path(params, layer.bias, jnp.where(m, 0.0, get_path(params, layer.bias)))
    return params


def test_reset_equals_removing_the_flagged_units():
    """Reset (fresh incoming, zero outgoing) of random channels and units = the network with those units
    silenced; a wrong flatten tiling would zero another channel's rows and break the equality."""
    net, ns, x = conv_net()
    masks = {"conv_0": jnp.array([0, 1, 0, 1], bool), "conv_1": jnp.array([1, 0, 0, 1, 0], bool),
             "hidden_0": jnp.array([0, 0, 1, 0, 0, 1], bool)}
    new = reset_units(net, ns, masks, jax.random.PRNGKey(4))
    np.testing.assert_allclose(net.apply(new.params, x)[0], net.apply(silenced(net, ns.params, masks), x)[0],
                               rtol=1e-5, atol=1e-6)
    touched = touched_entries(net, ns.params, masks)
    for p, q, t in zip(jax.tree.leaves(ns.params), jax.tree.leaves(new.params), jax.tree.leaves(touched)):
        np.testing.assert_array_equal(np.where(t, 0, p), np.where(t, 0, q))  # untouched: bit-identical
    rows_ = np.asarray(touched["hidden_0"]["kernel"][:, 0]).reshape(9, 5)  # [spatial, channel] of conv_1
    assert (rows_ == np.asarray(masks["conv_1"])[None, :]).all()


@pytest.mark.parametrize("target", ["pre_activation", "weight_grad"])
def test_dead_channels_are_reset_without_changing_the_function(target):
    """Two channels of the last conv are dead (bias -1e3): GraMa score 0, reset by ReGraMa at τ = 0;
    the output does not move and Adam's moments are zeroed at every touched entry (also the 9 tiled
    rows per channel of the Dense kernel after the flatten), nowhere else."""
    net, ns, x = conv_net()
    dead = jnp.array([True, False, True, False, False])
    params = set_path(ns.params, ("conv_1", "bias"), jnp.where(dead, -1e3, 0.0))
    ones = lambda s: jax.tree.map(jnp.ones_like, s)  # noqa: E731
    opt = optax.tree_map_params(net.tx, ones, net.tx.init(params))
    ns = NetState(params, opt)
    iv = ReGraMa(ReGraMaConfig(tau=0.0, period=1, score_target=target), "dqn")

    class Agent:
        nets = {"q": net}
        role = staticmethod(lambda n: "critic")
    istate = {"grama": iv.init(KEY, Agent())}
    target_y = jax.random.normal(KEY, (8, 3))

    def loss_fn(p, probes):
        y, acts = net.apply(p, x, probes)
        return jnp.mean(jnp.square(y - target_y)), acts

    new, hooks, _, _, logs = jax.jit(lambda ns, s: gradient_step(
        net, ns, loss_fn, batch_size=8, count=0, key=KEY, hooks=Hooks(s, (iv,)), inputs=x))(ns, istate)
    s = hooks.state["grama"]["q"]
    assert float(s["reset_fraction"]["conv_1"]) == pytest.approx(2 / 5)
    assert float(s["output_jump"]) < 1e-5
    np.testing.assert_array_equal(s["fresh"]["conv_1"], dead)  # (a hidden_0 unit may be dead at init too)
    touched = touched_entries(net, new.params, s["fresh"])
    mu = new.opt_state[0].mu
    for m, t in zip(jax.tree.leaves(mu), jax.tree.leaves(touched)):
        assert (np.asarray(m)[np.asarray(t)] == 0).all() and (np.asarray(m)[~np.asarray(t)] != 0).all()
    rows_ = np.asarray(mu["hidden_0"]["kernel"]).reshape(9, 5, 6)  # [spatial, conv_1 channel, unit]
    assert (rows_[:, [0, 2]] == 0).all()


def test_conv_scores_average_batch_and_space():
    net, ns, x = conv_net()
    target_y = jnp.zeros((8, 3))

    def loss(p, probes):
        y, acts = net.apply(p, x, probes)
        return jnp.mean(jnp.square(y - target_y))

    probes = net.zero_probes(8)
    gp, gprobe = jax.grad(loss, argnums=(0, 1))(ns.params, probes)
    scores = grama_scores(net.layers, gprobe, gp)
    g = np.abs(np.asarray(gprobe["conv_0"])).mean(axis=(0, 1, 2))  # [B, h, w, C] -> [C]
    np.testing.assert_allclose(scores["conv_0"][1], g, rtol=1e-6)
    np.testing.assert_allclose(scores["conv_0"][0], g / (g.mean() + 1e-9), rtol=1e-5)
    w = grama_scores(net.layers, gprobe, gp, "weight_grad")["conv_1"][1]
    np.testing.assert_allclose(w, np.abs(np.asarray(gp["conv_1"]["kernel"])).mean(axis=(0, 1, 2)), rtol=1e-6)


def test_bad_torsos_are_clear_errors():
    with pytest.raises(ValueError, match="needs image observations"):
        make("dqn", "CartPole-v1", 100, overrides={"dqn.torso": "nature"})
    with pytest.raises(ValueError, match="too small for the convolutions"):
        make("dqn", "gymnax:Breakout-MinAtar", 100, overrides={"dqn.torso": "nature", "run.driver": "host"})
    with pytest.raises(ValueError, match="choose one of: mlp, nature, minatar"):
        make("dqn", "CartPole-v1", 100, overrides={"dqn.torso": "resnet"})


def test_reward_clip_is_per_step_before_the_n_step_sum():
    example = {"obs": jnp.zeros(1), "reward": jnp.zeros(()), "next_obs": jnp.zeros(1),
               "terminated": jnp.zeros(()), "done": jnp.zeros(())}
    rb = Replay.create(8, example)
    for r in (5.0, -3.0, 0.5):
        rb = rb.add({**example, "reward": jnp.float32(r)})
    out = rb.gather_nstep(jnp.array([0]), 3, 0.5, clip=1.0)
    assert float(out["reward"][0]) == pytest.approx(1.0 - 0.5 + 0.25 * 0.5)


def test_atari_frames_and_dqn_nature_cnn_with_regrama(tmp_path):
    """atari:Breakout: uint8 [84, 84, 4] frames (the newest last), stored as uint8 in the replay; DQN with
    the Nature-CNN learns from them with ReGraMa scoring every conv channel."""
    from plastic.envs import make_env
    env = make_env("atari:Breakout")
    assert (env.observation_shape, env.observation_size, env.action_size) == ((84, 84, 4), 84 * 84 * 4, 4)
    o0 = env.reset(0).reshape(84, 84, 4)
    o1 = env.step(1)[0].reshape(84, 84, 4)
    assert o0.dtype == np.uint8 and (o1[..., :3] == o0[..., 1:]).all()

    cfg, trainer = make("dqn", "atari:Breakout", 120, intervention="grama", overrides={
        "dqn.torso": "nature", "dqn.hidden": "32", "dqn.learning_starts": 60, "dqn.batch_size": 8,
        "dqn.buffer_size": 200, "dqn.train_frequency": 4, "dqn.reward_clip": 1.0, "grama.period": 5,
        "run.log_every": 60, "metrics.ntk_every": 0, "metrics.batch_size": 32, "metrics.ntk_batch": 8,
        "metrics.rank_every": 0, "metrics.churn_every": 0, "metrics.grad_every": 0},  # the activity group is read
        metrics=True)
    trainer.run(tmp_path)
    ts = trainer.final_state[0]
    assert ts.replay.data["obs"].dtype == jnp.uint8
    last = rows(tmp_path)[-1]
    assert last["grama/events/q"] == 3 and "reset_fraction/q/conv_2" in last
    assert 0.0 <= last["dormant_ratio_tau_0/q/conv_0"] <= 1.0


def test_dqn_minatar_cnn_on_the_jitted_driver(tmp_path):
    ov = {"dqn.torso": "minatar", "dqn.hidden": "32", "dqn.batch_size": 32, "dqn.buffer_size": 1000,
          "dqn.learning_starts": 100, "dqn.train_frequency": 4, "grama.period": 10, "run.log_every": 150,
          "run.progress": "off", "run.tensorboard": "false"}
    trainer = make_trainer(build("dqn", "grama", overrides=ov, env="gymnax:Breakout-MinAtar", steps=300))
    assert isinstance(trainer, JitOffPolicy)
    assert trainer.agent.q.layers[0].consumer_tiles == (64,)  # 10x10 -> 8x8 positions of 16 channels
    trainer.run(tmp_path)
    last = rows(tmp_path)[-1]
    assert last["step"] == 300 and last["grama/events/q"] == 5 and "grama_ratio_tau_0/q/conv_0" in last
