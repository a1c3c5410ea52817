"""The in-training metrics collector (plastic/monitor.py): what it measures agrees with independent
computations, groups fire exactly on their schedule, the jitted and vmapped collection equals an eager
single-seed one, and runs on every driver log the full metric set."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import make, rows
from plastic.agent import AgentState, init_counters
from plastic.cli import main
from plastic.config import MetricsConfig, build
from plastic.core import Hooks, Net, NetState, gradient_step
from plastic.monitor import Monitor, crossed
from plastic.networks import MLP
from plastic.drivers import make_trainer
from plastic.setup import build_agent

KEY = jax.random.PRNGKey(0)
SMALL = {"hidden": "16,16", "batch_size": 16, "buffer_size": 1000, "learning_starts": 50}


class _Envs:  # what build_agent reads of an env
    def __init__(self, discrete):
        self.discrete, self.observation_size, self.action_size = discrete, 3, 2
        self.observation_shape, self.observation_dtype = (3,), np.float32


def agent_and_monitor(agent_name="td3", **metrics):
    cfg = build(agent_name, "none", overrides={f"{agent_name}.hidden": "16,16"})
    agent = build_agent(cfg, _Envs(agent_name == "dqn"))
    mcfg = MetricsConfig(batch_size=32, ntk_batch=8, **metrics)
    return agent, Monitor(mcfg, agent)


def batch_for(agent, n=32, key=KEY):
    k1, k2 = jax.random.split(key)
    obs = jax.random.normal(k1, (n, agent.obs_size))
    if agent.discrete:
        action = jax.random.randint(k2, (n,), 0, agent.action_size)
    else:
        action = jax.random.uniform(k2, (n, agent.action_size), minval=-1, maxval=1)
    return {"obs": obs, "action": action}


def counters(agent, **c):
    return {**init_counters(agent), **{k: jnp.asarray(v, jnp.int32) for k, v in c.items()}}


def test_crossed():
    assert bool(crossed(0, 1, 1000))                 # the first update
    assert not bool(crossed(1, 2, 1000))
    assert bool(crossed(999, 1000, 1000)) and bool(crossed(998, 1001, 1000))  # utd > 1 steps over it
    assert not bool(crossed(1000, 1000, 1000))       # no update in this round (TD3's delayed actor)


def measured(mon, m):
    return {k for k, v in mon.logs(m).items() if not np.isnan(v)}


def test_groups_are_marked_at_the_boundary_and_measured_at_the_next_update():
    agent, mon = agent_and_monitor(activity_every=10, rank_every=100, churn_every=100, ntk_every=100)
    st = agent.init(KEY)
    m0 = mon.init(KEY, agent, st)
    assert not measured(mon, m0) and not bool(mon.pending(m0))
    batch = batch_for(agent)
    fn = lambda k, m: (lambda: batch, m)  # noqa: E731

    def round_(m, before, after):
        return mon.collect(st, m, counters(agent, critic=before[0], actor=before[1]),
                           counters(agent, critic=after[0], actor=after[1]), fn, KEY)

    m = round_(m0, (5, 2), (5, 2))  # no update of either network: nothing marked, nothing measured
    assert not measured(mon, m) and not bool(mon.pending(m))
    # the critic passes 10: its activity group is marked, and measured after the critic's next update
    m = round_(m0, (9, 4), (10, 4))
    assert not measured(mon, m) and bool(mon.pending(m))
    m = round_(m, (10, 4), (10, 4))  # the critic did not update: still marked
    assert not measured(mon, m) and bool(mon.pending(m))
    m = round_(m, (10, 4), (11, 4))
    got = measured(mon, m)
    assert "dormant_ratio_tau_0.025/critic" in got and "fau/critic" in got and not bool(mon.pending(m))
    assert not any(k.endswith("/actor") or "/actor/" in k for k in got)
    assert not any(k.startswith(("srank", "ntk", "policy_churn")) for k in got)
    # the critic passes 100: ranks as well; the NTK is captured, and measured at the next log point
    m = round_(round_(m, (99, 4), (100, 4)), (100, 4), (101, 4))
    assert not np.isnan(mon.logs(m)["srank_delta_0.01/critic"])
    assert np.isnan(mon.logs(m)["ntk_rank_abs/critic"]) and bool(mon.view(m, "ntk")["ntk"]["pending"])
    m = mon.at_log_point(m)
    assert not np.isnan(mon.logs(m)["ntk_rank_abs/critic"]) and not bool(mon.view(m, "ntk")["ntk"]["pending"])
    again = mon.logs(mon.at_log_point(m))  # nothing pending: unchanged
    for k, v in mon.logs(m).items():
        np.testing.assert_array_equal(again[k], v)
    # the actor passes 100 (TD3's delayed actor): churn is measured over the actor's next update round
    assert np.isnan(mon.logs(m)["policy_churn/actor"])
    m = round_(m, (150, 99), (151, 100))
    m = round_(m, (151, 100), (152, 100))
    assert np.isnan(mon.logs(m)["policy_churn/actor"]) and bool(mon.pending(m))
    m = round_(m, (152, 100), (153, 101))
    assert mon.logs(m)["policy_churn/actor"] == 0.0 and not bool(mon.pending(m))  # same parameters: no change


def first_round(mon, agent, st, **nets):
    """The monitor state after a network's first update round: every group marked due."""
    return mon.schedule(mon.init(KEY, agent, st), counters(agent, **dict.fromkeys(nets, 0)), counters(agent, **nets))


