"""SimBa and BroNet networks (layer maps that stop at the residual stream, probes, ensembles), network
options of every agent, and agent build options requested by interventions (`Intervention.agent_options`)."""
from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import assert_cli_error, rows, tiny_trainer
from plastic.core import Net, NetState
from plastic.interventions.base import Intervention
from plastic.networks import MLP, BroNet, SimBa, get_path
from plastic.optim import ElementwiseAdamState
from plastic.surgery import reset_units, touched_entries

KEY = jax.random.PRNGKey(0)
X = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
KINDS = {"simba": SimBa, "bronet": BroNet}


def build(kind, ensemble=0, blocks=2, width=4, out=2, **kw):
    return KINDS[kind](width, blocks, out, "relu", ensemble, **kw)


@jax.jit
def perturbed(params):
    """Parameters moved off their initial values (LayerNorm affine not 1 / 0, biases not 0)."""
    leaves, tdef = jax.tree.flatten(params)
    return jax.tree.unflatten(tdef, [p + 0.1 * jnp.sin(jnp.arange(p.size, dtype=p.dtype) + i).reshape(p.shape)
                                     for i, p in enumerate(leaves)])


_PARAMS = {}


def init_params(kind, ensemble):
    """Initial parameters of `build(kind, ensemble)` (one compile per architecture for the whole file)."""
    if (kind, ensemble) not in _PARAMS:
        _PARAMS[kind, ensemble] = jax.jit(build(kind, ensemble).init)(KEY, X)["params"]
    return _PARAMS[kind, ensemble]


