"""Small builders shared by the trainer-level tests."""
from __future__ import annotations

import json
from pathlib import Path

from plastic.config import build
from plastic.drivers.host import HostOffPolicy

SMALL = {"hidden": "32,32", "batch_size": 32, "buffer_size": 5000}
# Every metric group off: tests that are not about the metrics skip compiling them (each group adds 1.5-2.5 s
# of XLA compile to a trainer's step program); the resume and metrics tests keep them on.
METRICS_OFF = {f"metrics.{g}_every": 0 for g in ("activity", "grad", "rank", "churn", "ntk")}
# Evaluation off likewise (tests/test_evaluation.py turns it on): a run evaluates at the end of its budget, so a
# run cut short and extended by --resume has one more evaluation row than the uninterrupted run
EVAL_OFF = {"run.eval_every": 0}


def make(agent, env, steps, intervention="none", tmp=None, overrides=None, metrics=False, **run):
    ov = {f"{agent}.{k}": v for k, v in SMALL.items()}
    ov.update({"run.progress": "off", "run.tensorboard": "false", **EVAL_OFF})
    if not metrics:
        ov.update(METRICS_OFF)
    ov.update(overrides or {})
    cfg = build(agent, intervention, overrides=ov, env=env, steps=steps, **run)
    return cfg, HostOffPolicy(cfg)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def strip_timing(rs):
    return [{k: v for k, v in r.items() if k != "sps"} for r in rs]


# ---- intervention tests: tiny jitted runs on 2 vmapped seeds ---------------------------------------
TINY = {"td3": {"hidden": "16,16", "batch_size": 16, "buffer_size": 1000, "learning_starts": 100},
        "sac": {"hidden": "16,16", "batch_size": 16, "buffer_size": 1000, "learning_starts": 100},
        "dqn": {"hidden": "16,16", "batch_size": 16, "buffer_size": 1000, "learning_starts": 100,
                "train_frequency": 2},
        "ppo": {"hidden": "16,16", "num_envs": 2, "num_steps": 25, "minibatches": 2}}
TINY_ENVS = {"td3": "probe:obs", "sac": "probe:obs", "dqn": "probe:d_obs", "ppo": "gymnax:CartPole-v1"}
NETS = {"td3": ("actor", "critic"), "sac": ("actor", "critic"), "dqn": ("q",), "ppo": ("actor", "critic")}


def tiny_trainer(agent, intervention, steps, extra=None, seeds=2, env=None, small=None):
    """A jitted-driver trainer of `agent` with `intervention` on a probe env (TINY sizes, metrics off,
    a log row and a checkpoint every 100 env steps); `extra` overrides anything."""
    from plastic.drivers import make_trainer
    ov = {f"{agent}.{k}": v for k, v in (TINY[agent] if small is None else small).items()}
    ov.update(METRICS_OFF)
    ov.update({"run.progress": "off", "run.tensorboard": "false", "run.log_every": 100,
               "run.checkpoint_every": 100, "run.driver": "jit", **EVAL_OFF})
    ov.update(extra or {})
    return make_trainer(build(agent, intervention, overrides=ov, env=env or TINY_ENVS[agent], steps=steps,
                              seeds=seeds))


def assert_resume_identical(make, tmp_path, total, split):
    """`make(steps)` builds a trainer; a run cut at `split` and resumed to `total` must end bit-identical to
    the uninterrupted run, with the same log rows. Returns the uninterrupted trainer."""
    import jax
    import numpy as np
    full = make(total)
    full.run(tmp_path / "full")
    make(split).run(tmp_path / "split")
    resumed = make(total)
    resumed.run(tmp_path / "split", resume=True)
    for a, b in zip(jax.tree.leaves(full.final_state), jax.tree.leaves(resumed.final_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert strip_timing(rows(tmp_path / "full")) == strip_timing(rows(tmp_path / "split"))
    return full


def assert_cli_error(argv, needle, tmp_path, capsys):
    """`experiments/run.py ARGV` exits with code 2 and a one-line `error:` message containing `needle`."""
    from plastic.cli import main
    code = main([*argv, "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and needle in err and "\n" not in err, err


def all_eqns(jaxpr):
    """Every equation of a jaxpr, those of its sub-jaxprs (scan bodies, cond branches, jitted calls) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from all_eqns(inner)
