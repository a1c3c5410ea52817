"""Small builders shared by the trainer-level tests."""
from __future__ import annotations

import json
from pathlib import Path

from plastic.config import build
from plastic.trainer import Trainer

SMALL = {"hidden": "32,32", "batch_size": 32, "buffer_size": 5000}
# Every metric group off: tests that are not about the metrics skip compiling them (each group adds 1.5-2.5 s
# of XLA compile to a trainer's step program); the resume and metrics tests keep them on.
METRICS_OFF = {f"metrics.{g}_every": 0 for g in ("activity", "grad", "rank", "churn", "ntk")}


def make(agent, env, steps, intervention="none", tmp=None, overrides=None, metrics=False, **run):
    ov = {f"{agent}.{k}": v for k, v in SMALL.items()}
    ov.update({"run.progress": "off", "run.tensorboard": "false"})
    if not metrics:
        ov.update(METRICS_OFF)
    ov.update(overrides or {})
    cfg = build(agent, intervention, overrides=ov, env=env, steps=steps, **run)
    return cfg, Trainer(cfg)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def strip_timing(rs):
    return [{k: v for k, v in r.items() if k != "sps"} for r in rs]