def leaves_with_paths(tree):
    return {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


# ---- reference forward passes written from the papers' equations (one sample, one member) ----------------
def _ln(x, p):
    mu = x.mean()
    return (x - mu) / jnp.sqrt(jnp.square(x - mu).mean() + 1e-5) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def reference(kind, p, x, blocks, swap=None):
    """Output of one member on one sample `x`; `swap=(i, stage, u)` replaces block i's unit values at `stage`
    (pre: the activation's input, post: its output) by `u`, so d out / d u is the unit gradient."""
    if kind == "simba":
        h = _dense(x, p["embed"])
    else:
        h = jax.nn.relu(_ln(_dense(x, p["embed"]), p["embed_ln"]))
    for i in range(blocks):
        if kind == "simba":
            z = _dense(_ln(h, p[f"block_{i}_pre_ln"]), p[f"block_{i}_hidden"])
        else:
            z = _ln(_dense(h, p[f"block_{i}_hidden"]), p[f"block_{i}_ln"])
        if swap is not None and swap[:2] == (i, "pre"):
            z = swap[2]
        a = jax.nn.relu(z)
        if swap is not None and swap[:2] == (i, "post"):
            a = swap[2]
        r = _dense(a, p[f"block_{i}_out"])
        h = h + (r if kind == "simba" else _ln(r, p[f"block_{i}_out_ln"]))
    if kind == "simba":
        h = _ln(h, p["final_ln"])
    return _dense(h, p["output"])


def member(params, e):
    return jax.tree.map(lambda x: x[e], params)


@partial(jax.jit, static_argnums=(0, 2))
def references(kind, params, ensemble):
    """The reference outputs on X of every member (`[E?, B, out]`)."""
    one = lambda p: jax.vmap(lambda x: reference(kind, p, x, 2))(X)  # noqa: E731
    return jax.vmap(one)(params) if ensemble else one(params)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ensemble", [pytest.param(0, marks=pytest.mark.slow), 2])
def test_forward_matches_the_papers_equations(kind, ensemble):
    module = build(kind, ensemble)
    params = perturbed(init_params(kind, ensemble))
    y, acts = jax.jit(module.apply)({"params": params}, X)
    np.testing.assert_allclose(y, references(kind, params, ensemble), rtol=1e-5, atol=1e-5)
    assert set(acts) == {"block_0_hidden", "block_1_hidden"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ensemble", [0, 2])
def test_layer_map_lists_only_block_units_and_points_at_real_params(kind, ensemble):
    module = build(kind, ensemble, width=4)
    params = init_params(kind, ensemble)
    _, acts = jax.jit(module.apply)({"params": params}, X)
    lead = (ensemble,) if ensemble else ()
    units = 16 if kind == "simba" else 4          # SimBa expands to 4d inside its blocks
    layers = module.layer_map()
    assert [l.name for l in layers] == ["block_0_hidden", "block_1_hidden"]
    for i, l in enumerate(layers):
        assert l.width == units and l.mask_shape == (*lead, units) and l.ensemble == ensemble
        assert get_path(params, l.kernel).shape == (*lead, 4, units)
        assert get_path(params, l.bias).shape == (*lead, units)
        assert l.consumers == ((f"block_{i}_out", "kernel"),)
        assert get_path(params, l.consumers[0]).shape == (*lead, units, 4)
        if kind == "bronet":   # the LayerNorm over the block's units (docs/mechanics.md §1.2 table)
            assert l.layer_norm == ((f"block_{i}_ln", "scale"), (f"block_{i}_ln", "bias"))
            assert all(get_path(params, q).shape == (*lead, units) for q in l.layer_norm)
        else:                  # SimBa's LayerNorm normalises the residual stream, not these units
            assert l.layer_norm is None
        # the initializer draws kernels of the layer's shape (what a reset redraws from)
        assert l.init(KEY, get_path(params, l.kernel).shape).shape == get_path(params, l.kernel).shape
    assert module.probe_shapes(6) == {k: v.shape for k, v in acts.items()}


def _trained(net, x, params, steps=3):
    """Parameters and Adam state after a few steps from `params` (non-zero moments everywhere)."""
    ns = NetState(params, net.tx.init(params))

    @jax.jit
    def step(ns):
        g = jax.grad(lambda p: jnp.sum(jnp.square(net.apply(p, x)[0] - 1.0)))(ns.params)
        u, o = net.tx.update(g, ns.opt_state, ns.params)
        return NetState(optax.apply_updates(ns.params, u), o)
    for _ in range(steps):
        ns = step(ns)
    return ns


@pytest.mark.parametrize("kind", KINDS)
def test_unit_resets_never_touch_the_residual_stream(kind):
    """Every unit of every block reset (ReDo/ReGraMa surgery): embedding, skip path, LayerNorms of the
    stream, the blocks' second-Dense biases and the output layer stay bit-identical, and the network becomes
    exactly the residual stream plus each block's second-Dense bias (all units' outgoing rows are zero)."""
    module = build(kind, ensemble=2)
    net = Net.of("critic", module, optax.adam(1e-2))
    ns = _trained(net, X, init_params(kind, 2))
    masks = {l.name: jnp.ones(l.mask_shape, bool) for l in net.layers}
    new = jax.jit(partial(reset_units, net))(ns, masks, jax.random.PRNGKey(3))
    before, after = leaves_with_paths(ns.params), leaves_with_paths(new.params)
    unit_paths = {l.kernel for l in net.layers} | {l.bias for l in net.layers} | \
        {c for l in net.layers for c in l.consumers} | {q for l in net.layers for q in (l.layer_norm or ())}
    for path, leaf in before.items():
        if path not in unit_paths:
            np.testing.assert_array_equal(after[path], leaf, err_msg=str(path))
    untouched = [p for p in before if p not in unit_paths]
    assert ("output", "kernel") in untouched and ("embed", "kernel") in untouched
    assert ("block_0_out", "bias") in untouched and ("block_1_out", "bias") in untouched
    # the residual stream's parameters also keep their Adam moments
    touched = leaves_with_paths(jax.jit(partial(touched_entries, net))(ns.params, masks))
    assert not any(np.any(np.asarray(touched[p])) for p in untouched)
    # the function now only loses the blocks' unit contributions
    y, _ = jax.jit(net.apply)(new.params, X)
    np.testing.assert_allclose(y, references(kind, new.params, 2), rtol=1e-5, atol=1e-5)
    for e in range(2):
        p = member(new.params, e)
        if kind == "simba":  # x + Dense(0 rows) = x + b_out: compute the stream alone
            h = X @ p["embed"]["kernel"] + p["embed"]["bias"] + p["block_0_out"]["bias"] + p["block_1_out"]["bias"]
            stream = jax.vmap(lambda r: _dense(_ln(r, p["final_ln"]), p["output"]))(h)
            np.testing.assert_allclose(y[e], stream, rtol=1e-5, atol=1e-5)


def test_simba_reset_of_dead_units_preserves_the_function():
    """SimBa has no LayerNorm over its units, so ReDo's function preservation holds exactly: units whose
    incoming weights are 0 and bias negative output 0; resetting them (outgoing rows zeroed) changes nothing."""
    net = Net.of("critic", build("simba", ensemble=2), optax.adam(1e-2))
    ns = _trained(net, X, init_params("simba", 2))
    dead = jnp.zeros((2, 16), bool).at[0, 3].set(True).at[1, 7].set(True)
    p = ns.params
    k, b = p["block_1_hidden"]["kernel"], p["block_1_hidden"]["bias"]
    p = {**p, "block_1_hidden": {"kernel": jnp.where(dead[:, None, :], 0.0, k), "bias": jnp.where(dead, -1.0, b)}}
    ns = NetState(p, ns.opt_state)
    masks = {"block_0_hidden": jnp.zeros((2, 16), bool), "block_1_hidden": dead}
    new = jax.jit(partial(reset_units, net))(ns, masks, jax.random.PRNGKey(5))
    apply = jax.jit(net.apply)
    np.testing.assert_array_equal(apply(new.params, X)[0], apply(ns.params, X)[0])
    assert not np.array_equal(new.params["block_1_hidden"]["kernel"], ns.params["block_1_hidden"]["kernel"])


@pytest.mark.parametrize("kind,point", [("simba", "pre_activation"), ("bronet", "pre_activation"),
                                        ("simba", "post_activation"),
                                        pytest.param("bronet", "post_activation", marks=pytest.mark.slow)])
def test_per_sample_probe_gradients_match_autodiff(kind, point):
    """d loss / d probe at [e, b] equals the gradient of sample b's loss through member e with respect to the
    unit values, computed by autodiff on the reference forward pass with the units swapped in."""
    module = build(kind, ensemble=2, probe_point=point)
    net = Net.of("critic", module, optax.adam(1e-3))
    params = perturbed(init_params(kind, 2))
    target = jax.random.normal(jax.random.PRNGKey(7), (2, 6, 2))

    def loss(params, probes):
        return jnp.sum(jnp.sin(net.apply(params, X, probes)[0] - target))
    g = jax.jit(jax.grad(loss, argnums=1))(params, net.zero_probes(6))
    _, acts = jax.jit(net.apply)(params, X)
    stage = "pre" if point == "pre_activation" else "post"

    @partial(jax.jit, static_argnums=0)
    def reference_grads(i, p, vals, t):
        def sample_loss(u, x, t):
            return jnp.sum(jnp.sin(reference(kind, p, x, 2, swap=(i, stage, u)) - t))
        return jax.vmap(jax.grad(sample_loss))(vals, X, t)

    for i in range(2):
        name = f"block_{i}_hidden"
        pre = jax.jit(_unit_inputs, static_argnums=(0, 2))(kind, params, i)  # block i's pre-activations
        for e in range(2):
            vals = pre[e] if stage == "pre" else acts[name][e]
            ref = reference_grads(i, member(params, e), vals, target[e])
            np.testing.assert_allclose(g[name][e], ref, rtol=1e-4, atol=1e-5)


def _unit_inputs(kind, params, i):
    """Block i's pre-activations for every member and sample, from the reference pass."""
    def one(p, x):
        captured = {}

        def grab(u):
            captured["z"] = u
            return u
        h = _dense(x, p["embed"]) if kind == "simba" else jax.nn.relu(_ln(_dense(x, p["embed"]), p["embed_ln"]))
        for j in range(i + 1):
            if kind == "simba":
                z = _dense(_ln(h, p[f"block_{j}_pre_ln"]), p[f"block_{j}_hidden"])
            else:
                z = _ln(_dense(h, p[f"block_{j}_hidden"]), p[f"block_{j}_ln"])
            if j == i:
                return grab(z)
            r = _dense(jax.nn.relu(z), p[f"block_{j}_out"])
            h = h + (r if kind == "simba" else _ln(r, p[f"block_{j}_out_ln"]))
    return jnp.stack([jax.vmap(partial(one, member(params, e)))(X) for e in range(2)])


# ---- agents: network options and build options -----------------------------------------------------
def _agent(name, cfg_over=None, options=None, obs=3, act=2):
    import agents
    cls = agents.get(name)
    cfg = cls.Config(**{"hidden": (8, 8), **(cfg_over or {})})
    kw = {"discrete": True, "total_steps": 0} if name == "ppo" else {}
    return cls(cfg, obs, act, options=options, **kw)


PLAIN_TX = {"td3": lambda: optax.adam(3e-4), "sac": lambda: optax.adam(3e-4), "dqn": lambda: optax.adam(3e-4),
            "ppo": lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.adam(3e-4, eps=1e-5))}


@pytest.mark.parametrize("name", ["td3", "sac", "dqn", "ppo"])
def test_default_build_is_plain_optax_adam_and_plain_mlp(name):
    """Without build options every agent's networks are the plain MLPs with optax's Adam, so default runs
    are the same programs as before the options existed."""
    agent = _agent(name)
    state = jax.eval_shape(agent.init, KEY)
    for n, net in agent.nets.items():
        if net.module is not None:
            assert isinstance(getattr(net.module, "mlp", net.module), MLP)
            assert "inject_flag" not in state.nets[n].params
        plain = jax.eval_shape(PLAIN_TX[name]().init, state.nets[n].params)
        assert jax.tree.structure(state.nets[n].opt_state) == jax.tree.structure(plain), n
        assert jax.tree.leaves(state.nets[n].opt_state) == jax.tree.leaves(plain)  # shapes and dtypes


@pytest.mark.parametrize("name", ["td3", "sac", "dqn", "ppo"])
def test_adam_count_option_builds_every_adam_per_element(name):
    agent = _agent(name, options={"adam_count": "per_element"})
    state = jax.eval_shape(agent.init, KEY)
    for n in agent.nets:
        found = [s for s in jax.tree.leaves(state.nets[n].opt_state,
                                            is_leaf=lambda x: isinstance(x, ElementwiseAdamState))
                 if isinstance(s, ElementwiseAdamState)]
        assert len(found) == 1, n


@pytest.mark.parametrize("name,kind", [("td3", "simba"), ("sac", "bronet"), ("dqn", "bronet"), ("ppo", "simba"),
                                       *[pytest.param(n, k, marks=pytest.mark.slow) for n, k in
                                         (("td3", "bronet"), ("sac", "simba"), ("dqn", "simba"), ("ppo", "bronet"))]])
def test_every_agent_builds_residual_networks(name, kind):
    agent = _agent(name, {"network": kind, "blocks": 1})
    state = jax.eval_shape(agent.init, KEY)
    for n, net in agent.nets.items():
        if net.module is None:
            continue
        assert isinstance(getattr(net.module, "mlp", net.module), KINDS[kind])
        assert [l.name for l in net.layers] == ["block_0_hidden"]
        assert "embed" in state.nets[n].params
    critic = agent.nets[agent.critic_net]
    assert critic.layers[0].ensemble == (2 if name in ("td3", "sac") else 0)


def test_unknown_build_option_is_an_error():
    with pytest.raises(ValueError, match="unknown build option.*valid: adam_count, inject"):
        _agent("dqn", options={"adam_cnt": "per_element"})
    with pytest.raises(ValueError, match="cannot build injection heads on alpha"):
        _agent("sac", options={"inject": ("alpha",)})


class _Wants(Intervention):
    def __init__(self, name, opts):
        self.name, self._opts = name, opts

    def agent_options(self):
        return self._opts


def test_build_options_merge_and_conflicts(monkeypatch):
    from plastic import config  # agent_options lives in plastic.config (checked when a config is built)
    a = lambda c, agent, roles: _Wants("a", {"adam_count": "per_element"})  # noqa: E731
    b = lambda c, agent, roles: _Wants("b", {"adam_count": "per_element", "inject": ("q",)})  # noqa: E731
    c = lambda c, agent, roles: _Wants("c", {"adam_count": "global"})  # noqa: E731
    monkeypatch.setattr(config.iv_registry, "REGISTRY", {"a": a, "b": b, "c": c})
    cfg = SimpleNamespace(agent="dqn", interventions={"a": None, "b": None})
    assert config.agent_options(cfg) == {"adam_count": "per_element", "inject": ("q",)}
    with pytest.raises(ValueError, match="interventions a and c need the agent built with different adam_count"):
        config.agent_options(SimpleNamespace(agent="dqn", interventions={"a": None, "c": None}))


@pytest.mark.parametrize("argv,needle", [
    (["--agent", "dqn", "--dqn.network", "resnet"], "dqn.network='resnet' is not valid; choose one of: mlp, simba, bronet"),
    (["--agent", "td3", "--td3.network", "simba", "--td3.blocks", "0"], "td3.blocks must be >= 1"),
    (["--agent", "sac", "--sac.network", "transformer"], "choose one of: mlp, simba, bronet"),
    (["--agent", "ppo", "--ppo.network", "bronet", "--ppo.blocks", "-1"], "ppo.blocks must be >= 1"),
    (["--agent", "dqn", "--dqn.torso", "nature", "--dqn.network", "simba"], "dqn.network=simba has no image torso"),
])
def test_bad_network_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)


