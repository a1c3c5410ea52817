"""Seeds are a batch axis for free: the seed vmap keeps every scheduled conditional a real branch.

Under `jax.vmap`, a `lax.cond` whose predicate differs by seed becomes a `select` that runs both branches on
every call: every metric group measured and every periodic event computed on every step, for every seed
(issue #20: the collector's `due` flags in the seed-batched state cost PPO and DQN up to 7x at 8-64 seeds).
Schedules read the shared counters (and `Intervention.shared` state kept with them), so the program of
several seeds must hold exactly the conditionals of the single-seed program (which has no seed axis at all:
`SeedPlacement.vmap`). Structural, not timed: the `cond`s of the traced programs are counted.

Generated from the registries: every agent, with the metrics collector on (every group) and every stack of
scheduled interventions (`test_census.stacks`) plus CBP and an update-counted reset schedule, on the
jitted driver's chunk (its scanned step; the log-point program is outside the scan) and the host driver's
measuring step program.
"""
from __future__ import annotations

import collections

import jax
import numpy as np
import pytest

import agents
from helpers import TINY, all_eqns, make, tiny_trainer
from plastic.config import supported_agents
from plastic.interventions import REGISTRY
from test_census import stacks

METRICS_ON = {f"metrics.{g}_every": 50 for g in ("activity", "grad", "rank", "churn", "ntk")}
EXTRA = {"reset": {"reset.schedule": "every_updates", "reset.interval": 40}}


def count(jaxpr) -> collections.Counter:
    """Primitive counts of a jaxpr, sub-jaxprs (scan bodies, cond branches, jitted calls) included."""
    return collections.Counter(eqn.primitive.name for eqn in all_eqns(jaxpr))


def step_conds(tr) -> int:
    """`cond`s in the scanned step of a jitted-driver chunk."""
    jaxpr = jax.make_jaxpr(lambda c: tr.chunk(c, 2))(tr.init_carry()).jaxpr
    return sum(count(e.params["jaxpr"].jaxpr)["cond"] for e in jaxpr.eqns if e.primitive.name == "scan")


def host_conds(tr) -> int:
    """`cond`s in the host driver's learning step with the measuring code."""
    S = tr.n_seeds
    ex = lambda x: np.zeros((S, *np.shape(x)), np.asarray(x).dtype)  # noqa: E731
    tr_ = {"obs": ex(np.zeros(tr.envs.observation_size, np.float32)), "action": ex(tr.agent.action_example()),
           "reward": np.zeros(S, np.float32), "next_obs": ex(np.zeros(tr.envs.observation_size, np.float32)),
           "terminated": np.zeros(S, np.float32), "done": np.zeros(S, np.float32)}
    prog = tr.step_program("learn", True)
    return count(jax.make_jaxpr(prog)(tr.pack(*tr.init_state()), tr_, tr_["next_obs"]).jaxpr)["cond"]


def cases():
    out = []
    for agent in sorted(agents.REGISTRY):
        sets = [("metrics",)] + [tuple(s) for s in stacks(agent)]
        sets += [(n,) for n in ("cbp", "reset") if agent in supported_agents(REGISTRY[n])]
        for ivs in dict.fromkeys(sets):
            for driver in ("jit", "host") if agent != "ppo" else ("jit",):
                # the host driver's update rounds are the jitted driver's; what is its own is the measuring
                # program (the metrics): its intervention stacks are `slow` variants
                marks = [pytest.mark.slow] if driver == "host" and ivs != ("metrics",) else []
                out.append(pytest.param(agent, ivs, driver, marks=marks, id=f"{agent}-{'+'.join(ivs)}-{driver}"))
    return out


@pytest.mark.parametrize("agent,ivs,driver", cases())
def test_several_seeds_keep_every_conditional(agent, ivs, driver):
    metrics = ivs == ("metrics",)
    name = "none" if metrics else "+".join(ivs)
    extra = dict(METRICS_ON) if metrics else {}
    for n in () if metrics else ivs:
        extra.update({f"{n}.{k}": v for k, v in REGISTRY[n].census.items()})
        extra.update(EXTRA.get(n, {}) if len(ivs) == 1 else {})
    if driver == "jit":
        got = [step_conds(tiny_trainer(agent, name, 10**6, extra=extra, seeds=s)) for s in (1, 2)]
    else:
        small = {f"{agent}.{k}": v for k, v in TINY[agent].items()}
        env = {"dqn": "CartPole-v1"}.get(agent, "Pendulum-v1")
        got = [host_conds(make(agent, env, 10**6, name, overrides={**small, **extra}, metrics=metrics,
                               seeds=s)[1]) for s in (1, 2)]
    assert got[0] > 0 or not metrics  # the groups are conditionals (CBP on PPO has none: it acts every step)
    assert got[1] == got[0], (f"{got[0] - got[1]} of the {got[0]} conditionals of the single-seed program became "
                              f"selects under the seed vmap")


def test_seed_cond_is_a_branch_with_per_seed_semantics():
    """`seed_cond` on a per-seed predicate: one real `cond` under the seed vmap (no select of `fn`'s work),
    each seed's result exactly what it alone would get, and no `fn` work at all when no seed needs it."""
    import jax.numpy as jnp

    from plastic.core import seed_cond
    from plastic.seed_axis import SEED_VMAP_AXIS

    def one(pred, x):
        return seed_cond(pred, lambda v: jnp.sin(v) * 3.0, x)

    batched = jax.vmap(one, axis_name=SEED_VMAP_AXIS)
    preds, x = jnp.array([True, False, True]), jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    got = jax.jit(batched)(preds, x)
    for i in range(3):
        np.testing.assert_array_equal(got[i], jax.jit(one)(preds[i], x[i]))
    np.testing.assert_array_equal(jax.jit(batched)(jnp.zeros(3, bool), x), x)
    prims = count(jax.make_jaxpr(batched)(preds, x).jaxpr)
    assert prims["cond"] == 1 and prims["pmax"] == 1
    # the top level selects nothing of fn's work: sin runs only inside the branch
    top = collections.Counter(e.primitive.name for e in jax.make_jaxpr(batched)(preds, x).jaxpr.eqns)
    assert top["sin"] == 0 and top["select_n"] == 0
