"""Command line of experiments/run.py (kept importable so tests can drive it in-process)."""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from datetime import datetime
from pathlib import Path

import yaml

import agents
from plastic import interventions as ivs
from plastic import suites
from plastic.config import PROGRESS, ConfigError, build, canonical_sections, from_dict, load_preset, namespaces

EPILOG = """agents: {agents}
interventions: none, {ivs} (stack with '+', e.g. grama+swd)
environments: gymnasium ids (HalfCheetah-v5, Pendulum-v1), dmc:DOMAIN-TASK (dmc:cheetah-run), atari:GAME
  (atari:Breakout; DQN with --dqn.torso nature), probe:NAME,
  and JAX-native gymnax:NAME (gymnax:CartPole-v1, gymnax:Breakout-MinAtar), brax:NAME[:BACKEND] (brax:ant),
  playground:NAME[:jax|warp] (MuJoCo Playground: playground:CheetahRun, playground:WalkerWalk)
continual suites (--env continual:NAME; phases of --env.period steps, run.steps = phases x period unless set;
  plastic/suites.py, docs/environments.md):
{suites}
non-stationarity of any env: --env.nonstationary permute_obs|flip_reward|dynamics|tasks (plastic/nonstationary.py)
drivers (--run.driver): host steps gymnasium/dm_control/Atari envs from Python; jit runs whole chunks of training
  (env steps, replay, updates) as one program; auto (default) picks jit for gymnax:/brax:/playground:/probe:
  envs, else host

typed overrides of any config field: --NAMESPACE.FIELD VALUE, e.g.
  --sac.actor_lr 1e-4  --grama.tau 0.01  --swd.sampler bucketed  --run.log_every 1000
namespaces: run, metrics, env, the agent's name, each active intervention's name.
Outputs: RUN_DIR/config.yaml, metrics.jsonl (one row per log point per seed), tb/, checkpoints/.
SIGTERM/SIGUSR1 write a checkpoint and exit; --resume continues from the last one (flags of the original
command may be repeated, with the same values; only --steps may change). A run killed before its first
checkpoint starts over.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py", description="Train an agent with plasticity interventions.",
        epilog=EPILOG.format(agents=", ".join(sorted(agents.REGISTRY)), ivs=", ".join(sorted(ivs.REGISTRY)),
                            suites=suites.listing()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", help=f"one of: {', '.join(sorted(agents.REGISTRY))} (default sac)")
    p.add_argument("--intervention", help="NAME[+NAME...] or none (default none)")
    p.add_argument("--env", help="environment id or continual:SUITE (default HalfCheetah-v5; CartPole-v1 for dqn; "
                                 "gymnax:CartPole-v1 for ppo)")
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
        cfg = saved_config(args.run_dir, overrides.get("run.steps", args.steps))
        check_resume_flags(args, overrides, cfg)
        if "run.progress" in overrides:  # how the progress is shown is not part of the run
            if overrides["run.progress"] not in PROGRESS:
                raise ConfigError(f"run.progress={overrides['run.progress']!r}; valid: {', '.join(PROGRESS)}")
            cfg.run.progress = overrides["run.progress"]
        return cfg, Path(args.run_dir), True
    cfg = new_config(args, overrides)
    if not cfg.run.run_dir:
        tag = "+".join(cfg.interventions) or "none"
        cfg.run.run_dir = str(Path("runs") / f"{cfg.agent}-{tag}-{suites.env_tag(cfg)}-{datetime.now():%Y%m%d-%H%M%S}")
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
    return cap_buffer(cfg)


def cap_buffer(cfg):
    """A run never fills more replay slots than it has steps: the buffer is capped at run.steps. The resolved
    value is saved in config.yaml, so a resumed run keeps the same buffer even if --steps extends it."""
    if getattr(cfg.agent_cfg, "buffer_size", 0) > cfg.run.steps:
        cfg.agent_cfg.buffer_size = cfg.run.steps
    return cfg


def config_of(argv: list[str]):
    """The config a fresh `run.py ARGV` would run with (for sweeps: compare with a run already on disk)."""
    args, rest = parser().parse_known_args(argv)
    return new_config(args, parse_overrides(rest))


def saved_data(run_dir) -> dict:
    """RUN_DIR/config.yaml as saved (a dict)."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"cannot resume: {saved} does not exist")
    return yaml.safe_load(saved.read_text())


