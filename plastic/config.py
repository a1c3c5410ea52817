"""Typed experiment configs: run, metrics, one agent, any stack of interventions.

Sources, lowest precedence first: dataclass defaults, a preset (`--config NAME|PATH`, YAML under
experiments/configs/), the main flags (`--agent --intervention --env --seeds --steps --run-dir`), then
typed overrides `--NAMESPACE.FIELD VALUE` (or `=VALUE`) where NAMESPACE is `run`, `metrics`, `env`
(non-stationarity, plastic/nonstationary.py), the agent name (or `agent`) or an intervention name. Every error is a `ConfigError` with a one-line message.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import agents
from plastic import interventions as iv_registry
from plastic import nonstationary
from plastic.nonstationary import EnvConfig
from plastic.networks import INITIALIZERS, PROBE_POINTS, ACTIVATIONS

PRESET_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"


DRIVERS = ("auto", "host", "jit")
WANDB_MODES = ("online", "offline", "disabled")


class ConfigError(ValueError):
    pass


@dataclass
class RunConfig:
    env: str = ""                      # "": the agent's default (HalfCheetah-v5; CartPole-v1 for dqn;
                                       # gymnax:CartPole-v1 for ppo)
    driver: str = "auto"               # auto | host | jit  (auto: jit for gymnax:/brax:/probe: envs, else host)
    seeds: int = 1                     # independent seeds, vmapped in one process
    seed: int = 0                      # base seed; vmapped seed i behaves as a run with seed + i
    steps: int = 30_000                # env steps per seed (presets set paper budgets)
    run_dir: str = ""                  # default: runs/<agent>-<interventions>-<env>-s<seed>
    log_every: int = 5_000             # env steps between log rows
    checkpoint_every: int = 50_000     # checkpoint at the first log point at or after each multiple (0: only at the end)
    progress: str = "auto"             # auto | on | off
    tensorboard: bool = True
    # Act with the parameters of one update earlier, so the next update runs while the host steps the
    # envs (Cleanba-style pipelining). Off: CleanRL order (act with the parameters after the last update).
    pipelined_acting: bool = False
    # Local devices the seed axis is split across (jax.sharding; plastic/sharding.py). 0: all of them when
    # their number divides `seeds`, else the largest count that does; 1: no sharding; k: the first k (k must
    # divide `seeds` and be at most the node's device count).
    devices: int = 0
    # Weights & Biases logging alongside metrics.jsonl and TensorBoard (needs the wandb package). Each log
    # point is one W&B step: the seed mean of every numeric value plus seed{i}/episode_return. The W&B run id
    # is kept in RUN_DIR/wandb_run.json, so --resume continues the same W&B run; files go to RUN_DIR/wandb/.
    wandb: bool = False
    wandb_project: str = "plastic"
    wandb_entity: str = ""             # "": the default entity of the logged-in user
    wandb_group: str = ""              # groups runs in the W&B UI (sweeps set the sweep name)
    wandb_mode: str = "offline"        # online | offline (no network; `wandb sync RUN_DIR/wandb/offline-run-*`
                                       # uploads later) | disabled


@dataclass
class MetricsConfig:
    """What the in-training metrics collector (plastic/monitor.py) measures, on which networks, how often.

    Periods count the gradient updates of each network (its own counter); 0 turns a group off. Every
    group is also measured at a network's first update. Definitions: ../shared/specs/metrics.md."""
    networks: tuple[str, ...] = ("all",)  # network names (e.g. critic), or all
    activity_every: int = 1_000        # dormant ratios, FAU, linearised ratio, feature norm, dormant overlap
    grad_every: int = 1_000            # gradient sparsity/L1/L2, gradient- and update-to-parameter ratios,
                                       # parameter RMS and distance from init, GraMa persistence
    rank_every: int = 10_000           # srank, approximate, effective, feature and matrix rank of features
    churn_every: int = 10_000          # policy churn over one update round, on the metrics batch
    ntk_every: int = 50_000            # NTK Gram rank of the critic (per-example gradients)
    batch: str = "fresh_replay"        # fresh_replay | fixed_probe (indices drawn once, at the first update)
    batch_size: int = 256              # replay batch (off-policy) or rollout subset (PPO) the metrics use
    dormant_taus: tuple[float, ...] = (0.0, 0.025, 0.1)
    ratio_aggregation: str = "pooled"  # pooled | mean_of_layers
    grama_target: str = "pre_activation"  # pre_activation | post_activation | weight_grad
    linearised_frac: float = 0.9       # a unit is linearised if its pre-activation is > 0 on this fraction
    srank_delta: float = 0.01
    approx_rank_p: float = 0.99
    feature_rank_eps: float = 0.01
    grad_zero_threshold: float = 1e-8  # |g| below this counts as a zero gradient entry (grad_sparsity)
    ntk_batch: int = 64                # state-action pairs for the NTK Gram matrix (at most 64)
    ntk_tol: float = 1e-6              # absolute tolerance on the Gram matrix's singular values
    ntk_branch: str = "critic1"        # twin critics: critic1 | critic2 | min


