"""Neuroplastic Expansion (docs/interventions.md, Neuroplastic Expansion; docs/mechanics.md §5).

The section comments number the method's test invariants (items 1 to 9)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import assert_cli_error, assert_resume_identical, tiny_trainer
from plastic import fields
from plastic.core import Hooks, Net, NetState, gradient_step
from plastic.interventions.base import Intervention
from plastic.interventions.ne import NE, NEConfig, er_counts, er_densities
from plastic.networks import MLP, get_path
from plastic.replay import Replay

KEY = jax.random.PRNGKey(0)
X = jax.random.normal(jax.random.PRNGKey(1), (64, 6))
Y = jax.random.normal(jax.random.PRNGKey(2), (64, 2))


class Jitted(NE):
    """NE with its topology pieces jitted (eager JAX is slow on this machine)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.rewire = jax.jit(super().rewire, static_argnums=0)
        self.counts = jax.jit(super().counts, static_argnums=0)
        self.dormant_connections = jax.jit(super().dormant_connections, static_argnums=0)


def ne(**kw):
    iv = Jitted(NEConfig(**{"experience_review": "off", "dense_layers": "none", "t_end": 10_000, **kw}), "td3")
    fields.check(iv.cfg, "ne")  # the declared ranges and switches (plastic.config checks them)
    iv.validate(None, None)
    return iv


def setup(iv, hidden=(32, 32), ensemble=0, lr=1e-2):
    """A network with NE state built by `init`, its parameters masked by the first `scheduled_event`."""
    net = Net.of("critic", MLP(hidden, 2, ensemble=ensemble), optax.adam(lr), lr)
    agent = SimpleNamespace(nets={"critic": net}, role=lambda n: "critic", critic_net="critic")
    ns = jax.jit(net.init)(KEY, X)
    state = jax.jit(lambda k, ns: iv.init(k, agent, SimpleNamespace(nets={"critic": ns})))(jax.random.PRNGKey(3), ns)
    masked = iv.apply_masks(net, ns.params, state["nets"]["critic"])
    return net, NetState(masked, ns.opt_state), state


def loss_of(net):
    def loss(params, probes):
        y = net.apply(params, X, probes)[0]
        return jnp.mean(jnp.square(y - Y)), None
    return loss


class Spy(Intervention):
    """Records what `post_update` sees (raw gradients, the state before the step) in its own state."""
    name = "spy"
    Config = dict

    def post_update(self, net, ns, ctx, state, key):
        return ns, {"raw": ctx.raw_grads, "grads": ctx.grads}


def spy_state(ns):
    zeros = jax.tree.map(jnp.zeros_like, ns.params)
    return {"raw": zeros, "grads": zeros}


def stepper(net, ivs):
    traces = []

    @jax.jit
    def step(ns, istate, count):
        traces.append(1)
        ns, hooks, count, _, _ = gradient_step(net, ns, loss_of(net), batch_size=64, count=count, key=KEY,
                                               hooks=Hooks(istate, tuple(ivs)), inputs=X)
        return ns, hooks.state, count
    return step, traces


def kernels(iv, net, tree, name="critic"):
    return {k.name: np.asarray(get_path(tree, k.path)) for k in iv.plans[name].sparse}


def masks(state, name="critic"):
    return {k: np.asarray(m) for k, m in state["nets"][name]["masks"].items()}


