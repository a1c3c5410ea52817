"""GTR (reconstructed variant) and the PPO KL-penalty baseline (docs/interventions.md, GTR;
the method's test invariants)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.ppo import PPO, PPOConfig
from helpers import assert_cli_error, assert_resume_identical, rows, tiny_trainer
from plastic import fields
from plastic.agent import init_counters
from plastic.core import Hooks, Update, gradient_step
from plastic.interventions.gtr import GTR, GTRConfig, KLPenalty, anchor_weights

OBS, ACTIONS = 3, 2


def make_agent(discrete=True, **cfg):
    cfg = {"hidden": (16, 16), "num_envs": 2, "num_steps": 16, "epochs": 2, "minibatches": 2, **cfg}
    return PPO(PPOConfig(**cfg), OBS, ACTIONS, discrete=discrete)


def make_iv(cls, validate=True, **cfg):
    iv = cls(cls.Config(**cfg), "ppo")
    if validate:
        fields.check(iv.cfg, iv.name)  # the declared ranges and switches (plastic.config checks them)
        iv.validate(None, None)
    return iv


def shifted(params, scale, seed=7):
    """params + scale · noise: a policy that has moved away from the rollout policy."""
    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tdef, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def rollout_data(agent, state, n=32, seed=0):
    """A flat rollout as PPO.update builds it (obs, action, logp of the acting policy, adv, ret, value)."""
    rng = np.random.default_rng(seed)
    obs = jnp.asarray(rng.normal(size=(n, OBS)), jnp.float32)
    out = agent.dist(state.nets["actor"].params, obs)[0]
    key = jax.random.PRNGKey(seed)
    if agent.discrete:
        action = jax.random.categorical(key, out)
    else:
        action = out[0] + jnp.exp(out[1]) * jax.random.normal(key, out[0].shape)
    f = lambda: jnp.asarray(rng.normal(size=n), jnp.float32)  # noqa: E731
    return {"obs": obs, "action": action, "logp": agent.log_prob(out, action)[0], "adv": f(), "ret": f(),
            "value": f()}


def fake_rollout(agent, seed=0):
    """A rollout dict from the trainer, [T, E, ...]."""
    c, rng = agent.cfg, np.random.default_rng(seed)
    T, E = c.num_steps, c.num_envs
    obs = jnp.asarray(rng.normal(size=(T, E, OBS)), jnp.float32)
    action = (jnp.asarray(rng.integers(0, ACTIONS, size=(T, E)), jnp.int32) if agent.discrete else
              jnp.asarray(rng.normal(size=(T, E, ACTIONS)), jnp.float32))
    return {"obs": obs, "action": action, "reward": jnp.asarray(rng.normal(size=(T, E)), jnp.float32),
            "next_obs": obs + 0.1, "terminated": jnp.asarray(rng.random((T, E)) < 0.05),
            "truncated": jnp.asarray(rng.random((T, E)) < 0.05)}


def run_update(agent, state, rollout, ivs):
    istate = {iv.name: iv.init(jax.random.PRNGKey(1), agent, state) for iv in ivs}

    def fn(s, r, i):
        u = agent.update(Update(s, Hooks(i, tuple(ivs)), init_counters(agent)), r, jax.random.PRNGKey(2))
        return u.state, u.hooks.state

    return jax.jit(fn)(state, rollout, istate)


def columns_state(iv, agent, state, data, pushes=1, params=None):
    """The intervention state after `pushes` rollouts of the same policy, and the minibatch with its columns."""
    s = iv.init(jax.random.PRNGKey(1), agent, state)
    agent_state = state if params is None else state.replace(
        nets={**state.nets, "actor": state.nets["actor"].replace(params=params)})
    for _ in range(pushes):
        cols, s = iv.rollout_columns(agent, agent_state, s, data)
    return s, ({**data, "columns": {iv.name: cols}} if cols else data)


def policy_aux(agent, params, mb):
    return agent.policy_loss(params, None, mb)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---- 1. reduction to PPO ---------------------------------------------------------------------------------
@pytest.mark.parametrize("discrete", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_beta_zero_with_ppo_clip_is_exactly_ppo(discrete):
    """gtr(β=0, clip=ppo_clip) and kl_penalty(β=0, clip=ppo_clip), both active (an agent-level stack; the CLI
    refuses it): one PPO iteration (2 epochs x 2 minibatches, columns permuted with the rollout) gives
    bit-identical networks and optimizer states to plain PPO, and so does one gradient step away from the
    rollout policy (clipping active)."""
    agent = make_agent(discrete)
    state = agent.init(jax.random.PRNGKey(0))
    rollout = fake_rollout(agent)
    ivs = (make_iv(GTR, beta=0.0, clip="ppo_clip", deviation="state_kl"),
           make_iv(KLPenalty, beta=0.0, clip="ppo_clip"))  # both compute (unused) columns
    base, _ = run_update(agent, state, rollout, ())
    new, istate = run_update(agent, state, rollout, ivs)
    assert_trees_equal(new.nets, base.nets)
    assert int(istate["gtr"]["filled"][()]) == 1
    data = rollout_data(agent, state)
    ns = state.nets["actor"].replace(params=shifted(state.nets["actor"].params, 0.3))
    cols, ist = {}, {}
    for iv in ivs:
        ist[iv.name], mb = columns_state(iv, agent, state, data)
        cols.update(mb["columns"])
    mb = {**data, "columns": cols}

    def step(ivs, ist):
        return jax.jit(lambda ist: gradient_step(
            agent.actor, ns, lambda p, pr: agent.policy_loss(p, pr, mb), batch_size=32,
            count=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(3), hooks=Hooks(ist, tuple(ivs))))(ist)

    a, b = step((), {}), step(ivs, ist)
    assert_trees_equal(a[0], b[0])
    assert float(a[3]["clip_fraction"]) > 0.1  # the clip was active in the compared step


def test_clip_none_gives_the_unclipped_surrogate():
    agent = make_agent(True, ent_coef=0.0)
    state = agent.init(jax.random.PRNGKey(0))
    data = rollout_data(agent, state)
    params = shifted(state.nets["actor"].params, 0.3)
    for iv in (make_iv(GTR, beta=0.0, clip="none"), make_iv(KLPenalty, beta=0.0, clip="none")):
        s, mb = columns_state(iv, agent, state, data)

        def total(p):
            loss, aux = policy_aux(agent, p, mb)
            return loss + iv.loss_term(agent.actor, p, s, aux)

        def unclipped(p):
            _, aux = policy_aux(agent, p, mb)
            return -jnp.mean(jnp.exp(aux["logp"] - aux["logp_old"]) * aux["adv"])

        np.testing.assert_allclose(total(params), unclipped(params), rtol=1e-6, atol=1e-7)
        for x, y in zip(jax.tree.leaves(jax.grad(total)(params)), jax.tree.leaves(jax.grad(unclipped)(params))):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


# ---- 2. bounded penalty ------------------------------------------------------------------------------------
def hand_aux(logp, logp_k, logp_old=None, dist=None, anchor_dist=None, name="gtr"):
    n = logp.shape[0]
    logp_old = logp if logp_old is None else logp_old
    cols = {"logp": logp_k, **({"dist": anchor_dist} if anchor_dist is not None else {})}
    return {"logp": logp, "logp_old": logp_old, "adv": jnp.zeros(n), "surrogate": jnp.zeros(n),
            "dist": jnp.zeros((n, ACTIONS)) if dist is None else dist, "columns": {name: cols}}


def gtr_state(iv, w, sigma=None):
    return {"weights": jnp.asarray(w, jnp.float32), "sigma": jnp.asarray(sigma or iv.cfg.sigma, jnp.float32)}


@pytest.mark.parametrize("deviation", ["log_ratio", "ratio_minus_one"])
@pytest.mark.parametrize("mixture_form", ["mixture_of_kernels", "kernel_of_mixture_density"])
def test_penalty_is_bounded_by_beta(deviation, mixture_form):
    beta, M = 3.0, 4
    iv = make_iv(GTR, beta=beta, clip="ppo_clip", deviation=deviation, mixture_form=mixture_form, num_anchors=M)
    w = anchor_weights("geometric", M, M, 0.5)
    rng = np.random.default_rng(0)
    for scale in (1e-3, 0.1, 1.0, 10.0, 100.0):
        logp_k = jnp.asarray(rng.normal(size=(64, M)) * scale - 1.0, jnp.float32)
        logp = jnp.asarray(rng.normal(size=64) * scale - 1.0, jnp.float32)
        pen = iv.per_sample_penalty(gtr_state(iv, w), hand_aux(logp, logp_k), True)
        assert np.all(np.asarray(pen) >= 0.0) and np.all(np.asarray(pen) <= 1.0 + 1e-6)
        term = float(iv.loss_term(iv_net(), None, gtr_state(iv, w), hand_aux(logp, logp_k)))
        assert 0.0 <= term < beta
    # moderate deviations stay strictly inside
    logp_k = jnp.asarray(rng.normal(size=(64, M)) * 0.3, jnp.float32)
    pen = iv.per_sample_penalty(gtr_state(iv, w), hand_aux(jnp.zeros(64), logp_k), True)
    assert float(jnp.max(pen)) < 1.0


def iv_net():
    return make_agent().actor


@pytest.mark.parametrize("deviation", ["log_ratio", "ratio_minus_one", "state_kl"])
def test_penalty_is_zero_with_zero_gradient_at_the_anchors(deviation):
    """Current policy == every anchor: hand-built (exact) and through the agent with M pushes of θ."""
    iv = make_iv(GTR, beta=1.0, clip="ppo_clip", deviation=deviation, num_anchors=4)
    w = anchor_weights("geometric", 4, 4, 0.5)
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(8, ACTIONS)), jnp.float32)
    logp = jax.nn.log_softmax(logits)[:, 0]

    def pen(lg):
        lp = jax.nn.log_softmax(lg)[:, 0]
        aux = hand_aux(lp, jnp.broadcast_to(logp[:, None], (8, 4)), dist=lg,
                       anchor_dist=jnp.broadcast_to(logits[:, None], (8, 4, ACTIONS)))
        return iv.loss_term(iv_net(), None, gtr_state(iv, w), aux)

    assert float(pen(logits)) == 0.0
    assert float(jnp.max(jnp.abs(jax.grad(pen)(logits)))) == 0.0
    # through the agent: 4 rollouts of the same θ fill the queue with θ; loss_term and its gradient vanish
    agent = make_agent(True)
    state = agent.init(jax.random.PRNGKey(0))
    params = shifted(state.nets["actor"].params, 0.5)
    state = state.replace(nets={**state.nets, "actor": state.nets["actor"].replace(params=params)})
    s, mb = columns_state(iv, agent, state, rollout_data(agent, state), pushes=4)
    assert int(s["filled"]) == 4

    def term(p):
        return iv.loss_term(agent.actor, p, s, policy_aux(agent, p, mb)[1])

    assert abs(float(term(params))) < 1e-7
    for g in jax.tree.leaves(jax.grad(term)(params)):
        np.testing.assert_allclose(g, 0.0, atol=1e-5)


# ---- 3. force profile --------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta,sigma", [(1.0, 0.2), (3.0, 0.5)])
def test_force_peaks_at_sigma_and_vanishes_far_away(beta, sigma):
    iv = make_iv(GTR, beta=beta, sigma=sigma, clip="ppo_clip", num_anchors=1)

    def penalty_of_d(d):
        aux = hand_aux(jnp.reshape(d - 1.0, (1,)), jnp.full((1, 1), -1.0))  # d = logp − logp_anchor
        return iv.loss_term(iv_net(), None, gtr_state(iv, [1.0]), aux)

    force = jax.jit(jax.vmap(jax.grad(penalty_of_d)))
    ds = jnp.linspace(0.0, 5.0 * sigma, 5001)
    f = np.asarray(force(ds))
    np.testing.assert_allclose(float(ds[np.argmax(f)]), sigma, atol=5.0 * sigma / 5000)
    np.testing.assert_allclose(f.max(), beta / (sigma * math.sqrt(math.e)), rtol=1e-4)
    np.testing.assert_allclose(float(force(jnp.array([sigma]))[0]), beta / (sigma * math.sqrt(math.e)), rtol=1e-5)
    np.testing.assert_allclose(float(force(jnp.array([-sigma]))[0]), -beta / (sigma * math.sqrt(math.e)), rtol=1e-5)
    assert abs(float(force(jnp.array([10.0 * sigma]))[0])) < 1e-12
    assert float(penalty_of_d(jnp.asarray(10.0 * sigma))) == pytest.approx(beta, rel=1e-6)
    # the KL baseline's force (k3 on the same log-ratio) keeps growing instead
    kl = make_iv(KLPenalty, beta=beta, estimator="k3", clip="ppo_clip")
    kl_force = jax.grad(lambda d: kl.loss_term(iv_net(), None, {"beta": jnp.asarray(beta)},
                                               hand_aux(jnp.reshape(d, (1,)), None, jnp.zeros(1), name="kl")))
    assert float(kl_force(10.0 * sigma)) > float(kl_force(sigma)) > 0.0


# ---- 4. anchors carry no gradient, computed once per rollout ----------------------------------------------
def test_anchors_have_no_gradient_and_are_read_only_through_columns():
    iv = make_iv(GTR, deviation="state_kl", num_anchors=3, beta=1.0)
    agent = make_agent(True)
    state = agent.init(jax.random.PRNGKey(0))
    data = rollout_data(agent, state)
    s0 = iv.init(jax.random.PRNGKey(1), agent, state)
    s0 = {**s0, "anchors": jax.tree.map(lambda a: a + 0.2 * jnp.arange(3.0).reshape(-1, *([1] * (a.ndim - 1))),
                                        s0["anchors"]), "filled": jnp.asarray(2, jnp.int32)}
    params = shifted(state.nets["actor"].params, 0.3)

    def through(anchors):
        cols, s = iv.rollout_columns(agent, state, {**s0, "anchors": anchors}, data)
        aux = policy_aux(agent, params, {**data, "columns": {iv.name: cols}})[1]
        return iv.loss_term(agent.actor, params, s, aux)

    assert float(through(s0["anchors"])) > 0.0
    for g in jax.tree.leaves(jax.grad(through)(s0["anchors"])):
        assert float(jnp.max(jnp.abs(g))) == 0.0
    # the loss term never evaluates the anchor networks: poisoning them after the columns changes nothing
    cols, s = iv.rollout_columns(agent, state, s0, data)
    aux = policy_aux(agent, params, {**data, "columns": {iv.name: cols}})[1]
    poisoned = {**s, "anchors": jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), s["anchors"])}
    term = lambda p, st: iv.loss_term(agent.actor, p, st, policy_aux(agent, p, {**data, "columns": {"gtr": cols}})[1])  # noqa: E731,E501
    assert float(iv.loss_term(agent.actor, params, poisoned, aux)) == float(iv.loss_term(agent.actor, params, s, aux))
    assert_trees_equal(jax.grad(term)(params, poisoned), jax.grad(term)(params, s))


def test_rollout_columns_run_once_per_update():
    calls = []

    class Spy(GTR):
        def rollout_columns(self, *a):
            calls.append(1)
            return super().rollout_columns(*a)

    agent = make_agent(True, epochs=3, minibatches=4)
    state = agent.init(jax.random.PRNGKey(0))
    iv = Spy(GTRConfig(), "ppo")
    new, istate = run_update(agent, state, fake_rollout(agent), (iv,))
    assert len(calls) == 1
    assert int(istate["gtr"]["filled"]) == 1  # one snapshot (the rollout policy) per iteration
    assert_trees_equal(jax.tree.map(lambda a: a[0], istate["gtr"]["anchors"]), state.nets["actor"].params)


# ---- 5. the anchor queue -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["geometric", "uniform"])
def test_queue_drops_the_oldest_and_weights_are_newest_first(kind):
    M = 3
    iv = make_iv(GTR, num_anchors=M, anchor_weights=kind, rho=0.5)
    agent = make_agent(True)
    state = agent.init(jax.random.PRNGKey(0))
    data = rollout_data(agent, state)
    s = iv.init(jax.random.PRNGKey(1), agent, state)
    expect_w = {"geometric": [[1, 0, 0], [2 / 3, 1 / 3, 0], [4 / 7, 2 / 7, 1 / 7], [4 / 7, 2 / 7, 1 / 7]],
                "uniform": [[1, 0, 0], [1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]]}[kind]
    for it in range(M + 1):  # iteration `it` acts with parameters all equal to `it`
        params = jax.tree.map(lambda p: jnp.full_like(p, 0.01 * it), state.nets["actor"].params)
        agent_state = state.replace(nets={**state.nets, "actor": state.nets["actor"].replace(params=params)})
        _, s = iv.rollout_columns(agent, agent_state, s, data)
        w = np.asarray(s["weights"])
        np.testing.assert_allclose(w, expect_w[it], rtol=1e-6)
        assert w.sum() == pytest.approx(1.0, abs=1e-6) and np.all(np.diff(w) <= 1e-7)
    assert int(s["filled"]) == M
    for k in range(M):  # newest first: iterations 3, 2, 1; iteration 0's snapshot is gone
        for leaf in jax.tree.leaves(jax.tree.map(lambda a: a[k], s["anchors"])):
            np.testing.assert_array_equal(np.asarray(leaf), np.float32(0.01 * (M - k)))


def test_spec_geometric_weights_and_advantage_softmax():
    np.testing.assert_allclose(anchor_weights("geometric", 4, 4, 0.5), [8 / 15, 4 / 15, 2 / 15, 1 / 15], rtol=1e-6)
    np.testing.assert_allclose(anchor_weights("geometric", 4, 4, 0.5), [0.533, 0.267, 0.133, 0.067], atol=1e-3)
    w = anchor_weights("advantage_softmax", 2, 4, eta=10.0, scores=jnp.array([0.0, 0.1, 5.0, 5.0]))
    np.testing.assert_allclose(w, [1 / (1 + math.e), math.e / (1 + math.e), 0.0, 0.0], rtol=1e-5)


def test_kernel_of_mixture_density_and_state_kl_values():
    """Hand values: d against log Σ w π_k; state_kl = KL(anchor ‖ current) on a categorical head."""
    iv = make_iv(GTR, mixture_form="kernel_of_mixture_density", num_anchors=2, sigma=0.5, clip="ppo_clip")
    logp_k = jnp.log(jnp.array([[0.2, 0.6]]))
    w = jnp.array([0.75, 0.25])
    d = math.log(0.5) - math.log(0.75 * 0.2 + 0.25 * 0.6)
    pen = iv.per_sample_penalty(gtr_state(iv, w), hand_aux(jnp.log(jnp.array([0.5])), logp_k), True)
    np.testing.assert_allclose(pen, [1 - math.exp(-d * d / (2 * 0.25))], rtol=1e-5)
    iv = make_iv(GTR, deviation="state_kl", num_anchors=1, sigma=0.5, clip="ppo_clip")
    p, q = np.array([0.3, 0.7]), np.array([0.6, 0.4])
    kl = float(np.sum(p * np.log(p / q)))
    aux = hand_aux(jnp.zeros(1), jnp.zeros((1, 1)), dist=jnp.log(jnp.asarray(q))[None],
                   anchor_dist=jnp.log(jnp.asarray(p))[None, None])
    pen = iv.per_sample_penalty(gtr_state(iv, [1.0]), aux, True)
    np.testing.assert_allclose(pen, [1 - math.exp(-kl * kl / (2 * 0.25))], rtol=1e-5)


def test_mixture_density_state_kl_is_refused_for_gaussian_policies():
    agent = make_agent(False)
    iv = make_iv(GTR, deviation="state_kl", mixture_form="kernel_of_mixture_density")
    with pytest.raises(ValueError, match="discrete action space"):
        iv.init(jax.random.PRNGKey(0), agent, agent.init(jax.random.PRNGKey(0)))


def test_reshaped_surrogate_value():
    """objective=reshaped_surrogate, clip none: total = −mean(A·r·g) − ent, g = sg(K(log r) + (1 − K)·1[A > τ])."""
    agent = make_agent(True, ent_coef=0.0)
    state = agent.init(jax.random.PRNGKey(0))
    iv = make_iv(GTR, objective="reshaped_surrogate", sigma=0.2, tau_adv=0.5)
    data = rollout_data(agent, state)
    s, mb = columns_state(iv, agent, state, data)
    assert "columns" not in mb  # no anchor columns for this objective
    params = shifted(state.nets["actor"].params, 0.3)
    loss, aux = policy_aux(agent, params, mb)
    lr = aux["logp"] - aux["logp_old"]
    k = jnp.exp(-lr ** 2 / (2 * 0.04))
    g = k + (1 - k) * (aux["adv"] > 0.5)
    np.testing.assert_allclose(loss + iv.loss_term(agent.actor, params, s, aux),
                               -jnp.mean(aux["adv"] * jnp.exp(lr) * g), rtol=1e-5)


@pytest.mark.parametrize("M", [1, 4])
def test_advantage_ema_smooths_whatever_the_queue_length(M):
    """sigma_schedule=advantage_ema: the EMA starts at the first rollout's fraction of |Â| > τ_A and then decays
    by `ema_decay` per iteration, also once the queue is full (with M = 1 from the second rollout on)."""
    agent = make_agent(True, norm_adv=False)  # the fractions below are those of the raw advantages
    state = agent.init(jax.random.PRNGKey(0))
    iv = make_iv(GTR, num_anchors=M, sigma_schedule="advantage_ema", ema_decay=0.9, kappa=1.0, tau_adv=1.0)
    data = rollout_data(agent, state, n=100)
    step = jax.jit(lambda s, d: iv.rollout_columns(agent, state, s, d)[1])
    s, ema = iv.init(jax.random.PRNGKey(1), agent, state), None
    for frac in (1.0, 0.19, 0.5, 0.0):
        s = step(s, {**data, "adv": jnp.where(jnp.arange(100) < round(100 * frac), 2.0, 0.0)})
        ema = frac if ema is None else 0.9 * ema + 0.1 * frac
        np.testing.assert_allclose(float(s["adv_ema"]), ema, rtol=1e-5)
        np.testing.assert_allclose(float(s["sigma"]), 0.2 * (1 + ema), rtol=1e-5)
    np.testing.assert_allclose(float(s["adv_ema"]), 0.78939, rtol=1e-5)  # 1.0, 0.919, 0.8771, 0.78939


# ---- KL penalty --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["k3", "k1"])
def test_sample_kl_gradient_equals_analytic_kl_gradient(estimator):
    """On a batch whose actions are exactly π_old-distributed (probabilities 1/2, 1/4, 1/4 over 4 samples of
    one state), the k3/k1 penalty's gradient equals the analytic KL(π_old ‖ π_θ) gradient, softmax(θ) − p_old."""
    p_old = jnp.array([0.5, 0.25, 0.25])
    old_logits = jnp.log(p_old)
    actions = jnp.array([0, 0, 1, 2])
    theta = jnp.array([0.3, -0.4, 0.9])

    def term(iv, th):
        lg = jnp.broadcast_to(th, (4, 3))
        aux = {"logp": jax.nn.log_softmax(th)[actions], "logp_old": old_logits[actions], "adv": jnp.zeros(4),
               "surrogate": jnp.zeros(4), "dist": lg,
               "columns": {"kl_penalty": {"dist": jnp.broadcast_to(old_logits, (4, 3))}}}
        return iv.loss_term(iv_net(), None, {"beta": jnp.asarray(1.0)}, aux)

    sample = make_iv(KLPenalty, estimator=estimator, clip="ppo_clip")
    exact = make_iv(KLPenalty, estimator="analytic", clip="ppo_clip")
    g_sample, g_exact = jax.grad(lambda t: term(sample, t))(theta), jax.grad(lambda t: term(exact, t))(theta)
    np.testing.assert_allclose(g_sample, g_exact, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_exact, jax.nn.softmax(theta) - p_old, rtol=1e-5, atol=1e-7)
    kl = float(jnp.sum(p_old * (jnp.log(p_old) - jax.nn.log_softmax(theta))))
    np.testing.assert_allclose(float(term(exact, theta)), kl, rtol=1e-5)


