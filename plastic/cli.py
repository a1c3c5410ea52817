"""Command line of experiments/run.py (kept importable so tests can drive it in-process)."""
from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path

import yaml

import agents
from plastic import interventions as ivs
from plastic.config import ConfigError, build, from_dict, load_preset

EPILOG = """agents: {agents}
interventions: none, {ivs} (stack with '+', e.g. grama+swd)
environments: gymnasium ids (HalfCheetah-v5, Pendulum-v1), dmc:DOMAIN-TASK (dmc:cheetah-run), atari:GAME
  (atari:Breakout; DQN with --dqn.torso nature), probe:NAME,
  and JAX-native gymnax:NAME (gymnax:CartPole-v1, gymnax:Breakout-MinAtar), brax:NAME[:BACKEND] (brax:ant)
drivers (--run.driver): host steps gymnasium/dm_control/Atari envs from Python; jit runs whole chunks of training
  (env steps, replay, updates) as one program; auto (default) picks jit for gymnax:/brax:/probe: envs, else host

typed overrides of any config field: --NAMESPACE.FIELD VALUE, e.g.
  --sac.actor_lr 1e-4  --grama.tau 0.01  --swd.sampler bucketed  --run.log_every 1000
namespaces: run, metrics, the agent's name, each active intervention's name.
Outputs: RUN_DIR/config.yaml, metrics.jsonl (one row per log point per seed), tb/, checkpoints/.
SIGTERM/SIGUSR1 write a checkpoint and exit; --resume continues from the last one.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py", description="Train an agent with plasticity interventions.",
        epilog=EPILOG.format(agents=", ".join(sorted(agents.REGISTRY)), ivs=", ".join(sorted(ivs.REGISTRY))),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", help=f"one of: {', '.join(sorted(agents.REGISTRY))} (default sac)")
    p.add_argument("--intervention", help="NAME[+NAME...] or none (default none)")
    p.add_argument("--env", help="environment id (default HalfCheetah-v5; CartPole-v1 for dqn)")
    p.add_argument("--seeds", type=int, help="number of vmapped seeds (default 1)")
    p.add_argument("--seed", type=int, help="base seed (default 0)")
    p.add_argument("--steps", type=int, help="env steps per seed")
    p.add_argument("--run-dir", help="output directory (default runs/<agent>-<interventions>-<env>-<time>)")
    p.add_argument("--config", help="preset name under experiments/configs/ or a YAML path")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    return p


def parse_overrides(rest: list[str]) -> dict:
    out, i = {}, 0
    while i < len(rest):
        tok = rest[i]
        m = re.fullmatch(r"--([A-Za-z_][\w]*\.[A-Za-z_]\w*)(?:=(.*))?", tok)
        if not m:
            raise ConfigError(f"unrecognised argument {tok!r}; overrides look like --NAMESPACE.FIELD VALUE "
                              f"(see --help)")
        if m.group(2) is not None:
            out[m.group(1)] = m.group(2)
            i += 1
        else:
            if i + 1 >= len(rest):
                raise ConfigError(f"override {tok} needs a value")
            out[m.group(1)] = rest[i + 1]
            i += 2
    return out


def resolve(argv: list[str]):
    """Parse argv into (ExperimentConfig, run_dir, resume). Raises ConfigError before touching disk."""
    args, rest = parser().parse_known_args(argv)
    overrides = parse_overrides(rest)
    if args.resume:
        if not args.run_dir:
            raise ConfigError("--resume needs --run-dir pointing at an existing run")
        if overrides or any(v is not None for v in (args.agent, args.intervention, args.env, args.seeds,
                                                     args.seed, args.config)):
            raise ConfigError("--resume takes its config from RUN_DIR/config.yaml; only --steps may change")
        return saved_config(args.run_dir, args.steps), Path(args.run_dir), True
    cfg = new_config(args, overrides)
    if not cfg.run.run_dir:
        tag = "+".join(cfg.interventions) or "none"
        env = cfg.run.env.replace(":", "_").replace("/", "_")
        cfg.run.run_dir = str(Path("runs") / f"{cfg.agent}-{tag}-{env}-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir = Path(cfg.run.run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {run_dir} already exists; pass --resume to continue it or choose "
                          f"another --run-dir")
    return cfg, run_dir, False


def new_config(args, overrides: dict):
    """The resolved config of a fresh run from parsed flags and overrides (nothing touched on disk)."""
    preset = load_preset(args.config) if args.config else None
    cfg = build(args.agent, args.intervention, preset=preset, overrides=overrides, env=args.env,
                seeds=args.seeds, seed=args.seed, steps=args.steps, run_dir=args.run_dir)
    if getattr(cfg.agent_cfg, "buffer_size", 0) > cfg.run.steps:
        # a run never fills more slots than it has steps; the resolved value is saved in config.yaml,
        # so a resumed run keeps the same buffer even if --steps extends it
        cfg.agent_cfg.buffer_size = cfg.run.steps
    return cfg


def config_of(argv: list[str]):
    """The config a fresh `run.py ARGV` would run with (for sweeps: compare with a run already on disk)."""
    args, rest = parser().parse_known_args(argv)
    return new_config(args, parse_overrides(rest))


def saved_config(run_dir, steps: int | None = None):
    """The config saved in RUN_DIR/config.yaml (optionally with a new step budget)."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"cannot resume: {saved} does not exist")
    data = yaml.safe_load(saved.read_text())
    if steps is not None:
        data["run"]["steps"] = steps
    data["run"]["run_dir"] = str(run_dir)
    return from_dict(data)


def execute(argv: list[str]) -> dict:
    """Run `run.py ARGV`: the run's summary (`step`, `return`, `interrupted`, `run_dir`). Bad input raises
    ConfigError (one line) before anything is written; an unusable checkpoint raises CheckpointError."""
    cfg, run_dir, resume = resolve(argv)
    from plastic.trainer import make_trainer
    try:
        trainer = make_trainer(cfg)  # builds envs and networks: fails here, before any directory is written
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    print(f"{cfg.agent} + {'+'.join(cfg.interventions) or 'no intervention'} on {cfg.run.env}, "
          f"{cfg.run.seeds} seed(s){trainer.placement.describe()}, {cfg.run.steps} steps -> {run_dir}", flush=True)
    summary = trainer.run(run_dir, resume=resume)
    if not summary.get("interrupted"):
        ret = summary.get("return")
        print(f"done: step {summary.get('step')}, return {ret if ret is None else round(ret, 1)}; "
              f"results in {run_dir}/ (config.yaml, metrics.jsonl, tb/, checkpoints/)", flush=True)
    return {**summary, "run_dir": str(run_dir)}


def main(argv: list[str] | None = None) -> int:
    from plastic.checkpoint import CheckpointError
    try:
        execute(sys.argv[1:] if argv is None else argv)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