# ---- item 5: Erdős–Rényi ------------------------------------------------------------------------
def test_erdos_renyi_reference_values_and_global_density():
    # raw (in + out) / (in · out): 12/32, 16/64, 10/16; sum raw·N = 38
    shapes = [(4, 8), (8, 8), (8, 2)]
    np.testing.assert_allclose(er_densities(shapes, 0.5), [0.375 * 56 / 38, 0.25 * 56 / 38, 0.625 * 56 / 38])
    # at 0.8 the last layer would exceed 1: dense, and eps re-solved over the rest (73.6 / 28)
    np.testing.assert_allclose(er_densities(shapes, 0.8), [0.375 * 73.6 / 28, 0.25 * 73.6 / 28, 1.0])
    # a forced-dense layer counts toward the global density (the others get sparser)
    d = er_densities(shapes, 0.5, dense={0})
    assert d[0] == 1.0 and d[1] < 0.25 * 56 / 38
    for shapes, mult in (([(23, 256), (256, 256), (256, 1)], [2, 2, 2]), ([(17, 256), (256, 256), (256, 6)], None),
                         ([(3, 3, 4, 16), (3, 3, 16, 32), (288, 64), (64, 5)], None)):
        m = mult or [1] * len(shapes)
        total = sum(math.prod(s) * k for s, k in zip(shapes, m))
        for density in (0.05, 0.2, 0.5, 0.75, 0.95):
            for dense in ((), (0, len(shapes) - 1)):
                d, counts = er_counts(shapes, density, dense, mult)
                assert all(0.0 <= x <= 1.0 for x in d) and all(d[i] == 1.0 for i in dense)
                assert all(abs(c - x * math.prod(s)) <= 1 for c, x, s in zip(counts, d, shapes))
                forced = sum(math.prod(shapes[i]) * m[i] for i in dense)
                if forced <= density * total:
                    assert abs(sum(c * k for c, k in zip(counts, m)) - density * total) <= 1.0
                else:  # the dense layers alone exceed the target: every other layer is empty
                    assert all(c == 0 for i, c in enumerate(counts) if i not in dense)


def test_initial_masks_follow_the_er_counts_and_keep_the_largest_weights():
    iv = ne(initial_sparsity=0.8, dense_layers="first_and_last")
    net, ns, state = setup(iv, hidden=(32, 32, 32), ensemble=2)
    p = iv.plans["critic"]
    assert [k.name for k in p.sparse] == ["hidden_1", "hidden_2"]  # first and output kernels dense
    raw = jax.jit(net.init)(KEY, X).params
    for k in p.sparse:
        m = np.asarray(state["nets"]["critic"]["masks"][k.name])
        w = np.abs(np.asarray(get_path(raw, k.path)))
        for e in range(2):  # per twin: exactly n_init active, the largest |w| of that member
            assert m[e].sum() == p.n_init[k.name]
            assert w[e][m[e]].min() >= w[e][~m[e]].max()
    dense_n = (6 * 32 + 32 * 2) * 2
    total = dense_n + sum(32 * 32 * 2 for _ in p.sparse)
    assert abs(sum(p.n_init[k] * 2 for k in p.n_init) + dense_n - 0.2 * total) <= 1


# ---- items 1, 6, 7, 9: masks hold; dense gradient; optimizer; one compilation ------------------------
def test_masks_dense_gradient_optimizer_surgery_and_no_recompilation():
    iv = ne(period=4, growth_schedule="constant", growth_rate=0.1, prune_score="weight_magnitude",
            grad_accumulation_n=2)
    net, ns, state = setup(iv, ensemble=2)
    step, traces = stepper(net, (iv, Spy({}, "td3")))
    istate = {"ne": state, "spy": spy_state(ns)}
    target = jax.tree.map(lambda x: x + 1.0, ns.params)  # a dense target
    polyak = jax.jit(lambda t, p, s: iv.target_update(net, optax.incremental_update(p, t, 0.005), s))
    count, grown = jnp.zeros((), jnp.int32), 0
    for i in range(17):
        before, prev = masks(istate["ne"]), ns
        ns, istate, count = step(ns, istate, count)
        s = istate["ne"]
        if (i + 1) % 4 == 0:  # a topology event: item 7
            check_event(iv, net, prev, ns, before, masks(s))
        for name, m in masks(s).items():   # after the optimizer step and after topology events
            w = kernels(iv, net, ns.params)[name]
            assert np.all(w[~m] == 0.0), (i, name)
        # item 6: the gradient growth uses is dense (non-zero at inactive entries); the optimizer's is masked
        raw, used = kernels(iv, net, istate["spy"]["raw"]), kernels(iv, net, istate["spy"]["grads"])
        assert any(np.any(raw[k][~m] != 0.0) for k, m in before.items())
        assert all(np.all(used[k][~m] == 0.0) for k, m in before.items())
        grown += sum(int(v) for v in s["nets"]["critic"]["grown"].values()) if (i + 1) % 4 == 0 else 0
        # grad_accumulation_n = 2: the growth gradient is the mean raw gradient of updates 3 and 4 of each period
        for k, a in s["nets"]["critic"]["acc"].items():
            expected = raw[k] / 2 if (i + 1) % 4 == 3 else np.zeros_like(raw[k])
            np.testing.assert_allclose(np.asarray(a), expected, rtol=1e-6)
        target = polyak(target, ns.params, s)
        for name, m in masks(s).items():
            assert np.all(kernels(iv, net, target)[name][~m] == 0.0)
    assert int(istate["ne"]["nets"]["critic"]["events"]) == 4 and grown > 0
    assert len(traces) == 1  # item 9: topology events reuse the one compiled program