# ---- tiny jitted runs (2 vmapped seeds) --------------------------------------------------------------
def _run(tmp_path, agent, kind, intervention="none", extra=None, steps=200):
    t = tiny_trainer(agent, intervention, steps, {f"{agent}.network": kind, f"{agent}.blocks": 1, **(extra or {})})
    t.run(tmp_path / "r")
    rs = rows(tmp_path / "r")
    assert len(rs) == 2 * (steps // 100) and all(np.isfinite(v) for r in rs for k, v in r.items()
                                                   if k.startswith("loss/"))
    return t, rs


# dqn with SimBa under ReDo and ppo with BroNet under ReGraMa run by default; the rest repeat the same code
@pytest.mark.parametrize("agent,kind,iv,extra", [
    ("dqn", "simba", "redo", {"redo.period": 10}),
    ("ppo", "bronet", "grama", {"grama.period": 2}),
    pytest.param("dqn", "bronet", "none", None, marks=pytest.mark.slow),
    pytest.param("ppo", "simba", "none", None, marks=pytest.mark.slow),
    pytest.param("td3", "simba", "none", None, marks=pytest.mark.slow),
    pytest.param("td3", "bronet", "none", None, marks=pytest.mark.slow),
    pytest.param("sac", "simba", "none", None, marks=pytest.mark.slow),
    pytest.param("sac", "bronet", "none", None, marks=pytest.mark.slow),
])
def test_tiny_jitted_runs(tmp_path, agent, kind, iv, extra):
    t, rs = _run(tmp_path, agent, kind, iv, extra)
    ts = t.final_state[0]
    if iv != "none":  # the unit resets ran on the block units (their layers are the only ones logged)
        net = "q" if agent == "dqn" else "actor"
        key = {"redo": f"redo/reset_fraction/{net}/", "grama": f"reset_fraction/{net}/"}[iv]
        assert sorted(k[len(key):] for k in rs[-1] if k.startswith(key)) == ["block_0_hidden"]
        assert rs[-1][f"{iv}/events/{net}"] > 0
    for n, net in t.agent.nets.items():
        if net.module is not None:
            assert isinstance(getattr(net.module, "mlp", net.module), KINDS[kind])
            assert np.all(np.isfinite(np.asarray(jax.tree.leaves(ts.agent.nets[n].params)[0])))


