"""Run outputs: metrics.jsonl (one row per log point per seed), TensorBoard events, optionally Weights &
Biases (`run.wandb`), a progress bar."""
from __future__ import annotations

import json
import math
import secrets
import string
import sys
from pathlib import Path

import numpy as np


def _clean(v):
    if isinstance(v, str):  # e.g. nonstationary/task
        return v
    if isinstance(v, (bool, int, np.integer)):
        return int(v)
    v = float(v) if v is not None and np.ndim(v) == 0 else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


class RunLogger:
    """`wandb`: the run's config (an ExperimentConfig) to also log to Weights & Biases, None not to (the
    drivers pass it when `run.wandb` is on; see `for_run`)."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool, progress: str,
                 total_steps: int, start_step: int, wandb=None):
        self.path = Path(run_dir) / "metrics.jsonl"
        logged_through = -1  # the last step already logged (before a resume)
        if resume_step is not None and self.path.exists():
            # drop rows written after the checkpoint we resume from: no duplicates, no gaps
            rows = [l for l in self.path.read_text().splitlines() if l.strip()]
            steps = [json.loads(l)["step"] for l in rows]
            logged_through = max(steps, default=-1)
            kept = [l for l, step in zip(rows, steps) if step <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        self.wandb = None if wandb is None else WandbLog(Path(run_dir), wandb, logged_through)
        self.file = self.path.open("a")
        self.tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(Path(run_dir) / "tb"),
                                    purge_step=None if resume_step is None else resume_step + 1)
        show = progress == "on" or (progress == "auto" and sys.stderr.isatty())
        self.bar = None
        if show:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    @classmethod
    def for_run(cls, cfg, run_dir: Path, resume_step: int | None, start_step: int) -> "RunLogger":
        """The logger of a run of `cfg` (an ExperimentConfig): its run switches, W&B if `run.wandb`."""
        r = cfg.run
        return cls(run_dir, resume_step, r.tensorboard, r.progress, r.steps, start_step,
                   wandb=cfg if r.wandb else None)

    def write(self, rows: list[dict]) -> None:
        """The rows of one log point (one per seed)."""
        rows = [{k: _clean(v) for k, v in row.items()} for row in rows]
        for row in rows:
            self.file.write(json.dumps(row) + "\n")
            if self.tb is not None:
                for k, v in row.items():
                    if k not in ("step", "seed") and isinstance(v, (int, float)):
                        self.tb.add_scalar(f"seed{row['seed']}/{k}", v, row["step"])
        self.file.flush()
        if self.wandb is not None and rows:
            self.wandb.log(rows)

    def progress(self, n: int, postfix: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items() if v is not None})

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()
        if self.bar is not None:
            self.bar.close()


WANDB_ID_FILE = "wandb_run.json"  # RUN_DIR/wandb_run.json: {"id": the W&B run id}


def wandb_point(rows: list[dict]) -> dict:
    """What one log point (one cleaned row per seed) logs to W&B: the mean over seeds of every numeric value
    (seeds whose value is null, e.g. no episode ended, left out; a key null on every seed left out), and each
    seed's `episode_return` as `seed{i}/episode_return`, so the UI shows the spread without one panel per
    seed for every metric (metrics.jsonl and TensorBoard keep every value of every seed)."""
    point = {}
    for k in dict.fromkeys(k for row in rows for k in row):
        if k in ("step", "seed"):
            continue
        values = [row[k] for row in rows if isinstance(row.get(k), (int, float))]
        if values:
            point[k] = float(np.mean(values))
    for row in rows:
        if row.get("episode_return") is not None:
            point[f"seed{row['seed']}/episode_return"] = row["episode_return"]
    return point


def new_wandb_id() -> str:
    """A fresh W&B run id: 8 random lowercase letters and digits, as W&B draws its own."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandbLog:
    """One W&B run per run directory, continued across resumes.

    The W&B run id is drawn once and kept in RUN_DIR/wandb_run.json; every session (the first one and each
    `--resume`) calls `wandb.init(id=..., resume="allow")` with `dir=RUN_DIR`, so W&B's files go to
    RUN_DIR/wandb/ (offline: one offline-run-* directory per session, which `wandb sync` uploads in order
    into the one run). W&B steps are env steps and must increase: after a resume the log points between the
    checkpoint and the last step the previous session logged are written again to metrics.jsonl but not
    sent to W&B a second time."""

    def __init__(self, run_dir: Path, cfg, logged_through: int = -1):
        import wandb
        r = cfg.run
        path = run_dir / WANDB_ID_FILE
        run_id = json.loads(path.read_text())["id"] if path.exists() else new_wandb_id()
        path.write_text(json.dumps({"id": run_id}) + "\n")
        self.logged_through = logged_through
        self.run = wandb.init(project=r.wandb_project, entity=r.wandb_entity or None, group=r.wandb_group or None,
                              name=run_dir.resolve().name, id=run_id, resume="allow", config=cfg.to_dict(),
                              dir=str(run_dir), mode=r.wandb_mode,
                              settings=wandb.Settings(console="off"))  # stdout stays the job's own

    def log(self, rows: list[dict]) -> None:
        step = rows[0]["step"]
        if step > self.logged_through:
            self.run.log(wandb_point(rows), step=step)

    def close(self) -> None:
        try:
            self.run.finish()
        except Exception as e:  # never lose a finished run (or its checkpoint) to the W&B service
            print(f"warning: W&B run {self.run.id} did not finish cleanly: {e}", file=sys.stderr)