def _reference_values(agent, st, batch, before_actor):
    """Independent computations with plain jax / NumPy for the TD3 critic and actor."""
    obs, act = np.asarray(batch["obs"]), np.asarray(batch["action"])
    x = np.concatenate([obs, act], -1)
    params = jax.tree.map(np.asarray, st.nets["critic"].params)
    h, hs = x, []
    for i in range(2):
        k, b = params[f"hidden_{i}"]["kernel"], params[f"hidden_{i}"]["bias"]  # [2, in, out], [2, out]
        h = np.maximum(np.einsum("bi,eio->ebo", h, k) + b[:, None] if i == 0 else
                       np.einsum("ebi,eio->ebo", h, k) + b[:, None], 0)
        hs.append(h)
    a = [np.abs(l).mean(1) for l in hs]                 # [2, H] per member
    s = [ai / (ai.mean(-1, keepdims=True) + 1e-9) for ai in a]
    ref = {"dormant_ratio_tau_0.1/critic": sum((si <= 0.1).sum() for si in s) / sum(si.size for si in s),
           "fau/critic": sum((l > 0).sum() for l in hs) / sum(l.size for l in hs)}
    sv = np.linalg.svd(hs[-1][0], compute_uv=False)   # critic 1's penultimate features
    ref["member0_effective_rank"] = np.exp(-np.sum((p := sv / sv.sum())[p > 0] * np.log(p[p > 0])))
    # NTK: per-example gradients of Q1 w.r.t. every critic parameter, rank of K = J J^T
    def q1(p, xb):
        return agent.critic.apply(p, xb[None])[0][0, 0, 0]
    J = np.stack([np.concatenate([np.ravel(g) for g in jax.tree.leaves(jax.grad(q1)(st.nets["critic"].params, xb))])
                  for xb in x[:8]])
    ref["ntk_rank_abs/critic"] = int(np.sum(np.linalg.svd(J @ J.T, compute_uv=False) > 1e-6))
    # churn: deterministic policy tanh(actor(s)), before vs after
    new = np.tanh(np.asarray(agent.actor.apply(st.nets["actor"].params, obs)[0]))
    old = np.tanh(np.asarray(agent.actor.apply(before_actor, obs)[0]))
    ref["policy_churn/actor"] = np.mean(np.sum((new - old) ** 2, -1))
    return ref


