"""Weights & Biases logging (`--run.wandb true`): an offline run's history read back from its .wandb files,
one W&B run across a resume, and the one-line errors."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import METRICS_OFF, assert_cli_error, rows
from plastic.logger import WANDB_ID_FILE, wandb_point

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--agent", "dqn", "--env", "probe:d_obs", "--seeds", "2", "--dqn.hidden", "16,16", "--dqn.batch_size", "16",
        "--dqn.learning_starts", "50", "--run.log_every", "100", "--run.checkpoint_every", "100",
        "--run.progress", "off", "--run.tensorboard", "false",
        *[a for k, v in METRICS_OFF.items() for a in (f"--{k}", str(v))]]


def read_wandb_file(path: Path) -> list:
    """The records of a .wandb file (W&B's transaction log: a 7-byte header ':W&B', magic, version, then
    leveldb-log blocks of 32 KiB whose records are 7-byte headers (crc32, length, type FULL/FIRST/MIDDLE/
    LAST) and chunks of serialized `wandb_internal_pb2.Record` protobufs). wandb 0.31 ships no reader."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's zero-filled trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def item_value(item):
    """A history item's value: JSON text (`value_json`), or one of the typed fields of newer writers."""
    if item.value_json:
        return json.loads(item.value_json)
    kind = item.WhichOneof("value")
    if kind in (None, "none"):
        return None
    return json.loads(item.json) if kind == "json" else getattr(item, kind)


def history(records) -> dict[int, dict]:
    """step -> {key: value} of the history records."""
    out = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            out[r.history.step.num] = {i.key or "/".join(i.nested_key): item_value(i) for i in r.history.item}
    return out


def run_record(records):
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def run_cli(argv: list[str], home: Path) -> subprocess.CompletedProcess:
    """experiments/run.py in a subprocess whose W&B files (settings, cache, artifacts) stay under `home`."""
    env = {**os.environ, "HOME": str(home), "WANDB_SILENT": "true", "WANDB_DIR": str(home / "wandb"),
           "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_CONFIG_DIR": str(home / "config"),
           "WANDB_DATA_DIR": str(home / "data"), "WANDB_ARTIFACT_DIR": str(home / "artifacts")}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *argv], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_offline_run_logs_its_history_and_a_resume_continues_it(tmp_path):
    pytest.importorskip("wandb")
    run_dir, home = tmp_path / "run", tmp_path / "home"
    wb = ["--run.wandb", "true", "--run.wandb_mode", "offline", "--run.wandb_group", "sweep-a"]
    run_cli([*TINY, "--steps", "200", "--run-dir", str(run_dir), *wb], home)
    # resume from the checkpoint at 100 (drop the one at 200): row 200 is written again to metrics.jsonl,
    # W&B already has step 200 and gets only the new step 300
    import shutil
    shutil.rmtree(run_dir / "checkpoints" / "200")
    run_cli(["--resume", "--run-dir", str(run_dir), "--steps", "300"], home)

    sessions = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2, sessions
    files = [next(s.glob("run-*.wandb")) for s in sessions]
    records = [read_wandb_file(f) for f in files]
    run_id = json.loads((run_dir / WANDB_ID_FILE).read_text())["id"]
    for recs in records:  # one W&B run: same id, name, project, group
        run = run_record(recs)
        assert (run.run_id, run.display_name, run.project, run.run_group) == (run_id, "run", "plastic", "sweep-a")
    config = {i.key: json.loads(i.value_json) for i in run_record(records[0]).config.update}
    assert config["agent"] == "dqn" and config["run"]["seeds"] == 2 and config["run"]["wandb"] is True

    first, second = history(records[0]), history(records[1])
    assert sorted(first) == [100, 200] and sorted(second) == [300]
    logged = {**first, **second}
    by_step: dict[int, list] = {}
    for r in rows(run_dir):
        by_step.setdefault(r["step"], []).append(r)
    assert sorted(by_step) == [100, 200, 300]
    for step, rs in by_step.items():
        point = logged[step]
        if step != 200:  # 200 in W&B is the first session's row (equal here: the jitted driver is exact)
            assert point["loss/q"] == pytest.approx(np.mean([r["loss/q"] for r in rs]), rel=1e-12)
        rets = [r["episode_return"] for r in rs if r["episode_return"] is not None]
        assert rets, "the probe env ends an episode every step"
        assert point["episode_return"] == pytest.approx(np.mean(rets), rel=1e-12)
        for r in rs:
            assert point[f"seed{r['seed']}/episode_return"] == pytest.approx(r["episode_return"], rel=1e-12)
        assert "step" not in point and "seed" not in point
    assert not (home / "wandb").exists() or not any((home / "wandb").iterdir())  # files went to RUN_DIR/wandb


def test_wandb_point_averages_seeds():
    rows_ = [{"step": 10, "seed": 0, "episode_return": 1.0, "loss/q": 2.0, "episodes": 1, "nonstationary/task": "a"},
             {"step": 10, "seed": 1, "episode_return": None, "loss/q": 4.0, "episodes": 0, "nonstationary/task": "a"},
             {"step": 10, "seed": 2, "episode_return": 3.0, "loss/q": 6.0, "episodes": 2, "nonstationary/task": "a",
              "episode_length": None}]
    assert wandb_point(rows_) == {"episode_return": 2.0, "loss/q": 4.0, "episodes": 1.0,
                                  "seed0/episode_return": 1.0, "seed2/episode_return": 3.0}


def test_missing_wandb_package_is_one_line_error(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert_cli_error([*TINY, "--run.wandb", "true"], "--run.wandb true needs the wandb package: pip install wandb",
                     tmp_path, capsys)
    assert not (tmp_path / "r").exists()


def test_bad_wandb_mode_is_one_line_error(tmp_path, capsys):
    assert_cli_error([*TINY, "--run.wandb_mode", "cloud"], "run.wandb_mode='cloud' is not valid; choose one of: online, offline, disabled",
                     tmp_path, capsys)
