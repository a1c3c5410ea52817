"""Non-stationary environments for both drivers: a JAX-native wrapper and a host wrapper.

Kinds (`EnvConfig.nonstationary`), each a pure function of the phase `k = env_step // period`, where
`env_step` counts the env steps of one seed since the start of the run and survives episode ends:

- `permute_obs`: the flattened observation is shuffled by a fixed random permutation per phase
  (`obs_out[i] = obs[perm_k[i]]`, see `permutation`). Phase 0 is the identity unless
  `first_phase = drawn`.
- `flip_reward`: the reward is multiplied by `(-1)**k`.
- `dynamics`: a physical quantity (`EnvConfig.dynamics`: friction | mass | gravity) is multiplied by a scale
  drawn log-uniformly in `[scale_low, scale_high]` per phase (see `scale`). Phase 0 runs the unmodified
  env (scale 1) unless `first_phase = drawn`. What is scaled, per env family:

  - gymnasium MuJoCo (`Ant-v5`, ...) and `dmc:`: friction `model.geom_friction[:, 0]` (sliding; also
    `pair_friction[:, :2]` of explicit pairs); mass `model.body_mass` and `model.body_inertia`, then
    `mj_setConst` (inverse weights, subtree masses); gravity `model.opt.gravity`.
  - `brax:`: friction `sys.geom_friction[:, 0]` (and `pair_friction[:, :2]`), all backends; mass on the
    generalized and mjx backends only (spring and positional normalise link masses, so it is an error
    there): `sys.body_mass`, `sys.body_inertia`, `sys.link.inertia.mass` and `.i`, with the inverse
    weights (`body_invweight0`, `dof_invweight0`, `link.invweight`, `dof.invweight`) divided by the
    scale. That division is what MuJoCo's `mj_setConst` would compute if the joints' armature scaled with
    the masses; armature is a motor property and does not, so the inverse weights `mj_setConst` derives
    for the scaled model differ from ours by a few percent (4-7 % measured on brax's models with armature),
    which changes only the constraint softness (the mass matrix itself is scaled exactly). Gravity:
    `sys.gravity` and `sys.opt.gravity`, all backends.
  - `playground:` (MuJoCo Playground, its jax/MJX backend only): as for MuJoCo above, on the MJX model:
    friction `geom_friction[:, 0]` (and `pair_friction[:, :2]`); gravity `opt.gravity`; no mass (the
    constants `mj_setConst` derives from masses cannot be recomputed exactly inside jit).
  - classic control, `gymnax:` and gymnasium ids alike (no friction in any of them):
    CartPole: mass `masscart`, `masspole` and the derived `total_mass`, `polemass_length`; gravity `gravity`.
    Pendulum: mass `m`; gravity `g`.
    Acrobot: mass both link masses and `link_moi`; no gravity (a hard-coded constant).
    MountainCar: mass divides `force` by the scale (a heavier car, same force); gravity `gravity`.
    MountainCarContinuous: mass divides `power`; gravity `gravity` (gymnax only; hard-coded in gymnasium).

  Everything is multiplied (or divided) by the scale from the env's base values, never compounded; a
  scale of 1 reproduces the unwrapped env (on host envs exactly; in JAX up to float rounding, as XLA
  folds the unwrapped env's constant parameters differently from traced ones). Mass scaling is
  uniform-density scaling (masses and inertias together). Other envs (MinAtar, bsuite, probes, gymnasium
  envs not listed) cannot do `dynamics`: `validate` and `wrap_*` say so.
- `tasks`: the env ids in `EnvConfig.tasks` are cycled in order, task `k % len(tasks)` in phase `k`. They
  must share observation size, action size and action kind (their own action bounds may differ: each
  rescales [-1, 1] itself). Every switch ends the running episode as a truncation and the next episode
  starts in the new task. JAX-native: all tasks must be JAX-native; each task keeps its own state in the
  carry (a tuple), the active one is selected with `lax.switch` (under vmap every task's step runs and
  one result is kept, so a step costs the sum of the tasks' steps). With `pad_obs`, tasks may differ in
  observation shape (not rank): each observation is zero-padded at the end of every axis to the largest
  task's shape, e.g. MinAtar games' 4, 6 or 7 channels to 7 (as LucMc/continual-learning pads its MinAtar
  sequence); the action spaces must still agree (MinAtar: `gymnax:NAME-MinAtar:full`).

Slippery Ant (Dohare et al., Nature 2024: a non-stationary Ant whose friction changes over training,
`cfg/frictions`; and `shibhansh/loss-of-plasticity` `lop/rl/run_ppo.py`, `lop/envs/slippery_ant.py`,
`lop/rl/cfg/sant/*.yml`): the friction of every Ant geom (the XML's default geom class, which all Ant
geoms use, sliding friction 1) is set to a new value every `change_time = 2_000_000` steps, drawn in
`[0.02, 2]` (the `friction` default of `run_ppo.py`), with a new value already in the first phase and
different values per seed (`frictions[seed]`). `PRESETS["slippery_ant"]` reproduces it on `Ant-v5`, whose
geom frictions are all 1, so a scale equals the absolute friction. Differences: the authors' values are
pre-drawn in a pickle we could not read, and we draw them log-uniformly (our reading of the paper; not
verified); they switch at the first episode end after the period has elapsed (drift below one episode per
switch), we switch at exactly `k * period` (mid-episode unless `truncate_at_switch`); they used Ant-v3.

Counting: `period` is in env steps per seed. With `envs_per_seed = E` envs of one seed stepping in
lockstep (PPO's num_envs), every step of one env advances the seed's count by E, so switch k happens at
the first multiple of E at or after `k * period` (exactly there when E divides `period`). With E = 0 the
count never moves: the evaluation envs (plastic/evaluation.py) play in the phase they are reset in. The JAX
counter is int32 (fine up to 2**31 steps per seed).

Randomness: the schedule (permutations, scales) depends only on `EnvConfig.seed` and, if `per_seed`, on a
schedule id the trainer passes per vmapped seed (use the run seed of that seed, `run.seed + i`), never on
the env keys, so both drivers and every env of a seed see the same schedule.

Which phase an observation belongs to: the reward, dynamics and the observation a step reaches
(`final_obs`) belong to the phase of that step; an observation the agent will act on next (`next_obs`,
reset observations) belongs to the phase of the next step. The host interface has one observation per
step, presented in the phase of the step that reached it, so on the host driver the first action after a
`permute_obs` switch that is not an episode boundary sees the previous phase's permutation (set
`truncate_at_switch` to make every switch an episode boundary).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from plastic import suites
from plastic.fields import count, nonneg, one_of, positive
from plastic.envs import JAX_NATIVE, is_jax_native
from plastic.jaxenvs import JaxEnv, make_jax_env, playground_default_backend
from plastic.shuffle import permutation as shuffled_range

KINDS = ("none", "permute_obs", "flip_reward", "dynamics", "tasks")
DYNAMICS = ("friction", "mass", "gravity")
FIRST_PHASES = ("base", "drawn")


@dataclass
class EnvConfig:
    nonstationary: str = "none"        # none | permute_obs | flip_reward | dynamics | tasks
    period: int = count(100_000, "env steps")  # env steps per seed between switches; phase k starts at step k * period
    dynamics: str = "friction"         # friction | mass | gravity (what is scaled per env family: module doc)
    scale_low: float = positive(0.5)   # each phase's scale is log-uniform in [scale_low, scale_high]
    scale_high: float = positive(2.0)  # (slippery Ant, Dohare et al.: [0.02, 2]; PRESETS["slippery_ant"])
    first_phase: str = "base"          # base: phase 0 is the unmodified env (scale 1, identity permutation)
                                       # drawn: phase 0 draws like the others (Dohare et al.)
    tasks: tuple[str, ...] = ()        # for `tasks`: env ids cycled in order, one per period
    pad_obs: bool = False              # for `tasks`: zero-pad observations to the largest task's shape
    truncate_at_switch: bool = False   # end the running episode (truncation) at every switch; always on for tasks
    seed: int = nonneg(0)              # the schedule's randomness (permutations, scales)
    per_seed: bool = False             # each seed of a run gets its own schedule (Dohare et al.: frictions[seed])
    # the named continual suite these fields were expanded from (plastic/suites.py; `--env continual:NAME`)
    suite: str = one_of("", ("", *suites.NAMES))


PRESETS = {
    # Dohare et al. 2024 slippery Ant: PPO, friction re-drawn every 2M steps in [0.02, 2], per seed,
    # also in the first phase. Use with env Ant-v5 (all geom frictions 1, so scale == friction).
    "slippery_ant": dict(nonstationary="dynamics", dynamics="friction", period=2_000_000, scale_low=0.02,
                         scale_high=2.0, first_phase="drawn", per_seed=True),
}


def preset(name: str) -> EnvConfig:
    """A named `EnvConfig` (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown non-stationary preset {name!r}; valid: {', '.join(PRESETS)}")
    return EnvConfig(**PRESETS[name])


# --------------------------------------------------------------------------------------------------
# Validation and per-family support
# --------------------------------------------------------------------------------------------------

# Classic-control quantities: dynamics -> ((field, exponent), ...), value = base * scale ** exponent.
# Field names are gymnax's EnvParams fields; `_GYM_NAMES` maps them to gymnasium attributes.
_CLASSIC = {
    "CartPole": {"mass": (("masscart", 1), ("masspole", 1), ("total_mass", 1), ("polemass_length", 1)),
                 "gravity": (("gravity", 1),)},
    "Pendulum": {"mass": (("m", 1),), "gravity": (("g", 1),)},
    "Acrobot": {"mass": (("link_mass_1", 1), ("link_mass_2", 1), ("link_moi", 1))},
    "MountainCar": {"mass": (("force", -1),), "gravity": (("gravity", 1),)},
    "MountainCarContinuous": {"mass": (("power", -1),), "gravity": (("gravity", 1),)},
}
_GYM_NAMES = {"link_mass_1": "LINK_MASS_1", "link_mass_2": "LINK_MASS_2", "link_moi": "LINK_MOI"}
_GYM_UNSUPPORTED = {("MountainCarContinuous", "gravity")}  # hard-coded constant in gymnasium


def _classic_name(name: str) -> str:
    return re.sub(r"-v\d+$", "", name)


def _classic_fields(env_id: str, dynamics: str, host_gym: bool):
    """The (field, exponent) pairs `dynamics` scales for a classic-control env, or raise."""
    name = _classic_name(env_id.split(":", 1)[1] if env_id.startswith("gymnax:") else env_id)
    table = _CLASSIC.get(name)
    if table is None:
        raise ValueError(f"env.nonstationary=dynamics is not available for {env_id}; supported: brax:*, dmc:*, "
                         f"playground:*:jax, gymnasium MuJoCo envs (e.g. Ant-v5), and {', '.join(_CLASSIC)} "
                         f"(gymnax: or gymnasium)")
    valid = [d for d in table if not (host_gym and (name, d) in _GYM_UNSUPPORTED)]
    if dynamics not in valid:
        raise ValueError(f"env.dynamics={dynamics} is not available for {env_id}; valid for it: {', '.join(valid)}")
    return table[dynamics]


def _gym_entry_point(env_id: str) -> str | None:
    import gymnasium as gym
    try:
        return str(gym.spec(env_id).entry_point)
    except gym.error.Error:
        return None


def check_dynamics_support(env_id: str, dynamics: str) -> None:
    """Raise a one-line ValueError if `dynamics` cannot be scaled on `env_id`."""
    if env_id.startswith("dmc:"):
        return
    if env_id.startswith("playground:"):
        parts = env_id.split(":")
        backend = parts[2] if len(parts) > 2 else playground_default_backend()
        if backend != "jax":
            raise ValueError(f"env.nonstationary=dynamics on MuJoCo Playground needs its jax (MJX) backend, got "
                             f"{backend}; use playground:{parts[1]}:jax")
        if dynamics == "mass":
            raise ValueError(f"env.dynamics=mass is not available for {env_id} (the constants MuJoCo derives from "
                             f"masses cannot be recomputed inside the jitted program); use env.dynamics=friction|"
                             f"gravity, or dmc: / gymnasium MuJoCo ids on the host driver")
        return
    if env_id.startswith("brax:"):
        parts = env_id.split(":")
        backend = parts[2] if len(parts) > 2 else "positional"
        if dynamics == "mass" and backend in ("positional", "spring"):
            raise ValueError(f"env.dynamics=mass has no effect on brax's {backend} backend (it normalises link "
                             f"masses, spring_mass_scale=1); use brax:{parts[1]}:generalized or brax:{parts[1]}:mjx, "
                             f"or env.dynamics=friction|gravity")
        return
    if env_id.startswith("probe:"):
        raise ValueError(f"env.nonstationary=dynamics is not available for {env_id} (no physics); supported: "
                         f"brax:*, dmc:*, playground:*:jax, gymnasium MuJoCo envs (e.g. Ant-v5), "
                         f"{', '.join(_CLASSIC)}")
    if env_id.startswith("gymnax:"):
        _classic_fields(env_id, dynamics, host_gym=False)
        return
    entry = _gym_entry_point(env_id)
    if entry is not None and "mujoco" in entry:
        return
    _classic_fields(env_id, dynamics, host_gym=True)


def _spaces(env) -> tuple:
    return int(env.observation_size), int(env.action_size), bool(env.discrete)


def _obs_shape(env) -> tuple:
    return tuple(getattr(env, "observation_shape", (env.observation_size,)))


def _check_same_spaces(ids, envs, pad_obs: bool = False) -> None:
    """Tasks must agree on their action spaces and on their observation size (with `pad_obs`: on the rank of
    their observation shapes)."""
    def spaces(e):
        o, a, d = _spaces(e)
        return (len(_obs_shape(e)) if pad_obs else o), a, d
    first = spaces(envs[0])
    for i, e in zip(ids[1:], envs[1:]):
        if spaces(e) != first:
            (o0, a0, d0), (o, a, d) = _spaces(envs[0]), _spaces(e)
            if (a0, d0) != (a, d):
                what = (f"{'discrete' if d0 else 'continuous'} actions {a0} vs {'discrete' if d else 'continuous'} "
                        f"actions {a}")
            elif pad_obs:
                what = f"observation shape {_obs_shape(envs[0])} vs {_obs_shape(e)} (pad_obs pads within a rank)"
            else:
                what = f"observation size {o0} vs {o} (env.pad_obs true pads observations to the largest)"
            raise ValueError(f"env.tasks must share their spaces: {ids[0]} and {i} have {what}")


def padded_shape(envs) -> tuple:
    """The observation shape of a `pad_obs` task sequence: the largest task's along every axis."""
    return tuple(int(n) for n in np.max([_obs_shape(e) for e in envs], axis=0))


def padded_obs(obs, shape: tuple, to: tuple, xp=jnp):
    """A flat (or `shape`-shaped) observation of a task whose shape is `shape`, zero-padded at the end of every
    axis to `to`, flat (`xp`: jnp inside programs, np on the host)."""
    if tuple(shape) == tuple(to):
        return obs.reshape(-1)
    o = obs.reshape(shape)
    return xp.pad(o, [(0, t - n) for n, t in zip(shape, to)]).reshape(-1)


def validate(cfg: EnvConfig, env_id: str | None = None) -> None:
    """Raise a one-line ValueError naming the valid options if `cfg` is unusable. With `env_id` (the run's
    env), also check that the env family supports `cfg.dynamics` and, for `tasks`, that `env_id` is one
    of the tasks and that all tasks share their spaces (this builds the task envs)."""
    if cfg.nonstationary not in KINDS:
        raise ValueError(f"unknown env.nonstationary {cfg.nonstationary!r}; valid: {', '.join(KINDS)}")
    if int(cfg.period) != cfg.period or cfg.period <= 0:
        raise ValueError(f"env.period must be a positive number of env steps, got {cfg.period!r}")
    if cfg.dynamics not in DYNAMICS:
        raise ValueError(f"unknown env.dynamics {cfg.dynamics!r}; valid: {', '.join(DYNAMICS)}")
    if not (0 < cfg.scale_low <= cfg.scale_high < float("inf")):
        raise ValueError(f"env.scale_low/scale_high must satisfy 0 < scale_low <= scale_high, got "
                         f"[{cfg.scale_low}, {cfg.scale_high}]")
    if cfg.first_phase not in FIRST_PHASES:
        raise ValueError(f"unknown env.first_phase {cfg.first_phase!r}; valid: {', '.join(FIRST_PHASES)}")
    if cfg.nonstationary == "tasks":
        if len(cfg.tasks) < 2:
            raise ValueError(f"env.nonstationary=tasks needs at least 2 env ids in env.tasks "
                             f"(e.g. dmc:walker-walk,dmc:walker-run), got {tuple(cfg.tasks)}")
    elif cfg.tasks:
        raise ValueError(f"env.tasks is set but env.nonstationary={cfg.nonstationary}; use env.nonstationary=tasks "
                         f"or leave env.tasks empty")
    elif cfg.pad_obs:
        raise ValueError(f"env.pad_obs pads the observations of env.tasks; it needs env.nonstationary=tasks, got "
                         f"{cfg.nonstationary}")
    if env_id is None or cfg.nonstationary == "none":
        return
    if cfg.nonstationary == "dynamics":
        check_dynamics_support(env_id, cfg.dynamics)
    if cfg.nonstationary == "tasks":
        if env_id not in cfg.tasks:
            raise ValueError(f"run env {env_id} is not one of env.tasks ({', '.join(cfg.tasks)}); set the run env "
                             f"to env.tasks[0]")
        from plastic.envs import make_env
        _check_same_spaces(list(cfg.tasks), [make_env(i) for i in cfg.tasks], cfg.pad_obs)


# --------------------------------------------------------------------------------------------------
# The schedule: pure functions of (cfg, phase, schedule id), shared by both drivers
# --------------------------------------------------------------------------------------------------

def switch_index(cfg: EnvConfig, env_step: int) -> int:
    """The phase `k = env_step // period` of per-seed env step `env_step` (0 without non-stationarity)."""
    return 0 if cfg.nonstationary == "none" else int(env_step) // int(cfg.period)


def switch_steps(cfg: EnvConfig, total_steps: int) -> list[int]:
    """The per-seed env steps at which a new phase starts, within `[1, total_steps)`."""
    if cfg.nonstationary == "none":
        return []
    return list(range(int(cfg.period), int(total_steps), int(cfg.period)))


def _schedule_key(cfg: EnvConfig, schedule):
    base = jax.random.PRNGKey(int(cfg.seed))
    return jax.random.fold_in(base, schedule if cfg.per_seed else 0)


def _phase_key(cfg, k, schedule, stream: int):
    return jax.random.fold_in(jax.random.fold_in(_schedule_key(cfg, schedule), stream), k)


def _scale(cfg: EnvConfig, k, schedule):
    """Traceable: the dynamics scale of phase `k` (float32 scalar)."""
    lo, hi = np.log(float(cfg.scale_low)), np.log(float(cfg.scale_high))
    u = jax.random.uniform(_phase_key(cfg, k, schedule, 2), (), jnp.float32)
    s = jnp.exp(jnp.float32(lo) + u * jnp.float32(hi - lo))
    if cfg.first_phase == "base":
        s = jnp.where(k == 0, jnp.float32(1.0), s)
    return s


def _permutation(cfg: EnvConfig, k, n: int, schedule):
    """Traceable: the observation permutation of phase `k` (int32 [n])."""
    perm = shuffled_range(_phase_key(cfg, k, schedule, 1), n)  # jax.random.permutation's values (plastic.shuffle)
    if cfg.first_phase == "base":
        perm = jnp.where(k == 0, jnp.arange(n, dtype=jnp.int32), perm)
    return perm


def _sign(k):
    return jnp.where(k % 2 == 0, jnp.float32(1.0), jnp.float32(-1.0))


def scale(cfg: EnvConfig, k: int, schedule: int = 0) -> float:
    """The `dynamics` scale of phase `k` (1.0 for phase 0 when `first_phase = base`)."""
    return float(_scale(cfg, jnp.int32(k), jnp.uint32(schedule)))


def permutation(cfg: EnvConfig, k: int, n: int, schedule: int = 0) -> np.ndarray:
    """The `permute_obs` permutation of phase `k` for an observation of size `n`: out[i] = obs[perm[i]]."""
    return np.asarray(_permutation(cfg, jnp.int32(k), int(n), jnp.uint32(schedule)))


def phase_info(cfg: EnvConfig, env_step: int, schedule: int = 0) -> dict:
    """What is in force at per-seed env step `env_step`, for logging: phase, task, scale, reward sign."""
    k = switch_index(cfg, env_step)
    info = {"phase": k}
    if cfg.nonstationary == "tasks":
        info["task"] = cfg.tasks[k % len(cfg.tasks)]
    if cfg.nonstationary == "dynamics":
        info["scale"] = scale(cfg, k, schedule)
    if cfg.nonstationary == "flip_reward":
        info["reward_sign"] = 1.0 if k % 2 == 0 else -1.0
    return info


# --------------------------------------------------------------------------------------------------
# Scaled physics of JAX-native envs
# --------------------------------------------------------------------------------------------------

def _scale_fields(obj, fields, s, get, put):
    for name, exponent in fields:
        obj = put(obj, name, get(obj, name) * s ** exponent)
    return obj


def _scaled_gymnax_params(env_id: str, params, dynamics: str, s):
    fields = _classic_fields(env_id, dynamics, host_gym=False)
    return _scale_fields(params, fields, s, getattr, lambda p, n, v: p.replace(**{n: v}))


def _scaled_friction(model, s):
    """A brax system or MJX model with the sliding friction of its geoms and explicit pairs scaled by `s`."""
    model = model.replace(geom_friction=jnp.asarray(model.geom_friction).at[:, 0].multiply(s))
    if np.size(model.pair_friction):
        model = model.replace(pair_friction=jnp.asarray(model.pair_friction).at[:, :2].multiply(s))
    return model


def _scaled_brax_sys(sys, dynamics: str, s):
    if dynamics == "friction":
        return _scaled_friction(sys, s)
    if dynamics == "gravity":
        return sys.replace(gravity=sys.gravity * s, opt=sys.opt.replace(gravity=sys.opt.gravity * s))
    inertia = sys.link.inertia.replace(mass=sys.link.inertia.mass * s, i=sys.link.inertia.i * s)
    return sys.replace(
        body_mass=sys.body_mass * s, body_inertia=sys.body_inertia * s,
        body_invweight0=sys.body_invweight0 / s, dof_invweight0=sys.dof_invweight0 / s,
        link=sys.link.replace(inertia=inertia, invweight=sys.link.invweight / s),
        dof=sys.dof.replace(invweight=sys.dof.invweight / s))


def _scaled_mjx_model(model, dynamics: str, s):
    """An MJX model (MuJoCo Playground's jax backend) with its friction or gravity scaled by `s`, as for MuJoCo
    envs on the host: sliding friction of geoms and of explicit pairs; `opt.gravity`. (Mass is not offered:
    `mj_setConst` derives inverse weights, `dof_M0` and `actuator_acc0` from the masses with armature, which
    cannot be recomputed exactly inside the program.)"""
    if dynamics == "friction":
        return _scaled_friction(model, s)
    return model.replace(opt=model.opt.replace(gravity=model.opt.gravity * s))


def _scaled_jax_env(env: JaxEnv, dynamics: str, s) -> JaxEnv:
    """A throwaway copy of `env` whose physics are scaled by the (possibly traced) scalar `s`; call its
    `reset`/`transition` inside the trace that made `s`."""
    from plastic.jaxenvs import BraxEnv, GymnaxEnv, PlaygroundEnv
    if isinstance(env, GymnaxEnv):
        out = copy.copy(env)
        out.env_params = _scaled_gymnax_params(env.env_id, env.env_params, dynamics, s)
        return out
    # brax's system / MJX's model lives on the wrapped env: copy both, scale it on the copy
    fields = {BraxEnv: ("sys", _scaled_brax_sys), PlaygroundEnv: ("_mjx_model", _scaled_mjx_model)}
    for cls, (field, scaled) in fields.items():
        if isinstance(env, cls):
            check_dynamics_support(env.env_id, dynamics)
            out = copy.copy(env)
            out.base_env = copy.copy(env.base_env)
            setattr(out.base_env, field, scaled(getattr(env.base_env, field), dynamics, s))
            return out
    check_dynamics_support(env.env_id, dynamics)  # raises for every other family
    raise ValueError(f"env.nonstationary=dynamics is not available for {env!r}")


# --------------------------------------------------------------------------------------------------
# JAX-native wrapper
# --------------------------------------------------------------------------------------------------

@struct.dataclass
class NonstationaryState:
    env: Any               # the wrapped env's JaxEnvState (for `tasks`: a tuple, one per task)
    step: jax.Array        # int32: env steps of this env's seed before the next step (survives resets)
    schedule: jax.Array    # uint32: the schedule id (used when cfg.per_seed)


class NonstationaryJaxEnv(JaxEnv):
    """A `JaxEnv` made non-stationary by `cfg` (build with `wrap_jax`). Jittable and vmappable, static shapes.

    `reset(key, step=0, schedule=0)`: `step` is the per-seed env step the env starts at (0 at the start
    of a run) and `schedule` the schedule id (only used when `cfg.per_seed`); both may be traced.
    `step(state, action, key, force_truncate=False)` has the base interface; it splits `key` as the base
    class does, so with the kind's transformation undone the results equal the unwrapped env's.
    With `envs_per_seed = E` (PPO's num_envs stepping in lockstep) each step advances the per-seed step
    count by E, so a switch happens at the first multiple of E at or after `k * period`.
    """

    def __init__(self, env: JaxEnv, cfg: EnvConfig, envs_per_seed: int = 1):
        validate(cfg)
        if int(envs_per_seed) < 0:
            raise ValueError(f"envs_per_seed must be >= 1 (0: the phase never moves, for evaluation), got "
                             f"{envs_per_seed}")
        self.cfg, self.kind, self.E = cfg, cfg.nonstationary, int(envs_per_seed)
        self.period = int(cfg.period)
        if self.kind == "tasks":
            ids = list(cfg.tasks)
            if env.env_id not in ids:
                raise ValueError(f"run env {env.env_id} is not one of env.tasks ({', '.join(ids)}); set the run env "
                                 f"to env.tasks[0]")
            bad = [i for i in ids if not is_jax_native(i)]
            if bad:
                raise ValueError(f"env.tasks on the jit driver must all be JAX-native ({', '.join(JAX_NATIVE)}); "
                                 f"not: {', '.join(bad)} (use the host driver)")
            self.envs = [env if i == env.env_id else make_jax_env(i) for i in ids]
            _check_same_spaces(ids, self.envs, cfg.pad_obs)
        else:
            self.envs = [env]
            if self.kind == "dynamics":
                _scaled_jax_env(env, cfg.dynamics, jnp.float32(1.0))  # raises if unsupported
        base = self.envs[0] if self.kind != "tasks" else env
        self.base = base
        self.env_id = base.env_id
        self.discrete, self.action_size = base.discrete, base.action_size
        self.max_episode_steps = max(e.max_episode_steps for e in self.envs)
        self.observation_shape, self.observation_size = base.observation_shape, base.observation_size
        if self.kind == "tasks" and cfg.pad_obs:
            self.observation_shape = padded_shape(self.envs)
            self.observation_size = int(np.prod(self.observation_shape))
        self.action_low, self.action_high, self.action_shape = base.action_low, base.action_high, base.action_shape
        self._truncate = self.kind == "tasks" or bool(cfg.truncate_at_switch)

    # -- per-phase pieces --------------------------------------------------------------------------
    def _phase(self, step):
        return step // self.period

    def env_for(self, k, schedule):
        if self.kind == "dynamics":
            return _scaled_jax_env(self.base, self.cfg.dynamics, _scale(self.cfg, k, schedule))
        return self.base

    def _obs(self, obs, k, schedule):
        if self.kind != "permute_obs":
            return obs
        return obs[_permutation(self.cfg, k, self.observation_size, schedule)]

    def _task_obs(self, obs, j: int):
        """Task `j`'s observation in the sequence's shape (padded with `pad_obs`)."""
        return padded_obs(obs, self.envs[j].observation_shape, self.observation_shape)

    def _reset_env(self, env_state, key, k, schedule):
        """`(env_state, obs)` with the env of phase `k` freshly reset (other tasks' states kept)."""
        if self.kind != "tasks":
            return self.env_for(k, schedule).reset(key)

        def branch(j):
            def f(states):
                fresh, obs = self.envs[j].reset(key)
                return tuple(fresh if i == j else s for i, s in enumerate(states)), self._task_obs(obs, j)
            return f
        T = len(self.envs)
        return jax.lax.switch(k % T, [branch(j) for j in range(T)], env_state)

    def _transition(self, env_state, action, key, k, schedule):
        if self.kind != "tasks":
            return self.env_for(k, schedule).transition(env_state, action, key)

        def branch(j):
            def f(states):
                new, obs, reward, term, trunc = self.envs[j].transition(states[j], action, key)
                return tuple(new if i == j else s for i, s in enumerate(states)), self._task_obs(obs, j), reward, \
                    term, trunc
            return f
        T = len(self.envs)
        return jax.lax.switch(k % T, [branch(j) for j in range(T)], env_state)

    # -- JaxEnv interface --------------------------------------------------------------------------
    def reset(self, key, step=0, schedule=0):
        step = jnp.asarray(step, jnp.int32)
        schedule = jnp.asarray(schedule, jnp.uint32)
        k = self._phase(step)
        if self.kind == "tasks":
            states = tuple(e.reset(key)[0] for e in self.envs)
            env_state, obs = self._reset_env(states, key, k, schedule)
        else:
            env_state, obs = self._reset_env(None, key, k, schedule)
        return NonstationaryState(env=env_state, step=step, schedule=schedule), self._obs(obs, k, schedule)

    def transition(self, state: NonstationaryState, action, key):
        """One step without auto-reset: `(state, obs, reward, terminated, truncated)`, `obs` in this
        step's phase. A switch after this step is reported as truncation for `tasks` (and with
        `truncate_at_switch`); the caller then resets."""
        k = self._phase(state.step)
        nxt = state.step + self.E
        env_state, obs, reward, term, trunc = self._transition(state.env, action, key, k, state.schedule)
        if self._truncate:
            trunc = (trunc | (self._phase(nxt) != k)) & ~term
        if self.kind == "flip_reward":
            reward = reward * _sign(k)
        return (state.replace(env=env_state, step=nxt), self._obs(obs, k, state.schedule), reward, term, trunc)

    def step(self, state: NonstationaryState, action, key, force_truncate=False):
        k_step, k_reset = jax.random.split(key)
        k = self._phase(state.step)
        nxt = state.step + self.E
        k_next = self._phase(nxt)
        env_state, raw, reward, term, trunc = self._transition(state.env, action, k_step, k, state.schedule)
        switched = k_next != k
        trunc = (trunc | jnp.asarray(force_truncate, bool) | (switched & self._truncate)) & ~term
        done = term | trunc
        fresh, reset_raw = self._reset_env(env_state, k_reset, k_next, state.schedule)
        env_state = jax.tree.map(lambda f, s: jnp.where(done, f, s).astype(f.dtype), fresh, env_state)
        final_obs = self._obs(raw, k, state.schedule)
        next_obs = self._obs(jnp.where(done, reset_raw, raw), k_next, state.schedule)
        if self.kind == "flip_reward":
            reward = reward * _sign(k)
        return (NonstationaryState(env=env_state, step=nxt, schedule=state.schedule), next_obs, reward, term,
                trunc, final_obs)

    def __repr__(self):
        return f"NonstationaryJaxEnv({self.env_id!r}, {self.kind})"


def wrap_jax(env: JaxEnv, cfg: EnvConfig, envs_per_seed: int = 1) -> JaxEnv:
    """`env` made non-stationary by `cfg` (the env itself when `cfg.nonstationary == 'none'`). For `tasks`,
    `env` must be one of `cfg.tasks` (it is reused; the others are built)."""
    validate(cfg)
    if cfg.nonstationary == "none":
        return env
    return NonstationaryJaxEnv(env, cfg, envs_per_seed)


# --------------------------------------------------------------------------------------------------
# Host wrapper
# --------------------------------------------------------------------------------------------------

class _MujocoPhysics:
    """Scales a MuJoCo model in place from its base values (gymnasium MuJoCo envs, dm_control)."""

    def __init__(self, model, dynamics: str):
        import mujoco
        self._mujoco, self.model, self.dynamics = mujoco, model, dynamics
        self.raw = getattr(model, "ptr", model)  # dm_control wraps the MjModel
        self.base = {n: np.array(getattr(self.raw, n)) for n in
                     ("geom_friction", "pair_friction", "body_mass", "body_inertia")}
        self.base["gravity"] = np.array(self.raw.opt.gravity)

    def apply(self, s: float):
        m, b = self.raw, self.base
        if self.dynamics == "friction":
            m.geom_friction[:, 0] = b["geom_friction"][:, 0] * s
            if m.npair:
                m.pair_friction[:, :2] = b["pair_friction"][:, :2] * s
        elif self.dynamics == "gravity":
            m.opt.gravity[:] = b["gravity"] * s
        else:
            m.body_mass[:] = b["body_mass"] * s
            m.body_inertia[:] = b["body_inertia"] * s
            self._mujoco.mj_setConst(m, self._mujoco.MjData(m))  # invweights, subtree masses


class _ClassicPhysics:
    """Scales a gymnasium classic-control env's attributes from their base values."""

    def __init__(self, unwrapped, env_id: str, dynamics: str):
        self.env = unwrapped
        self.fields = [(_GYM_NAMES.get(n, n), e) for n, e in _classic_fields(env_id, dynamics, host_gym=True)]
        self.base = {n: float(getattr(unwrapped, n)) for n, _ in self.fields}

    def apply(self, s: float):
        for n, e in self.fields:
            setattr(self.env, n, self.base[n] * s ** e)


_SCALED_HOST_FNS: dict = {}


class ScaledHostJaxEnv:
    """A JaxEnv on the host interface (like `plastic.jaxenvs.HostJaxEnv`, same keys) whose physics are
    scaled by `self.scale` (a float; 1.0 reproduces HostJaxEnv)."""

    def __init__(self, env: JaxEnv, dynamics: str):
        _scaled_jax_env(env, dynamics, jnp.float32(1.0))  # raises if unsupported
        self.env, self.scale = env, 1.0
        self.observation_size, self.action_size, self.discrete = env.observation_size, env.action_size, env.discrete
        key = (type(env), env.env_id, env.max_episode_steps, dynamics)
        if key not in _SCALED_HOST_FNS:
            def reset(seed, s):
                k_reset, k_steps = jax.random.split(jax.random.PRNGKey(seed))
                state, obs = _scaled_jax_env(env, dynamics, s).reset(k_reset)
                return state, obs, k_steps

            def transition(state, action, k_steps, s):
                return _scaled_jax_env(env, dynamics, s).transition(state, action,
                                                                    jax.random.fold_in(k_steps, state.t))
            _SCALED_HOST_FNS[key] = jax.jit(reset), jax.jit(transition)
        self.reset_fn, self.step_fn = _SCALED_HOST_FNS[key]
        self._state = self._keys = None

    def reset(self, seed: int):
        self._state, obs, self._keys = self.reset_fn(np.uint32(int(seed) % 2 ** 32), np.float32(self.scale))
        return np.array(obs)

    def step(self, action):
        if self._state is None:
            raise RuntimeError("ScaledHostJaxEnv.step before reset")
        if self.discrete:
            a = np.int32(np.asarray(action).reshape(()))
        else:
            a = np.asarray(action, np.float32).reshape(self.action_size)
        self._state, obs, reward, term, trunc = self.step_fn(self._state, a, self._keys, np.float32(self.scale))
        obs, reward, term, trunc = jax.device_get((obs, reward, term, trunc))
        return np.array(obs), float(reward), bool(term), bool(trunc)


def _host_physics(env, dynamics: str):
    """(possibly replaced host env, physics controller with `apply(scale)`) for a host adapter."""
    from plastic.envs import DMCEnv, GymEnv
    from plastic.jaxenvs import HostJaxEnv
    if isinstance(env, HostJaxEnv):
        scaled = ScaledHostJaxEnv(env.env, dynamics)

        class _Ctl:
            def apply(self, s):
                scaled.scale = float(s)
        return scaled, _Ctl()
    if isinstance(env, DMCEnv):
        return env, _MujocoPhysics(env.env.physics.model, dynamics)
    if isinstance(env, GymEnv):
        unwrapped = env.env.unwrapped
        env_id = env.env.spec.id if env.env.spec is not None else type(unwrapped).__name__
        if hasattr(unwrapped, "model") and hasattr(unwrapped, "data"):  # gymnasium MujocoEnv
            return env, _MujocoPhysics(unwrapped.model, dynamics)
        return env, _ClassicPhysics(unwrapped, env_id, dynamics)
    raise ValueError(f"env.nonstationary=dynamics is not available for host env {type(env).__name__}; "
                     f"supported: GymEnv (MuJoCo, classic control), DMCEnv, HostJaxEnv (gymnax classic control, brax)")


def _host_id(env) -> str | None:
    from plastic.envs import GymEnv
    from plastic.jaxenvs import HostJaxEnv
    if isinstance(env, HostJaxEnv):
        return env.env.env_id
    if isinstance(env, GymEnv) and env.env.spec is not None:
        return env.env.spec.id
    return getattr(env, "env_id", None)  # DMCEnv keeps no id: every task env is built afresh


class NonstationaryHostEnv:
    """A host env (`plastic.envs` interface: `reset(seed)`, `step(action) -> (obs, reward, terminated,
    truncated)`) made non-stationary by `cfg`; build with `wrap_host`. It counts the per-seed env steps
    itself (`env_steps`, settable: on resume set it to the restored step count) and applies the phase of
    each step before stepping. `schedule`: the schedule id (used when `cfg.per_seed`)."""

    def __init__(self, env, cfg: EnvConfig, schedule: int = 0, start_step: int = 0, envs_per_seed: int = 1):
        validate(cfg)
        if int(envs_per_seed) < 0:
            raise ValueError(f"envs_per_seed must be >= 1 (0: the phase never moves, for evaluation), got "
                             f"{envs_per_seed}")
        self.cfg, self.kind, self.E = cfg, cfg.nonstationary, int(envs_per_seed)
        self.schedule, self.env_steps = int(schedule), int(start_step)
        self._truncate = self.kind == "tasks" or bool(cfg.truncate_at_switch)
        self._physics = None
        if self.kind == "tasks":
            from plastic.envs import make_env
            ids, own = list(cfg.tasks), _host_id(env)
            if own is not None and own not in ids:
                raise ValueError(f"run env {own} is not one of env.tasks ({', '.join(ids)}); set the run env "
                                 f"to env.tasks[0]")
            self.envs = [env if i == own else make_env(i) for i in ids]
            _check_same_spaces(ids, self.envs, cfg.pad_obs)
        elif self.kind == "dynamics":
            env, self._physics = _host_physics(env, cfg.dynamics)
            self.envs = [env]
        else:
            self.envs = [env]
        self.observation_size = self.envs[0].observation_size
        self.observation_shape = _obs_shape(self.envs[0])
        self._pad = self.kind == "tasks" and cfg.pad_obs
        if self._pad:
            self.observation_shape = padded_shape(self.envs)
            self.observation_size = int(np.prod(self.observation_shape))
        self.observation_dtype = getattr(self.envs[0], "observation_dtype", np.float32)
        self.action_size, self.discrete = self.envs[0].action_size, self.envs[0].discrete
        self.active = None          # the task env reset last
        self._applied = None         # the phase whose physics are applied
        self._perm_phase, self._perm = None, None

    @property
    def phase(self) -> int:
        return self.env_steps // int(self.cfg.period)

    def _apply(self, k: int):
        if self._physics is not None and self._applied != k:
            self._physics.apply(scale(self.cfg, k, self.schedule))
            self._applied = k

    def _obs(self, obs, k: int):
        if self._pad:
            flat = padded_obs(np.asarray(obs), _obs_shape(self.active), self.observation_shape, np)
            return flat if np.ndim(obs) == 1 else flat.reshape(self.observation_shape)
        if self.kind != "permute_obs":
            return obs
        if self._perm_phase != k:
            self._perm, self._perm_phase = permutation(self.cfg, k, obs.size, self.schedule), k
        return obs[self._perm]

    def reset(self, seed: int):
        k = self.phase
        self.active = self.envs[k % len(self.envs)]
        self._apply(k)
        return self._obs(self.active.reset(seed), k)

    def step(self, action):
        if self.active is None:
            raise RuntimeError("NonstationaryHostEnv.step before reset")
        k = self.phase
        if self.kind == "tasks" and self.active is not self.envs[k % len(self.envs)]:
            raise RuntimeError("env.nonstationary=tasks: the task switched without a reset; reset after "
                               "every episode end (a switch is reported as truncation)")
        self._apply(k)
        obs, reward, term, trunc = self.active.step(action)
        self.env_steps += self.E
        if self._truncate and self.phase != k and not term:
            trunc = True
        if self.kind == "flip_reward" and k % 2 == 1:
            reward = -reward
        return self._obs(obs, k), reward, term, trunc


def wrap_host(env, cfg: EnvConfig, schedule: int = 0, start_step: int = 0, envs_per_seed: int = 1):
    """`env` (a host adapter from `plastic.envs.make_env`) made non-stationary by `cfg` (the env itself when
    `cfg.nonstationary == 'none'`). `schedule`: the seed's schedule id (when `cfg.per_seed`, pass the run
    seed of that seed); `start_step`: the per-seed env steps already taken (resume). For `tasks`, `env`
    must be one of `cfg.tasks` (reused; the others are built with `make_env`)."""
    validate(cfg)
    if cfg.nonstationary == "none":
        return env
    return NonstationaryHostEnv(env, cfg, schedule, start_step, envs_per_seed)


__all__ = ["EnvConfig", "KINDS", "DYNAMICS", "PRESETS", "preset", "validate", "check_dynamics_support",
           "switch_index", "switch_steps", "scale", "permutation", "phase_info", "padded_shape", "padded_obs",
           "NonstationaryState",
           "NonstationaryJaxEnv", "wrap_jax", "NonstationaryHostEnv", "ScaledHostJaxEnv", "wrap_host"]
