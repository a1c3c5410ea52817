"""ReDo (docs/interventions.md, ReDo; the method's test invariants; shared mechanics via plastic.surgery,
docs/mechanics.md)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import assert_cli_error, tiny_trainer
from plastic import fields
from plastic.core import Hooks, Net, NetState, UpdateContext, gradient_step
from plastic.interventions.redo import ReDo, ReDoConfig
from plastic.networks import MLP, ConvNet
from plastic.surgery import touched_entries

KEY = jax.random.PRNGKey(0)


class Jitted(ReDo):
    """ReDo with its scoring and recycling jitted (eager Flax is slow on this machine)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.scores = jax.jit(super().scores, static_argnums=0)
        self.recycle = jax.jit(super().recycle, static_argnums=0)


def redo(**kw):
    iv = Jitted(ReDoConfig(**{"period": 1, "stats_batch": "train_batch", **kw}), "td3")
    fields.check(iv.cfg, "redo")  # the declared ranges and switches (plastic.config checks them)
    iv.validate(None, None)
    return iv


def mlp(hidden=(16, 16), n_in=3, out=2):
    return Net.of("critic", MLP(hidden, out), optax.adam(1e-2), 1e-2)


@partial(jax.jit, static_argnums=0)
def _adam_step(net, ns, x):
    g = jax.grad(lambda p: jnp.mean(jnp.square(net.apply(p, x)[0] - 1.0)))(ns.params)
    u, o = net.tx.update(g, ns.opt_state, ns.params)
    return NetState(optax.apply_updates(ns.params, u), o)


def trained(net, x, dead=(), steps=3):
    """Random params after a few Adam steps (non-zero moments), then units `dead` of hidden_0 killed:
    non-positive incoming weights and a negative bias, so they are 0 on non-negative inputs."""
    ns = jax.jit(net.init)(KEY, x)
    for _ in range(steps):
        ns = _adam_step(net, ns, x)
    p = ns.params
    for i in dead:
        k = p["hidden_0"]["kernel"]
        p = {**p, "hidden_0": {"kernel": k.at[:, i].set(-jnp.abs(k[:, i])),
                               "bias": p["hidden_0"]["bias"].at[i].set(-1.0)}}
    return NetState(p, ns.opt_state)


def test_reference_scores_and_dead_unit():
    net = Net.of("critic", MLP((4,), 1), optax.adam(1e-3))
    params = {"hidden_0": {"kernel": jnp.array([[0.0, 1.0, 2.0, 1.0]]), "bias": jnp.zeros(4)},
              "output": {"kernel": jnp.ones((4, 1)), "bias": jnp.zeros(1)}}
    s = redo().scores(net, params, jnp.ones((5, 1)))["hidden_0"]
    np.testing.assert_allclose(s, [0, 1, 2, 1], atol=1e-6)
    assert int(jnp.sum(redo(tau=0.025).masks(net, {"hidden_0": s}, 1)["hidden_0"])) == 1
    s_sum = redo(score_norm="sum").scores(net, params, jnp.ones((5, 1)))["hidden_0"]
    np.testing.assert_allclose(s_sum, [0, 0.25, 0.5, 0.25], atol=1e-6)
    # a constructed dead unit (negative bias, non-positive incoming weights, non-negative inputs)
    big = mlp()
    x = jax.random.uniform(KEY, (64, 3))
    ns = trained(big, x, dead=(3,))
    s = redo(tau=0.0).scores(big, ns.params, x)
    assert float(s["hidden_0"][3]) == 0.0 and bool(redo(tau=0.0).masks(big, s, 1)["hidden_0"][3])


