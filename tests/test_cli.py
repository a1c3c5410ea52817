"""Command line: help, one-line errors before any compilation, no half-written run dirs, a smoke run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import METRICS_OFF
from plastic import interventions as ivs
from plastic.cli import main
from plastic.config import ConfigError, build
from plastic.interventions.base import Intervention

ROOT = Path(__file__).resolve().parent.parent
# the smoke runs are not about the metrics: every group off (each adds seconds of XLA compile to a step program)
METRICS_OFF_ARGV = [a for k, v in METRICS_OFF.items() for a in (f"--{k}", str(v))]


def test_help_lists_agents_and_interventions():
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for name in ("td3", "sac", "grama", "swd", "--intervention", "--resume", "--run-dir"):
        assert name in out


@pytest.mark.parametrize("argv, needle", [
    (["--agent", "ppo2"], "unknown agent 'ppo2'; valid: dqn, ppo, sac, td3"),
    (["--intervention", "grama+foo"], "unknown intervention 'foo'; valid: none, cbp, cchain, grama, gtr, hare_tortoise, injection, kl_penalty, l2init, least, nap, ne, parseval, redo, "
                                      "reset, shrink_perturb, swd, trac, weight_decay"),
    (["--sac.nope", "1"], "unknown field sac.nope; valid fields of sac:"),
    (["--sac.batch_size", "abc"], "sac.batch_size: expected int, got 'abc'"),
    (["--intervention", "grama", "--grama.tau", "-1"], "grama.tau must be >= 0"),
    (["--intervention", "swd", "--swd.sampler", "fast"], "swd.sampler='fast' is not valid; choose one of: exact, bucketed"),
    (["--swd.T", "10"], "'swd' is not active in this run"),
    (["--env", "NoSuchEnv-v0"], "unknown environment 'NoSuchEnv-v0'"),
    (["--env", "dmc:cheetah-fly"], "unknown dm_control task"),
    (["--env", "brax:nope"], "unknown brax env 'brax:nope'; valid: brax:ant, "),
    (["--env", "playground:Nope"], "unknown playground env 'playground:Nope'; valid: playground:AcrobotSwingup, "),
    (["--env", "gymnax:Nope-v0"], "unknown gymnax env 'gymnax:Nope-v0'; valid: gymnax:CartPole-v1, "),
    (["--seeds", "0"], "run.seeds must be > 0"),
    (["--config", "nope"], "unknown config preset 'nope'"),
    (["--bogus"], "unrecognised argument '--bogus'"),
])
def test_bad_input_is_one_line_error_and_writes_nothing(argv, needle, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(argv + ["--run-dir", str(run_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and needle in err and "\n" not in err
    assert not run_dir.exists()


def test_intervention_not_applicable_to_agent(monkeypatch):
    class PPOOnly(Intervention):
        name, requires = "ppo_only", frozenset({"policy_objective"})

        class Config:
            pass

    monkeypatch.setitem(ivs.REGISTRY, "ppo_only", PPOOnly)
    with pytest.raises(ConfigError, match="'ppo_only' does not apply to agent 'sac'; it supports: ppo"):
        build("sac", "ppo_only")


def test_existing_run_dir_needs_resume(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("precious")
    assert main(["--run-dir", str(tmp_path / "run")]) == 2
    assert "already exists; pass --resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "keep.txt").read_text() == "precious"


def test_resume_without_run_is_error(tmp_path, capsys):
    assert main(["--resume", "--run-dir", str(tmp_path / "none")]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_smoke_run_and_resume(tmp_path, capsys):
    run_dir = tmp_path / "smoke"
    argv = ["--agent", "td3", "--intervention", "grama+swd", "--env", "Pendulum-v1", "--steps", "300",
            "--run-dir", str(run_dir), "--td3.learning_starts", "100", "--td3.hidden", "16,16",
            "--td3.buffer_size", "1000", "--run.log_every=100", "--grama.period", "50", "--run.progress", "off",
            *METRICS_OFF_ARGV]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert str(run_dir) in out and "results in" in out
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["agent"] == "td3" and cfg["intervention"] == "grama+swd" and cfg["grama"]["period"] == 50
    assert cfg["td3"]["hidden"] == [16, 16]
    assert cfg["td3"]["buffer_size"] == 300  # capped at run.steps
    assert (run_dir / "checkpoints").is_dir() and any((run_dir / "tb").iterdir())
    assert main(["--resume", "--run-dir", str(run_dir), "--steps", "400"]) == 0
    steps = [l for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 4


def test_ppo_nonstationary_smoke_run_and_resume(tmp_path, capsys):
    """PPO (jitted driver, the default for ppo) with reward-sign flips every 200 steps, from the CLI."""
    run_dir = tmp_path / "ppo"
    argv = ["--agent", "ppo", "--intervention", "grama", "--steps", "400", "--run-dir", str(run_dir),
            "--ppo.num_envs", "2", "--ppo.num_steps", "50", "--ppo.hidden", "16,16", "--run.log_every", "100",
            "--env.nonstationary", "flip_reward", "--env.period", "200", "--run.progress", "off", *METRICS_OFF_ARGV]
    assert main(argv) == 0
    assert "gymnax:CartPole-v1" in capsys.readouterr().out
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["env"]["nonstationary"] == "flip_reward" and cfg["grama"]["period"] == 100  # PPO default
    assert main(["--resume", "--run-dir", str(run_dir), "--steps", "600"]) == 0
    rs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rs] == [100, 200, 300, 400, 500, 600]
    assert [r["nonstationary/reward_sign"] for r in rs] == [1, 1, -1, -1, 1, 1]


def test_bad_nonstationary_values_are_one_line_errors(capsys):
    assert main(["--agent", "td3", "--env", "Pendulum-v1", "--env.nonstationary", "dynamics"]) == 2
    err = capsys.readouterr().err.strip()
    assert "friction is not available for Pendulum-v1" in err and "gravity" in err and "\n" not in err
    assert main(["--env.nonstationary", "wobble"]) == 2
    assert "permute_obs" in capsys.readouterr().err


def test_preset_and_override_precedence(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("agent: td3\nintervention: grama\nrun: {steps: 1234}\ntd3: {actor_lr: 0.001}\n"
                      "grama: {tau: 0.05}\nsac: {actor_lr: 0.5}\n")
    from plastic.config import load_preset
    cfg = build(preset=load_preset(str(preset)), overrides={"grama.tau": "0.1"})
    assert cfg.agent == "td3" and cfg.run.steps == 1234 and cfg.agent_cfg.actor_lr == 0.001
    assert cfg.interventions["grama"].tau == 0.1


def test_shipped_presets_resolve():
    from plastic.config import PRESET_DIR, load_preset
    presets = sorted(PRESET_DIR.glob("*.yaml"))
    assert presets
    for p in presets:
        build(preset=load_preset(p.stem))
