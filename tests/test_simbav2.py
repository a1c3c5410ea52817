"""SimbaV2 (`--sac.network simbav2`, docs/interventions.md, SimbaV2): the network against a NumPy transcription of
the released layers, kernels kept on the unit sphere by every optimizer step, the categorical target against the
released projection, the stream normalisers against the released wrappers, unit resets through the layer map,
the learning-rate decay, the one-line refusals, and a vmapped run that resumes bit-identically."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.sac import SAC, SACConfig, categorical_projection
from helpers import assert_cli_error, assert_resume_identical, tiny_trainer
from plastic.core import NetState
from plastic.networks import SimbaV2, get_path
from plastic.surgery import reset_units, touched_entries

X = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (5, 3)))


def perturbed(params):
    """Every parameter moved off its start (scalers off their initial values, biases off 0), then every kernel
    column back on the unit sphere (as the optimizer keeps them)."""
    def leaf(path, p):
        p = p + 0.1 * jnp.sin(jnp.arange(p.size, dtype=p.dtype) + 7 * len(path)).reshape(p.shape)
        return p / jnp.linalg.norm(p, axis=-2, keepdims=True) if path[-1].key == "kernel" else p
    return jax.tree_util.tree_map_with_path(leaf, params)


# ---- the released layers (scale_rl/agents/simbaV2/simbaV2_layer.py @14fafb2), one member, in NumPy ------------
def _l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def reference(p, x, width, blocks, branches):
    s, a_init, a_scale = math.sqrt(2 / width), 1 / (blocks + 1), 1 / math.sqrt(width)
    scaler = lambda name, init, scale: p[name]["scaler"] * (init / scale)  # noqa: E731  Scaler.forward_scaler
    x = _l2(np.concatenate([x, np.full((len(x), 1), 3.0)], axis=-1))  # HyperEmbedder, c_shift 3
    h = _l2(scaler("embed_scaler", s, s) * (x @ p["embed"]["kernel"]))
    for i in range(blocks):  # HyperLERPBlock: HyperMLP with scaler init/scale divided by sqrt(expansion 4)
        z = scaler(f"block_{i}_scaler", s / 2, s / 2) * (h @ p[f"block_{i}_hidden"]["kernel"])
        m = _l2((np.maximum(z, 0) + 1e-8) @ p[f"block_{i}_out"]["kernel"])
        h = _l2(h + scaler(f"block_{i}_alpha", a_init, a_scale) * (m - h))
    outs = [(scaler(f"head_{k}_scaler", 1, 1) * (h @ p[f"head_{k}_hidden"]["kernel"])) @ p[f"head_{k}_out"]["kernel"]
            + p[f"head_{k}_bias"] for k in range(branches)]
    return np.concatenate(outs, axis=-1)


@pytest.mark.parametrize("ensemble, branches", [(0, 2), (2, 1)])
def test_forward_matches_the_released_layers(ensemble, branches):
    module = SimbaV2(8, 2, 4, ensemble=ensemble, branches=branches)
    params = jax.jit(module.init)(jax.random.PRNGKey(0), X)["params"]
    # every kernel starts on the unit sphere (the release normalises right after initialising)
    for path, k in jax.tree_util.tree_leaves_with_path(params):
        if path[-1].key == "kernel":
            np.testing.assert_allclose(np.linalg.norm(k, axis=-2), 1.0, rtol=1e-5)
    scaler = get_path(params, ("block_1_scaler", "scaler"))
    np.testing.assert_allclose(scaler, math.sqrt(2 / 8) / 2)  # the parameter starts at `scale`
    params = perturbed(params)
    y, acts = jax.jit(module.apply)({"params": params}, X)
    members = [jax.tree.map(lambda a, e=e: np.asarray(a[e]), params) for e in range(ensemble)] if ensemble else \
        [jax.tree.map(np.asarray, params)]
    for e, p in enumerate(members):
        np.testing.assert_allclose(y[e] if ensemble else y, reference(p, X, 8, 2, branches), rtol=2e-5, atol=2e-6)
    assert set(acts) == {"block_0_hidden", "block_1_hidden"}
    assert module.probe_shapes(5) == {k: v.shape for k, v in acts.items()}


# ---- the categorical target ----------------------------------------------------------------------------------
def released_projection(p, atoms, v_max, bins):
    """`categorical_td_loss`'s target probabilities (scale_rl/agents/simbaV2/simbaV2_update.py @14fafb2)."""
    b = (np.clip(atoms, -v_max, v_max) + v_max) / (2 * v_max / (bins - 1))
    lo, up = np.floor(b), np.ceil(b)
    out = np.zeros((len(p), bins))
    for i in range(len(p)):
        for j in range(atoms.shape[1]):
            out[i, int(lo[i, j])] += p[i, j] * (up[i, j] + (lo[i, j] == up[i, j]) - b[i, j])
            out[i, int(up[i, j])] += p[i, j] * (b[i, j] - lo[i, j])
    return out


