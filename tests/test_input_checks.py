"""Input checks a new user meets: --resume repeating the original flags, --resume of a run killed before its
first checkpoint, declared ranges of every numeric config field (plastic/fields.py), unknown env families."""
import dataclasses
import shutil
import typing

import pytest
import yaml

import agents
from helpers import METRICS_OFF, assert_cli_error, rows, strip_timing
from plastic import fields
from plastic import interventions as ivs
from plastic.cli import main
from plastic.config import ConfigError, MetricsConfig, RunConfig, build, supported_agents
from plastic.envs import unknown_env
from plastic.nonstationary import EnvConfig

# a tiny jitted DQN run: a log row and a checkpoint every 100 env steps; the buffer (1000) is capped at the
# 200 steps of the first start, so a repeated --dqn.buffer_size must compare with the capped value
TINY = ["--agent", "dqn", "--env", "probe:d_obs", "--steps", "200", "--dqn.hidden", "16,16",
        "--dqn.batch_size", "16", "--dqn.buffer_size", "1000", "--dqn.learning_starts", "100",
        "--dqn.train_frequency", "2", "--dqn.lr", "2.5e-4", "--run.log_every", "100",
        "--run.checkpoint_every", "100", "--run.progress", "off", "--run.tensorboard", "false",
        *[a for k, v in METRICS_OFF.items() for a in (f"--{k}", str(v))]]


def listing(run_dir):
    """Every file under RUN_DIR with its size and modification time."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished TINY run (200 steps), shared: tests copy it before touching it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main([*TINY, "--run-dir", str(run_dir)]) == 0
    return run_dir


# ---- --resume repeating the original command ----------------------------------------------------------
def test_resume_repeating_the_original_flags_continues_the_run(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    again = [a.replace("2.5e-4", "0.00025") for a in TINY]  # the same value, spelled differently
    again += ["--agent.train_frequency", "2", "--intervention", "none", "--seeds", "1", "--seed", "0"]
    again[again.index("--run.progress") + 1] = "auto"  # how progress is shown may change
    assert main([*again, "--steps", "300", "--run-dir", str(run_dir), "--resume"]) == 0
    assert "results in" in capsys.readouterr().out
    assert [r["step"] for r in rows(run_dir)] == [100, 200, 300]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["dqn"]["buffer_size"] == 200


def test_resume_repeating_a_preset_and_an_alias(tmp_path, capsys):
    """--config and an intervention's alias on the original command and again on --resume."""
    preset = tmp_path / "p.yaml"
    preset.write_text("agent: dqn\nintervention: regrama\ngrama: {period: 7}\n")
    run_dir = tmp_path / "run"
    argv = [*TINY[2:], "--config", str(preset), "--regrama.tau", "0.1", "--run-dir", str(run_dir)]
    assert main(argv) == 0
    assert main([*argv, "--steps", "300", "--resume"]) == 0
    assert [r["step"] for r in rows(run_dir)] == [100, 200, 300]
    preset.write_text("agent: dqn\nintervention: grama\ngrama: {period: 8}\n")
    before = listing(run_dir)
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--config" in err and "grama.period 8 differs from the run's grama.period 7" in err, err
    assert listing(run_dir) == before


@pytest.mark.parametrize("flag, needle", [
    (["--dqn.lr", "1e-3"], "--dqn.lr 0.001 differs from the run's dqn.lr 0.00025"),
    (["--agent.lr", "1e-3"], "--agent.lr 0.001 differs from the run's dqn.lr 0.00025"),
    (["--seeds", "2"], "--seeds 2 differs from the run's run.seeds 1"),
    (["--seed", "3"], "--seed 3 differs from the run's run.seed 0"),
    (["--env", "probe:d_action"], "--env probe:d_action differs from the run's run.env probe:d_obs"),
    (["--agent", "sac"], "--agent sac differs from the run's agent dqn"),
    (["--intervention", "redo"], "--intervention redo differs from the run's intervention none"),
    (["--dqn.hidden", "32,32"], "--dqn.hidden 32,32 differs from the run's dqn.hidden 16,16"),
    (["--dqn.buffer_size", "100"], "--dqn.buffer_size 100 differs from the run's dqn.buffer_size 200"),
    (["--run.log_every", "50"], "--run.log_every 50 differs from the run's run.log_every 100"),
])
def test_resume_with_a_differing_flag_is_refused_and_writes_nothing(finished, flag, needle, tmp_path, capsys):
    run_dir = tmp_path / "r"  # where assert_cli_error points --run-dir
    shutil.copytree(finished, run_dir)
    before = listing(run_dir)
    assert_cli_error([*TINY, *flag, "--steps", "300", "--resume"], needle, tmp_path, capsys)
    assert listing(run_dir) == before


