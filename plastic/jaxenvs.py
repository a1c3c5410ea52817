"""JAX-native environments behind one functional interface, and an adapter to the host interface.

Ids: `gymnax:NAME` (a name from `gymnax.registered_envs`, e.g. `gymnax:CartPole-v1`,
`gymnax:Breakout-MinAtar`, `gymnax:Pendulum-v1`), `brax:NAME` or `brax:NAME:BACKEND` (e.g. `brax:ant`,
`brax:hopper:spring`; backends positional (default), spring, generalized, mjx), `playground:NAME` or
`playground:NAME:BACKEND` (MuJoCo Playground, e.g. `playground:CheetahRun`, `playground:WalkerWalk:warp`;
see `PlaygroundEnv`) and `probe:NAME` (tiny envs with analytic action values, for tests; see `ProbeJaxEnv`).

A `JaxEnv` is a static Python object whose methods are pure and jittable, for ONE unbatched env (vmap
them for a batch):

    state, obs = env.reset(key)
    state, next_obs, reward, terminated, truncated, final_obs = env.step(state, action, key)

`step` auto-resets: when the episode ends, `next_obs` and `state` belong to a fresh episode, while
`final_obs` is always the observation this step really reached (the replay's next_obs). Termination
stops bootstrapping; truncation (the time limit `max_episode_steps`, or `force_truncate`) does not, and
is never reported together with termination. Observations are flattened float32 vectors. Discrete
actions are int32 scalars; continuous ones are in [-1, 1]^action_size: they are clipped to that box and
then rescaled linearly to the env's bounds.

`HostJaxEnv` gives a JaxEnv the numpy interface of the host envs in `plastic.envs` (`reset(seed)`,
`step(action) -> (obs, reward, terminated, truncated)`, no auto-reset).

gymnax, brax and MuJoCo Playground are imported only when an env of theirs is built, so importing this module
is cheap.
"""
from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

_CONTINUOUS_PROBES = ("constant", "obs", "two_step", "action", "truncated")
PROBES = _CONTINUOUS_PROBES + tuple(f"d_{p}" for p in _CONTINUOUS_PROBES)
BRAX_BACKENDS = ("positional", "spring", "generalized", "mjx")
BRAX_EPISODE_LENGTH = 1000  # brax.envs.create's default episode_length
PLAYGROUND_BACKENDS = ("jax", "warp")  # MuJoCo Playground's `impl`: MJX in JAX, or MuJoCo Warp


@struct.dataclass
class JaxEnvState:
    inner: Any          # the wrapped env's own state
    t: jax.Array        # int32, steps taken in this episode


def _strong(tree):
    """Arrays with concrete (not weak) dtypes, so that reset and step states have identical types."""
    def leaf(x):
        x = jnp.asarray(x)
        return x if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else jnp.asarray(x, x.dtype)
    return jax.tree.map(leaf, tree)


def _flat(obs) -> jax.Array:
    leaves = jax.tree.leaves(obs)
    if len(leaves) == 1:
        return jnp.ravel(leaves[0]).astype(jnp.float32)
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])