def check_event(iv, net, prev, ns, old_masks, new_masks):
    """Moments zero at every flipped entry and unchanged elsewhere, the count kept, the update skipped."""
    adam_before, adam = prev.opt_state[0], ns.opt_state[0]
    assert int(adam.count) == int(adam_before.count)
    flipped = {k: old_masks[k] ^ new_masks[k] for k in new_masks}
    assert sum(f.sum() for f in flipped.values()) > 0
    for mom in ("mu", "nu"):
        for name, f in flipped.items():
            before, after = (kernels(iv, net, getattr(a, mom))[name] for a in (adam_before, adam))
            assert np.all(after[f] == 0)
            np.testing.assert_array_equal(after[~f], before[~f])
    # no optimizer step: every unflipped weight is the one before the update; the biases too
    for name, f in flipped.items():
        np.testing.assert_array_equal(kernels(iv, net, ns.params)[name][~f], kernels(iv, net, prev.params)[name][~f])
    np.testing.assert_array_equal(ns.params["hidden_1"]["bias"], prev.params["hidden_1"]["bias"])


def test_static_sparse_keeps_its_mask_and_never_skips():
    iv = ne(period=1, critic_mode="static_sparse")
    net, ns, state = setup(iv)
    step, _ = stepper(net, (iv,))
    istate, count = {"ne": state}, jnp.zeros((), jnp.int32)
    for _ in range(3):
        ns, istate, count = step(ns, istate, count)
    assert int(ns.opt_state[0].count) == 3 and int(istate["ne"]["nets"]["critic"]["events"]) == 0
    for k, m in masks(istate["ne"]).items():
        np.testing.assert_array_equal(m, np.asarray(state["nets"]["critic"]["masks"][k]))
        assert m.sum() == iv.plans["critic"].n_init[k] and np.all(kernels(iv, net, ns.params)[k][~m] == 0)


# ---- items 2, 3, 4: function preservation, counts, top-k, cap -------------------------------------
def hand_built(iv):
    """A 1-hidden-layer net whose hidden_0 kernel (6 x 32) gets a hand-built gradient ramp."""
    net, ns, state = setup(iv, hidden=(32,))
    st = state["nets"]["critic"]
    grad = jnp.arange(6 * 32, dtype=jnp.float32).reshape(6, 32)  # larger index = larger |grad|
    grads = {k.name: (grad if k.name == "hidden_0" else jnp.zeros(get_path(ns.params, k.path).shape))
             for k in iv.plans["critic"].sparse}
    return net, ns, st, grads