def test_resume_with_an_invalid_flag_is_the_usual_error(finished, tmp_path, capsys):
    shutil.copytree(finished, tmp_path / "r")
    assert_cli_error([*TINY, "--dqn.lr", "nan", "--resume"], "dqn.lr must be a finite number > 0, got nan",
                     tmp_path, capsys)
    assert_cli_error([*TINY, "--swd.T", "10", "--resume"], "'swd' is not active in this run", tmp_path, capsys)


# ---- --resume of a run killed before its first checkpoint --------------------------------------------
def test_resume_without_checkpoint_starts_from_scratch(finished, tmp_path, capsys):
    """What a kill before the first checkpoint leaves: config.yaml, a log row, an incomplete checkpoint."""
    run_dir = tmp_path / "killed"
    (run_dir / "checkpoints" / "100.orbax-checkpoint-tmp-1").mkdir(parents=True)
    shutil.copy(finished / "config.yaml", run_dir / "config.yaml")  # (holds the other run's run_dir)
    (run_dir / "metrics.jsonl").write_text((finished / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    (run_dir / "tb").mkdir()
    (run_dir / "tb" / "events.out.tfevents.1").write_text("partial")
    assert main(["--resume", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"no checkpoint in {run_dir}: starting the run from scratch" in out and "results in" in out
    assert strip_timing(rows(run_dir)) == strip_timing(rows(finished))
    assert not (run_dir / "tb").exists() and (run_dir / "checkpoints" / "200").is_dir()
    assert not (run_dir / "checkpoints" / "100.orbax-checkpoint-tmp-1").exists()
    # the repeated flags are checked in this case too
    assert main([*TINY, "--seeds", "2", "--run-dir", str(run_dir), "--resume"]) == 2
    assert "--seeds 2 differs" in capsys.readouterr().err


def test_resume_without_config_is_an_error(tmp_path, capsys):
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    assert_cli_error(["--resume"], "cannot resume: ", tmp_path, capsys)
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["checkpoints"]


# ---- declared ranges -----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--sac.actor_lr", "-1"], "sac.actor_lr must be > 0, got -1.0"),
    (["--sac.actor_lr", "0"], "sac.actor_lr must be > 0, got 0.0"),
    (["--sac.actor_lr", "nan"], "sac.actor_lr must be a finite number > 0, got nan"),
    (["--sac.critic_lr", "inf"], "sac.critic_lr must be a finite number > 0, got inf"),
    (["--agent.alpha_lr", "-inf"], "agent.alpha_lr must be a finite number > 0, got -inf"),
    (["--sac.gamma", "1.5"], "sac.gamma must be in [0, 1], got 1.5"),
    (["--sac.tau", "0"], "sac.tau must be in (0, 1], got 0.0"),
    (["--sac.hidden", "16,0"], "sac.hidden entries must be > 0, got 16,0"),
    (["--sac.batch_size", "inf"], "sac.batch_size: expected int, got 'inf'"),
    (["--sac.learning_starts", "-5"], "sac.learning_starts must be >= 0, got -5"),
    (["--intervention", "grama", "--grama.tau", "nan"], "grama.tau must be a finite number >= 0, got nan"),
    (["--intervention", "regrama", "--regrama.tau", "nan"], "regrama.tau must be a finite number >= 0, got nan"),
    (["--intervention", "grama", "--grama.period", "0"], "grama.period must be a positive number of updates, got 0"),
    (["--intervention", "shrink_perturb", "--shrink_perturb.shrink", "-0.5"],
     "shrink_perturb.shrink must be in [0, 1] (-1: the mode's default), got -0.5"),
    (["--intervention", "least", "--least.t_start", "-2"],
     "least.t_start must be >= 0 (-1: least.t_start_frac x run.steps), got -2"),
    (["--intervention", "swd", "--swd.w_min", "nan"], "swd.w_min must be a finite number in [0, 1], got nan"),
    (["--agent", "ppo", "--intervention", "kl_penalty", "--kl_penalty.adapt_factor", "0.5"],
     "kl_penalty.adapt_factor must be > 1, got 0.5"),
    (["--agent", "ppo", "--ppo.clip_obs", "nan"], "ppo.clip_obs must be a number (inf allowed) > 0, got nan"),
    (["--metrics.dormant_taus", "0,nan"], "metrics.dormant_taus entries must be a finite number >= 0, got 0.0,nan"),
    (["--metrics.srank_delta", "0"], "metrics.srank_delta must be in (0, 1], got 0.0"),
    (["--run.checkpoint_every", "-1"], "run.checkpoint_every must be >= 0 (0: only at the end), got -1"),
    (["--seed", "-1"], "run.seed must be >= 0, got -1"),
    (["--env.scale_high", "inf"], "env.scale_high must be a finite number > 0, got inf"),
    (["--env.period", "0"], "env.period must be a positive number of env steps, got 0"),
    (["--sac.critics", "1", "--metrics.ntk_branch", "critic2"],
     "metrics.ntk_branch=critic2 reads a second critic; sac.critics is 1 (use metrics.ntk_branch=critic1)"),
])
def test_out_of_range_values_are_one_line_errors(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("agent, intervention, overrides", [
    ("td3", "shrink_perturb", {"shrink_perturb.shrink": -1, "shrink_perturb.perturb": -1, "shrink_perturb.period": 0}),
    ("td3", "least", {"least.t_start": -1, "least.noise_early_step": -1}),
    ("dqn", "swd", {"swd.T": -1000}),
    ("dqn", "swd", {"swd.T": 0}),
    ("dqn", "reset", {"reset.max_resets": 0}),
    ("ppo", "none", {"ppo.clip_obs": "inf", "ppo.clip_reward": "inf", "ppo.max_grad_norm": 0}),
    ("sac", "grama", {"grama.tau": 0, "grama.max_reset_fraction": 0, "sac.alpha": 0, "sac.learning_starts": 0}),
])
def test_sentinels_and_boundaries_are_accepted(agent, intervention, overrides):
    build(agent, intervention, overrides=overrides)


def _sections():
    """(agent, intervention, namespace, Config class) for the run, metrics and env sections, every agent and
    every intervention (on the first agent it supports): generated from the registries."""
    out = [("sac", "none", ns, cls) for ns, cls in (("run", RunConfig), ("metrics", MetricsConfig),
                                                   ("env", EnvConfig))]
    out += [(name, "none", name, cls.Config) for name, cls in agents.REGISTRY.items()]
    out += [(supported_agents(cls)[0], name, name, cls.Config) for name, cls in ivs.REGISTRY.items()]
    return out


def _float_fields():
    """(agent, intervention, namespace, field) of every field that holds floats (float or tuple[float, ...])."""
    out = []
    for agent, intervention, ns, cls in _sections():
        hints = typing.get_type_hints(cls)
        out += [pytest.param(agent, intervention, ns, f, id=f"{ns}.{f.name}") for f in dataclasses.fields(cls)
                if hints[f.name] is float or typing.get_args(hints[f.name])[:1] == (float,)]
    return out


def test_the_generated_cases_include_every_config():
    names = {p.values[2] for p in _float_fields()}
    assert {"metrics", "env", "sac", "td3", "dqn", "ppo", "grama", "swd", "cbp", "kl_penalty"} <= names
    assert len(names) >= len(agents.REGISTRY) + len(ivs.REGISTRY) - 2  # (injection and reset have no floats)


@pytest.mark.parametrize("agent, intervention, ns, f", _float_fields())
def test_every_float_field_rejects_nan_and_inf(agent, intervention, ns, f):
    for bad in ("nan", "inf", "-inf"):
        if bad != "nan" and fields.range_of(f).allow_inf:
            continue
        with pytest.raises(ConfigError) as e:
            build(agent, intervention, overrides={f"{ns}.{f.name}": bad})
        msg = str(e.value)
        assert msg.startswith(f"{ns}.{f.name} ") and "must be" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("agent, intervention, ns, cls", _sections())
def test_defaults_are_in_their_declared_ranges(agent, intervention, ns, cls):
    """Every default (sentinels included) passes its own field's check; a range that rejects its default
    is a wrongly declared one."""
    cfg = cls()
    for f in dataclasses.fields(cfg):
        assert fields.problem(f"{ns}.{f.name}", getattr(cfg, f.name), fields.range_of(f)) is None


def test_ranges_read_as_typed():
    assert fields.Range(lo=0, hi=1, hi_open=True).requirement() == "in [0, 1)"
    assert fields.Range(lo=1, lo_open=True, note="x").requirement() == "> 1 (x)"
    assert fields.Range(hi=0.5).requirement() == "<= 0.5"
    with pytest.raises(TypeError):
        fields.num(1.0, gt=0, ge=0)


# ---- env ids ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, env_id", [
    (["--env", "nosuchfamily:Thing"], "nosuchfamily:Thing"),
    (["--env", "no.such.module:Thing-v0"], "no.such.module:Thing-v0"),
    (["--env", ":Thing"], ":Thing"),
    (["--agent", "ppo", "--env", "probe:d_obs", "--env.nonstationary", "tasks", "--env.tasks",
      "probe:d_obs,nosuchfamily:Thing"], "nosuchfamily:Thing"),
])
def test_unknown_env_family_is_one_line_error(argv, env_id, tmp_path, capsys):
    assert_cli_error(argv, f"unknown environment {env_id!r}", tmp_path, capsys)
    assert not (tmp_path / "r").exists()


def test_unknown_env_family_names_the_valid_families():
    with pytest.raises(ConfigError) as e:  # in config validation: no env is built
        build("sac", env="nosuchfamily:Thing")
    msg = str(e.value)
    for family in ("gymnasium id", "dmc:", "atari:", "gymnax:", "brax:", "playground:", "probe:"):
        assert family in msg, msg
    assert msg == str(unknown_env("nosuchfamily:Thing", "no env family nosuchfamily:"))