class JaxEnv:
    """One env, pure functions. Subclasses set `env_id`, `discrete`, `action_size`, `max_episode_steps`
    (and, if continuous, the bounds `action_low`/`action_high` and `action_shape` the wrapped env wants)
    in `__init__`, implement `reset_inner(key) -> (inner, obs)` and
    `step_inner(inner, action, key) -> (inner, obs, reward, terminated)` (action already converted to the
    env's units), then call `_init_spaces()`. The base class adds the time limit and auto-reset."""

    env_id: str
    discrete: bool
    action_size: int
    max_episode_steps: int
    observation_shape: tuple
    observation_size: int
    observation_dtype = np.float32            # observations are flattened to float32
    action_low: np.ndarray | None = None     # float32 [action_size] (continuous only)
    action_high: np.ndarray | None = None
    action_shape: tuple = ()

    def reset_inner(self, key):
        raise NotImplementedError

    def step_inner(self, inner, action, key):
        raise NotImplementedError

    def _init_spaces(self):
        _, obs = jax.eval_shape(self.reset_inner, jax.random.PRNGKey(0))  # traces only; compiles nothing
        leaves = jax.tree.leaves(obs)
        self.observation_size = int(sum(np.prod(x.shape, dtype=int) for x in leaves))
        self.observation_shape = tuple(leaves[0].shape) if len(leaves) == 1 else (self.observation_size,)

    def env_action(self, action):
        if self.discrete:
            return jnp.asarray(action).reshape(()).astype(jnp.int32)
        a = jnp.clip(jnp.asarray(action, jnp.float32).reshape(self.action_size), -1.0, 1.0)
        a = self.action_low + (a + 1.0) * 0.5 * (self.action_high - self.action_low)
        return a.reshape(self.action_shape)

    def reset(self, key):
        """`(state, obs)` of a fresh episode."""
        inner, obs = self.reset_inner(key)
        return JaxEnvState(inner=_strong(inner), t=jnp.zeros((), jnp.int32)), _flat(obs)

    def transition(self, state: JaxEnvState, action, key):
        """One step with the time limit but without auto-reset:
        `(state, obs, reward, terminated, truncated)`; `obs` is the observation reached."""
        inner, obs, reward, terminated = self.step_inner(state.inner, self.env_action(action), key)
        t = state.t + 1
        terminated = jnp.asarray(terminated).reshape(()).astype(bool)
        truncated = (t >= self.max_episode_steps) & ~terminated
        return (JaxEnvState(inner=_strong(inner), t=t), _flat(obs),
                jnp.asarray(reward, jnp.float32).reshape(()), terminated, truncated)

    def step(self, state: JaxEnvState, action, key, force_truncate=False):
        """`(state, next_obs, reward, terminated, truncated, final_obs)`, auto-resetting ended episodes
        with a key derived from `key`. `force_truncate` (a bool, may be traced) ends the episode as a
        truncation unless it terminated anyway."""
        k_step, k_reset = jax.random.split(key)
        stepped, final_obs, reward, terminated, truncated = self.transition(state, action, k_step)
        truncated = (truncated | jnp.asarray(force_truncate, bool)) & ~terminated
        done = terminated | truncated
        fresh, reset_obs = self.reset(k_reset)
        state = jax.tree.map(lambda f, s: jnp.where(done, f, s).astype(f.dtype), fresh, stepped)
        next_obs = jnp.where(done, reset_obs, final_obs)
        return state, next_obs, reward, terminated, truncated, final_obs

    def __repr__(self):
        return f"{type(self).__name__}({self.env_id!r})"


class GymnaxEnv(JaxEnv):
    """`gymnax:NAME[:full]`. `:full` gives a MinAtar game the full action set of the MinAtar package
    (6 actions, the same meaning in every game; an action a game does not use is a no-op there) instead of
    gymnax's minimal one (Breakout's 3), so that games can follow one another in a sequence. Steps with
    `step_env` (no gymnax auto-reset) under params whose `max_steps_in_episode` is huge, so gymnax's `done` is
    the true termination only; the env's own `max_steps_in_episode` (500 for CartPole-v1) becomes our time
    limit, reported as truncation.
    (Envs whose dynamics or observations read `max_steps_in_episode`, e.g. DiscountingChain-bsuite's
    time feature, see the huge value.)"""

    def __init__(self, env_id: str):
        import gymnax
        _, name, *option = env_id.split(":")
        if name not in gymnax.registered_envs:
            raise ValueError(f"unknown gymnax env {env_id!r}; valid: "
                             f"{', '.join('gymnax:' + n for n in gymnax.registered_envs)}")
        self.env_id = env_id
        self.base_env, params = gymnax.make(name)
        if option:  # `:full`: a MinAtar game with the full action set of the MinAtar package
            if option != ["full"] or not name.endswith("-MinAtar"):
                raise ValueError(f"unknown gymnax env option in {env_id!r}; the only option is :full, for MinAtar "
                                 f"games (the 6 actions of every MinAtar game: no-op, left, up, right, down, fire)")
            self.base_env = type(self.base_env)(use_minimal_action_set=False)
        self.max_episode_steps = int(params.max_steps_in_episode)
        big = 2 ** 30 if isinstance(params.max_steps_in_episode, (int, np.integer)) else float(2 ** 30)
        self.env_params = params.replace(max_steps_in_episode=big)
        space = self.base_env.action_space(params)
        if hasattr(space, "n"):
            self.discrete, self.action_size = True, int(space.n)
        elif hasattr(space, "low") and hasattr(space, "high"):
            self.discrete = False
            self.action_shape = tuple(space.shape)
            self.action_size = int(np.prod(self.action_shape, dtype=int))
            self.action_low = np.broadcast_to(np.asarray(space.low, np.float32), self.action_shape).ravel()
            self.action_high = np.broadcast_to(np.asarray(space.high, np.float32), self.action_shape).ravel()
        else:
            raise ValueError(f"{env_id} has a {type(space).__name__} action space; supported: Box, Discrete")
        self._init_spaces()

    def reset_inner(self, key):
        obs, inner = self.base_env.reset_env(key, self.env_params)
        return inner, obs

    def step_inner(self, inner, action, key):
        obs, inner, reward, done, _ = self.base_env.step_env(key, inner, action, self.env_params)
        return inner, obs, reward, done