def test_growth_is_top_k_dense_gradient_and_function_preserving():
    iv = ne(prune_cap=0.0)
    net, ns, st, grads = hand_built(iv)
    n = {"hidden_0": (jnp.array([7]), jnp.array([0])), "output": (jnp.array([0]), jnp.array([0]))}
    new, st2 = iv.rewire(net, ns, st, n, grads, KEY)
    old_m, new_m = np.asarray(st["masks"]["hidden_0"]), np.asarray(st2["masks"]["hidden_0"])
    born = new_m & ~old_m
    assert born.sum() == 7 and int(st2["grown"]["hidden_0"]) == 7 and int(st2["pruned"]["hidden_0"]) == 0
    ramp = np.arange(6 * 32).reshape(6, 32)
    assert ramp[born].min() > ramp[~new_m].max()   # the 7 largest |grad| among the inactive entries
    # grown_init = zero: every parameter bit-identical, hence the outputs
    for a, b in zip(jax.tree.leaves(ns.params), jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(a, b)
    apply = jax.jit(net.apply)
    np.testing.assert_array_equal(apply(new.params, X)[0], apply(ns.params, X)[0])
    # layer_init: the new connections get non-zero weights, the output moves
    iv2 = ne(prune_cap=0.0, grown_init="layer_init")
    iv2.plans = iv.plans
    new2, _ = iv2.rewire(net, ns, st, n, grads, KEY)
    assert np.all(np.asarray(new2.params["hidden_0"]["kernel"])[born] != 0)


def test_counts_prune_cap_and_exact_active_change():
    iv = ne(growth_schedule="constant", growth_rate=0.05, prune_score="weight_magnitude",
            prune_truncation="lowest_score")
    net, ns, st, grads = hand_built(iv)
    p = iv.plans["critic"]
    n_active = p.n_init["hidden_0"]
    counts, st1, live = iv.counts(net, st, jnp.asarray(100, jnp.int32))
    g, pr = (int(x[0]) for x in counts["hidden_0"])
    space = 0.8 * 192 - n_active               # n_init_space = initial_sparsity · N − n_active
    assert bool(live) and g == int(space * 0.05) and pr == math.floor(0.4 * g)
    assert float(st1["space"]["hidden_0"][0]) == pytest.approx(space)
    new, st2 = iv.rewire(net, ns, st1, counts, grads, KEY)
    old_m, new_m = np.asarray(st["masks"]["hidden_0"]), np.asarray(st2["masks"]["hidden_0"])
    assert new_m.sum() - old_m.sum() == g - pr   # item 3
    # the pr lowest-|w| active weights are pruned (item 4: pr = floor(0.4 g)); any of them regrown keeps its weight
    w = np.abs(np.asarray(ns.params["hidden_0"]["kernel"])).ravel()
    lowest = np.zeros(w.size, bool)
    lowest[np.flatnonzero(old_m.ravel())[np.argsort(w[old_m.ravel()], kind="stable")[:pr]]] = True
    pruned = (old_m & ~new_m).ravel()
    assert not (pruned & ~lowest).any() and new_m.ravel()[lowest & ~pruned].all()
    assert np.all(np.asarray(new.params["hidden_0"]["kernel"])[~new_m] == 0)
    # growth is capped at the final ER count; the space is fixed at the first event
    near = (jnp.arange(192) < p.n_final["hidden_0"] - 3).reshape(6, 32)
    counts, _, _ = iv.counts(net, {**st2, "masks": {**st2["masks"], "hidden_0": near}}, jnp.asarray(200, jnp.int32))
    assert int(counts["hidden_0"][0][0]) == 3 < g


def test_dormant_pruning_candidates_and_cap():
    iv = ne(prune_cap=0.4)
    net, ns, st, grads = hand_built(iv)
    x = jnp.abs(X)  # non-negative inputs: a unit with negative weights and a negative bias is dead
    k = ns.params["hidden_0"]["kernel"]
    params = {**ns.params, "hidden_0": {"kernel": k.at[:, 5].set(-0.5),
                                        "bias": ns.params["hidden_0"]["bias"].at[5].set(-1.0)}}
    st = {**st, "masks": {**st["masks"], "hidden_0": st["masks"]["hidden_0"].at[:, 5].set(True)}}
    dead = np.all(np.asarray(jax.jit(net.apply)(params, x)[1]["hidden_0"]) == 0, axis=0)  # sparse nets have more
    cand = np.asarray(iv.dormant_connections(net, params, x)["hidden_0"])
    assert dead[5] and np.array_equal(cand, np.broadcast_to(dead, (6, 32)))
    assert not np.asarray(iv.dormant_connections(net, params, x)["output"]).any()  # incoming only
    iv_out = ne(prune_connections="incoming_and_outgoing")
    iv_out.plans = iv.plans
    np.testing.assert_array_equal(np.asarray(iv_out.dormant_connections(net, params, x)["output"]),
                                  np.broadcast_to(dead[:, None], (32, 2)))
    # cap: 10 grown -> at most floor(0.4 · 10) = 4 pruned, all active incoming weights of dead units
    active_dead = np.asarray(st["masks"]["hidden_0"]) & cand
    n = {"hidden_0": (jnp.array([10]), jnp.array([4])), "output": (jnp.array([0]), jnp.array([0]))}
    _, st2 = iv.rewire(net, NetState(params, ns.opt_state), st, n, grads, KEY,
                       iv.dormant_connections(net, params, x))
    pruned = np.asarray(st["masks"]["hidden_0"]) & ~np.asarray(st2["masks"]["hidden_0"])
    assert pruned.sum() == min(4, active_dead.sum()) and not (pruned & ~active_dead).any()


def test_dst_phase_swaps_at_constant_density_after_growth():
    iv = ne(period=1)
    net, ns, st, grads = hand_built(iv)
    p = iv.plans["critic"]
    grown = {k.name: jnp.zeros((1, p.size[k.name]), bool).at[:, :p.n_final[k.name]].set(True).reshape(
        st["masks"][k.name].shape) for k in p.sparse}
    st = {**st, "masks": grown}
    counts, st1, live = iv.counts(net, st, jnp.asarray(300, jnp.int32))
    assert int(st1["phase"]) == 1 and int(st1["phase_start"]) == 300 and bool(live)
    g, pr = (int(x[0]) for x in counts["hidden_0"])
    assert g == pr == int(p.n_final["hidden_0"] * 0.2)  # dst_zeta / 2 · (1 + cos 0) of the active weights
    # past t_end nothing happens and the step is not skipped
    _, _, live = iv.counts(net, st1, jnp.asarray(300 + 10_000, jnp.int32))
    assert not bool(live)


# ---- item 8: experience review --------------------------------------------------------------------
def filled_replay(n_add=150, capacity=100):
    r = Replay.create(capacity, {"obs": jnp.zeros(2)})
    add = jax.jit(lambda r, t: r.add({"obs": jnp.zeros(2)}, t))
    for t in range(n_add):
        r = add(r, t)
    return r


def test_experience_review_gate_and_oldest_slice():
    iv = NE(NEConfig(auto_batch=True), "td3")
    np.testing.assert_allclose(float(iv.review_gate(0.0)), 1 / (1 + math.exp(0.4) * 0.9), rtol=1e-6)
    assert float(iv.review_gate(0.9)) == pytest.approx(0.4)  # raw gate 0.647 >= 0.6 -> 0.4
    for n_add in (60, 150):  # not yet full / wrapped around
        r = filled_replay(n_add)
        age = np.asarray(r.ages())[: int(r.size)]
        oldest = age >= np.quantile(age, 0.7) - 1e-9   # the oldest 30% of the live slots
        sample = jax.jit(iv.sample_with, static_argnums=4)
        for fau in (0.4, 0.9):   # FAU >= awaken: uniform whatever the draw
            idx = np.asarray(sample(r, fau, 0.99, KEY, 512))
            np.testing.assert_array_equal(idx, np.asarray(r.sample_uniform(jax.random.split(KEY)[0], 512)))
        idx = np.asarray(sample(r, 0.0, 0.99, KEY, 512))   # FAU = 0 and a draw above the gate: all oldest
        assert oldest[idx].all() and len(set(idx.tolist())) == oldest.sum()
        idx = np.asarray(sample(r, 0.0, 0.1, KEY, 512))    # a draw below the gate: uniform
        assert (~oldest[idx]).any()
        # auto_batch: FAU < 0.9 · awaken repeats the first half
        idx = np.asarray(sample(r, 0.3, 0.1, KEY, 512))
        np.testing.assert_array_equal(idx[256:], idx[:256])
        idx = np.asarray(sample(r, 0.38, 0.1, KEY, 512))
        assert not np.array_equal(idx[256:], idx[:256])
    # with review and halving off the sampler is exactly the trainer's uniform draw
    off = NE(NEConfig(experience_review="off"), "td3")
    np.testing.assert_array_equal(off.sample(r, {}, KEY, 64), r.sample_uniform(KEY, 64))


# ---- jitted runs, resume, CLI ----------------------------------------------------------------------
FAST = {"ne.period": 20, "ne.t_end": 1000, "ne.growth_rate": 0.2, "ne.growth_schedule": "constant",
        "ne.review_awaken": 0.9}  # awaken 0.9: FAU is below it on the tiny nets, so batches get reviewed


def check_run(t, agent):
    ts = t.final_state[0]
    iv = t.interventions[0]
    st = ts.interventions["ne"]
    for name, s in st["nets"].items():
        assert np.all(np.asarray(s["events"]) > 0), name
        for k in iv.plans[name].sparse:
            m = np.asarray(s["masks"][k.name])
            assert np.all(np.asarray(get_path(ts.agent.nets[name].params, k.path))[~m] == 0)
            if name in ts.agent.targets:
                assert np.all(np.asarray(get_path(ts.agent.targets[name], k.path))[~m] == 0)
    assert np.all(np.isfinite(np.asarray(jax.tree.leaves(ts.agent.nets)[0])))
    return st


# TD3 (the reference agent) runs by default; DQN runs in the resume test below (replay sampler, hard target
# sync); PPO (on-policy trainer, no replay) and SAC repeat the same hooks: `python -m pytest -m slow tests/test_ne.py`
@pytest.mark.parametrize("agent", ["td3"] + [pytest.param(a, marks=pytest.mark.slow) for a in ("sac", "ppo", "dqn")])
def test_runs_under_the_jitted_driver(tmp_path, agent):
    extra = {k: v for k, v in FAST.items() if k != "ne.t_end"}  # t_end from the run (its default)
    extra.update({"ne.period": 8} if agent == "ppo" else {})
    t = tiny_trainer(agent, "ne", 300, extra)
    t.run(tmp_path / "r")
    st = check_run(t, agent)
    counters = t.final_state[1]
    critic = "q" if agent == "dqn" else "critic"
    assert t.interventions[0].cfg.t_end == int(np.asarray(counters[critic]))  # T_end = the critic's updates
    if agent != "ppo":
        assert np.all(np.asarray(st["review"]["prob_sum"]) > 0)


def test_the_run_starts_from_the_masked_networks():
    """NE's networks are sparse from the start: the agent state a run begins with is masked, and so is the
    metrics collector's θ₀, which `param_dist_init_rms` measures against (a dense θ₀ put about half of
    param_rms into that distance before any update)."""
    t = tiny_trainer("td3", "ne", 300, {**FAST, "metrics.grad_every": 100})
    ts = t.init_carry()[0]
    iv, mon = t.interventions[0], t.setup.monitor
    theta0 = jax.vmap(lambda m: mon.view(m, "theta0")["theta0"])(ts.monitor)  # per seed
    for name in ("critic", "actor"):
        net, st = t.agent.nets[name], ts.interventions["ne"]["nets"][name]
        for tree in (ts.agent.nets[name].params, theta0[name]):
            masked = jax.vmap(lambda p, s: iv.apply_masks(net, p, s))(tree, st)
            for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(masked)):
                np.testing.assert_array_equal(a, b)


