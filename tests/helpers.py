"""Small builders shared by the trainer-level tests."""
from __future__ import annotations

import json
from pathlib import Path

from plastic.config import build
from plastic.trainer import Trainer

SMALL = {"hidden": "32,32", "batch_size": 32, "buffer_size": 5000}


def make(agent, env, steps, intervention="none", tmp=None, overrides=None, **run):
    ov = {f"{agent}.{k}": v for k, v in SMALL.items()}
    ov.update({"run.progress": "off", "run.tensorboard": "false"})
    ov.update(overrides or {})
    cfg = build(agent, intervention, overrides=ov, env=env, steps=steps, **run)
    return cfg, Trainer(cfg)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def strip_timing(rs):
    return [{k: v for k, v in r.items() if k != "sps"} for r in rs]
