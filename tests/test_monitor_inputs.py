"""What the metrics collector measures on (plastic/monitor.py): the gradient group reads the raw loss
gradient, not the one after the `grad_transform` hooks (docs/metrics.md §3), and the rank group gets at least as
many samples as the widest measured feature layer has columns (docs/metrics.md §5: n >= d)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastic.agent import AgentState, init_counters
from plastic.config import MetricsConfig, build
from plastic.core import Hooks, Net, NetState, gradient_step
from plastic.interventions.l2 import WeightDecay, WeightDecayConfig
from plastic.interventions.ne import NE, NEConfig
from plastic.monitor import Monitor, _features, _feature_width
from plastic.networks import MLP
from plastic.setup import build_agent

KEY = jax.random.PRNGKey(0)
GRAD_ONLY = dict(activity_every=0, rank_every=0, churn_every=0, ntk_every=0, grad_every=1)


class OneNet:
    """The minimal agent the monitor reads: one network `q` on the observation."""
    policy_net = critic_net = "q"

    def __init__(self, module, tx, params=None, obs_size=1):
        self.nets = {"q": Net.of("q", module, tx)}
        self.obs_size, self._params = obs_size, params

    @staticmethod
    def action_example():
        return jnp.zeros((), jnp.int32)

    @staticmethod
    def role(name):
        return "critic"

    def init(self, key):
        ns = self.nets["q"].init(key, jnp.zeros((1, self.obs_size)))
        if self._params is not None:
            ns = NetState(self._params, self.nets["q"].tx.init(self._params))
        return AgentState(nets={"q": ns}, targets={}, logs={})

    def net_inputs(self, state, batch):
        return {"q": batch["obs"]}


def _stats(g):
    """grad_sparsity, grad_l1, grad_l2 of a gradient pytree, in NumPy (docs/metrics.md §3)."""
    flat = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(g)])
    return np.mean(np.abs(flat) < 1e-8), np.sum(np.abs(flat)), np.sqrt(np.sum(flat ** 2))


def _ratio(g, p):
    """grad_to_param_ratio in NumPy: parameter-count-weighted mean over modules of ||g_l|| / ||θ_l||."""
    num = den = 0.0
    for name in p:
        gl = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(g[name])])
        pl = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(p[name])])
        num, den = num + pl.size * np.linalg.norm(gl) / (np.linalg.norm(pl) + 1e-12), den + pl.size
    return num / den


def _one_step(agent, ivs, istate, loss_fn, x):
    net = agent.nets["q"]
    ns = agent.init(KEY).nets["q"]
    ns, hooks, *rest = gradient_step(net, ns, loss_fn, batch_size=x.shape[0], count=jnp.zeros((), jnp.int32),
                                     key=KEY, hooks=Hooks(istate, tuple(ivs)), inputs=x)
    return (ns, hooks.state, *rest)


# ---- gradient group: the raw loss gradient ----------------------------------------------------------
def test_grad_metrics_read_the_raw_gradient_under_coupled_weight_decay():
    """docs/metrics.md §10.1 Network A with coupled weight decay (g + λθ before the optimizer): the gradient
    statistics and the gradient/parameter ratio are those of the loss gradient alone (the spec's 0.3, 30,
    sqrt(176.5)); the update/parameter ratio is that of the update actually applied, decay included."""
    params = {"hidden_0": {"kernel": jnp.array([[1.0, -1.0, 2.0]]), "bias": jnp.zeros(3)},
              "output": {"kernel": jnp.array([[1.0], [1.0], [0.5]]), "bias": jnp.zeros(1)}}
    agent = OneNet(MLP((3,), 1), optax.sgd(0.1), params)
    wd = WeightDecay(WeightDecayConfig(lam=0.5, kind="coupled", networks=("critic",)), "dqn")
    mon = Monitor(MetricsConfig(**GRAD_ONLY), agent)
    st = agent.init(KEY)
    istate = {"weight_decay": wd.init(KEY, agent, st),
              "metrics": mon.schedule(mon.init(KEY, agent, st), {"q": 0}, {"q": 1})}
    x = jnp.array([[1.0], [2.0]])

    def loss_fn(p, probes):
        return jnp.mean(0.5 * jnp.square(agent.nets["q"].apply(p, x, probes)[0])), None

    new, istate, *_ = _one_step(agent, (wd, mon), istate, loss_fn, x)
    v = mon.logs(istate["metrics"])
    np.testing.assert_allclose(v["grad_sparsity/q"], 0.3)  # the decayed gradient has 1 zero of 10
    np.testing.assert_allclose(v["grad_l1/q"], 30.0, rtol=1e-6)
    np.testing.assert_allclose(v["grad_l2/q"], np.sqrt(176.5), rtol=1e-6)
    raw = {"hidden_0": {"kernel": np.array([[5.0, 0.0, 2.5]]), "bias": np.array([3.0, 0.0, 1.5])},
           "output": {"kernel": np.array([[5.0], [0.0], [10.0]]), "bias": np.array([3.0])}}
    np.testing.assert_allclose(v["grad_to_param_ratio/q"], _ratio(raw, params), rtol=1e-5)
    applied = jax.tree.map(lambda g, p: -0.1 * (g + 0.5 * np.asarray(p)), raw, params)
    theta = np.sqrt(sum(np.sum(np.square(np.asarray(p))) for p in jax.tree.leaves(params)))
    norm = np.sqrt(sum(np.sum(np.square(u)) for u in jax.tree.leaves(applied)))
    np.testing.assert_allclose(v["update_to_param_ratio/q"], norm / theta, rtol=1e-5)


def test_grad_metrics_read_the_dense_gradient_under_ne_masks():
    """NE multiplies the gradient by its connection masks before the optimizer (80 % of the kernels'
    entries are zero after that); the logged statistics are those of the dense loss gradient."""
    agent = OneNet(MLP((32, 32), 2), optax.adam(1e-3), obs_size=6)
    ne = NE(NEConfig(experience_review="off", dense_layers="none", initial_sparsity=0.8, period=1000), "dqn")
    mon = Monitor(MetricsConfig(**GRAD_ONLY), agent)
    st = agent.init(KEY)
    istate = {"ne": ne.init(KEY, agent, st), "metrics": mon.schedule(mon.init(KEY, agent, st), {"q": 0}, {"q": 1})}
    net = agent.nets["q"]
    masked = ne.apply_masks(net, st.nets["q"].params, istate["ne"]["nets"]["q"])
    agent._params = masked
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 6))
    y = jax.random.normal(jax.random.PRNGKey(2), (64, 2))

    def loss_fn(p, probes):
        return jnp.mean(jnp.square(net.apply(p, x, probes)[0] - y)), None

    _, istate, *_ = jax.jit(lambda s: _one_step(agent, (ne, mon), s, loss_fn, x))(istate)
    v = mon.logs(istate["metrics"])
    raw = jax.grad(lambda p: loss_fn(p, None)[0])(masked)
    sparsity, l1, l2 = _stats(raw)
    applied = ne.grad_transform(net, raw, masked, istate["ne"])
    assert _stats(applied)[0] > 0.6 > sparsity + 0.3  # the masked gradient is the sparse one
    np.testing.assert_allclose(v["grad_sparsity/q"], sparsity, atol=1e-6)
    np.testing.assert_allclose(v["grad_l1/q"], l1, rtol=1e-4)
    np.testing.assert_allclose(v["grad_l2/q"], l2, rtol=1e-4)
    np.testing.assert_allclose(v["grad_to_param_ratio/q"], _ratio(raw, masked), rtol=1e-4)


# ---- rank group: at least as many samples as feature columns -----------------------------------------
class _Envs:  # what build_agent reads of an env
    def __init__(self, discrete=False, obs=16):
        self.discrete, self.observation_size, self.action_size = discrete, obs, 2
        self.observation_shape, self.observation_dtype = (obs,), np.float32


def _agent(name="td3", **over):
    cfg = build(name, "none", overrides={f"{name}.{k}": v for k, v in over.items()})
    return build_agent(cfg, _Envs(name == "dqn"))


@pytest.mark.parametrize("over", [{"hidden": "48,48"}, {"network": "simba", "hidden": "16", "blocks": 1},
                                  {"network": "bronet", "hidden": "40", "blocks": 1}])
def test_feature_width_is_the_width_of_the_measured_features(over):
    agent = _agent(**over)
    batch = {"obs": jnp.zeros((5, agent.obs_size)), "action": jnp.zeros((5, 2))}
    st = jax.eval_shape(agent.init, KEY)
    for n, net in agent.nets.items():
        phi = jax.eval_shape(lambda s: _features(net, net.apply(s.nets[n].params, agent.net_inputs(s, batch)[n])[1]),
                             st)
        assert _feature_width(net) == phi.shape[-1]
    assert _feature_width(agent.nets["critic"]) == {"48,48": 48, "16": 64, "40": 40}[over["hidden"]]


def test_conv_feature_width_counts_every_position():
    """A conv layer at the end of the map is flattened over positions and channels (MinAtar torso, no
    Dense hidden layer: 8 x 8 positions x 16 channels)."""
    from plastic.networks import TORSOS, ConvNet
    net = Net.of("q", ConvNet((10, 10, 4), TORSOS["minatar"], (), 3), optax.adam(1e-3))
    params = net.init(KEY, jnp.zeros((1, 400))).params
    phi = _features(net, net.apply(params, jnp.zeros((2, 400)))[1])
    assert _feature_width(net) == phi.shape[-1] == 8 * 8 * 16


def _replay_fn(mon, n_rows=100_000, obs=16):
    """A stand-in for the off-policy drivers' batch function: `batch_size` uniform rows of a large table,
    through the monitor's `probe_indices` (as plastic/programs.py draws them)."""
    table = {"obs": jax.random.normal(jax.random.PRNGKey(7), (n_rows, obs)),
             "action": jax.random.uniform(jax.random.PRNGKey(8), (n_rows, 2), minval=-1, maxval=1)}

    def batch_fn(k, m):
        fresh = jax.random.randint(k, (mon.cfg.batch_size,), 0, n_rows)
        idx, m = mon.probe_indices(m, fresh)
        return (lambda: jax.tree.map(lambda a: a[idx], table)), m
    return batch_fn