def test_adaptive_beta_rule():
    """d < d_targ/1.5: β/2; d > 1.5·d_targ: 2β; in between: unchanged (PPO paper §4)."""
    agent = make_agent(True)
    state = agent.init(jax.random.PRNGKey(0))
    data = rollout_data(agent, state)
    moved = state.replace(nets={**state.nets, "actor": state.nets["actor"].replace(
        params=shifted(state.nets["actor"].params, 0.3))})
    kl_moved = None
    for agent_state, target, factor in ((state, 0.01, 0.5), (moved, 1e-6, 2.0), (moved, None, 1.0)):
        if target is None:
            target = kl_moved
        iv = make_iv(KLPenalty, beta_schedule="adaptive", kl_target=target, beta=1.0)
        s, mb = columns_state(iv, agent, state, data)
        s = iv.post_iteration(agent, agent_state, s, mb)
        kl_moved = float(s["kl"])
        assert float(s["beta"]) == factor
    assert kl_moved > 1e-4


# ---- jitted runs, resume, CLI ------------------------------------------------------------------------------
NO_ANNEAL = {"ppo.anneal_lr": "false"}  # the learning rate then does not depend on run.steps (resume below)


def test_short_jitted_run_gtr(tmp_path):
    """PPO + GTR (spec defaults) on CartPole, 2 vmapped seeds: the queue fills with distinct snapshots."""
    t = tiny_trainer("ppo", "gtr", 200, NO_ANNEAL)
    t.run(tmp_path / "run")
    s = t.final_state[0].interventions["gtr"]
    assert np.all(np.asarray(s["filled"]) == 4)
    np.testing.assert_allclose(np.asarray(s["weights"]), [[8 / 15, 4 / 15, 2 / 15, 1 / 15]] * 2, rtol=1e-6)
    a0, a1 = (jax.tree.leaves(jax.tree.map(lambda a: a[:, k], s["anchors"])) for k in (0, 1))
    assert any(not np.array_equal(x, y) for x, y in zip(a0, a1))
    assert np.all(np.isfinite(np.asarray(s["penalty"]))) and np.all(np.asarray(s["penalty"]) >= 0)
    r = rows(tmp_path / "run")[-1]
    assert "gtr/penalty_old" in r and r["gtr/anchors_filled"] == 4 and np.isfinite(r["loss/actor"])


