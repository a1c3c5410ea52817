"""The run loop every driver shares: chunks of training between log points, then the log rows, evaluation,
checkpoints and signals, and resume.

A driver (plastic/drivers/) gives the loop:

- `unit`: env steps per iteration (1 for the off-policy drivers; `num_envs * num_steps` for PPO), and
  `SEED_BATCHED`: which parts of its carry are vmapped over seeds;
- `init_carry()`: the carry as checkpoints hold it; `start(carry, step)`: the carry it runs on, from that
  (the host drivers reset their envs here; the host off-policy driver packs it); `saved(carry)`: back;
- `advance(carry, n, stop, sync_end)`: run `n` iterations, returning `(carry, iterations run, episode sums,
  logged values)`. A host driver checks `stop` after every env step and returns early, with no logged
  values, when a signal arrived; `sync_end`: a checkpoint follows the last iteration;
- `agent_state(carry)` (the evaluation's input), `meta()` / `restore_meta(meta)`: what a checkpoint keeps
  beside the carry (host envs: their episode counters).

Chunks end at the multiples of `run.log_every` (rounded to whole iterations) and at the end of the run,
so every log point is a chunk boundary, also after resuming from a checkpoint written between them.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from plastic.checkpoint import Checkpointer
from plastic.evaluation import eval_due, make_evaluation
from plastic.logger import RunLogger
from plastic.nonstationary import phase_info


class Driver:
    """The run loop's side of a driver, with the defaults for a carry that checkpoints whole. A driver
    composes a `Setup` (plastic/setup.py) and a per-seed program (plastic/programs.py); it subclasses this
    interface only, never another driver."""

    SEED_BATCHED: tuple
    unit = 1

    def __init__(self, setup):
        self.setup = setup
        self.cfg, self.placement, self.envs, self.agent = setup.cfg, setup.placement, setup.envs, setup.agent
        self.interventions, self.monitor, self.n_seeds = setup.interventions, setup.monitor, setup.n_seeds

    def run(self, run_dir: Path, resume: bool = False) -> dict:
        return run(self, run_dir, resume)

    def start(self, carry, step: int):
        return carry

    def saved(self, carry):
        return carry

    def agent_state(self, carry):
        return carry[0].agent

    def meta(self) -> dict:
        return {}

    def restore_meta(self, meta: dict) -> None:
        pass


def run(driver, run_dir: Path, resume: bool = False) -> dict:
    """Train `driver` into `run_dir` (resuming from its last checkpoint); the run's summary."""
    cfg, run_cfg = driver.cfg, driver.cfg.run
    ckpt = Checkpointer(Path(run_dir) / "checkpoints")
    carry = driver.init_carry()
    start, resume_step = 0, None
    if resume:
        resume_step, carry, meta = ckpt.restore(carry)
        carry = driver.placement.place(carry, driver.SEED_BATCHED)
        start = int(meta["env_steps"])
        driver.restore_meta(meta)
    logger = RunLogger.for_run(cfg, run_dir, resume_step, start)
    stop_signal, restore = catch_stop_signals()
    evaluation = make_evaluation(cfg, driver.agent, driver.placement)
    unit = driver.unit
    per_chunk = max(1, run_cfg.log_every // unit)
    units, total = start // unit, -(-run_cfg.steps // unit)
    carry = driver.start(carry, units * unit)
    summary = {}

    def save(step):
        ckpt.save(step, driver.saved(carry), {"env_steps": step, **driver.meta()})

    try:
        while units < total:
            end = min((units // per_chunk + 1) * per_chunk, total)
            prev = units * unit
            t0 = time.perf_counter()
            carry, ran, sums, stats = driver.advance(carry, end - units, stop_signal,
                                                     checkpoint_due(run_cfg, prev, end * unit))
            units += ran
            done = units * unit
            if stats is None:  # a signal stopped the chunk between log points
                save(done)
                return stopped(summary, stop_signal, done)
            sps = (done - prev) / max(time.perf_counter() - t0, 1e-9)
            evals = None
            if evaluation is not None and eval_due(run_cfg, prev, done):
                evals = evaluation(driver.agent_state(carry), done)
            rows = episode_rows(cfg, done, sps, stats, sums["count"], sums["return"], sums["length"], evals)
            logger.write(rows)
            summary = run_summary(rows, done, sps, summary)
            logger.progress(done - prev, {"sps": sps, "return": summary["return"]})
            if checkpoint_due(run_cfg, prev, done) or stop_signal["sig"] is not None:
                save(done)
            if stop_signal["sig"] is not None and units < total:
                return stopped(summary, stop_signal, done)
        driver.final_state = driver.saved(carry)
    finally:
        restore()
        logger.close()
        ckpt.close()
    return {**summary, "interrupted": False}


def checkpoint_due(run_cfg, prev: int, done: int) -> bool:
    """Whether the chunk `(prev, done]` ends with a checkpoint: at the end of the run, and at the first log
    point at or after each multiple of `run.checkpoint_every` (so the rows kept on resume end at a log point)."""
    ce = run_cfg.checkpoint_every
    return done >= run_cfg.steps or (bool(ce) and done // ce > prev // ce)


def stopped(summary, stop_signal, done) -> dict:
    print(f"received signal {stop_signal['sig']}: checkpoint written at step {done}; resume with --resume",
          flush=True)
    return {**summary, "interrupted": True, "step": done}


_STOP = {"sig": None, "depth": 0}


def catch_stop_signals():
    """Record SIGTERM / SIGUSR1 (Slurm preemption) instead of dying: returns `(flag, restore)`; the loop
    checkpoints and exits when `flag["sig"]` is set, and calls `restore()` when it ends. Catchers nest and
    share one flag: a signal caught by an enclosing one (the sweep task runner, while the run is still being
    built and compiled) stops the run at its first step."""
    if _STOP["depth"] == 0:
        _STOP["sig"] = None
    _STOP["depth"] += 1

    def handler(signum, _frame):
        _STOP["sig"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def restore():
        _STOP["depth"] -= 1
        for s, h in old.items():
            signal.signal(s, h)

    return _STOP, restore


def episode_sums(n_seeds, xp=jnp):
    """Per-seed sums of the episodes that ended since the last log point (`account` adds to them): `xp` jnp
    inside a jitted loop, np on the host."""
    return {"count": xp.zeros(n_seeds, xp.int32), "return": xp.zeros(n_seeds), "length": xp.zeros(n_seeds)}


def account(ep_return, ep_length, sums, reward, done):
    """Add this step's reward; move finished episodes into the per-seed sums (summed over any env axis).
    Works on jax arrays (inside a jitted loop) and on numpy arrays (a host loop)."""
    where = np.where if isinstance(done, np.ndarray) else jnp.where
    ret, length = ep_return + reward, ep_length + 1
    axes = tuple(range(1, done.ndim))
    sums = {"count": sums["count"] + done.sum(axes).astype(np.int32),
            "return": sums["return"] + where(done, ret, 0.0).sum(axes),
            "length": sums["length"] + where(done, length, 0).sum(axes)}
    return ret * ~done, length * ~done, sums


def episode_rows(cfg, step, sps, stats, count, return_sum, length_sum, evals=None) -> list[dict]:
    """One log row per seed: episode summaries from per-seed sums, the evaluation at this log point if any
    (`evals`: key -> per-seed values), then the seed's logged values."""
    rows = []
    agg = cfg.metrics.ratio_aggregation
    for i in range(cfg.run.seeds):
        n = int(count[i])
        row = {"step": step, "seed": i, "sps": sps, "episodes": n,
               "episode_return": float(return_sum[i]) / n if n else None,
               "episode_length": float(length_sum[i]) / n if n else None}
        row.update({k: float(v[i]) for k, v in (evals or {}).items()})
        if cfg.env.nonstationary != "none":  # the phase of the row's last env step (task, scale, sign)
            phase = phase_info(cfg.env, step - 1, cfg.run.seed + i if cfg.env.per_seed else 0)
            row.update({f"nonstationary/{k}": v for k, v in phase.items()})
        row.update({k: np.asarray(v)[i].item() for k, v in stats.items()})
        if agg == "mean_of_layers":  # GraMa ratios are pooled in-step; re-aggregate per layer here
            for k in [k for k in row if k.startswith("grama_ratio") and k.count("/") == 1]:
                layers = [v for kk, v in row.items() if kk.startswith(k + "/")]
                row[k] = float(np.mean(layers)) if layers else row[k]
        rows.append(row)
    return rows


def run_summary(rows, step, sps, last) -> dict:
    """The run's summary after a log point: step, SPS, the mean training return over the seeds that finished
    an episode, and the mean evaluation return (kept from the last evaluation between them)."""
    rets = [r["episode_return"] for r in rows if r.get("episode_return") is not None]
    evals = [r["eval/episode_return"] for r in rows if "eval/episode_return" in r]
    return {"step": step, "sps": sps, "return": float(np.mean(rets)) if rets else None,
            "eval_return": float(np.mean(evals)) if evals else last.get("eval_return")}