@pytest.mark.parametrize("kind", ["mlp", "simba", "bronet"])
@pytest.mark.parametrize("inject", [False, True])
def test_ensemble_member_runs_one_member_alone(kind, inject):
    """`ensemble_member(params, e)` on the module cloned with `ensemble=1` gives member e's output of the
    whole ensemble (TD3's actor loss reads Q1 this way, without the other member's matmuls)."""
    from plastic.networks import ensemble_member
    x = jnp.concatenate([X, -X], axis=-1)
    net = (MLP((5, 4), 1, ensemble=2, inject=inject) if kind == "mlp"
           else build(kind, ensemble=2, out=1, inject=inject))
    params = net.init(KEY, x)["params"]
    if inject:  # output_new differs from output_ref and the flag is set: the injected head is live
        params = {**params, "inject_flag": jnp.ones(()),
                  "output_new": jax.tree.map(lambda p: p + 0.3, params["output_new"])}
    full = net.apply({"params": params}, x)[0]
    one = net.clone(ensemble=1)
    for e in range(2):
        y = one.apply({"params": ensemble_member(params, e)}, x)[0]
        assert y.shape == (1, *full.shape[1:])
        np.testing.assert_allclose(y[0], full[e], rtol=1e-5, atol=1e-5)
        assert not np.allclose(full[0], full[1])  # the members differ, so the right one was picked
