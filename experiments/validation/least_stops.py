"""How often LEAST's stop rule would fire on an agent's own data, for several factor caps, without acting on it.

Trains TD3 (or SAC) with LEAST's bookkeeping only (`least.enabled=false`: the tables fill, nothing stops, the run
is the base agent's), then replays the rule offline with plastic's own `stop_rule`: every finished episode, in
order, is decided step by step against the K episodes finished before it, as the live hook would have decided it
(the one difference: a live stop would have cut the episode, and its later steps would not exist). Prints, per
seed and `least.factor_max`, the fraction of episodes the rule stops, the median decision step, and the per-step
firing rate. This is the evidence behind the default cap (docs/interventions.md, LEAST).

  python experiments/validation/least_stops.py --env Hopper-v5 --steps 25000 --seeds 2
  python experiments/validation/least_stops.py --tables runs/least_stops/tables.npz   # replay saved tables
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TABLES = ("B_Q", "B_G", "row_valid", "row_len", "write_ptr")


def collect(agent: str, env: str, steps: int, seeds: int, learning_starts: int, out: Path) -> dict:
    """Run the agent with LEAST's bookkeeping only; save and return its tables (a leading seed axis)."""
    import jax

    from experiments.validation import METRICS_OFF
    from plastic.cli import cap_buffer
    from plastic.config import build
    from plastic.drivers import make_trainer
    cfg = cap_buffer(build(agent, "least", overrides={"least.enabled": False, f"{agent}.learning_starts": learning_starts,
                                                      "run.eval_every": 0, "run.log_every": 1000, **METRICS_OFF},
                           env=env, seeds=seeds, steps=steps, run_dir=str(out / "run")))
    trainer = make_trainer(cfg)
    trainer.run(out / "run")
    state = jax.device_get(trainer.final_state[0].interventions["least"])
    tables = {k: np.asarray(state[k]) for k in TABLES}
    np.savez(out / "tables.npz", **tables, K=np.asarray(state["K"]))
    return tables


def replay(tables: dict, seed: int, cfg) -> dict:
    """Per finished episode of one seed after the agent's warm-up (oldest first): the first step at which the rule
    fires (None if never), deciding with the K episodes finished before it; and the rule's per-step firing rate."""
    import jax
    import jax.numpy as jnp

    from plastic.interventions.least import stop_rule
    BQ, BG = jnp.asarray(tables["B_Q"][seed]), jnp.asarray(tables["B_G"][seed])
    valid, length, ptr = tables["row_valid"][seed], tables["row_len"][seed], int(tables["write_ptr"][seed])
    R, L = BQ.shape
    order = [r for r in ((ptr + j) % R for j in range(1, R + 1)) if valid[r]]   # FIFO: oldest first

    lengths = jnp.asarray(length)

    @jax.jit
    def fires(k, rows):
        """bool [L]: the rule at each step of episode k (entries past a row's length are stale: masked, as live)."""
        def at(i, q, g, cq, cg):
            return stop_rule(q, g, cq, cg, rows & (i < lengths), cfg)[0]
        steps = jnp.arange(L)
        return jax.vmap(at, in_axes=(0, 0, 0, 1, 1))(steps, BQ[k], BG[k], BQ, BG) & (steps < lengths[k]) \
            & jnp.isfinite(BQ[k])

    first, fired, steps = [], 0, 0
    for idx, k in enumerate(order):
        if not np.isfinite(tables["B_Q"][seed][k, :length[k]]).any():
            continue     # recorded in the agent's warm-up: nothing to decide
        rows = np.zeros(R, bool)
        rows[order[max(0, idx - cfg.K_init):idx]] = True
        f = np.asarray(fires(k, jnp.asarray(rows)))
        hit = np.flatnonzero(f)
        first.append(int(hit[0]) if len(hit) else None)
        fired, steps = fired + int(f.sum()), steps + int(length[k])
    return {"first": first, "fire_rate": fired / max(steps, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--agent", default="td3", choices=("td3", "sac"))
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--steps", type=int, default=25_000)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--learning-starts", type=int, default=5_000)
    p.add_argument("--out", type=Path, default=Path("runs/least_stops"), help="where the run and its tables go")
    p.add_argument("--tables", type=Path, help="replay these saved tables instead of running")
    p.add_argument("--factor-max", type=float, nargs="+", default=[0.0, 1.0],
                   help="caps to compare (0: the spec's uncapped rule)")
    p.add_argument("--omega-coef", type=float, default=0.5)
    args = p.parse_args(argv)
    from plastic.interventions.least import LEASTConfig
    if args.tables:
        if not args.tables.is_file():
            p.error(f"no tables at {args.tables}")
        tables = dict(np.load(args.tables))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        tables = collect(args.agent, args.env, args.steps, args.seeds, args.learning_starts, args.out)
    base = LEASTConfig(omega_coef=args.omega_coef, K_init=int(np.max(tables.get("K", 250))))
    print(f"window K = {base.K_init} episodes, min_rows = {base.min_rows}, kappa = {base.omega_coef}")
    for seed in range(tables["B_Q"].shape[0]):
        for cap in args.factor_max:
            r = replay(tables, seed, replace(base, factor_max=cap))
            decided = r["first"]
            stopped = [f for f in decided if f is not None]
            med = f"{np.median(stopped):.0f}" if stopped else "-"
            print(f"seed {seed}  factor_max {cap:g}: stops {len(stopped)}/{len(decided)} episodes "
                  f"({len(stopped) / max(len(decided), 1):.0%}), median decision step {med}, "
                  f"per-step firing rate {r['fire_rate']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
