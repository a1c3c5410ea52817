"""Typed experiment configs: run, metrics, one agent, any stack of interventions.

Sources, lowest precedence first: dataclass defaults, a preset (`--config NAME|PATH`, YAML under
experiments/configs/), the main flags (`--agent --intervention --env --seeds --steps --run-dir`), then
typed overrides `--NAMESPACE.FIELD VALUE` (or `=VALUE`) where NAMESPACE is `run`, `metrics`, `env`
(non-stationarity, plastic/nonstationary.py), the agent name (or `agent`) or an intervention name. Every error is a `ConfigError` with a one-line message.
Numeric fields declare their valid ranges where they are declared (plastic/fields.py); `validate` checks every
field of every section against them (and floats for finiteness) before the checks that relate several fields.
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
from plastic import envs, fields, networks, nonstationary, suites
from plastic.fields import nonneg, num, one_of, positive, unit_pos
from plastic.nonstationary import EnvConfig
from plastic.networks import PROBE_POINTS

PRESET_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"


DRIVERS = ("auto", "host", "jit")
PROGRESS = ("auto", "on", "off")
WANDB_MODES = ("online", "offline", "disabled")
METRIC_BATCHES = ("fresh_replay", "fixed_probe")
NTK_BRANCHES = ("critic1", "critic2", "min")
RATIO_AGGREGATIONS = ("pooled", "mean_of_layers")


class ConfigError(ValueError):
    pass


@dataclass
class RunConfig:
    env: str = ""                      # "": the agent's default (HalfCheetah-v5; CartPole-v1 for dqn;
                                       # gymnax:CartPole-v1 for ppo)
    driver: str = one_of("auto", DRIVERS)  # auto | host | jit  (auto: jit for JAX-native envs, else host)
    seeds: int = positive(1)           # independent seeds, vmapped in one process
    seed: int = nonneg(0)              # base seed; vmapped seed i behaves as a run with seed + i
    steps: int = positive(30_000)      # env steps per seed (presets set paper budgets)
    run_dir: str = ""                  # default: runs/<agent>-<interventions>-<env>-s<seed>
    log_every: int = positive(5_000)   # env steps between log rows
    # checkpoint at the first log point at or after each multiple (0: only at the end)
    checkpoint_every: int = nonneg(50_000, note="0: only at the end")
    # Evaluation (plastic/evaluation.py): `eval_episodes` complete episodes of each seed's evaluation policy
    # (no exploration) on separate envs, at the first log point at or after each multiple of `eval_every`
    # env steps and at the end (0: off); logged as eval/episode_return and eval/episode_length. Episode j
    # starts from an env seed derived from `eval_seed` and j only: the same for every seed and method.
    eval_every: int = nonneg(50_000, note="0: off")
    eval_episodes: int = positive(10)
    eval_seed: int = nonneg(0)
    progress: str = one_of("auto", PROGRESS)  # auto | on | off
    tensorboard: bool = True
    # Act with the parameters of one update earlier, so the next update runs while the host steps the
    # envs (Cleanba-style pipelining). Off: CleanRL order (act with the parameters after the last update).
    pipelined_acting: bool = False
    # Local devices the seed axis is split across (jax.sharding; plastic/sharding.py). 0: all of them when
    # their number divides `seeds`, else the largest count that does; 1: no sharding; k: the first k (k must
    # divide `seeds` and be at most the node's device count). On a CPU, k > 1 splits the CPU into k devices
    # first (one device runs on about one core): `--seeds 16 --run.devices 2` trains 8 seeds per core.
    devices: int = nonneg(0, note="0: automatic, 1: no sharding")
    # Weights & Biases logging alongside metrics.jsonl and TensorBoard (needs the wandb package). Each log
    # point is one W&B step: the seed mean of every numeric value plus seed{i}/episode_return. The W&B run id
    # is kept in RUN_DIR/wandb_run.json, so --resume continues the same W&B run; files go to RUN_DIR/wandb/.
    wandb: bool = False
    wandb_project: str = "plastic"
    wandb_entity: str = ""             # "": the default entity of the logged-in user
    wandb_group: str = ""              # groups runs in the W&B UI (sweeps set the sweep name)
    # online | offline (no network; `wandb sync RUN_DIR/wandb/offline-run-*` uploads later) | disabled
    wandb_mode: str = one_of("offline", WANDB_MODES)


@dataclass
class MetricsConfig:
    """What the in-training metrics collector (plastic/monitor.py) measures, on which networks, how often.

    Periods count the gradient updates of each network (its own counter); 0 turns a group off. Every
    group is also measured at a network's first update. Definitions: docs/metrics.md."""
    networks: tuple[str, ...] = ("all",)  # network names (e.g. critic), or all
    activity_every: int = nonneg(1_000, note="0: off")  # dormant ratios, FAU, linearised ratio, feature norm,
                                                        # dormant overlap
    grad_every: int = nonneg(1_000, note="0: off")      # gradient sparsity/L1/L2, gradient- and update-to-
                                                        # parameter ratios, parameter RMS and distance from init,
                                                        # GraMa persistence
    rank_every: int = nonneg(10_000, note="0: off")     # srank, approximate, effective, feature and matrix rank
    churn_every: int = nonneg(10_000, note="0: off")    # policy churn over one update round, on the metrics batch
    ntk_every: int = nonneg(50_000, note="0: off")      # NTK Gram rank of the critic (per-example gradients)
    # fresh_replay | fixed_probe (indices drawn once, at the first update)
    batch: str = one_of("fresh_replay", METRIC_BATCHES)
    batch_size: int = positive(256)    # replay batch (off-policy) or rollout subset (PPO) the metrics use
    dormant_taus: tuple[float, ...] = nonneg((0.0, 0.025, 0.1))
    ratio_aggregation: str = one_of("pooled", RATIO_AGGREGATIONS)  # pooled | mean_of_layers
    grama_target: str = one_of("pre_activation", PROBE_POINTS)  # pre_activation | post_activation | weight_grad
    linearised_frac: float = unit_pos(0.9)  # a unit is linearised if its pre-activation is > 0 on this fraction
    srank_delta: float = unit_pos(0.01)
    approx_rank_p: float = unit_pos(0.99)
    feature_rank_eps: float = positive(0.01)
    grad_zero_threshold: float = positive(1e-8)  # |g| below this counts as a zero gradient entry (grad_sparsity)
    ntk_batch: int = num(64, ge=1)     # state-action pairs for the NTK Gram matrix (at most 64)
    ntk_tol: float = positive(1e-6)    # absolute tolerance on the Gram matrix's singular values
    ntk_branch: str = one_of("critic1", NTK_BRANCHES)  # twin critics: critic1 | critic2 | min


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
    except (TypeError, ValueError, OverflowError):  # OverflowError: int("inf")
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
    sections = namespaces(cfg)
    canonical = {id(obj): ns for ns, obj in canonical_sections(cfg)}
    spelled = {}  # (canonical namespace, field) -> the alias it was set through (`agent.lr`, `regrama.tau`)
    given = set()  # (canonical namespace, field) set by the preset or an override

    def section(ns, names=()):
        if ns not in sections:
            inactive = [n for n in (*agents.REGISTRY, *iv_registry.REGISTRY) if n not in sections]
            hint = f" ({ns!r} is not active in this run)" if ns in inactive else ""
            raise ConfigError(f"unknown config namespace {ns!r}{hint}; valid: {', '.join(sections)}")
        for f in names:
            given.add((canonical[id(sections[ns])], f))
            if canonical[id(sections[ns])] != ns:
                spelled[canonical[id(sections[ns])], f] = ns
        return sections[ns]

    for ns, values in preset.items():
        if not isinstance(values, dict):
            raise ConfigError(f"preset key {ns!r} must map to a dict of fields")
        if ns in agents.REGISTRY and ns != agent or ns in iv_registry.REGISTRY and ns not in sections:
            continue  # presets may carry settings for agents/interventions not used in this run
        _apply(section(ns, values), ns, values)
    _apply(cfg.run, "run", {k: v for k, v in run_flags.items() if v is not None})
    for key, value in (overrides or {}).items():
        ns, _, fld = key.partition(".")
        if not fld:
            raise ConfigError(f"override {key!r} must look like NAMESPACE.FIELD")
        _apply(section(ns, [fld]), ns, {fld: value})
    # an intervention's defaults that depend on the agent and its settings (ReGraMa on PPO or on LayerNorm
    # nets), for the fields the preset and the overrides left alone
    for n, icfg in cfg.interventions.items():
        for k, v in iv_registry.REGISTRY[n].defaults_for(agent, cfg.agent_cfg).items():
            if (n, k) not in given:
                setattr(icfg, k, v)
    try:
        suite = suites.requested(cfg.run.env, cfg.env.suite)
        if suite:  # a named continual suite: its env fields and budget, under the preset's and the overrides'
            suites.apply(cfg, suite, given, steps_given=run_flags.get("steps") is not None or ("run", "steps") in given)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    tasks = cfg.env.tasks if cfg.env.nonstationary == "tasks" else ()
    cfg.run.env = cfg.run.env or (tasks[0] if tasks else agent_cls.default_env)
    for n, icfg in cfg.interventions.items():
        for k, src in iv_registry.REGISTRY[n].metrics_fields.items():
            v = getattr(icfg, src)
            if ("metrics", k) in given and getattr(cfg.metrics, k) != v:
                raise ConfigError(f"metrics.{k}={getattr(cfg.metrics, k)!r} contradicts {n}.{src}={v!r}, which sets "
                                  f"it (the metric measures what {n} acts on); set one of them")
            setattr(cfg.metrics, k, v)
    validate(cfg, spelled)
    return cfg