def test_reset_effects_optimizer_surgery_and_function_preservation():
    net, x = mlp(), jax.random.uniform(KEY, (64, 3))
    ns = trained(net, x, dead=(1, 5, 9))
    iv = redo(tau=0.0)
    new, masks, _ = iv.recycle(net, ns, x, 1, jax.random.PRNGKey(7))
    m0 = masks["hidden_0"]
    assert all(bool(m0[i]) for i in (1, 5, 9))
    k_old, k_new = ns.params["hidden_0"]["kernel"], new.params["hidden_0"]["kernel"]
    assert not np.any(np.asarray(k_old[:, m0] == k_new[:, m0])) and np.all(np.abs(k_new[:, m0]).sum(0) > 0)
    assert np.all(new.params["hidden_0"]["bias"][m0] == 0)
    assert np.all(new.params["hidden_1"]["kernel"][m0, :] == 0)
    touched = touched_entries(net, ns.params, masks)
    for a, b, t in zip(*(jax.tree.leaves(z) for z in (ns.params, new.params, touched))):
        np.testing.assert_array_equal(np.asarray(a)[~np.asarray(t)], np.asarray(b)[~np.asarray(t)])
    np.testing.assert_array_equal(new.params["output"]["bias"], ns.params["output"]["bias"])
    # Adam: mu and nu zero exactly at touched entries, unchanged elsewhere, count kept
    adam_old, adam_new = ns.opt_state[0], new.opt_state[0]
    assert int(adam_new.count) == int(adam_old.count) == 3
    for mom in ("mu", "nu"):
        for a, b, t in zip(*(jax.tree.leaves(z) for z in (getattr(adam_old, mom), getattr(adam_new, mom), touched))):
            t = np.asarray(t)
            assert np.all(np.asarray(b)[t] == 0)
            np.testing.assert_array_equal(np.asarray(a)[~t], np.asarray(b)[~t])
    # function preservation at tau = 0 on a plain ReLU MLP: bit-identical outputs on the statistics batch
    np.testing.assert_array_equal(net.apply(new.params, x)[0], net.apply(ns.params, x)[0])


def test_consumer_preactivation_change_with_positive_tau():
    net, x = mlp(), jax.random.uniform(KEY, (64, 3))
    ns = trained(net, x)
    new, masks, _ = redo(tau=0.6).recycle(net, ns, x, 1, jax.random.PRNGKey(3))
    m0, m1 = np.asarray(masks["hidden_0"]), np.asarray(masks["hidden_1"])
    assert m0.any() and (~m1).any()
    h0_old = net.apply(ns.params, x)[1]["hidden_0"]
    h0_new = net.apply(new.params, x)[1]["hidden_0"]
    w_old, w_new = ns.params["hidden_1"]["kernel"], new.params["hidden_1"]["kernel"]
    z_old = h0_old @ w_old + ns.params["hidden_1"]["bias"]
    z_new = h0_new @ w_new + new.params["hidden_1"]["bias"]
    expected = -(h0_old[:, m0] @ w_old[m0, :])
    np.testing.assert_allclose((z_new - z_old)[:, ~m1], expected[:, ~m1], atol=1e-5)


def test_effectiveness_noop_cap_and_scaling():
    net = mlp()
    x, fresh = jax.random.uniform(KEY, (128, 3)), jax.random.uniform(jax.random.PRNGKey(1), (128, 3))
    ns = trained(net, x, dead=(0, 1, 2, 3))  # 25% of hidden_0 dead
    iv = redo(tau=0.0)
    before = float(jnp.mean(iv.scores(net, ns.params, fresh)["hidden_0"] <= 0))
    new, _, _ = iv.recycle(net, ns, x, 1, KEY)
    after = float(jnp.mean(iv.scores(net, new.params, fresh)["hidden_0"] <= 0))
    assert before >= 0.25 and after < before
    # no-op: an empty mask returns bit-identical state
    same, masks, _ = redo(mode="scheduled_fraction", recycle_rate=0.0).recycle(net, ns, x, 1, KEY)
    assert not any(bool(m.any()) for m in masks.values())
    for a, b in zip(jax.tree.leaves(ns), jax.tree.leaves(same)):
        np.testing.assert_array_equal(a, b)
    # cap: at most floor(p * H) units per layer
    _, masks, _ = redo(tau=10.0, max_reset_fraction=0.25).recycle(net, ns, x, 1, KEY)
    assert all(int(m.sum()) == 4 for m in masks.values())
    # weight scaling: recycled incoming norms = scale x mean norm of the kept units
    new, masks, _ = redo(tau=0.0, weight_scaling=True, weight_scale=0.5).recycle(net, ns, x, 1, KEY)
    m, k = np.asarray(masks["hidden_0"]), np.asarray(new.params["hidden_0"]["kernel"])
    norms = np.linalg.norm(k, axis=0)
    np.testing.assert_allclose(norms[m], 0.5 * norms[~m].mean(), rtol=1e-5)