@contextlib.contextmanager
def _quiet():
    """Drop what importing brax or MuJoCo Playground and building their envs print (brax's and jaxopt's
    maintenance warnings, Warp's device banner and kernel-cache lines, mujoco.mjx's 'Failed to import warp',
    the progress of a mujoco_menagerie download); everything else printed passes through, unless an error is
    raised (the error says what went wrong in one line)."""
    out, err = io.StringIO(), io.StringIO()
    noise = ("Warp", "warp", "CUDA", "Devices:", '"cpu"', '"cuda', "Kernel cache", "/.cache/warp", "menagerie")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(not actively being|no longer) maintained.*")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    for buf, stream in ((out, sys.stdout), (err, sys.stderr)):
        stream.write("".join(l for l in buf.getvalue().splitlines(keepends=True) if not any(n in l for n in noise)))


class BraxEnv(JaxEnv):
    """`brax:NAME[:BACKEND]`, the bare env (no brax wrappers). Termination is the env's `done`; the time
    limit is brax's default episode length (1000). Brax actions are already in [-1, 1]."""

    def __init__(self, env_id: str):
        _, name, *rest = env_id.split(":")
        backend = rest[0] if rest else "positional"
        if len(rest) > 1 or backend not in BRAX_BACKENDS:
            raise ValueError(f"bad brax env id {env_id!r}: use brax:NAME or brax:NAME:BACKEND with BACKEND one "
                             f"of {', '.join(BRAX_BACKENDS)}")
        with _quiet():
            import brax.envs
            if name not in brax.envs._envs:
                raise ValueError(f"unknown brax env {env_id!r}; valid: "
                                 f"{', '.join('brax:' + n for n in brax.envs._envs)} (optionally :BACKEND)")
            self.base_env = brax.envs.get_environment(name, backend=backend)
        self.env_id = env_id
        self.discrete = False
        self.action_size = int(self.base_env.action_size)
        self.action_shape = (self.action_size,)
        self.action_low = -np.ones(self.action_size, np.float32)
        self.action_high = np.ones(self.action_size, np.float32)
        self.max_episode_steps = BRAX_EPISODE_LENGTH
        with _quiet():
            self._init_spaces()

    def reset_inner(self, key):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Accessing `ncon`", category=DeprecationWarning)
            s = self.base_env.reset(key)
        return s, s.obs

    def step_inner(self, inner, action, key):
        with warnings.catch_warnings():  # brax's contact code reads a deprecated mujoco field when traced
            warnings.filterwarnings("ignore", message="Accessing `ncon`", category=DeprecationWarning)
            s = self.base_env.step(inner, action)
        return s, s.obs, s.reward, s.done


def playground_default_backend() -> str:
    """`jax` (MJX), on every machine: it runs under the seed vmap on CPUs and GPUs. Playground's own default,
    `warp` (MuJoCo Warp), steps one env but fails under `jax.vmap` on a CPU (a tracer escapes its FFI call,
    playground 0.2.0, mujoco-mjx 3.17.0) and is unverified on a GPU here; name it with `:warp` to try it."""
    return "jax"