def test_values_match_independent_computation_and_jit_vmap_equals_eager():
    agent, mon = agent_and_monitor(activity_every=1, rank_every=1, churn_every=1, ntk_every=1,
                                   dormant_taus=(0.0, 0.1))
    keys = jax.random.split(KEY, 2)
    states = [agent.init(k) for k in keys]
    befores = [agent.init(jax.random.fold_in(k, 1)).nets["actor"].params for k in keys]
    batches = [batch_for(agent, key=jax.random.fold_in(k, 2)) for k in keys]
    c1, c2 = counters(agent, critic=1, actor=1), counters(agent, critic=2, actor=2)

    def one(st, b, before):
        m = mon.collect(st, first_round(mon, agent, st, critic=1, actor=1), c1, c2, lambda k, m: (lambda: b, m), KEY, before)
        return mon.logs(mon.at_log_point(m))

    eager = [one(*args) for args in zip(states, batches, befores)]
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    vmapped = jax.jit(jax.vmap(one))(stack(states), stack(batches), stack(befores))
    for i in range(2):
        for k, v in eager[i].items():
            np.testing.assert_allclose(vmapped[k][i], v, rtol=2e-5, atol=1e-6, err_msg=k)
        ref = _reference_values(agent, states[i], batches[i], befores[i])
        for k in ("dormant_ratio_tau_0.1/critic", "fau/critic", "ntk_rank_abs/critic", "policy_churn/actor"):
            np.testing.assert_allclose(eager[i][k], ref[k], rtol=1e-4, err_msg=k)
        # the network's rank is the mean over the twin critics; recompute member 0's alone
        assert 1.0 <= float(eager[i]["effective_rank/critic"]) <= 16.0
        assert abs(ref["member0_effective_rank"] - float(eager[i]["effective_rank/critic"])) < 2.0


def test_a_later_successful_rank_supersedes_a_failed_device_svd(monkeypatch):
    """A failed device SVD (a GPU's NaN singular values) keeps its features for the log point's host
    recompute; a later measurement in the same log interval that succeeds is the latest value, and the log
    point must not overwrite it with the stale features' ranks (docs/metrics.md §5)."""
    import plastic.monitor as monitor_mod
    agent, mon = agent_and_monitor(rank_every=1, activity_every=0, grad_every=0, churn_every=0, ntk_every=0)
    st0 = agent.init(KEY)
    p = st0.nets["critic"].params  # st1: every unit of the critic's last hidden layer a copy of unit 0 (rank 1)
    h1 = {k: jnp.repeat(v[..., :1], v.shape[-1], axis=-1) for k, v in p["hidden_1"].items()}
    st1 = st0.replace(nets={**st0.nets, "critic": st0.nets["critic"].replace(params={**p, "hidden_1": h1})})
    b = batch_for(agent)
    fetch = lambda k, m: (lambda: b, m)  # noqa: E731
    m = mon.schedule(mon.init(KEY, agent, st0), counters(agent), counters(agent, critic=1, actor=1))
    real = monitor_mod.device_svdvals
    monkeypatch.setattr(monitor_mod, "device_svdvals", lambda phi: jnp.full_like(real(phi), jnp.nan))
    m = mon.collect(st0, m, counters(agent, critic=1, actor=1), counters(agent, critic=2, actor=2), fetch, KEY)
    assert bool(mon.deferred(m))                     # held for the host recompute
    monkeypatch.setattr(monitor_mod, "device_svdvals", real)
    m = mon.collect(st1, m, counters(agent, critic=2, actor=2), counters(agent, critic=3, actor=3), fetch, KEY)
    assert float(mon.logs(m)["matrix_rank/critic"]) == 1.0 and not bool(mon.deferred(m))
    assert float(mon.logs(mon.at_log_point(m))["matrix_rank/critic"]) == 1.0