def test_reset_end_step_stops_recycling_in_both_modes():
    """Dopamine gates both recyclers by `reset_start_step <= step < reset_end_step`: from `reset_end_step` on,
    no unit is recycled, threshold mode included (it was ignored there, so a `dqn_dense.gin` run with 2.5M kept
    recycling)."""
    net, x = mlp(), jax.random.uniform(KEY, (128, 3))
    ns = trained(net, x, dead=(0, 1, 2, 3))
    for mode in ("threshold", "scheduled_fraction"):
        iv = redo(mode=mode, tau=0.0, reset_end_step=100)
        s = iv.scores(net, ns.params, x)
        last = 99 if mode == "threshold" else 0  # the schedule's k at 99 is 1 (the test below)
        assert int(iv.masks(net, s, last)["hidden_0"].sum()) >= 4, mode
        assert not any(bool(m.any()) for m in iv.masks(net, s, 100).values()), mode
        same, _, _ = iv.recycle(net, ns, x, 100, KEY)
        for a, b in zip(jax.tree.leaves(ns), jax.tree.leaves(same)):
            np.testing.assert_array_equal(a, b)


def test_scheduled_fraction_follows_dopamine_leastk():
    """`mode=scheduled_fraction` recycles the k lowest-score units, k = max(1, round(frac * H)) with
    frac = rate * cos(pi/2 * count / reset_end_step) (Dopamine's `leastk_mask`), none once frac is 0 or the
    count reaches `reset_end_step`. H = 16: 0.3 * 16 = 4.8 -> 5 (floor: 4); 0.01 * 16 = 0.16 -> 1 (floor: 0)."""
    net, x = mlp(), jax.random.uniform(KEY, (128, 3))
    ns = trained(net, x)
    iv = redo(mode="scheduled_fraction", reset_end_step=100)
    s = iv.scores(net, ns.params, x)
    for rate, count, k in ((0.3, 0, 5), (0.3, 50, 3), (0.3, 99, 1), (0.3, 100, 0), (0.3, 150, 0),
                           (0.01, 0, 1), (0.0, 0, 0)):
        m = redo(mode="scheduled_fraction", reset_end_step=100, recycle_rate=rate).masks(net, s, count)["hidden_1"]
        assert int(m.sum()) == k, (rate, count)
        if k:
            assert float(s["hidden_1"][m].max()) <= float(s["hidden_1"][~m].min())


@pytest.mark.parametrize("extra", [{}, {"max_reset_fraction": 0.125}, {"mode": "scheduled_fraction"},
                                   {"mode": "scheduled_fraction", "score_type": "random"},
                                   {"max_reset_fraction": 0.125, "ratio_aggregation": "mean_of_layers"}])