def namespaces(cfg: ExperimentConfig) -> dict:
    """Every namespace a `--NS.FIELD` override may name -> the config object it sets: run, metrics, env, the
    agent's name and `agent`, each active intervention's name and its aliases."""
    out = dict(canonical_sections(cfg))
    out["agent"] = cfg.agent_cfg
    for alias, target in iv_registry.ALIASES.items():
        if target in cfg.interventions:
            out[alias] = cfg.interventions[target]
    return out


def canonical_sections(cfg: ExperimentConfig) -> list:
    """(namespace, config object) of every section of the run, each once under its own name."""
    return [("run", cfg.run), ("metrics", cfg.metrics), ("env", cfg.env), (cfg.agent, cfg.agent_cfg),
            *cfg.interventions.items()]


def check_fields(cfg: ExperimentConfig, spelled: dict | None = None) -> None:
    """The declared constraints of every field of every section (plastic/fields.py): switches one of their
    choices, floats finite unless declared otherwise, values (each entry of a tuple) in range. The message names
    the field as it is typed (`spelled`: (namespace, field) -> the alias the value was set through)."""
    for ns, obj in canonical_sections(cfg):
        if not dataclasses.is_dataclass(obj):
            continue
        msg = fields.first_problem(obj, lambda n, ns=ns: f"{(spelled or {}).get((ns, n), ns)}.{n}")
        if msg:
            raise ConfigError(msg)