def test_dqn_churn_counts_changed_greedy_actions():
    agent, mon = agent_and_monitor("dqn", churn_every=1, activity_every=0, rank_every=0, ntk_every=0,
                                   grad_every=0)
    st = agent.init(KEY)
    before = agent.init(jax.random.PRNGKey(1)).nets["q"].params
    b = batch_for(agent)
    m = mon.collect(st, first_round(mon, agent, st, q=1), counters(agent, q=1), counters(agent, q=2),
                    lambda k, m: (lambda: b, m), KEY, before)
    new = np.argmax(np.asarray(agent.q.apply(st.nets["q"].params, b["obs"])[0]), -1)
    old = np.argmax(np.asarray(agent.q.apply(before, b["obs"])[0]), -1)
    np.testing.assert_allclose(mon.logs(m)["policy_churn/q"], np.mean(new != old))
    assert 0.0 < float(mon.logs(m)["policy_churn/q"]) < 1.0
    assert not any(k.startswith(("dormant", "srank", "ntk", "grad")) for k in mon.logs(m))  # groups off: no keys


def test_fixed_probe_keeps_the_first_indices():
    _, mon = agent_and_monitor(batch="fixed_probe")
    state = {"probe_idx": jnp.zeros(32, jnp.int32), "probe_set": jnp.zeros((), bool)}
    first = jnp.arange(32)
    idx, state = mon.probe_indices(state, first)
    idx2, state = mon.probe_indices(state, first + 100)
    np.testing.assert_array_equal(idx, first)
    np.testing.assert_array_equal(idx2, first)
    _, fresh = agent_and_monitor()
    idx3, _ = fresh.probe_indices(state, first + 100)
    np.testing.assert_array_equal(idx3, first + 100)


def test_gradient_group_inside_the_core_on_network_a():
    """docs/metrics.md §10.1 Network A through core.gradient_step with plain SGD (lr 0.1): the gradient
    statistics are the spec's numbers and the update/parameter ratio is lr * |g| / |theta|."""
    params = {"hidden_0": {"kernel": jnp.array([[1.0, -1.0, 2.0]]), "bias": jnp.zeros(3)},
              "output": {"kernel": jnp.array([[1.0], [1.0], [0.5]]), "bias": jnp.zeros(1)}}

    class A:  # the minimal agent the monitor reads
        nets = {"q": Net.of("q", MLP((3,), 1), optax.sgd(0.1))}
        policy_net = critic_net = "q"
        obs_size = 1

        @staticmethod
        def action_example():
            return jnp.zeros((), jnp.int32)

        def init(self, key):
            return AgentState(nets={"q": NetState(params, self.nets["q"].tx.init(params))}, targets={}, logs={})

        def net_inputs(self, state, batch):
            return {"q": batch["obs"]}

    agent = A()
    net = agent.nets["q"]
    ns = agent.init(KEY).nets["q"]

    mon = Monitor(MetricsConfig(activity_every=0, rank_every=0, churn_every=0, ntk_every=0), agent)
    m = mon.init(KEY, agent, AgentState(nets={"q": ns}, targets={}, logs={}))
    istate = {"metrics": mon.schedule(m, {"q": 0}, {"q": 1})}  # marked by the first round: measured now
    x = jnp.array([[1.0], [2.0]])

    def loss_fn(p, probes):
        y = net.apply(p, x, probes)[0]
        return jnp.mean(0.5 * jnp.square(y)), None

    new, hooks, *_ = gradient_step(net, ns, loss_fn, batch_size=2, count=jnp.zeros((), jnp.int32), key=KEY,
                                   hooks=Hooks(istate, (mon,)))
    istate = hooks.state
    v = mon.logs(istate["metrics"])
    np.testing.assert_allclose(v["grad_sparsity/q"], 0.3)
    np.testing.assert_allclose(v["grad_l1/q"], 30.0, rtol=1e-6)
    np.testing.assert_allclose(v["grad_l2/q"], np.sqrt(176.5), rtol=1e-6)
    theta = np.sqrt(1 + 1 + 4 + 1 + 1 + 0.25)
    np.testing.assert_allclose(v["update_to_param_ratio/q"], 0.1 * np.sqrt(176.5) / theta, rtol=1e-5)
    np.testing.assert_allclose(v["param_dist_init_rms/q"], 0.1 * np.sqrt(176.5 / 10), rtol=1e-5)
    np.testing.assert_allclose(v["grama_persistence/q"], 0.0)  # unit 1 is GraMa-inactive, no earlier set
    for k in ("grama_ratio_tau_0/q", "grama_ratio_tau_0/q/hidden_0", "grama_ratio_tau_0.01/q"):
        np.testing.assert_allclose(v[k], 1 / 3)  # of this update's training batch: unit 1 of 3
    assert not bool(mon.pending(istate["metrics"]))  # measured once, then cleared


