"""What the in-training metrics cost, measured side by side in one run (TD3 or SAC on HalfCheetah-v5).

Prints:
  update          update-only rate (jitted UTD-1 learn calls on a filled replay, no env) with every metric
                  group off, and with the default metric set at its default periods; the timed stretch is a
                  whole number of 1k-update periods, so the groups due every 1k updates fire at their rate
  groups          one firing of each batch group (activity, rank, churn, NTK at B = ntk_batch) timed alone
                  (the NTK is measured at the log point after its period boundary: its own program)
  amortised       measured update overhead + each rarer group's cost / its period (the 5 % target)
Usage:
  python benchmarks/metrics.py [--agent td3] [--updates 1000] [--rounds 16] [--ntk-batch 64]
The overhead is the median over pairs of back-to-back rounds (off, default; alternating order): a shared
2-core machine drifts by +-10-30 % between minutes, which best-of-N on each side alone does not cancel.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.offpolicy import UpdateTimer, trainer_for  # noqa: E402
from plastic.config import MetricsConfig  # noqa: E402
from plastic.monitor import BATCH_GROUPS  # noqa: E402
from plastic.programs import SHARED  # noqa: E402

GROUPS = ("activity", "grad", "rank", "churn", "ntk")
OFF = {f"metrics.{g}_every": 0 for g in GROUPS}


def group_cost(tr, group, repeats=5):
    """Seconds for one firing of one batch group on one seed (jitted, compile excluded): the group marked
    due for its network, then a round in which that network updated."""
    mon = tr.monitor
    ts, counters = tr.init_state()
    one = jax.tree.map(lambda x: x[0], ts)
    agent, c = tr.agent, tr.cfg.metrics
    batch = {"obs": jax.random.normal(jax.random.PRNGKey(0), (c.batch_size, agent.obs_size)),
             "action": jnp.zeros((c.batch_size, agent.action_size))}
    nets = dict.fromkeys(agent.nets, 0)
    before = {k: jnp.asarray(v, jnp.int32) for k, v in {**nets, "env_steps": 0}.items()}
    due_net = agent.policy_net if group == "churn" else agent.critic_net
    after = {**before, due_net: jnp.asarray(1, jnp.int32)}
    m = {**one.monitor, **counters[SHARED]["metrics"]}  # the schedule is kept with the counters
    flags = mon.view(m, "due")["due"]  # only this group marked, for its network
    flags = {g: {n: jnp.asarray(g == group and n == due_net) for n in fs} for g, fs in flags.items()}
    m = {**m, **mon.pack({"due": flags})}

    def fire(st, m):  # the NTK is captured by collect and measured by at_log_point
        m = mon.collect(st, m, before, after, lambda k, m: (lambda: batch, m), jax.random.PRNGKey(1),
                        st.nets[agent.policy_net].params)
        return mon.at_log_point(m)["values"]

    fn = jax.jit(fire)
    jax.block_until_ready(fn(one.agent, m))
    t = time.perf_counter()
    for _ in range(repeats):
        out = fn(one.agent, m)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", default="td3", choices=("td3", "sac"))
    ap.add_argument("--updates", type=int, default=1000, help="timed updates per round (a multiple of 1000)")
    ap.add_argument("--rounds", type=int, default=16, help="pairs of rounds (off, default)")
    ap.add_argument("--ntk-batch", type=int, default=64)
    args = ap.parse_args()
    d = MetricsConfig()
    print(f"{args.agent} on HalfCheetah-v5, 1 seed, default metric periods: activity {d.activity_every}, "
          f"grad {d.grad_every}, rank {d.rank_every}, churn {d.churn_every}, ntk {d.ntk_every} updates", flush=True)
    off = trainer_for(args.agent, 1, overrides=OFF)
    on = trainer_for(args.agent, 1, overrides={"metrics.ntk_batch": args.ntk_batch})
    timers = {"off": UpdateTimer(off, 10_000), "default": UpdateTimer(on, 10_000)}
    # start both just after a 1k boundary so each timed stretch holds whole periods
    for tm in timers.values():
        tm(1000 - int(tm.counters["critic"]) % 1000)
    # paired rounds: off and default back to back (alternating which goes first), one ratio per pair; the
    # median ratio is robust to the machine's slow drifts, which best-of-N on each side alone is not
    ratios, best = [], {k: 0.0 for k in timers}
    for r in range(args.rounds):
        order = ("off", "default") if r % 2 == 0 else ("default", "off")
        rate = {k: timers[k](args.updates) for k in order}
        ratios.append(rate["off"] / rate["default"])
        best = {k: max(best[k], rate[k]) for k in best}
    ms = {k: 1000.0 / v for k, v in best.items()}
    over = float(np.median(ratios)) - 1
    q1, q3 = np.percentile(ratios, [25, 75]) - 1
    print(f"update-only (best round): metrics off {ms['off']:.3f} ms, default set {ms['default']:.3f} ms; "
          f"paired overhead: median {100 * over:+.1f} % (quartiles {100 * q1:+.1f} / {100 * q3:+.1f} %, "
          f"{args.rounds} pairs of {args.updates} updates)", flush=True)
    cost = {g: group_cost(on, g) for g in BATCH_GROUPS}
    for g, s in cost.items():
        print(f"one {g} firing: {1000 * s:.2f} ms (every {on.monitor.periods[g]} updates)", flush=True)
    rare = sum(1000 * cost[g] / on.monitor.periods[g] for g in ("rank", "churn", "ntk"))
    total = over * ms["off"] + rare
    print(f"amortised overhead of the default set: {total:.3f} ms per update = {100 * total / ms['off']:.1f} % "
          f"(target <= 5 %); NTK rank at B={args.ntk_batch}: {1000 * cost['ntk']:.1f} ms per measurement")


if __name__ == "__main__":
    main()