def test_dormant_ratio_is_the_tau_dormant_fraction_not_the_reset_fraction(extra):
    """`redo/dormant_ratio/NET` is the fraction of the scored units with s <= tau (docs/metrics.md §1), whatever
    the cap or the schedule resets; `redo/reset_fraction/NET` is the fraction reset. 6 of hidden_0's 16 units
    are dead: a cap of 2 units per layer, or the schedule's 5, resets another number of units than is dormant."""
    net, x = mlp(), jax.random.uniform(KEY, (64, 3))
    ns = trained(net, x, dead=range(6))
    agent = type("A", (), {"nets": {"critic": net}, "role": lambda self, n: "critic"})()
    ctx = UpdateContext(count=jnp.asarray(1, jnp.int32), grads=None, probe_grads=None, scores=None,
                        loss=jnp.zeros(()), inputs=x)
    iv = redo(tau=0.0, **extra)
    _, state = jax.jit(partial(iv.post_update, net))(ns, ctx, iv.init(KEY, agent), KEY)
    logs = iv.logs(state)
    dormant = {k: np.asarray(v) <= 0.0 for k, v in redo(tau=0.0).scores(net, ns.params, x).items()}
    reset = {k: float(logs[f"redo/reset_fraction/critic/{k}"]) for k in dormant}
    if extra.get("ratio_aggregation") == "mean_of_layers":
        expected = (np.mean([m.mean() for m in dormant.values()]), np.mean(list(reset.values())))
    else:
        expected = (np.mean(np.concatenate(list(dormant.values()))), np.mean(list(reset.values())))
    assert dormant["hidden_0"][:6].all()
    np.testing.assert_allclose(float(logs["redo/dormant_ratio/critic"]), expected[0], rtol=1e-6)
    np.testing.assert_allclose(float(logs["redo/reset_fraction/critic"]), expected[1], rtol=1e-6)
    if extra:       # the default configuration resets exactly the dormant units: the two are equal there
        assert expected[0] != expected[1]
    else:
        assert expected[0] == expected[1]


def test_conv_outgoing_rows_follow_flagged_channels():
    net = Net.of("q", ConvNet((5, 5, 2), ((4, 3, 1),), (8,), 2), optax.adam(1e-3))
    x = jax.random.uniform(KEY, (16, 50))
    ns = net.init(KEY, x)
    k = ns.params["conv_0"]["kernel"]
    params = {**ns.params, "conv_0": {"kernel": k.at[..., 2].set(-jnp.abs(k[..., 2])),
                                      "bias": ns.params["conv_0"]["bias"].at[2].set(-1.0)}}
    new, masks, _ = redo(tau=0.0).recycle(net, NetState(params, ns.opt_state), x, 1, KEY)
    m = np.asarray(masks["conv_0"])
    assert m[2]
    rows = np.tile(m, 9)  # 3x3 spatial positions, row s * C + c
    dense = np.asarray(new.params["hidden_0"]["kernel"])
    assert np.all(dense[rows] == 0)
    cols = ~np.asarray(masks["hidden_0"])  # the dense layer's own flagged units get new incoming columns
    np.testing.assert_array_equal(dense[~rows][:, cols], np.asarray(params["hidden_0"]["kernel"])[~rows][:, cols])


def test_events_fire_on_multiples_of_the_period_and_compile_once():
    net, x = mlp(), jax.random.uniform(KEY, (32, 3))
    iv = redo(tau=0.0, period=3)
    ns = trained(net, x, dead=(2,), steps=0)
    state = {"redo": iv.init(KEY, type("A", (), {"nets": {"critic": net}, "role": lambda self, n: "critic"})())}
    traces = []

    @jax.jit
    def step(ns, istate, count):
        traces.append(1)

        def loss(p, probes):
            return jnp.mean(jnp.square(net.apply(p, x, probes)[0])), None
        ns, hooks, count, _, _ = gradient_step(net, ns, loss, batch_size=32, count=count, key=KEY,
                                               hooks=Hooks(istate, (iv,)), inputs=x)
        return ns, hooks.state, count

    count, events = jnp.zeros((), jnp.int32), []
    for _ in range(7):
        ns, state, count = step(ns, state, count)
        events.append(int(state["redo"]["critic"]["events"]))
    assert events == [0, 0, 1, 1, 1, 2, 2] and len(traces) == 1
    assert float(state["redo"]["critic"]["reset_fraction"]["hidden_0"]) > 0