def _check_rows(rs, nets, first_update_step):
    assert rs
    early = [r for r in rs if r["step"] < first_update_step]
    late = [r for r in rs if r["step"] >= first_update_step + 50]
    assert late
    for r in early:  # nothing is measured before the first update
        assert r[f"fau/{nets[0]}"] is None
    keys = [f"{m}/{n}" for n in nets for m in ("dormant_ratio_tau_0.1", "fau", "linearised_ratio", "feature_norm",
                                               "srank_delta_0.01", "approx_rank_0.99", "effective_rank",
                                               "feature_rank_eps_0.01", "matrix_rank", "grad_l2",
                                               "grad_sparsity", "grad_to_param_ratio", "update_to_param_ratio",
                                               "param_rms", "param_dist_init_rms", "dormant_overlap",
                                               "grama_persistence")]
    for k in keys + [f"dormant_ratio_tau_0/{nets[0]}/hidden_0"]:
        assert all(r[k] is not None and np.isfinite(r[k]) for r in late), k
    assert not any("stable_rank" in k for k in rs[-1])


def test_jitted_td3_run_logs_the_full_metric_set(tmp_path):  # probe:obs is JAX-native: the jitted driver
    ov = {f"td3.{k}": v for k, v in SMALL.items()}
    ov.update({"run.progress": "off", "run.tensorboard": "false", "run.log_every": 50,
               "metrics.activity_every": 20, "metrics.grad_every": 20, "metrics.rank_every": 50,
               "metrics.churn_every": 50, "metrics.ntk_every": 100, "metrics.batch_size": 32,
               "metrics.ntk_batch": 16, "metrics.batch": "fixed_probe"})
    cfg = build("td3", "none", overrides=ov, env="probe:obs", steps=250)
    t = make_trainer(cfg)
    t.run(tmp_path / "r")
    rs = rows(tmp_path / "r")
    _check_rows(rs, ["critic", "actor"], 50)
    last = rs[-1]
    assert 1 <= last["ntk_rank_abs/critic"] <= 16 and last["ntk_rank_rel/critic"] <= last["ntk_rank_abs/critic"]
    assert last["policy_churn/actor"] >= 0.0
    assert 1 <= last["srank_delta_0.01/critic"] <= 16