def saved_config(run_dir, steps: int | None = None):
    """The config saved in RUN_DIR/config.yaml (optionally with a new step budget)."""
    data = saved_data(run_dir)
    if steps is not None:
        data["run"]["steps"] = steps
    data["run"]["run_dir"] = str(run_dir)
    return from_dict(data)


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def check_resume_flags(args, overrides: dict, stored) -> None:
    """On --resume the flags of the original command may be repeated (as a Slurm script or a shell history
    does): each must resolve to the value `stored` (the run's saved config) has; the first that does not is
    a one-line error naming the field and both values. --steps (or --run.steps) may change, and so may
    --run.progress (how the run is shown).

    The flags are resolved as a fresh start resolves them, on top of the saved config instead of the
    defaults (with the saved step budget, which caps the buffer size and resolves step-relative defaults),
    and the fields they set are compared, so `1e-4` equals `0.0001` and an alias names its intervention."""
    flags = {k: v for k, v in overrides.items() if k not in ("run.steps", "run.progress")}
    main = {"--env": args.env, "--seeds": args.seeds, "--seed": args.seed}
    if not flags and args.agent is None and args.intervention is None and args.config is None and all(
            v is None for v in main.values()):
        return
    run_dir = Path(stored.run.run_dir)
    data = saved_data(run_dir)

    def refuse(flag, given, field, kept):
        raise ConfigError(f"cannot resume {run_dir}: {flag} {_show(given)} differs from the run's {field} "
                          f"{_show(kept)} ({run_dir / 'config.yaml'}); only --steps may change on --resume")

    preset = load_preset(args.config) if args.config else {}
    source = f"--config {args.config}"
    agent = args.agent if args.agent is not None else preset.get("agent")
    if agent is not None and agent != stored.agent:
        refuse("--agent" if args.agent is not None else f"{source} agent", agent, "agent", stored.agent)
    spec = args.intervention if args.intervention is not None else preset.get("intervention")
    if spec is not None:
        try:
            names = ivs.parse_names(spec)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if names != tuple(stored.interventions):
            refuse("--intervention" if args.intervention is not None else f"{source} intervention", spec,
                   "intervention", "+".join(stored.interventions) or "none")
    base = {ns: dict(v) for ns, v in data.items() if isinstance(v, dict)}
    for ns, values in preset.items():
        if isinstance(values, dict):
            base.setdefault(ns, {}).update(values)
    base["run"].update(steps=data["run"]["steps"], run_dir=str(run_dir))  # as the run was first resolved
    given = cap_buffer(build(data["agent"], data.get("intervention", "none"), preset=base, overrides=flags,
                             env=args.env, seeds=args.seeds, seed=args.seed))
    spaces, canonical = namespaces(given), {id(obj): ns for ns, obj in canonical_sections(given)}
    set_by = {}  # (namespace, field) -> the flag that set its value (the last one, in build's precedence)
    for ns, values in preset.items():
        if isinstance(values, dict) and ns in spaces:  # (presets may carry sections this run does not use)
            set_by.update({(canonical[id(spaces[ns])], f): f"{source} {ns}.{f}" for f in values
                           if (ns, f) not in (("run", "steps"), ("run", "run_dir"))})
    set_by.update({("run", flag[2:]): flag for flag, value in main.items() if value is not None})
    for key in flags:
        ns, _, f = key.partition(".")
        set_by[canonical[id(spaces[ns])], f] = f"--{key}"
    ours, theirs = dict(canonical_sections(given)), dict(canonical_sections(stored))
    for (ns, f), flag in set_by.items():
        value, kept = getattr(ours[ns], f), getattr(theirs[ns], f)
        if value != kept:
            refuse(flag, value, f"{ns}.{f}", kept)


def execute(argv: list[str]) -> dict:
    """Run `run.py ARGV`: the run's summary (`step`, `return`, `interrupted`, `run_dir`). Bad input raises
    ConfigError (one line) before anything is written; an unusable checkpoint raises CheckpointError.
    --resume of a run killed before its first checkpoint starts it over in its directory, with its config."""
    cfg, run_dir, resume = resolve(argv)
    from plastic.sharding import split_cpu
    split_cpu(cfg.run.devices)  # --run.devices k on a CPU: k host devices, before JAX starts its backends
    from plastic.checkpoint import latest_checkpoint
    restart = resume and latest_checkpoint(run_dir) is None
    from plastic.drivers import make_trainer
    try:
        trainer = make_trainer(cfg)  # builds envs and networks: fails here, before any directory is written
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if restart:
        print(f"no checkpoint in {run_dir}: starting the run from scratch", flush=True)
        clear_outputs(run_dir)
        resume = False
    elif not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    print(f"{cfg.agent} + {'+'.join(cfg.interventions) or 'no intervention'} on {cfg.run.env}, "
          f"{cfg.run.seeds} seed(s){trainer.placement.describe()}, {cfg.run.steps} steps -> {run_dir}", flush=True)
    summary = trainer.run(run_dir, resume=resume)
    if not summary.get("interrupted"):
        ret, ev = summary.get("return"), summary.get("eval_return")
        shown = f"training return {ret if ret is None else round(ret, 1)}"
        if ev is not None:
            shown = f"evaluation return {round(ev, 1)}, {shown}"
        print(f"done: step {summary.get('step')}, {shown}; "
              f"results in {run_dir}/ (config.yaml, metrics.jsonl, tb/, checkpoints/)", flush=True)
    return {**summary, "run_dir": str(run_dir)}


OUTPUTS = ("metrics.jsonl", "tb", "checkpoints", "wandb")  # what a session writes besides config.yaml


def clear_outputs(run_dir) -> None:
    """Remove what an earlier session wrote to RUN_DIR besides its config (log rows, TensorBoard events,
    incomplete checkpoints, W&B files), so that a run started over writes each row once. wandb_run.json
    stays: the run keeps its W&B run id (W&B drops the points it already has, as on a resume)."""
    for name in OUTPUTS:
        p = Path(run_dir) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def main(argv: list[str] | None = None) -> int:
    from plastic.checkpoint import CheckpointError
    try:
        execute(sys.argv[1:] if argv is None else argv)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