def test_the_projection_is_the_released_one():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(11), size=6)
    atoms = np.linspace(-5, 5, 11)[None] * rng.uniform(0.3, 1.7, (6, 1)) + rng.normal(0, 2, (6, 1))
    atoms[0] = np.linspace(-5, 5, 11)        # every atom hit exactly
    atoms[1] = np.linspace(-9, 9, 11)        # clipped at both ends
    m = np.asarray(categorical_projection(jnp.asarray(p, jnp.float32), jnp.asarray(atoms, jnp.float32), 5.0, 11))
    np.testing.assert_allclose(m, released_projection(p, atoms, 5.0, 11), atol=1e-6)
    np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(m[0], p[0], atol=1e-6)


def _agent(**kw):
    cfg = SACConfig(network="simbav2", hidden=(8,), blocks=1, bins=11, batch_size=6, **kw)
    return SAC(cfg, 3, 2)


def _batch(key, n=6):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"obs": jax.random.normal(k1, (n, 3)), "action": jax.random.uniform(k2, (n, 2), minval=-1, maxval=1),
            "reward": jnp.linspace(-2.0, 3.0, n), "next_obs": jax.random.normal(k3, (n, 3)),
            "terminated": jnp.zeros(n).at[1].set(1.0), "done": jnp.zeros(n).at[1].set(1.0)}


def test_the_target_takes_the_lower_twin_shifts_its_atoms_and_projects():
    agent = _agent()
    state = jax.jit(agent.init)(jax.random.PRNGKey(0))
    # twin 1 = twin 0 with noisy kernels, so which twin is lower changes from sample to sample
    leaves, tdef = jax.tree.flatten(state.targets["critic"])
    keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
    targets = jax.tree.unflatten(tdef, [jnp.stack([a[0], a[0] + (a.ndim == 3) * 0.3 * jax.random.normal(k, a[0].shape)])
                                        for a, k in zip(leaves, keys)])
    state = state.replace(targets={"critic": targets})
    batch, key = _batch(jax.random.PRNGKey(2), 16), jax.random.PRNGKey(3)

    @jax.jit
    def run(state, batch):  # the agent's target, and what it read: the next action's log-prob, the target logits
        a, logp, _, _ = agent.policy(state.nets["actor"].params, batch["next_obs"], key)
        out = agent.critic.apply(state.targets["critic"], jnp.concatenate([batch["next_obs"], a], -1))[0]
        return agent.targets(state, batch, key), logp, out
    (y, m), logp, logits = run(state, batch)
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    z = np.linspace(-5, 5, 11)
    lower = np.argmin(probs @ z, axis=0)
    assert set(lower) == {0, 1}  # both twins are chosen somewhere in this batch
    p = probs[lower, np.arange(16)]
    alpha = math.exp(float(state.nets["alpha"].params["log_alpha"]))
    r, t = np.asarray(batch["reward"]), np.asarray(batch["terminated"])
    atoms = r[:, None] + 0.99 * (1 - t[:, None]) * (z[None] - alpha * np.asarray(logp, np.float64)[:, None])
    want = released_projection(p, atoms, 5.0, 11)
    np.testing.assert_allclose(m, want, atol=2e-5)
    np.testing.assert_allclose(m[1], released_projection(np.eye(11)[5:6], np.full((1, 11), r[1]), 5.0, 11)[0],
                               atol=1e-6)  # terminated: all mass at the reward
    np.testing.assert_allclose(y, want @ z, atol=1e-4)


