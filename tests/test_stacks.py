"""Composition: which stacks are refused (and why, in one line), the method x agent table in the docs equals
the code, and a compatible stack of several methods trains and resumes."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_cli_error, assert_resume_identical, tiny_trainer
from plastic.config import ConfigError, build, supported_agents
from plastic.interventions import REGISTRY

DOCS = Path(__file__).resolve().parent.parent / "docs" / "interventions.md"
AGENTS = ("td3", "sac", "dqn", "ppo")


def test_docs_table_lists_every_method_with_its_agents():
    rows = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\| `(\w+)`(?: \([^)]*\))? \| (.) \| (.) \| (.) \| (.) \|", line)
        if m:
            rows[m.group(1)] = tuple(a for a, c in zip(AGENTS, m.groups()[1:]) if c == "✓")
    assert rows == {name: tuple(a for a in AGENTS if a in supported_agents(cls)) for name, cls in REGISTRY.items()}


@pytest.mark.parametrize("agent, stack, needle", [
    ("ppo", "gtr+kl_penalty", "interventions gtr and kl_penalty cannot be stacked: gtr must be the only one to "
                              "rewrite PPO's policy objective"),
    ("td3", "ne+redo", "interventions ne and redo cannot be stacked: ne must constrain which weights may be non-zero "
                       "and redo would write weights outside the optimizer"),
    ("td3", "cbp+ne", "interventions ne and cbp cannot be stacked"),
    ("sac", "least+gtr", "intervention 'gtr' does not apply to agent 'sac'; it supports: ppo"),
    ("ppo", "least", "intervention 'least' does not apply to agent 'ppo'; it supports: td3, sac"),
])
def test_conflicting_stacks_are_one_line_errors(agent, stack, needle, tmp_path, capsys):
    assert_cli_error(["--agent", agent, "--intervention", stack], needle, tmp_path, capsys)


def test_two_replay_samplers_are_refused():
    with pytest.raises(ConfigError, match="interventions swd and ne cannot be stacked: swd must be the only one to "
                                          "replace the replay sampler"):
        build("td3", "swd+ne", overrides={"ne.experience_review": "fau_gated_oldest"})


def test_compatible_stacks_build():
    for agent, stack in (("td3", "grama+swd+least"), ("sac", "redo+l2init+weight_decay+least"),
                         ("dqn", "cbp+swd+shrink_perturb"), ("ppo", "gtr+grama+l2init"), ("td3", "ne+l2init")):
        assert tuple(build(agent, stack).interventions) == tuple(stack.split("+"))


def test_a_stack_trains_and_resumes(tmp_path):
    """grama + swd + l2init on DQN (2 vmapped seeds): every method's state advances, and a resumed run is
    bit-identical to the uninterrupted one."""
    extra = {"grama.period": 10, "swd.T": 200}
    full = assert_resume_identical(lambda n: tiny_trainer("dqn", "grama+swd+l2init", n, extra), tmp_path, 300, 200)
    ist = full.final_state[0].interventions
    assert np.all(np.asarray(ist["grama"]["q"]["events"]) > 0)
    assert np.all(np.asarray(ist["l2init"]["q"]["dist"]) > 0)