def test_short_jitted_run_kl_penalty_adaptive(tmp_path):
    t = tiny_trainer("ppo", "kl_penalty", 200, {"kl_penalty.beta_schedule": "adaptive"})
    t.run(tmp_path / "run")
    s = t.final_state[0].interventions["kl_penalty"]
    beta = np.asarray(s["beta"])
    assert np.all(beta != 1.0) and np.all(np.log2(beta) == np.round(np.log2(beta)))  # halved/doubled
    assert np.all(np.isfinite(np.asarray(s["kl"])))
    r = rows(tmp_path / "run")[-1]
    assert "kl_penalty/beta" in r and "kl_penalty/kl" in r


@pytest.mark.slow
def test_short_jitted_run_continuous_state_kl(tmp_path):
    t = tiny_trainer("ppo", "gtr", 200, {"gtr.deviation": "state_kl", "gtr.anchor_weights": "advantage_softmax",
                                         "gtr.sigma_schedule": "advantage_ema"}, env="gymnax:Pendulum-v1")
    t.run(tmp_path / "run")
    s = t.final_state[0].interventions["gtr"]
    assert np.all(np.asarray(s["filled"]) == 4) and np.all(np.isfinite(np.asarray(s["sigma"])))
    np.testing.assert_allclose(np.asarray(s["weights"]).sum(-1), 1.0, rtol=1e-6)