# ---- the stream normalisers ------------------------------------------------------------------------------------
def test_normalisers_follow_the_released_wrappers():
    """ObservationNormalizer and RewardNormalizer (scale_rl/agents/wrappers/normalization.py @14fafb2): running
    mean/variance of observations; G = γ (1 − done) G + r, its running variance and max |G|; rewards divided by
    max(sqrt(var + 1e-8), max|G| / G_max)."""
    agent = _agent(norm_obs=True, norm_reward=True, gamma=0.9, v_max=2.0)
    state = jax.jit(agent.init)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    obs, rew = rng.normal(3.0, 2.0, (40, 3)).astype(np.float32), rng.normal(1.0, 1.0, 40).astype(np.float32)
    done = (np.arange(40) % 13 == 12).astype(np.float32)
    observe = jax.jit(agent.observe)
    for t in range(40):
        state = observe(state, {"obs": obs[t], "reward": rew[t], "done": done[t], "terminated": done[t]})
    g, gs = 0.0, []
    for t in range(40):
        g = 0.9 * (1 - done[t]) * g + rew[t]
        gs.append(g)
    gs = np.asarray(gs)

    def running(x):  # gymnasium's RunningMeanStd from count 1e-4, mean 0, var 1, one sample at a time
        mean, var, count = np.zeros(x.shape[1:]), np.ones(x.shape[1:]), 1e-4
        for v in x:
            delta, total = v - mean, count + 1
            mean, var = mean + delta / total, (var * count + delta ** 2 * count / total) / total
            count = total
        return mean, var
    mean, var = running(obs.astype(np.float64))
    batch = _batch(jax.random.PRNGKey(4))
    prepared = agent.prepare(state, batch)
    np.testing.assert_allclose(prepared["obs"], (np.asarray(batch["obs"]) - mean) / np.sqrt(var + 1e-8), rtol=1e-4)
    g_var = running(gs[:, None])[1][0]
    scale = max(math.sqrt(g_var + 1e-8), np.abs(gs).max() / 2.0)
    np.testing.assert_allclose(prepared["reward"], np.asarray(batch["reward"]) / scale, rtol=1e-5)


# ---- unit resets ---------------------------------------------------------------------------------------------
def test_unit_resets_redraw_on_the_sphere_and_restart_the_scaler():
    module = SimbaV2(4, 2, 3, ensemble=2)
    from plastic.core import Net
    import optax
    net = Net.of("critic", module, optax.adam(1e-3))
    params = perturbed(jax.jit(module.init)(jax.random.PRNGKey(0), X)["params"])
    ns = NetState(params, net.tx.init(params))
    masks = {"block_0_hidden": jnp.zeros((2, 16), bool).at[0, 3].set(True).at[1, 9].set(True),
             "block_1_hidden": jnp.zeros((2, 16), bool)}
    new = jax.jit(lambda ns, m: reset_units(net, ns, m, jax.random.PRNGKey(5)))(ns, masks)
    p, q = new.params, ns.params
    col = p["block_0_hidden"]["kernel"][0, :, 3]
    assert not np.allclose(col, q["block_0_hidden"]["kernel"][0, :, 3])
    np.testing.assert_allclose(np.linalg.norm(col), 1.0, rtol=1e-5)          # redrawn on the sphere
    assert p["block_0_scaler"]["scaler"][0, 3] == pytest.approx(math.sqrt(2 / 4) / 2)  # back to its start
    assert p["block_0_scaler"]["scaler"][1, 3] == q["block_0_scaler"]["scaler"][1, 3]
    np.testing.assert_array_equal(p["block_0_out"]["kernel"][1, 9], 0.0)     # outgoing row
    for name in ("embed", "block_0_alpha", "block_1_hidden", "head_0_out"):
        for a, b in zip(jax.tree.leaves(p[name]), jax.tree.leaves(q[name])):
            np.testing.assert_array_equal(a, b)
    touched = touched_entries(net, ns.params, masks)
    assert bool(touched["block_0_scaler"]["scaler"][1, 9]) and int(touched["block_0_scaler"]["scaler"].sum()) == 2


