"""Full and partial resets (docs/interventions.md, Full and partial resets; the method's test invariants)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import agents
from helpers import assert_cli_error, tiny_trainer
from plastic import fields
from plastic.core import Net
from plastic.interventions.reset import Reset, ResetConfig
from plastic.networks import ConvNet

KEY = jax.random.PRNGKey(0)


def agent_of(name, **cfg):
    c = agents.get(name).Config(hidden=(16, 16), **cfg)
    return agents.get(name)(c, 3, 2)


def reset_iv(agent="td3", **kw):
    iv = Reset(ResetConfig(**kw), agent)
    fields.check(iv.cfg, "reset")  # the declared ranges and switches (plastic.config checks them)
    iv.validate(None, None)
    return iv


def perturbed(agent, key=KEY):
    """An agent state whose params, targets and Adam state all differ from any fresh init."""
    return jax.jit(lambda k: _perturb(agent, k))(key)


def _perturb(agent, key):
    st = agent.init(key)
    bump = lambda t: jax.tree.map(lambda x: x + 0.5, t)  # noqa: E731
    nets = {n: ns.replace(params=bump(ns.params), opt_state=jax.tree.map(
        lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x + 7, ns.opt_state))
        for n, ns in st.nets.items()}
    return st.replace(nets=nets, targets=bump(st.targets))


def equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_full_reset_is_a_fresh_agent():
    agent = agent_of("sac")
    ivs = {t: reset_iv("sac", temperature=t) for t in ("reset", "keep")}
    st = perturbed(agent)
    istate = ivs["reset"].init(jax.random.PRNGKey(3), agent)
    counters = {"env_steps": jnp.int32(200_000), "actor": jnp.int32(0), "critic": jnp.int32(0),
                "alpha": jnp.int32(0)}

    @jax.jit
    def run(st, istate):
        fresh = agent.init(jax.random.fold_in(jax.random.PRNGKey(3), 1))
        return {t: iv.scheduled_event(agent, st, istate, counters, KEY) for t, iv in ivs.items()}, fresh

    out, fresh = run(st, istate)
    for temperature, (new, ist) in out.items():
        for n in ("actor", "critic"):
            assert equal(new.nets[n].params, fresh.nets[n].params)
            assert equal(new.nets[n].opt_state, agent.nets[n].tx.init(fresh.nets[n].params))  # count 0 too
        assert equal(new.targets["critic"], new.nets["critic"].params)
        assert equal(new.nets["alpha"], fresh.nets["alpha"] if temperature == "reset" else st.nets["alpha"])
        assert int(ist["count"]) == 1 and int(ist["last_env_step"]) == 200_000
        assert equal(new.logs, st.logs)


@pytest.mark.parametrize("scope, k, layers", [("heads_only", 1, {"output"}),
                                             ("last_k_layers", 2, {"hidden_1", "output"})])
def test_partial_reset_touches_only_the_last_layers(scope, k, layers):
    agent = agent_of("dqn")
    iv = reset_iv("dqn", scope=scope, k=k)
    st = perturbed(agent)
    key = jax.random.PRNGKey(5)
    new = jax.jit(lambda s: iv.reset(agent, s, key))(st)
    fresh = jax.jit(agent.init)(key)
    old_q, new_q, fresh_q = st.nets["q"], new.nets["q"], fresh.nets["q"]
    adam_old, adam_new = old_q.opt_state[0], new_q.opt_state[0]
    for layer in ("hidden_0", "hidden_1", "output"):
        if layer in layers:
            assert equal(new_q.params[layer], fresh_q.params[layer])
            assert equal(new.targets["q"][layer], fresh_q.params[layer])  # target = new online there
            assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves((adam_new.mu[layer], adam_new.nu[layer])))
        else:
            assert equal(new_q.params[layer], old_q.params[layer])
            assert equal(new.targets["q"][layer], st.targets["q"][layer])
            assert equal((adam_new.mu[layer], adam_new.nu[layer]), (adam_old.mu[layer], adam_old.nu[layer]))
    assert int(adam_new.count) == int(adam_old.count)  # one Adam count per network: kept
    # targets=keep leaves the target network alone
    keep = reset_iv("dqn", scope=scope, k=k, targets="keep")
    kept = jax.jit(lambda s: keep.reset(agent, s, key))(st)
    assert equal(kept.targets, st.targets)


def test_all_but_encoder_keeps_the_conv_torso():
    net = Net.of("q", ConvNet((5, 5, 2), ((4, 3, 1),), (8,), 2), optax.adam(1e-3))
    params = jax.eval_shape(net.init, KEY, jnp.zeros((1, 50))).params
    sel, enc = reset_iv("dqn", scope="all_but_encoder").selection(net, params)
    assert sel == {"conv_0": {"kernel": False, "bias": False}, "hidden_0": {"kernel": True, "bias": True},
                   "output": {"kernel": True, "bias": True}}
    assert enc["conv_0"] == {"kernel": True, "bias": True} and not enc["hidden_0"]["kernel"]


def test_schedules_fire_at_the_right_counts():
    agent = agent_of("td3")
    st = agent.init(KEY)
    ivs = {"env": reset_iv(interval=10), "cap": reset_iv(interval=10, max_resets=2),
           "at": reset_iv(schedule="at_env_steps", at_env_steps=(7, 25)),
           "upd": reset_iv(schedule="every_updates", interval=10),
           "actor": reset_iv(schedule="every_updates", interval=10, update_net="actor")}
    env = jnp.arange(1, 41, dtype=jnp.int32)
    for iv in ivs.values():  # only the schedule is under test here: skip the re-initialisation itself
        iv.reset = lambda agent, agent_state, key: agent_state
    seq = {"env_steps": env, "actor": 3 * env // 2, "critic": 3 * env}  # 3 critic updates per env step

    @jax.jit
    def counts():
        def body(istates, c):
            new = {n: iv.scheduled_event(agent, st, istates[n], c, KEY)[1] for n, iv in ivs.items()}
            return new, {n: s["count"] for n, s in new.items()}
        return jax.lax.scan(body, {n: iv.init(KEY, agent) for n, iv in ivs.items()}, seq)[1]

    fired = {n: np.flatnonzero(np.diff(np.asarray(c), prepend=0)) for n, c in counts().items()}
    e, u = np.asarray(env), 3 * np.asarray(env)
    assert e[fired["env"]].tolist() == [10, 20, 30, 40]
    assert e[fired["cap"]].tolist() == [10, 20]
    assert e[fired["at"]].tolist() == [7, 25]
    # every_updates (SR-SAC): at the first round whose count reached a multiple: 10 -> 12, 20 -> 21, ...
    assert u[fired["upd"]].tolist()[:4] == [12, 21, 30, 42] and len(fired["upd"]) == 120 // 10
    assert u[fired["actor"]].tolist()[:2] == [21, 42]


def trainer(agent, steps, seeds=2, extra=None):
    small = {"hidden": "16,16", "batch_size": 16, "buffer_size": 1000, "learning_starts": 50}
    return tiny_trainer(agent, "reset", steps, {"run.log_every": 50, "reset.interval": 60, **(extra or {})}, seeds,
                        small=small)


# the continuous agents repeat the same path with a longer compile: `python -m pytest -m slow tests/test_reset.py`
@pytest.mark.parametrize("agent", [pytest.param(a, marks=pytest.mark.slow) for a in ("td3", "sac")] + ["dqn"])
def test_runs_under_the_jitted_driver(tmp_path, agent):
    t = trainer(agent, 250)
    t.run(tmp_path / "r")
    ist = t.final_state[0].interventions["reset"]
    assert np.asarray(ist["count"]).tolist() == [4, 4]  # env steps 60, 120, 180, 240
    assert np.asarray(ist["last_env_step"]).tolist() == [240, 240]


# resume across resets: tests/test_stacks.py::test_a_stack_trains_and_resumes (DQN, reset in a stack)


@pytest.mark.parametrize("argv, needle", [
    (["--reset.scope", "encoder"], "reset.scope='encoder' is not valid; choose one of: all, last_k_layers, "),
    (["--reset.interval", "0"], "reset.interval must be a positive number of env steps, got 0"),
    (["--reset.schedule", "at_env_steps"], "reset.at_env_steps must be a non-empty increasing list"),
    (["--reset.update_net", "nope", "--reset.schedule", "every_updates"],
     "reset.update_net='nope' is not a network of this agent"),
    (["--agent", "ppo"], "intervention 'reset' does not apply to agent 'ppo'"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(["--intervention", "reset", *argv], needle, tmp_path, capsys)