def test_resume_is_bit_identical(tmp_path):
    # the short gtr run's program: its compilation is cached
    assert_resume_identical(lambda n: tiny_trainer("ppo", "gtr", n, NO_ANNEAL), tmp_path, 300, 200)


@pytest.mark.parametrize("argv, needle", [
    (["--agent", "sac", "--intervention", "gtr"], "intervention 'gtr' does not apply to agent 'sac'; it supports: ppo"),
    (["--agent", "dqn", "--intervention", "kl_penalty"], "it supports: ppo"),
    (["--agent", "ppo", "--intervention", "gtr", "--gtr.deviation", "kl"],
     "gtr.deviation='kl' is not valid; choose one of: log_ratio, ratio_minus_one, state_kl"),
    (["--agent", "ppo", "--intervention", "gtr", "--gtr.anchor_weights", "softmax"],
     "choose one of: uniform, geometric, advantage_softmax"),
    (["--agent", "ppo", "--intervention", "gtr", "--gtr.num_anchors", "0"], "gtr.num_anchors must be >= 1"),
    (["--agent", "ppo", "--intervention", "gtr", "--gtr.sigma", "0"], "gtr.sigma must be > 0"),
    (["--agent", "ppo", "--intervention", "kl_penalty", "--kl_penalty.estimator", "k2"],
     "choose one of: analytic, k3, k1"),
    (["--agent", "ppo", "--intervention", "kl_penalty", "--kl_penalty.adapt_factor", "1"],
     "kl_penalty.adapt_factor must be > 1"),
    (["--agent", "ppo", "--intervention", "gtr+kl_penalty"], "cannot be stacked"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)
