"""The benchmark scripts still run against today's drivers: the parts of them that reach into a trainer, at toy
sizes. (The #22 refactor renamed what `benchmarks/peers.py` and `benchmarks/metrics.py` called, and no test
noticed: the GPU script would have failed on its rejax part.) Timings are not checked: benchmarks print ratios,
tests never time."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import offpolicy, peers  # noqa: E402
from benchmarks.metrics import OFF  # noqa: E402


def test_peers_times_this_projects_side_of_the_ppo_work():
    ours = peers.Ours("ppo", 1, 512)  # one PPO iteration (4 envs x 128 steps), default config, compiled once
    out = ours()
    assert out["steps"] == 512 and out["timed"] > 0 and out["first"] > 0


def test_update_timer_runs_every_off_policy_agent_and_reads_its_counters():
    for agent, net in (("dqn", "q"), ("td3", "critic")):
        tr = offpolicy.trainer_for(agent, 1, overrides={f"{agent}.hidden": "8", f"{agent}.batch_size": 4, **OFF},
                                   buffer=64)
        timer = offpolicy.UpdateTimer(tr, 32)  # a replay of 32 random transitions; 3 warm-up updates
        before = int(timer.counters[net])
        assert np.isfinite(timer(2))
        assert int(timer.counters[net]) == before + 2  # one update per call, as metrics.py's periods assume