def test_host_steps_run_measuring_code_only_after_a_boundary(tmp_path):
    """On a host driver the ordinary step program is the metrics-off program (no measuring conds), and the
    measuring one runs only in the rounds after a period boundary (each network's, TD3's delayed actor
    included), yet every group is logged."""
    ov = {"td3.learning_starts": 100, "run.log_every": 100, "metrics.activity_every": 50,
          "metrics.grad_every": 50, "metrics.rank_every": 100, "metrics.churn_every": 100,
          "metrics.ntk_every": 100, "metrics.batch_size": 32, "metrics.ntk_batch": 8}
    _, on = make("td3", "Pendulum-v1", 300, overrides=ov, metrics=True)
    _, off = make("td3", "Pendulum-v1", 300, overrides=ov)
    S, O, A = 1, on.envs.observation_size, on.envs.action_size
    tr = {"obs": np.zeros((S, O)), "action": np.zeros((S, A)), "reward": np.zeros(S),
          "next_obs": np.zeros((S, O)), "terminated": np.zeros(S), "done": np.zeros(S)}

    def conds(t):
        return t.step_program("learn", False).lower(t.pack(*t.init_state()), tr, np.zeros((S, O))).compile().as_text() \
            .count(" conditional(")

    assert conds(on) == conds(off)
    calls, due = [], on.measure_due  # learning steps that run the measuring program
    on.measure_due = lambda c: (measure := due(c)) and calls.append(1) or measure
    on.run(tmp_path / "r")
    # 200 update rounds: critic boundaries at 1, 50, 100, 150, 200; actor (every 2nd round) at 1, 50, 100
    assert 4 <= len(calls) <= 12
    last = rows(tmp_path / "r")[-1]
    for k in ("fau/critic", "fau/actor", "grad_l2/critic", "grad_l2/actor", "srank_delta_0.01/critic",
              "policy_churn/actor", "ntk_rank_abs/critic"):
        assert last[k] is not None and np.isfinite(last[k]), k


def test_jitted_ppo_run_measures_on_its_rollout(tmp_path):
    ov = {"ppo.hidden": "16,16", "ppo.num_envs": 2, "ppo.num_steps": 25, "ppo.minibatches": 2,
          "run.progress": "off", "run.tensorboard": "false", "run.log_every": 100,
          "metrics.activity_every": 4, "metrics.grad_every": 4, "metrics.rank_every": 8,
          "metrics.churn_every": 8, "metrics.ntk_every": 8, "metrics.batch_size": 32, "metrics.ntk_batch": 8}
    cfg = build("ppo", "none", overrides=ov, env="gymnax:CartPole-v1", steps=400)
    make_trainer(cfg).run(tmp_path / "r")
    rs = rows(tmp_path / "r")
    _check_rows(rs, ["actor", "critic"], 50)
    last = rs[-1]
    assert 0.0 <= last["policy_churn/actor"] <= 1.0 and last["policy_churn_kl/actor"] >= 0.0
    assert 1 <= last["ntk_rank_abs/critic"] <= 8


def test_all_groups_off_removes_the_collector(tmp_path):
    ov = {f"dqn.{k}": v for k, v in SMALL.items()}
    ov.update({"run.progress": "off", "run.tensorboard": "false", "run.log_every": 100,
               **{f"metrics.{g}_every": 0 for g in ("activity", "grad", "rank", "churn", "ntk")}})
    t = make_trainer(build("dqn", "none", overrides=ov, env="probe:d_obs", steps=100))
    assert t.monitor is None and t.init_carry()[0].monitor == {}


@pytest.mark.parametrize("args,needle", [
    (["--metrics.networks", "policy"], "this agent's networks with layers: actor, critic"),
    (["--metrics.rank_every", "-1"], "metrics.rank_every must be >= 0"),
    (["--metrics.batch", "replay"], "choose one of: fresh_replay, fixed_probe"),
    (["--metrics.ntk_batch", "65"], "metrics.ntk_batch must be in [1, min(64"),
    (["--metrics.ntk_branch", "q3"], "choose one of: critic1, critic2, min"),
    (["--agent", "ppo", "--env", "gymnax:CartPole-v1", "--metrics.batch", "fixed_probe"], "needs a replay buffer"),
])
def test_bad_metrics_config_is_one_clear_line(tmp_path, capsys, args, needle):
    argv = ["--run-dir", str(tmp_path / "r"), "--steps", "100"]
    if "--agent" not in args:
        argv += ["--agent", "td3", "--env", "probe:obs"]
    assert main(argv + args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
