"""The event census: every scheduled periodic event fires exactly as its schedule says.

Generated from the registries: every intervention that declares a census configuration
(`Intervention.census`: resets, recycling, perturbations, injections, topology updates, and any later one),
on every agent it supports, on both drivers, for each network selection it offers
(`Intervention.census_selections`: the actor alone, the critic alone, both; DQN's q). Each case trains two
vmapped seeds for a short run (off-policy agents with one update per round on the host driver, two on the
jitted one; SAC's actor takes `policy_delay` steps in one burst, TD3's every other round: on the host
driver's former "at most one update per network and step" horizon, SAC's actor-only ReGraMa fired 14 of 28
events here) and compares, for each network and
seed, the logged count `NAME/events/NET` with `expected_events`, the schedule computed from the final counters
alone. Methods whose claims allow it share a run (`stacks`), each checked against its own schedule. A new
intervention or agent is covered without editing this file.
"""
from __future__ import annotations

import numpy as np
import pytest

import agents
from helpers import TINY, rows, tiny_trainer
from plastic.config import supported_agents
from plastic.interventions import REGISTRY
from plastic.programs import SHARED

STEPS = 240            # off-policy: 140 learning steps after learning_starts 100; PPO: 5 iterations of 50 env steps
DRIVERS = ("jit", "host")


def stacks(agent):
    """The census methods that apply to `agent`, grouped into stacks that can run together (claims and build
    options compatible): each stack is one run, and every member's schedule is checked in it."""
    from plastic.config import ConfigError, check_claims, make_intervention
    out = []
    for name, cls in REGISTRY.items():
        if not cls.census or agent not in supported_agents(cls):
            continue
        for stack in out:
            trial = [*stack, name]
            try:
                check_claims({n: make_intervention(n, REGISTRY[n].Config(), agent).claims() for n in trial})
            except ConfigError:
                continue
            roles = agents.get(agent).roles.values()
            if len({len(REGISTRY[n].census_selections(roles)) for n in trial}) == 1:
                stack.append(name)
                break
        else:
            out.append([name])
    return out


def cases():
    out = []
    for agent in sorted(agents.REGISTRY):
        roles = agents.get(agent).roles.values()
        for stack in stacks(agent):
            per_method = [REGISTRY[n].census_selections(roles) for n in stack]
            combos = list(zip(*per_method))
            for driver in DRIVERS:
                for i, sels in enumerate(combos):
                    sel = {f"{n}.{k}": v for n, s in zip(stack, sels) for k, v in s.items()}
                    tag = ",".join(sorted({f"{k.split('.')[1]}={'+'.join(v) if isinstance(v, tuple) else v}"
                                           for k, v in sel.items()}))
                    # the jitted driver's single-network selections are `slow` variants: the host driver runs
                    # them all, and the jitted driver the selection of every network (the last one)
                    marks = [pytest.mark.slow] if driver == "jit" and i < len(combos) - 1 else []
                    out.append(pytest.param(tuple(stack), agent, driver, sel, marks=marks,
                                            id=f"{'+'.join(stack)}-{agent}-{driver}-{tag or 'default'}"))
    return out


def test_every_scheduled_method_is_in_the_census():
    """The methods the issue names are covered (a method dropping its census entry would leave it unchecked)."""
    named = {"grama", "redo", "reset", "shrink_perturb", "injection", "ne"}
    assert named <= {n for n, c in REGISTRY.items() if c.census}


@pytest.mark.parametrize("stack,agent,driver,selection", cases())
def test_events_fire_on_schedule(tmp_path, stack, agent, driver, selection):
    extra = {f"{n}.{k}": v for n in stack for k, v in REGISTRY[n].census.items()}
    extra.update(selection)
    extra.update({"run.driver": driver, "run.log_every": STEPS, "run.checkpoint_every": 0})
    if driver == "jit" and "utd" in agent_fields(agent):
        extra[f"{agent}.utd"] = 2  # the other update pattern: two gradient steps per round
    tr = tiny_trainer(agent, "+".join(stack), STEPS, extra=extra)
    tr.run(tmp_path)
    counters = {k: int(np.asarray(v)) for k, v in tr.final_state[1].items() if k != SHARED}  # the update counters
    log = rows(tmp_path)
    last = [r for r in log if r["step"] == log[-1]["step"]]
    assert len(last) == 2
    for name in stack:
        iv = next(i for i in tr.interventions if i.name == name)
        expected = iv.expected_events(tr.agent, counters)
        assert expected and all(n > 0 for n in expected.values()), (name, expected, counters)  # events were due
        for row in last:
            logged = {k.rsplit("/", 1)[1]: v for k, v in row.items() if k.startswith(f"{name}/events/")}
            assert logged == expected, (name, row["seed"], logged, expected, counters)


def agent_fields(agent):
    return set(TINY[agent]) | set(agents.get(agent).Config.__dataclass_fields__)