def validate(cfg: ExperimentConfig, spelled: dict | None = None) -> None:
    r, a, m = cfg.run, cfg.agent_cfg, cfg.metrics
    check_fields(cfg, spelled)  # first: the checks below (and the interventions' ones) assume numbers in range
    try:
        envs.check_env_id(r.env)
        for task in cfg.env.tasks:
            envs.check_env_id(task)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_devices(r.devices, r.seeds)
    if r.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--run.wandb true needs the wandb package: pip install wandb")
    agent_validate = getattr(agents.get(cfg.agent), "validate", None)
    if agent_validate is not None:
        try:
            agent_validate(a)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    try:
        networks.check_norm(cfg.agent, a)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not a.hidden:  # the widths' range is declared on the field
        raise ConfigError(f"{cfg.agent}.hidden must be a non-empty list of positive widths, got nothing")
    _validate_metrics(m)
    if m.ntk_every and m.ntk_branch != "critic1" and getattr(a, "critics", 2) < 2:
        raise ConfigError(f"metrics.ntk_branch={m.ntk_branch} reads a second critic; {cfg.agent}.critics is "
                          f"{a.critics} (use metrics.ntk_branch=critic1)")
    if m.batch == "fixed_probe" and getattr(agents.get(cfg.agent), "on_policy", False):
        raise ConfigError(f"metrics.batch=fixed_probe needs a replay buffer; {cfg.agent} measures on its current "
                          f"rollout (use metrics.batch=fresh_replay)")
    try:
        nonstationary.validate(cfg.env, r.env)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name in cfg.interventions:
        supported = supported_agents(iv_registry.REGISTRY[name])
        if cfg.agent not in supported:
            raise ConfigError(f"intervention {name!r} does not apply to agent {cfg.agent!r}; "
                              f"it supports: {', '.join(supported)}")
    ivs = {n: make_intervention(n, c, cfg.agent) for n, c in cfg.interventions.items()}  # built once, here
    check_claims({n: iv.claims() for n, iv in ivs.items()})
    try:
        merge_options(ivs)
        for iv in ivs.values():
            iv.validate(r, a)
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