def test_separate_statistics_batch_is_drawn_at_the_event():
    """`stats_batch=separate_replay` (the default) scores on `stats_batch_size` fresh samples supplied by the
    driver (`with_batches`), drawn only at the event; `train_batch` on the update's own minibatch. Unit 2 is
    dead on the statistics batch (non-negative inputs) and alive on the training batch (negative ones)."""
    net = mlp()
    x_stats = jax.random.uniform(KEY, (32, 3))
    x_train = -5.0 * x_stats
    ns = trained(net, x_stats, dead=(2,), steps=0)
    agent = type("A", (), {"nets": {"critic": net}, "role": lambda self, n: "critic"})()
    drawn = []

    def batches(name, key, n):
        drawn.append((name, n))
        return x_stats

    def loss(p, probes):
        return jnp.mean(jnp.square(net.apply(p, x_train, probes)[0])), None

    recycled = {}
    for stats in ("separate_replay", "train_batch"):
        drawn.clear()
        iv = redo(tau=0.0, period=2, stats_batch=stats).with_batches(batches)
        state = {"redo": iv.init(KEY, agent)}
        count, cur = jnp.zeros((), jnp.int32), ns
        for _ in range(2):  # the event at the second update
            cur, hooks, count, _, _ = gradient_step(net, cur, loss, batch_size=32, count=count, key=KEY,
                                                    hooks=Hooks(state, (iv,)), inputs=x_train)
            state = hooks.state
        assert int(state["redo"]["critic"]["events"]) == 1
        old = np.asarray(ns.params["hidden_0"]["kernel"][:, 2])
        assert set(drawn) == ({("critic", 256)} if stats == "separate_replay" else set())  # Dopamine's 256
        new = np.asarray(cur.params["hidden_0"]["kernel"][:, 2])
        recycled[stats] = not np.allclose(new, old, atol=0.1)  # two Adam steps move it by <= 0.02
    assert recycled == {"separate_replay": True, "train_batch": False}


def trainer(agent, steps, seeds=2, extra=None):
    small = ({"hidden": "16,16", "num_envs": 2, "num_steps": 16, "minibatches": 2} if agent == "ppo"
             else {"hidden": "16,16", "batch_size": 16, "buffer_size": 1000, "learning_starts": 50})
    return tiny_trainer(agent, "redo", steps, {"run.driver": "auto", "redo.period": 10, "redo.tau": 0.1,
                                               **(extra or {})}, seeds, env="probe:obs" if agent != "dqn" else None,
                        small=small)


# the other agents repeat the same path with a longer compile: `python -m pytest -m slow tests/test_redo.py`
@pytest.mark.parametrize("agent", [pytest.param(a, marks=pytest.mark.slow) for a in ("td3", "sac", "ppo")] + ["dqn"])
def test_runs_under_the_jitted_driver(tmp_path, agent):
    t = trainer(agent, 200)
    t.run(tmp_path / "r")
    ist = t.final_state[0].interventions["redo"]
    net = "q" if agent == "dqn" else "critic"
    assert np.all(np.asarray(ist[net]["events"]) > 0)
    assert np.all(np.isfinite(np.asarray(jax.tree.leaves(t.final_state[0].agent.nets)[0])))


# resume across ReDo events: tests/test_stacks.py::test_a_stack_trains_and_resumes (DQN, ReDo in a stack)


@pytest.mark.parametrize("argv, needle", [
    (["--redo.tau", "-1"], "redo.tau must be >= 0"),
    (["--redo.mode", "cosine"], "redo.mode='cosine' is not valid; choose one of: threshold, scheduled_fraction"),
    (["--redo.score_type", "random"], "redo.score_type=random needs redo.mode=scheduled_fraction"),
    (["--redo.stats_batch", "separate_replay_256"], "redo.stats_batch='separate_replay_256' is not valid"),
    (["--redo.networks", "value"], "redo.networks=value is not valid; choose among: actor, critic"),
    (["--redo.stats_batch_size", "0"], "redo.stats_batch_size must be a positive number of transitions, got 0"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(["--intervention", "redo", *argv], needle, tmp_path, capsys)