def test_resume_is_bit_identical(tmp_path):
    full = assert_resume_identical(lambda n: tiny_trainer("dqn", "ne", n, {**FAST, "ne.auto_batch": "true"}),
                                   tmp_path, 300, 200)
    st = check_run(full, "dqn")
    assert np.all(np.asarray(st["review"]["prob_sum"]) > 0)


@pytest.mark.parametrize("argv, needle", [
    (["--ne.critic_mode", "shrink"], "ne.critic_mode='shrink' is not valid; choose one of: grow, static_sparse, dense"),
    (["--ne.final_sparsity", "0.9"], "ne.final_sparsity must be in [0, ne.initial_sparsity=0.8]"),
    (["--ne.prune_cap", "1"], "ne.prune_cap must be in [0, 1)"),
    (["--ne.growth_schedule", "linear"], "choose one of: constant, cosine"),
    (["--ne.grad_accumulation_n", "100", "--ne.period", "100"], "ne.grad_accumulation_n must be in [1, ne.period)"),
    (["--ne.auto_batch", "true", "--sac.batch_size", "255"], "ne.auto_batch needs an even sac.batch_size"),
    (["--agent", "ppo", "--ne.experience_review", "fau_gated_oldest"], "ppo has none"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(["--intervention", "ne", *argv], needle, tmp_path, capsys)


def test_t_end_defaults_to_the_critic_updates_of_the_run():
    """T_end is the critic's update count over the run (the code's max_timesteps − start_timesteps), resolved
    once from run.steps when the config is built and kept by config.yaml; an explicit value is kept."""
    from plastic.config import build, from_dict
    assert NEConfig().t_end == -1
    cfg = build("td3", "ne", steps=300_000)
    assert cfg.interventions["ne"].t_end == 300_000 - 25_000
    d = cfg.to_dict()
    d["run"]["steps"] = 600_000  # a resume that extends the budget keeps the resolved horizon
    assert from_dict(d).interventions["ne"].t_end == 275_000
    assert build("td3", "ne", steps=300_000, overrides={"td3.utd": "2"}).interventions["ne"].t_end == 550_000
    assert build("sac", "ne", steps=100_000).interventions["ne"].t_end == 95_000   # learning_starts 5,000
    # DQN: an update round after every 10th env step from learning_starts 10,000 on
    assert build("dqn", "ne", steps=100_000).interventions["ne"].t_end == 9_000
    # PPO: 4 epochs x 4 minibatches per rollout of 4 x 128 env steps, a last partial rollout included
    assert build("ppo", "ne", steps=51_200).interventions["ne"].t_end == 100 * 16
    assert build("ppo", "ne", steps=51_201).interventions["ne"].t_end == 101 * 16
    assert build("td3", "ne", steps=300_000, overrides={"ne.t_end": "5000"}).interventions["ne"].t_end == 5000
    assert build("td3", "ne", steps=1000).interventions["ne"].t_end == 1  # no update at all: at least 1


def test_presets():
    from plastic.config import build, load_preset
    paper = build(preset=load_preset("ne_paper")).interventions["ne"]
    assert paper == NEConfig(t_end=975_000)  # the project default = ne_paper; T_end = steps − learning_starts
    # the presets' horizon follows --steps
    assert build(preset=load_preset("ne_paper"), steps=300_000).interventions["ne"].t_end == 275_000
    assert build(preset=load_preset("ne_code")).interventions["ne"].t_end == 6_000_000 - 25_000
    code = build(preset=load_preset("ne_code")).interventions["ne"]
    assert (code.actor_mode, code.period, code.growth_schedule, code.prune_score, code.prune_truncation,
            code.dense_layers, code.experience_review, code.auto_batch) == (
        "static_sparse", 100, "constant", "weight_magnitude", "lowest_score", "none", "off", True)
    assert build("ppo", "ne").interventions["ne"].experience_review == "off"  # no replay: off by default