# ---- the learning-rate decay -----------------------------------------------------------------------------------
def test_lr_end_decays_every_learning_rate_linearly_over_the_runs_updates():
    """lr_end 0.5 over a 1000-step run with utd 2: Adam's first step is lr · sign(g); the same step taken at update
    count 1000 (half-way through the 2000 updates) is 0.75 · lr times Adam's direction at that count."""
    agent = SAC(SACConfig(lr_end=0.5, utd=2, alpha_lr=1e-3), 3, 2, total_steps=1000)
    tx, params = agent.alpha.tx, {"log_alpha": jnp.zeros(())}
    grads = {"log_alpha": jnp.ones(())}
    first, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(first["log_alpha"], -1e-3, rtol=1e-5)
    import optax
    state = optax.tree_utils.tree_set(tx.init(params), count=jnp.asarray(1000, jnp.int32))
    later, _ = tx.update(grads, state, params)
    t = 1001
    direction = (0.1 / (1 - 0.9 ** t)) / math.sqrt(0.001 / (1 - 0.999 ** t))
    np.testing.assert_allclose(later["log_alpha"], -0.75e-3 * direction, rtol=1e-4)


# ---- refusals and a run ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--agent", "td3", "--td3.network", "simbav2"], "td3.network='simbav2' is not valid; choose one of: mlp, simba"),
    (["--agent", "sac", "--sac.network", "simbav2", "--intervention", "injection"],
     "plasticity injection needs an output layer to copy"),
    (["--agent", "sac", "--sac.network", "simbav2", "--intervention", "cbp", "--cbp.next_bias_correction", "on"],
     "simbav2 has bias-free layers"),
    (["--agent", "sac", "--sac.network", "simbav2", "--intervention", "cchain"], "use --cchain.networks actor"),
])
def test_refusals_are_one_line(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)
    assert not (tmp_path / "r").exists()


SIMBAV2 = {"sac.network": "simbav2", "sac.hidden": "8", "sac.blocks": 1, "sac.bins": 11, "sac.norm_obs": "true",
           "sac.norm_reward": "true", "sac.lr_end": 0.5, "sac.policy_delay": 1, "sac.update_order": "actor_first",
           "sac.critics": 1, "grama.period": 20, "grama.tau": 0.1}


def test_a_vmapped_simbav2_run_resumes_bit_identically_with_its_kernels_on_the_sphere(tmp_path):
    """ReGraMa resets every 20 updates; a reset's zeroed outgoing rows leave the consumer's columns off the sphere
    until its next optimizer step (the function is kept), so the run ends 10 updates after its last event."""
    full = assert_resume_identical(lambda n: tiny_trainer("sac", "grama", n, SIMBAV2), tmp_path, 310, 100)
    agent = full.final_state[0].agent
    for name in ("actor", "critic"):
        for path, k in jax.tree_util.tree_leaves_with_path(agent.nets[name].params):
            if path[-1].key == "kernel":
                np.testing.assert_allclose(np.linalg.norm(k, axis=-2), 1.0, rtol=1e-5, err_msg=str(path))
    assert np.all(np.asarray(agent.extra["obs_rms"].count) > 299)  # every env step observed, per seed
    assert np.asarray(full.final_state[0].interventions["grama"]["critic"]["events"]).min() > 0


def test_actor_first_steps_the_critic_against_the_updated_actor_and_temperature():
    """`update_order: actor_first` (the release's order) equals the default order's critic step taken from a state
    whose actor and temperature already made this update's steps."""
    from plastic.agent import init_counters
    from plastic.core import Update
    kw = dict(network="simbav2", hidden=(8,), blocks=1, bins=11, batch_size=6, policy_delay=1)
    first, default = SAC(SACConfig(update_order="actor_first", **kw), 3, 2), SAC(SACConfig(**kw), 3, 2)
    state, batch, key = jax.jit(first.init)(jax.random.PRNGKey(0)), _batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2)
    u0 = Update(state, counters=init_counters(first))
    a = jax.jit(first.update)(u0, batch, key).state
    moved = u0.replace(state=state.replace(nets={**state.nets, "actor": a.nets["actor"], "alpha": a.nets["alpha"]}))
    b = jax.jit(default.update)(moved, batch, key).state
    for x, y in zip(jax.tree.leaves((a.nets["critic"], a.targets)), jax.tree.leaves((b.nets["critic"], b.targets))):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.nets["actor"].params["embed"]["kernel"], state.nets["actor"].params["embed"]["kernel"])
