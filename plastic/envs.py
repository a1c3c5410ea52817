"""Host-stepped environments behind one interface, and the vector of one env per seed.

Ids: gymnasium ids as they are (`HalfCheetah-v5`, `Pendulum-v1`), `dmc:DOMAIN-TASK`
(e.g. `dmc:cheetah-run`, observations flattened in key order), `atari:GAME` (e.g. `atari:Breakout`, ale-py's
bundled ROMs, Dopamine/Machado et al. protocol: see `AtariEnv`), and the JAX-native ids of
`plastic.jaxenvs` (`gymnax:NAME`, `brax:NAME[:BACKEND]`, `playground:NAME[:BACKEND]`, `probe:NAME`: tiny envs
with known values, for tests), stepped here one jitted call at a time through `HostJaxEnv`. Agents see
actions in [-1, 1]; every adapter clips them to [-1, 1] (PPO's Gaussian samples are unbounded; the
rollout keeps the sample, the env gets the clipped action, as CleanRL's `ClipAction`) and rescales them
to the env's bounds.

`step` returns `(obs, reward, terminated, truncated)`: termination stops bootstrapping, truncation
(time limits) does not. Every episode is reset with a seed derived from (run seed + seed index, env index,
episode index), so an episode's randomness does not depend on how the run was interrupted.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from plastic.jaxenvs import PROBES, HostJaxEnv, make_jax_env

JAX_NATIVE = ("gymnax:", "brax:", "playground:", "probe:")
FAMILIES = ("dmc:", "atari:", *JAX_NATIVE)  # env id prefixes of the families besides gymnasium's ids


def is_jax_native(env_id: str) -> bool:
    """Whether `env_id` names a JAX-native env (`plastic.jaxenvs`), steppable inside jit."""
    return env_id.startswith(JAX_NATIVE)


def unknown_env(env_id: str, why: str) -> ValueError:
    """The one-line error for an env id that names no env, listing the valid families."""
    return ValueError(f"unknown environment {env_id!r} ({why}); use a gymnasium id such as HalfCheetah-v5, "
                      f"dmc:DOMAIN-TASK such as dmc:cheetah-run, atari:GAME such as atari:Breakout, gymnax:NAME, "
                      f"brax:NAME[:BACKEND], playground:NAME[:BACKEND] such as playground:CheetahRun, or probe:NAME "
                      f"({', '.join(PROBES)})")


def check_env_id(env_id: str) -> None:
    """Raise `unknown_env` if `env_id` has a `PREFIX:` that is neither an env family (`FAMILIES`) nor an
    importable module (gymnasium's `module:EnvName` ids import `module` to register the env), without
    building anything. Names within a family are checked when the env is built."""
    prefix, sep, _ = env_id.partition(":")
    if not sep or env_id.startswith(FAMILIES):
        return
    try:
        importable = bool(prefix.strip()) and importlib.util.find_spec(prefix) is not None
    except (ImportError, ValueError):  # a dotted prefix whose parent is missing; an odd name
        importable = False
    if not importable:
        raise unknown_env(env_id, f"no env family {prefix}:")


class GymEnv:
    observation_dtype = np.float32

    def __init__(self, env_id: str):
        import gymnasium as gym
        try:
            self.env = self._make(env_id)
        except (gym.error.Error, ModuleNotFoundError) as e:  # the latter: `module:EnvName` ids
            raise unknown_env(env_id, type(e).__name__) from None
        space = self.env.action_space
        self.observation_shape = tuple(self.env.observation_space.shape)
        self.observation_size = int(np.prod(self.observation_shape))
        if isinstance(space, gym.spaces.Discrete):
            self.discrete, self.action_size = True, int(space.n)
        elif isinstance(space, gym.spaces.Box):
            self.discrete, self.action_size = False, int(np.prod(space.shape))
            self.low, self.high = space.low.astype(np.float64), space.high.astype(np.float64)
        else:
            raise ValueError(f"{env_id} has a {type(space).__name__} action space; supported: Box (continuous), "
                             f"Discrete")

    @staticmethod
    def _make(env_id):
        import gymnasium as gym
        return gym.make(env_id)

    def _obs(self, obs):
        return np.asarray(obs, self.observation_dtype).ravel()

    def reset(self, seed: int):
        obs, _ = self.env.reset(seed=int(seed))
        return self._obs(obs)

    def step(self, action):
        if self.discrete:
            a = int(np.asarray(action).reshape(()))
        else:
            a = rescale(action, self.low, self.high).reshape(self.env.action_space.shape)
        obs, r, term, trunc, _ = self.env.step(a)
        return self._obs(obs), float(r), bool(term), bool(trunc)


class AtariEnv(GymEnv):
    """`atari:GAME` (e.g. `atari:Breakout`, `atari:Pong`): ale-py's bundled ROMs (no download) with the
    protocol of Dopamine, whose DQN the ReDo paper uses (Machado et al. 2018): sticky actions with
    probability 0.25, the minimal action set, 4 frames skipped with the max over the last two, 84x84
    grayscale, a stack of the last 4 frames, no no-op starts, the episode ends at game over (not at a lost
    life), and at most 108k frames (27k agent steps) per episode. Observations are uint8 `[84, 84, 4]`
    (channels last, flattened in the replay; the CNN torso reshapes and scales them); rewards are the
    game's own (DQN clips them for learning with `dqn.reward_clip`; logged returns stay unclipped)."""
    observation_dtype = np.uint8
    STICKY, FRAME_SKIP, SIZE, STACK, MAX_FRAMES = 0.25, 4, 84, 4, 108_000

    @classmethod
    def _make(cls, env_id):
        import gymnasium as gym
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TransformObservation
        try:
            import ale_py
        except ImportError:
            raise ValueError(f"{env_id} needs ale-py (pip install ale-py opencv-python-headless)") from None
        gym.register_envs(ale_py)
        game = env_id.split(":", 1)[1]
        try:
            env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=cls.STICKY,
                           max_num_frames_per_episode=cls.MAX_FRAMES)
        except gym.error.Error:
            raise ValueError(f"unknown Atari game {env_id!r}; use atari:GAME with a game of ale-py's "
                             f"(e.g. atari:Breakout, atari:Pong, atari:Seaquest)") from None
        env = AtariPreprocessing(env, noop_max=0, frame_skip=cls.FRAME_SKIP, screen_size=cls.SIZE,
                                 terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
        env = FrameStackObservation(env, cls.STACK)
        space = gym.spaces.Box(0, 255, (cls.SIZE, cls.SIZE, cls.STACK), np.uint8)
        return TransformObservation(env, lambda o: np.moveaxis(np.asarray(o), 0, -1), space)


class DMCEnv:
    def __init__(self, env_id: str):
        os.environ.setdefault("MUJOCO_GL", "egl")
        from dm_control import suite
        name = env_id.split(":", 1)[1]
        domain, _, task = name.partition("-")
        if (domain, task.replace("-", "_")) not in suite.ALL_TASKS:
            raise ValueError(f"unknown dm_control task {env_id!r}; valid examples: dmc:cheetah-run, "
                             f"dmc:walker-walk, dmc:humanoid-run (DOMAIN-TASK from dm_control.suite.ALL_TASKS)")
        self.env = suite.load(domain, task.replace("-", "_"), task_kwargs={"random": 0})
        spec = self.env.action_spec()
        self.discrete = False
        self.low, self.high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self.observation_size = int(sum(np.prod(v.shape) for v in self.env.observation_spec().values()))
        self.observation_shape, self.observation_dtype = (self.observation_size,), np.float32
        self.action_size = int(np.prod(spec.shape))

    @staticmethod
    def _flat(obs):
        return np.concatenate([np.asarray(v, np.float32).ravel() for v in obs.values()])

    def reset(self, seed: int):
        self.env.task._random = np.random.RandomState(int(seed) % (2 ** 32))  # per-episode seed
        return self._flat(self.env.reset().observation)

    def step(self, action):
        ts = self.env.step(rescale(action, self.low, self.high))
        last = ts.last()
        terminated = bool(last and ts.discount == 0.0)
        return self._flat(ts.observation), float(ts.reward or 0.0), terminated, bool(last and not terminated)


def make_env(env_id: str):
    if env_id.startswith("dmc:"):
        return DMCEnv(env_id)
    if env_id.startswith("atari:"):
        return AtariEnv(env_id)
    if is_jax_native(env_id):
        return HostJaxEnv(make_jax_env(env_id))
    return GymEnv(env_id)


def rescale(action, low, high):
    """An agent's action in [-1, 1] (clipped to it first) as an action in [low, high]."""
    a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
    return low + (a + 1.0) * 0.5 * (high - low)


def episode_seed(seed: int, episode: int, stream: int = 0) -> int:
    """The reset seed of episode `episode` of env `stream` of the run seed `seed` (stream 0 is a seed's
    only env off-policy; PPO's `num_envs` envs of one seed are streams 0 ... num_envs - 1)."""
    entropy = [seed, episode] if stream == 0 else [seed, episode, stream]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class HostEnvs:
    """One host env per seed, stepped in a Python loop; auto-resets finished episodes.

    `step(actions)` returns `(next_obs, reward, terminated, truncated, final_obs)`: `final_obs` is the
    true last observation of a finished episode (stored in the replay), `next_obs` the reset one.
    """

    def __init__(self, env_id: str, n: int, run_seed: int, episodes=None, per_seed: int = 1):
        self.envs = [make_env(env_id) for _ in range(n)]
        # env i belongs to seed i // per_seed: its episodes are those of a run with seed run_seed + i // per_seed
        # (a vmapped seed is the run with that seed, and seeds of one run share no env stream)
        self.streams = [(run_seed + i // per_seed, i % per_seed) for i in range(n)]
        self.episodes = list(episodes) if episodes is not None else [0] * n
        self.observation_size = self.envs[0].observation_size
        self.observation_shape = self.envs[0].observation_shape
        self.observation_dtype = self.envs[0].observation_dtype
        self.action_size = self.envs[0].action_size  # number of actions if discrete
        self.discrete = self.envs[0].discrete

    def restore(self, episodes, env_steps: int):
        """After a resume: each env's episode counter, and the non-stationary schedule position."""
        self.episodes = list(episodes)
        for e in self.envs:
            if hasattr(e, "env_steps"):
                e.env_steps = int(env_steps)

    def reset(self):
        return np.stack([e.reset(self.episode_seed(i)) for i, e in enumerate(self.envs)])

    def episode_seed(self, i: int) -> int:
        """The reset seed of env i's current episode."""
        seed, stream = self.streams[i]
        return episode_seed(seed, self.episodes[i], stream)

    def step(self, actions, stop=None):
        outs = [e.step(a) for e, a in zip(self.envs, actions)]
        final = np.stack([o[0] for o in outs])
        reward = np.array([o[1] for o in outs], np.float32)
        term = np.array([o[2] for o in outs], bool)
        trunc = np.array([o[3] for o in outs], bool)
        if stop is not None:
            trunc |= np.asarray(stop, bool) & ~term
        nxt = final.copy()
        for i in np.flatnonzero(term | trunc):
            self.episodes[i] += 1
            nxt[i] = self.envs[i].reset(self.episode_seed(i))
        return nxt, reward, term, trunc, final