def _collect(mon, agent, st, batch_fn, key, m=None):
    c = lambda **kw: {**init_counters(agent), **{k: jnp.asarray(v, jnp.int32) for k, v in kw.items()}}  # noqa: E731
    if m is None:
        m = mon.schedule(mon.init(KEY, agent, st), c(critic=0, actor=0), c(critic=1, actor=1))
    m = mon.collect(st, m, c(critic=1, actor=1), c(critic=2, actor=2), batch_fn, key)
    m = mon.schedule(m, c(critic=2, actor=2), c(critic=3, actor=3))  # marked again (period 1)
    return m


def test_ranks_of_features_wider_than_the_metrics_batch_are_not_capped_by_it():
    """Tanh features of width 48 on a metrics batch of 32 rows: the rank group draws 48 rows (two draws of
    32, cut), so the matrix rank is the width, 48, not 32; the other groups still see the first 32."""
    agent = _agent(hidden="48,48", activation="tanh")
    groups = dict(activity_every=1, rank_every=1, churn_every=0, ntk_every=0, grad_every=0)
    mon = Monitor(MetricsConfig(batch_size=32, **groups), agent)
    st = agent.init(KEY)
    fn = _replay_fn(mon)
    v = mon.logs(jax.jit(lambda s: _collect(mon, agent, s, fn, KEY))(st))
    for n in ("actor", "critic"):
        assert v[f"matrix_rank/{n}"] == 48.0, n
        assert v[f"srank_delta_0.01/{n}"] > 32.0, n
    assert (mon.rank_rows, mon.draws) == (48, 2)
    # activity on the same first draw as a collector without the rank group
    plain = Monitor(MetricsConfig(batch_size=32, **{**groups, "rank_every": 0}), agent)
    assert (plain.rank_rows, plain.draws) == (32, 1)
    w = plain.logs(jax.jit(lambda s: _collect(plain, agent, s, _replay_fn(plain), KEY))(st))
    for k in ("fau/critic", "dormant_ratio_tau_0.1/actor", "feature_norm/critic"):
        np.testing.assert_array_equal(v[k], w[k], err_msg=k)


