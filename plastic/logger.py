"""Run outputs: metrics.jsonl (one row per log point per seed), TensorBoard events, a progress bar."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np


def _clean(v):
    if isinstance(v, (bool, int, np.integer)):
        return int(v)
    v = float(v) if v is not None and np.ndim(v) == 0 else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


class RunLogger:
    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool, progress: str,
                 total_steps: int, start_step: int):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # drop rows written after the checkpoint we resume from: no duplicates, no gaps
            rows = [l for l in self.path.read_text().splitlines() if l.strip()]
            kept = [l for l in rows if json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
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

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            row = {k: _clean(v) for k, v in row.items()}
            self.file.write(json.dumps(row) + "\n")
            if self.tb is not None:
                for k, v in row.items():
                    if k not in ("step", "seed") and isinstance(v, (int, float)):
                        self.tb.add_scalar(f"seed{row['seed']}/{k}", v, row["step"])
        self.file.flush()

    def progress(self, n: int, postfix: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items() if v is not None})

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()