class PlaygroundEnv(JaxEnv):
    """`playground:NAME[:BACKEND]`: a MuJoCo Playground env (Zakka et al. 2025, the `playground` package), the
    bare env without Playground's training wrappers. NAME is one of `mujoco_playground.registry.ALL_ENVS` (the
    DM Control Suite tasks such as CheetahRun, the locomotion and manipulation tasks); BACKEND is the
    simulator implementation, `jax` (MJX, the default: `playground_default_backend`) or `warp` (MuJoCo Warp).

    The env's default config (`registry.get_default_config`) is used as it is, except its `impl`. Termination
    is the env's `done` (the Control Suite tasks never terminate; locomotion tasks do when the robot falls);
    the time limit is the config's `episode_length`, counted in control steps of `action_repeat` env steps
    each (as Playground's own episode wrapper counts), reported as truncation. An `action_repeat > 1` repeats
    the action and sums the rewards (ending the repeat early at a termination). Actions are in [-1, 1] (the
    envs' control range). Observations: a dict with a `state` entry (Playground's policy observation; the
    `privileged_state` beside it is for asymmetric critics) gives `state`; any other dict is flattened in key
    order, as `dmc:` ids are; arrays are flattened. Vision (pixel) configs are not supported."""

    def __init__(self, env_id: str):
        _, name, *rest = env_id.split(":")
        backend = rest[0] if rest else playground_default_backend()
        if len(rest) > 1 or backend not in PLAYGROUND_BACKENDS:
            raise ValueError(f"bad playground env id {env_id!r}: use playground:NAME or playground:NAME:BACKEND "
                             f"with BACKEND one of {', '.join(PLAYGROUND_BACKENDS)}")
        with _quiet():
            from mujoco_playground import registry
        if name not in registry.ALL_ENVS:
            raise ValueError(f"unknown playground env {env_id!r}; valid: "
                             f"{', '.join('playground:' + n for n in registry.ALL_ENVS)} (optionally :BACKEND)")
        cfg = registry.get_default_config(name)
        if cfg.get("vision", False):
            raise ValueError(f"{env_id}: vision (pixel) configs are not supported")
        cfg.impl = backend
        try:
            with _quiet():
                self.base_env = registry.load(name, config=cfg)
        except subprocess.CalledProcessError:  # its first use clones mujoco_menagerie from GitHub
            from mujoco_playground._src import mjx_env
            raise ValueError(f"{env_id} needs the robot models of mujoco_menagerie, which MuJoCo Playground "
                             f"downloads on first use and could not (offline?): clone "
                             f"https://github.com/google-deepmind/mujoco_menagerie (commit "
                             f"{mjx_env.MENAGERIE_COMMIT_SHA}) into {mjx_env.MENAGERIE_PATH}") from None
        self.env_id, self.backend = env_id, backend
        self.action_repeat = int(cfg.get("action_repeat", 1))
        self.discrete = False
        self.action_size = int(self.base_env.action_size)
        self.action_shape = (self.action_size,)
        self.action_low = -np.ones(self.action_size, np.float32)
        self.action_high = np.ones(self.action_size, np.float32)
        self.max_episode_steps = -(-int(cfg.episode_length) // self.action_repeat)
        with _quiet():
            self._init_spaces()

    @staticmethod
    def _obs(obs):
        return obs["state"] if isinstance(obs, dict) and "state" in obs else obs

    def reset_inner(self, key):
        s = self.base_env.reset(key)
        return s, self._obs(s.obs)

    def step_inner(self, inner, action, key):
        if self.action_repeat == 1:
            s = self.base_env.step(inner, action)
            return s, self._obs(s.obs), s.reward, s.done

        def repeat(carry, _):
            s, total = carry
            nxt = self.base_env.step(s, action)
            nxt = jax.tree.map(lambda n, o: jnp.where(s.done > 0, o, n).astype(n.dtype), nxt, s)
            return (nxt, total + jnp.where(s.done > 0, 0.0, nxt.reward)), None

        (s, total), _ = jax.lax.scan(repeat, (inner, jnp.zeros((), jnp.float32)), None, length=self.action_repeat)
        return s, self._obs(s.obs), total, s.done


class ProbeJaxEnv(JaxEnv):
    """Tiny envs with analytic action values (rejax/Andy Jones style probes). Observation: one float.

    constant:   one step, reward 1, terminal               -> Q = 1
    obs:        one step, obs ±1, reward = obs, terminal    -> Q(s) = s
    two_step:   obs 0 then 1, reward 0 then 1, terminal     -> Q(0) = γ, Q(1) = 1
    action:     one step, reward = -(a - 0.5)², terminal    -> Q(a) = -(a - 0.5)², best a = 0.5
    truncated:  reward 1 forever, truncated after 5 steps   -> Q = 1 / (1 - γ) (truncation bootstraps)

    Continuous probes have one action in [-1, 1]. Discrete twins (two actions, for DQN): d_constant,
    d_obs, d_two_step, d_truncated behave as above for every action; d_action: one step, reward 1 for
    action 1 and 0 for action 0 -> Q = (0, 1). Every probe but `truncated` has a time limit of 1000 steps,
    which its episodes never reach. The observation after a terminal step is 0 (1 after two_step's
    first step).
    """

    def __init__(self, env_id: str):
        name = env_id.split(":", 1)[1]
        if name not in PROBES:
            raise ValueError(f"unknown probe env {env_id!r}; valid: {', '.join('probe:' + p for p in PROBES)}")
        self.env_id = env_id
        self.discrete = name.startswith("d_")
        self.name = name[2:] if self.discrete else name
        self.action_size = 2 if self.discrete else 1
        if not self.discrete:
            self.action_shape = (1,)
            self.action_low, self.action_high = -np.ones(1, np.float32), np.ones(1, np.float32)
        self.max_episode_steps = 5 if self.name == "truncated" else 1000
        self._init_spaces()

    def reset_inner(self, key):
        obs = jnp.where(jax.random.bernoulli(key), 1.0, -1.0) if self.name == "obs" else jnp.zeros(())
        obs = jnp.asarray(obs, jnp.float32).reshape(1)
        return obs, obs  # the inner state is the observation

    def step_inner(self, inner, action, key):
        zero, one = jnp.zeros(1, jnp.float32), jnp.ones(1, jnp.float32)
        if self.name == "constant":
            return zero, zero, 1.0, True
        if self.name == "obs":
            return zero, zero, inner[0], True
        if self.name == "action":
            reward = (action == 1).astype(jnp.float32) if self.discrete else -(action[0] - 0.5) ** 2
            return zero, zero, reward, True
        if self.name == "two_step":
            first = inner[0] == 0.0
            obs = jnp.where(first, one, zero)
            return obs, obs, jnp.where(first, 0.0, 1.0), ~first
        return zero, zero, 1.0, False  # truncated: the base class's time limit (5) ends it


def make_jax_env(env_id: str) -> JaxEnv:
    """The JaxEnv for `gymnax:NAME`, `brax:NAME[:BACKEND]`, `playground:NAME[:BACKEND]` or `probe:NAME`."""
    if env_id.startswith("gymnax:"):
        return GymnaxEnv(env_id)
    if env_id.startswith("brax:"):
        return BraxEnv(env_id)
    if env_id.startswith("playground:"):
        return PlaygroundEnv(env_id)
    if env_id.startswith("probe:"):
        return ProbeJaxEnv(env_id)
    raise ValueError(f"unknown JAX env id {env_id!r}; use gymnax:NAME (e.g. gymnax:CartPole-v1), "
                     f"brax:NAME[:BACKEND] (e.g. brax:ant, brax:hopper:spring), playground:NAME[:BACKEND] "
                     f"(e.g. playground:CheetahRun) or probe:NAME ({', '.join(PROBES)})")


_HOST_FNS: dict = {}  # (env class, env id, time limit) -> jitted (reset, transition), shared by adapters


def _host_fns(env: JaxEnv):
    key = (type(env), env.env_id, env.max_episode_steps)
    if key not in _HOST_FNS:
        def reset(seed):
            k_reset, k_steps = jax.random.split(jax.random.PRNGKey(seed))
            state, obs = env.reset(k_reset)
            return state, obs, k_steps

        def transition(state, action, k_steps):
            return env.transition(state, action, jax.random.fold_in(k_steps, state.t))

        _HOST_FNS[key] = jax.jit(reset), jax.jit(transition)
    return _HOST_FNS[key]


class HostJaxEnv:
    """A JaxEnv with the host interface of `plastic.envs` (numpy in and out, no auto-reset).

    `reset(seed)` resets with key `split(PRNGKey(seed))[0]`; step `i` of the episode (from 0) uses
    `fold_in(split(PRNGKey(seed))[1], i)`. `step` returns the observation actually reached and reports
    the time limit as truncation; the caller resets after an episode ends. The jitted functions are
    shared by all adapters of the same env id and time limit, so n adapters compile once."""

    def __init__(self, env: JaxEnv):
        self.env = env
        self.observation_size, self.action_size = env.observation_size, env.action_size
        self.observation_shape, self.observation_dtype = env.observation_shape, np.float32
        self.discrete = env.discrete
        self.reset_fn, self.step_fn = _host_fns(env)
        self._state = self._keys = None

    def reset(self, seed: int):
        self._state, obs, self._keys = self.reset_fn(np.uint32(int(seed) % 2 ** 32))
        return np.array(obs)

    def step(self, action):
        if self._state is None:
            raise RuntimeError("HostJaxEnv.step before reset")
        if self.discrete:
            a = np.int32(np.asarray(action).reshape(()))
        else:
            a = np.asarray(action, np.float32).reshape(self.action_size)
        self._state, obs, reward, term, trunc = self.step_fn(self._state, a, self._keys)
        obs, reward, term, trunc = jax.device_get((obs, reward, term, trunc))
        return np.array(obs), float(reward), bool(term), bool(trunc)