def test_fixed_probe_holds_every_draw_of_the_rank_rows():
    agent = _agent(hidden="48,48", activation="tanh")
    mon = Monitor(MetricsConfig(batch_size=32, batch="fixed_probe", activity_every=0, rank_every=1,
                                churn_every=0, ntk_every=0, grad_every=0), agent)
    st = agent.init(KEY)
    fn = _replay_fn(mon)
    run = jax.jit(lambda s, k, m: _collect(mon, agent, s, fn, k, m))
    m1 = jax.jit(lambda s: _collect(mon, agent, s, fn, KEY))(st)
    idx = np.asarray(m1["probe_idx"])
    assert idx.shape == (64,) and bool(m1["probe_set"]) and not np.array_equal(idx[:32], idx[32:])
    m2 = run(st, jax.random.PRNGKey(5), m1)  # another key: the same 64 slots, so the same ranks
    np.testing.assert_array_equal(np.asarray(m2["probe_idx"]), idx)
    assert mon.logs(m1)["matrix_rank/critic"] == 48.0
    for k, val in mon.logs(m1).items():
        np.testing.assert_array_equal(mon.logs(m2)[k], val, err_msg=k)


def test_narrow_features_and_ppo_keep_one_draw():
    """Features no wider than the metrics batch need no second draw (the default 256-wide MLPs); PPO's batch
    is a subset of its rollout drawn by its driver, so its rank group keeps that batch (docs/metrics.md)."""
    assert Monitor(MetricsConfig(batch_size=64), _agent(hidden="48,48")).draws == 1
    ppo = _agent("ppo", hidden="128,128")
    mon = Monitor(MetricsConfig(batch_size=64), ppo, rows=64)
    assert (mon.rank_rows, mon.draws) == (64, 1)