@dataclass
class ExperimentConfig:
    agent: str
    agent_cfg: typing.Any
    interventions: dict                # name -> config dataclass, in stacking order
    run: RunConfig = field(default_factory=RunConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    env: EnvConfig = field(default_factory=EnvConfig)   # non-stationarity (`--env.nonstationary ...`)

    def to_dict(self) -> dict:
        return {"agent": self.agent, "intervention": "+".join(self.interventions) or "none",
                "run": dataclasses.asdict(self.run), "metrics": dataclasses.asdict(self.metrics),
                "env": dataclasses.asdict(self.env),
                self.agent: dataclasses.asdict(self.agent_cfg),
                **{n: dataclasses.asdict(c) for n, c in self.interventions.items()}}


def _coerce(value, tp, where: str):
    origin = typing.get_origin(tp)
    try:
        if origin is tuple:
            (elem, *_rest) = typing.get_args(tp)
            if isinstance(value, str):
                value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            return tuple(_coerce(v, elem, where) for v in value)
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if tp is int:
            if isinstance(value, str):
                f = float(value)
                if f != int(f):
                    raise ValueError
                return int(f)
            if isinstance(value, float) and value != int(value):
                raise ValueError
            return int(value)
        if tp is float:
            return float(value)
        return str(value).strip() if isinstance(value, str) else value
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{where}: expected {name}, got {value!r}") from None


def _apply(obj, ns: str, updates: dict):
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for k, v in updates.items():
        if k not in names:
            raise ConfigError(f"unknown field {ns}.{k}; valid fields of {ns}: {', '.join(names)}")
        setattr(obj, k, _coerce(v, hints[k], f"{ns}.{k}"))


def load_preset(name: str) -> dict:
    path = Path(name)
    if not path.suffix:
        path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown config preset {name!r}; valid: {', '.join(known)} (or a path to a .yaml file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    return data


def build(agent: str | None = None, intervention: str | None = None, preset: dict | None = None,
          overrides: dict | None = None, **run_flags) -> ExperimentConfig:
    """Resolve a full config. `overrides` maps 'ns.field' -> value; run_flags are RunConfig fields."""
    preset = dict(preset or {})
    agent = agent or preset.pop("agent", None) or "sac"
    preset.pop("agent", None)
    spec = intervention if intervention is not None else preset.pop("intervention", "none")
    preset.pop("intervention", None)
    try:
        agent_cls = agents.get(agent)
        names = iv_registry.parse_names(spec)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg = ExperimentConfig(agent=agent, agent_cfg=agent_cls.Config(),
                           interventions={n: iv_registry.REGISTRY[n].Config() for n in names})
    for n, icfg in cfg.interventions.items():  # per-agent defaults of an intervention (e.g. ReGraMa on PPO)
        for k, v in iv_registry.REGISTRY[n].agent_defaults.get(agent, {}).items():
            setattr(icfg, k, v)
    sections = {"run": cfg.run, "metrics": cfg.metrics, "env": cfg.env, agent: cfg.agent_cfg, "agent": cfg.agent_cfg,
                **cfg.interventions}
    for alias, target in iv_registry.ALIASES.items():
        if target in cfg.interventions:
            sections[alias] = cfg.interventions[target]

    def section(ns):
        if ns not in sections:
            inactive = [n for n in (*agents.REGISTRY, *iv_registry.REGISTRY) if n not in sections]
            hint = f" ({ns!r} is not active in this run)" if ns in inactive else ""
            raise ConfigError(f"unknown config namespace {ns!r}{hint}; valid: {', '.join(sections)}")
        return sections[ns]

    for ns, values in preset.items():
        if not isinstance(values, dict):
            raise ConfigError(f"preset key {ns!r} must map to a dict of fields")
        if ns in agents.REGISTRY and ns != agent or ns in iv_registry.REGISTRY and ns not in sections:
            continue  # presets may carry settings for agents/interventions not used in this run
        _apply(section(ns), ns, values)
    _apply(cfg.run, "run", {k: v for k, v in run_flags.items() if v is not None})
    for key, value in (overrides or {}).items():
        ns, _, fld = key.partition(".")
        if not fld:
            raise ConfigError(f"override {key!r} must look like NAMESPACE.FIELD")
        _apply(section(ns), ns, {fld: value})
    tasks = cfg.env.tasks if cfg.env.nonstationary == "tasks" else ()
    cfg.run.env = cfg.run.env or (tasks[0] if tasks else agent_cls.default_env)
    if "grama" in cfg.interventions:
        cfg.metrics.grama_target = cfg.interventions["grama"].score_target
    validate(cfg)
    return cfg


def _positive(where, value):
    if value <= 0:
        raise ConfigError(f"{where} must be > 0, got {value}")


def validate(cfg: ExperimentConfig) -> None:
    r, a, m = cfg.run, cfg.agent_cfg, cfg.metrics
    for k in ("seeds", "steps", "log_every"):
        _positive(f"run.{k}", getattr(r, k))
    if r.checkpoint_every < 0:
        raise ConfigError(f"run.checkpoint_every must be >= 0, got {r.checkpoint_every}")
    check_devices(r.devices, r.seeds)
    if r.driver not in DRIVERS:
        raise ConfigError(f"run.driver={r.driver!r}; valid: {', '.join(DRIVERS)}")
    if r.progress not in ("auto", "on", "off"):
        raise ConfigError(f"run.progress={r.progress!r}; valid: auto, on, off")
    if r.wandb_mode not in WANDB_MODES:
        raise ConfigError(f"run.wandb_mode={r.wandb_mode!r}; valid: {', '.join(WANDB_MODES)}")
    if r.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--run.wandb true needs the wandb package: pip install wandb")
    for k in ("batch_size", "utd", "buffer_size", "policy_delay", "train_frequency", "target_update_period",
              "n_step"):
        if hasattr(a, k):
            _positive(f"{cfg.agent}.{k}", getattr(a, k))
    agent_validate = getattr(agents.get(cfg.agent), "validate", None)
    if agent_validate is not None:
        try:
            agent_validate(a)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if getattr(a, "learning_starts", 0) < 0:
        raise ConfigError(f"{cfg.agent}.learning_starts must be >= 0, got {a.learning_starts}")
    if not 0.0 <= a.gamma <= 1.0:
        raise ConfigError(f"{cfg.agent}.gamma must be in [0, 1], got {a.gamma}")
    if hasattr(a, "tau") and not 0.0 < a.tau <= 1.0:
        raise ConfigError(f"{cfg.agent}.tau must be in (0, 1], got {a.tau}")
    if a.activation not in ACTIVATIONS:
        raise ConfigError(f"{cfg.agent}.activation={a.activation!r}; valid: {', '.join(ACTIVATIONS)}")
    if a.init not in INITIALIZERS:
        raise ConfigError(f"{cfg.agent}.init={a.init!r}; valid: {', '.join(INITIALIZERS)}")
    if not a.hidden or any(h <= 0 for h in a.hidden):
        raise ConfigError(f"{cfg.agent}.hidden must be a non-empty list of positive widths, got {a.hidden}")
    if m.ratio_aggregation not in ("pooled", "mean_of_layers"):
        raise ConfigError(f"metrics.ratio_aggregation={m.ratio_aggregation!r}; valid: pooled, mean_of_layers")
    if m.grama_target not in PROBE_POINTS:
        raise ConfigError(f"metrics.grama_target={m.grama_target!r}; valid: {', '.join(PROBE_POINTS)}")
    _validate_metrics(m)
    if m.batch == "fixed_probe" and getattr(agents.get(cfg.agent), "on_policy", False):
        raise ConfigError(f"metrics.batch=fixed_probe needs a replay buffer; {cfg.agent} measures on its current "
                          f"rollout (use metrics.batch=fresh_replay)")
    try:
        nonstationary.validate(cfg.env, r.env)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_claims({n: iv_registry.REGISTRY[n](c, cfg.agent).claims() for n, c in cfg.interventions.items()})
    try:
        agent_options(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name, icfg in cfg.interventions.items():
        cls = iv_registry.REGISTRY[name]
        if cfg.agent not in cls.agents:
            raise ConfigError(f"intervention {name!r} does not apply to agent {cfg.agent!r}; "
                              f"it supports: {', '.join(cls.agents)}")
        try:
            cls(icfg, cfg.agent).validate(r, a)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def check_devices(devices: int, seeds: int) -> None:
    """`run.devices` against the seed count (the node's device count is checked when the run is placed,
    plastic/sharding.py)."""
    if devices < 0:
        raise ConfigError(f"run.devices must be >= 0 (0: automatic, 1: no sharding), got {devices}")
    if devices and seeds % devices:
        raise ConfigError(f"run.devices={devices} does not divide run.seeds={seeds}; use a divisor of the "
                          f"seed count (or 0: automatic)")


def agent_options(cfg: ExperimentConfig) -> dict:
    """The build options the active interventions need (`Intervention.agent_options`), merged; two of them
    asking for different values of one option is a one-line error."""
    merged, owner = {}, {}
    for name, icfg in cfg.interventions.items():
        for k, v in iv_registry.REGISTRY[name](icfg, cfg.agent).agent_options().items():
            if k in merged and merged[k] != v:
                raise ValueError(f"interventions {owner[k]} and {name} need the agent built with different "
                                 f"{k} ({merged[k]!r} and {v!r}); drop one of them")
            merged[k], owner[k] = v, name
    return merged


RESOURCE_WORDS = {"replay_sampler": "replace the replay sampler",
                  "weight_support": "constrain which weights may be non-zero",
                  "weight_writes": "write weights outside the optimizer",
                  "policy_objective": "rewrite PPO's policy objective",
                  "episode_stops": "end episodes early"}


def check_claims(claims: dict) -> None:
    """`claims`: intervention -> {resource: "own" | "share"}. A resource owned by one intervention and
    claimed by another is a conflicting stack (two replay samplers; two rewrites of PPO's objective). Owning
    "weight_support" (NE's connection masks) also excludes every "weight_writes" claim (a re-initialised
    unit would put weight on masked connections)."""
    users: dict[str, list] = {}
    for name, cl in claims.items():
        for resource, mode in cl.items():
            users.setdefault(resource, []).append((name, mode))
    excludes = {"weight_support": "weight_writes"}
    for resource, us in users.items():
        owner = next((n for n, m in us if m == "own"), None)
        if owner is None:
            continue
        rivals = [(n, resource) for n, _ in us if n != owner]
        rivals += [(n, excludes[resource]) for n, _ in users.get(excludes.get(resource, ""), []) if n != owner]
        if rivals:
            other, theirs = rivals[0]
            why = (f"{owner} must be the only one to {RESOURCE_WORDS[resource]}" if theirs == resource else
                   f"{owner} must {RESOURCE_WORDS[resource]} and {other} would {RESOURCE_WORDS[theirs]}")
            raise ConfigError(f"interventions {owner} and {other} cannot be stacked: {why} ({resource}); "
                              f"drop one of them")


METRIC_BATCHES = ("fresh_replay", "fixed_probe")
NTK_BRANCHES = ("critic1", "critic2", "min")


def _validate_metrics(m: MetricsConfig) -> None:
    for k in ("activity_every", "grad_every", "rank_every", "churn_every", "ntk_every"):
        if getattr(m, k) < 0:
            raise ConfigError(f"metrics.{k} must be >= 0 (0: off), got {getattr(m, k)}")
    _positive("metrics.batch_size", m.batch_size)
    if m.batch not in METRIC_BATCHES:
        raise ConfigError(f"metrics.batch={m.batch!r}; valid: {', '.join(METRIC_BATCHES)}")
    if m.ntk_branch not in NTK_BRANCHES:
        raise ConfigError(f"metrics.ntk_branch={m.ntk_branch!r}; valid: {', '.join(NTK_BRANCHES)}")
    if not 1 <= m.ntk_batch <= min(64, m.batch_size):
        raise ConfigError(f"metrics.ntk_batch must be in [1, min(64, metrics.batch_size)], got {m.ntk_batch}")
    if not m.networks:
        raise ConfigError("metrics.networks is empty; give network names or all")
    for k in ("linearised_frac", "approx_rank_p", "srank_delta"):
        if not 0.0 < getattr(m, k) <= 1.0:
            raise ConfigError(f"metrics.{k} must be in (0, 1], got {getattr(m, k)}")
    for k in ("feature_rank_eps", "ntk_tol", "grad_zero_threshold"):
        if getattr(m, k) <= 0:
            raise ConfigError(f"metrics.{k} must be > 0, got {getattr(m, k)}")
    if any(t < 0 for t in m.dormant_taus):
        raise ConfigError(f"metrics.dormant_taus must be >= 0, got {m.dormant_taus}")


def from_dict(d: dict) -> ExperimentConfig:
    """Rebuild a config saved by `to_dict` (config.yaml of a run)."""
    d = dict(d)
    agent, spec = d.pop("agent"), d.pop("intervention", "none")
    return build(agent, spec, preset=d)