def supported_agents(iv_cls) -> tuple[str, ...]:
    """The registered agents the intervention class applies to: those offering what it `requires`."""
    return tuple(name for name, cls in agents.REGISTRY.items()
                 if iv_cls.requires <= getattr(cls, "capabilities", frozenset()))


def make_intervention(name: str, icfg, agent: str):
    """The intervention `name` with config `icfg` for `agent`, given the agent's network roles (the only way the
    intervention layer learns them: it never imports agents/)."""
    return iv_registry.REGISTRY[name](icfg, agent, getattr(agents.get(agent), "roles", {}))


def agent_options(cfg: ExperimentConfig) -> dict:
    """The build options the active interventions need (`Intervention.agent_options`), merged."""
    return merge_options({n: make_intervention(n, c, cfg.agent) for n, c in cfg.interventions.items()})


def merge_options(ivs: dict) -> dict:
    """The build options of the interventions `ivs` (name -> intervention), merged; two of them asking for
    different values of one option is a one-line error."""
    merged, owner = {}, {}
    for name, iv in ivs.items():
        for k, v in iv.agent_options().items():
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


def _validate_metrics(m: MetricsConfig) -> None:
    if m.ntk_batch > min(64, m.batch_size):  # >= 1 is declared on the field
        raise ConfigError(f"metrics.ntk_batch must be in [1, min(64, metrics.batch_size)], got {m.ntk_batch}")
    if not m.networks:
        raise ConfigError("metrics.networks is empty; give network names or all")


# Fields added after runs were saved with the code before them: (section, field) -> the value, from the saved
# section, that reproduces what such a run did. A saved config lacking the field gets it, so resuming the run or
# checking a sweep against it compares the behaviour it had, not today's default.
LEGACY = {("sac", "alpha_init"): lambda sec: sec.get("alpha", 0.2)}   # until 2026-12-05 autotune started at alpha


def from_dict(d: dict) -> ExperimentConfig:
    """Rebuild a config saved by `to_dict` (config.yaml of a run)."""
    d = dict(d)
    agent, spec = d.pop("agent"), d.pop("intervention", "none")
    for (ns, fld), value in LEGACY.items():
        if isinstance(d.get(ns), dict) and fld not in d[ns]:
            d[ns] = {**d[ns], fld: value(d[ns])}
    return build(agent, spec, preset=d)
