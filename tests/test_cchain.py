"""C-CHAIN (docs/interventions.md, C-CHAIN): the term through the training core against a NumPy reference, the
policy distances, the adaptive coefficient against the C-CHAIN scripts' rule, no term after a write outside the
optimizer, the reference rows drawn outside the update loop, rounds per update (DQN) and per iteration (PPO).
Resume: tests/test_stacks.py stacks cchain with the other methods."""
from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import all_eqns, assert_cli_error, rows, tiny_trainer
from plastic.core import Hooks, Net, gradient_step
from plastic.interventions.cchain import CChain, CChainConfig
from plastic.networks import MLP


def _agent(net, role, view=None, on_policy=False):
    ns = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
    return SimpleNamespace(nets={net.name: net}, role=lambda n: role, policy_view=view or (lambda o: {"q": o}),
                           on_policy=on_policy, cfg=SimpleNamespace(batch_size=4), minibatch_size=4,
                           ), SimpleNamespace(nets={net.name: ns}), ns


def test_the_term_is_coef_times_the_output_change_of_the_last_update_on_the_reference_rows():
    """Two SGD steps of a critic through the core: the first has no term; the second adds λ·mean (f_θ1 − f_θ0)²
    on the bound reference rows, whose gradient moves the parameters (checked against autodiff of the
    reference), and reports D to post_update."""
    net = Net.of("critic", MLP((8,), 2, "relu"), optax.sgd(0.1))
    agent, astate, ns = _agent(net, "critic")
    iv = CChain(CChainConfig(coef=3.0), "dqn", {"critic": "critic"})
    st = {"cchain": iv.init(jax.random.PRNGKey(1), agent, astate)}
    x, y = jax.random.normal(jax.random.PRNGKey(2), (4, 3)), jnp.ones((4, 2))
    ref = jax.random.normal(jax.random.PRNGKey(3), (4, 3))
    task = lambda p, probes: (jnp.mean(jnp.square(net.apply(p, x)[0] - y)), None)  # noqa: E731
    bound = (iv.with_rows({"critic": ref}),)
    theta0 = ns.params
    ns1, hooks, count, _, _ = gradient_step(net, ns, task, batch_size=4, count=jnp.zeros((), jnp.int32),
                                            key=jax.random.PRNGKey(4), hooks=Hooks(st, bound))
    assert float(hooks.state["cchain"]["critic"]["reg"]) == 0.0           # no θ⁻ at the first update
    theta1 = ns1.params
    ns2, hooks, _, _, _ = gradient_step(net, ns1, task, batch_size=4, count=count, key=jax.random.PRNGKey(5),
                                        hooks=hooks.replace(interventions=bound))
    f0 = net.apply(theta0, ref)[0]
    d = lambda p: jnp.mean(jnp.square(net.apply(p, ref)[0] - f0))  # noqa: E731
    assert float(hooks.state["cchain"]["critic"]["reg"]) == pytest.approx(float(d(theta1)), rel=1e-5)
    assert float(d(theta1)) > 0
    grad = jax.grad(lambda p: task(p, None)[0] + 3.0 * d(p))(theta1)
    want = jax.tree.map(lambda p, g: p - 0.1 * g, theta1, grad)
    for a, b in zip(jax.tree.leaves(ns2.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_policy_distances():
    """A categorical policy: KL(π_old ‖ π_new); a Gaussian one: the squared change of its mean; TD3: of its action."""
    net = Net.of("actor", MLP((4,), 3, "relu"), optax.sgd(0.1))
    new, old = jax.random.normal(jax.random.PRNGKey(0), (5, 3)), jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    cases = {"logits": lambda o: {"logits": o},
             "mean": lambda o: {"action": jnp.tanh(o), "mean": o, "log_std": o * 0},
             "action": lambda o: {"action": jnp.tanh(o)}}
    for kind, view in cases.items():
        agent, astate, _ = _agent(net, "actor", view)
        iv = CChain(CChainConfig(networks=("actor",)), "ppo", {"actor": "actor"})
        iv.init(jax.random.PRNGKey(2), agent, astate)
        got = float(iv.distance(net, new, old))
        n, o = np.asarray(new, np.float64), np.asarray(old, np.float64)
        if kind == "logits":
            po = np.exp(o) / np.exp(o).sum(-1, keepdims=True)
            pn = np.exp(n) / np.exp(n).sum(-1, keepdims=True)
            want = np.mean(np.sum(po * (np.log(po) - np.log(pn)), -1))
        elif kind == "mean":
            want = np.mean((n - o) ** 2)
        else:
            want = np.mean((np.tanh(n) - np.tanh(o)) ** 2)
        assert got == pytest.approx(want, rel=1e-5), kind


def reference_coefs(losses, regs, coef, ratio, window, warmup):
    """C-CHAIN's DQN rule (crl_minatar/agents/double_dqn_c_chain.py): the loss of every update into one list,
    the regulariser of every regularised update into another; from the `warmup`-th update on, λ = ratio ·
    mean|last `window` losses| / (mean of the last `window` regularisers + 1e-8)."""
    out, lh, rh = [], [], []
    for i, (loss, reg) in enumerate(zip(losses, regs)):
        lh.append(loss)
        if reg is not None:
            rh.append(reg)
        if i + 1 >= warmup:
            coef = ratio * np.mean(np.abs(lh[-window:])) / (np.mean(rh[-window:]) + 1e-8)
        out.append(coef)
    return out


def test_the_adaptive_coefficient_follows_the_scripts_rule():
    rng = np.random.default_rng(0)
    n, window, warmup = 40, 7, 5
    losses = rng.normal(size=n)
    regs = [None] + list(rng.uniform(0.01, 1.0, size=n - 1))
    regs[10] = regs[11] = None                          # two updates without a term (after a write)
    iv = CChain(CChainConfig(coef=50.0, target_ratio=0.01, window=window, warmup=warmup), "dqn")
    s = {"loss_hist": jnp.zeros(window), "reg_hist": jnp.zeros(window), "n_loss": jnp.zeros((), jnp.int32),
         "n_reg": jnp.zeros((), jnp.int32), "coef": jnp.asarray(50.0)}
    got = []
    for loss, reg in zip(losses, regs):
        s = iv.end_round({**s, "last_loss": jnp.abs(jnp.asarray(loss, jnp.float32)),
                       "reg": jnp.asarray(reg or 0.0, jnp.float32), "last_regularised": jnp.asarray(reg is not None)})
        got.append(float(s["coef"]))
    np.testing.assert_allclose(got, reference_coefs(losses, regs, 50.0, 0.01, window, warmup), rtol=2e-5)
    assert got[warmup - 2] == 50.0 and got[warmup - 1] != 50.0


def test_dqn_reference_rows_are_drawn_outside_the_update_loop_and_no_term_follows_a_reset(tmp_path):
    """The DQN update round's scan over its UTD batches carries no replay-sized array (the rows come in with the
    batches); in a run with resets every update counts its loss, and every update but the first and those right
    after a reset is regularised; λ has adapted; the logs hold λ and D."""
    extra = {"dqn.learning_starts": 50, "dqn.utd": 2, "dqn.train_frequency": 1, "cchain.warmup": 20,
             "cchain.window": 30, "reset.interval": 60}
    t = tiny_trainer("dqn", "cchain+reset", 300, extra, env="gymnax:CartPole-v1")
    capacity = t.program.capacity
    ts, counters = t.program.init_state()
    one = jax.tree.map(lambda a: a[0], ts)
    jaxpr = jax.make_jaxpr(lambda s, c: t.program.updates(s, c))(one, counters).jaxpr
    scans = [e for e in all_eqns(jaxpr) if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 2
    shapes = [v.aval.shape for v in scans[0].invars]
    assert not [s for s in shapes if s and s[0] == capacity], shapes
    t.run(tmp_path / "r")
    s = t.final_state[0].interventions["cchain"]["q"]
    updates, resets = int(t.final_state[1]["q"]), int(t.final_state[1]["shared"]["reset"]["seen"])
    assert updates == 2 * 250 and resets == 5
    assert np.asarray(s["n_loss"]).tolist() == [updates] * 2
    assert np.asarray(s["n_reg"]).tolist() == [updates - 1 - resets] * 2
    assert np.all(np.asarray(s["coef"]) != 50.0)
    assert {"cchain/coef/q", "cchain/reg/q"} <= set(rows(tmp_path / "r")[-1])


def test_ppo_rounds_are_iterations(tmp_path):
    """PPO: one round per iteration (its last update's statistics), λ at its initial value until the warmup's
    iterations are done, then adapted; the actor only by default."""
    t = tiny_trainer("ppo", "cchain", 500, {"cchain.warmup": 5, "cchain.window": 3})
    t.run(tmp_path / "r")
    st = t.final_state[0].interventions["cchain"]
    assert list(st) == ["actor"]
    iterations = 500 // 50
    assert np.asarray(st["actor"]["n_loss"]).tolist() == [iterations] * 2
    assert np.asarray(st["actor"]["n_reg"]).tolist() == [iterations] * 2
    coefs = [r["cchain/coef/actor"] for r in rows(tmp_path / "r")]
    assert coefs[:2] == [100.0, 100.0] and all(c != 100.0 for c in coefs[-2:])   # rows at 100, ..., 500 (2 seeds)


@pytest.mark.parametrize("argv, needle", [
    (["--agent", "dqn", "--intervention", "cchain", "--cchain.networks", "actor"],
     "cchain.networks=actor is not valid for dqn; choose among: critic"),
    (["--agent", "dqn", "--intervention", "cchain", "--cchain.window", "0"], "cchain.window must be >= 1"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)
