"""Composition: which stacks are refused (and why, in one line), the method x agent table in the docs equals
the code, and a compatible stack of several methods trains and resumes (the resume test of each of them)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_cli_error, assert_resume_identical, rows, tiny_trainer
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


# one run cut at env step 100 and resumed to 300 checks every method's state across the checkpoint: each acts
# before the cut and after it (learning from step 50: ReDo and ReGraMa every 10 updates, shrink & perturb every
# 7, a reset every 60 env steps, C-CHAIN's λ adapting from the 40th update) or, for the injection at step 150,
# after it; the evaluations at 100, 200 and 300
# too. It stands for the per-method resume tests (test_redo, test_reset, test_l2, test_shrink_perturb,
# test_injection; test_evaluation's resumed evaluation); NE and CBP's Adam keep their own (they cannot stack)
STACK = "grama+swd+l2init+weight_decay+redo+reset+shrink_perturb+injection+parseval+cchain+trac+hare_tortoise"
STACKED = {"dqn.learning_starts": 50, "grama.period": 10, "swd.T": 200, "redo.period": 10, "redo.tau": 0.1,
           "reset.interval": 60, "shrink_perturb.mode": "fresh_noise", "shrink_perturb.period": 7,
           "injection.at": "150", "cchain.warmup": 40, "cchain.window": 30, "hare_tortoise.period": 40,
           "run.eval_every": 100,
           "run.eval_episodes": 2}


def test_a_stack_trains_and_resumes(tmp_path):
    """Every method of STACK on DQN (2 vmapped seeds): every method's state advances, and a run resumed across
    the events of all of them is bit-identical to the uninterrupted one, evaluations included."""
    full = assert_resume_identical(lambda n: tiny_trainer("dqn", STACK, n, STACKED), tmp_path, 300, 100)
    ist = full.final_state[0].interventions
    assert np.all(np.asarray(ist["grama"]["q"]["events"]) > 0)
    assert np.all(np.asarray(ist["l2init"]["q"]["dist"]) > 0)
    assert np.all(np.asarray(ist["redo"]["q"]["events"]) > 0)
    assert np.asarray(ist["reset"]["count"]).tolist() == [5, 5]           # env steps 60, 120, ..., 300
    assert np.all(np.asarray(ist["shrink_perturb"]["q"]["events"]) > 0)
    assert np.all(np.asarray(ist["parseval"]["q"]["penalty"]) > 0)
    assert np.all(np.asarray(ist["hare_tortoise"]["q"]["events"]) > 0)
    assert np.all(np.asarray(ist["cchain"]["q"]["n_reg"]) > 40) and np.all(np.asarray(ist["cchain"]["q"]["coef"]) != 50)
    assert np.all(np.asarray(ist["trac"]["q"]["scale"]) > 0)
    rs = rows(tmp_path / "full")
    assert [r["injection/count"] for r in rs] == [0, 0, 1, 1, 1, 1]    # rows at 100, 200, 300 (two seeds each)
    # TRAC's scale, max(Σs, 0): restarted with the optimizer at every reset, so it stays near its 1e-7 start here
    assert all(r["trac/scale/q"] >= 0 for r in rs) and any(r["trac/scale/q"] > 0 for r in rs)
    assert all("eval/episode_return" in r for r in rs)
