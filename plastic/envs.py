"""Host-stepped environments behind one interface, and the vector of one env per seed.

Ids: gymnasium ids as they are (`HalfCheetah-v5`, `Pendulum-v1`), `dmc:DOMAIN-TASK`
(e.g. `dmc:cheetah-run`, observations flattened in key order), and the JAX-native ids of
`plastic.jaxenvs` (`gymnax:NAME`, `brax:NAME[:BACKEND]`, `probe:NAME`: tiny envs with known values, for
tests), stepped here one jitted call at a time through `HostJaxEnv`. Agents see actions in [-1, 1];
adapters clip (JAX-native envs) and rescale to the env's bounds.

`step` returns `(obs, reward, terminated, truncated)`: termination stops bootstrapping, truncation
(time limits) does not. Every episode is reset with a seed derived from (run seed + seed index,
episode index), so an episode's randomness does not depend on how the run was interrupted.
"""
from __future__ import annotations

import os

import numpy as np

from plastic.jaxenvs import PROBES, HostJaxEnv, make_jax_env

JAX_NATIVE = ("gymnax:", "brax:", "probe:")


def is_jax_native(env_id: str) -> bool:
    """Whether `env_id` names a JAX-native env (`plastic.jaxenvs`), steppable inside jit."""
    return env_id.startswith(JAX_NATIVE)


class GymEnv:
    def __init__(self, env_id: str):
        import gymnasium as gym
        try:
            self.env = gym.make(env_id)
        except gym.error.Error as e:
            raise ValueError(f"unknown environment {env_id!r} ({type(e).__name__}); use a gymnasium id "
                             f"such as HalfCheetah-v5, dmc:DOMAIN-TASK such as dmc:cheetah-run, gymnax:NAME, "
                             f"brax:NAME[:BACKEND], or probe:NAME ({', '.join(PROBES)})") from None
        space = self.env.action_space
        self.observation_size = int(np.prod(self.env.observation_space.shape))
        if isinstance(space, gym.spaces.Discrete):
            self.discrete, self.action_size = True, int(space.n)
        elif isinstance(space, gym.spaces.Box):
            self.discrete, self.action_size = False, int(np.prod(space.shape))
            self.low, self.high = space.low.astype(np.float64), space.high.astype(np.float64)
        else:
            raise ValueError(f"{env_id} has a {type(space).__name__} action space; supported: Box (continuous), "
                             f"Discrete")

    def reset(self, seed: int):
        obs, _ = self.env.reset(seed=int(seed))
        return np.asarray(obs, np.float32).ravel()

    def step(self, action):
        if self.discrete:
            a = int(np.asarray(action).reshape(()))
        else:
            a = self.low + (np.asarray(action, np.float64) + 1.0) * 0.5 * (self.high - self.low)
            a = a.reshape(self.env.action_space.shape)
        obs, r, term, trunc, _ = self.env.step(a)
        return np.asarray(obs, np.float32).ravel(), float(r), bool(term), bool(trunc)


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
        self.action_size = int(np.prod(spec.shape))

    @staticmethod
    def _flat(obs):
        return np.concatenate([np.asarray(v, np.float32).ravel() for v in obs.values()])

    def reset(self, seed: int):
        self.env.task._random = np.random.RandomState(int(seed) % (2 ** 32))  # per-episode seed
        return self._flat(self.env.reset().observation)

    def step(self, action):
        a = self.low + (np.asarray(action, np.float64) + 1.0) * 0.5 * (self.high - self.low)
        ts = self.env.step(a)
        last = ts.last()
        terminated = bool(last and ts.discount == 0.0)
        return self._flat(ts.observation), float(ts.reward or 0.0), terminated, bool(last and not terminated)


def make_env(env_id: str):
    if env_id.startswith("dmc:"):
        return DMCEnv(env_id)
    if is_jax_native(env_id):
        return HostJaxEnv(make_jax_env(env_id))
    return GymEnv(env_id)


def episode_seed(seed: int, episode: int) -> int:
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


class HostEnvs:
    """One host env per seed, stepped in a Python loop; auto-resets finished episodes.

    `step(actions)` returns `(next_obs, reward, terminated, truncated, final_obs)`: `final_obs` is the
    true last observation of a finished episode (stored in the replay), `next_obs` the reset one.
    """

    def __init__(self, env_id: str, n: int, run_seed: int, episodes=None):
        self.envs = [make_env(env_id) for _ in range(n)]
        self.run_seed = run_seed
        self.episodes = list(episodes) if episodes is not None else [0] * n
        self.observation_size = self.envs[0].observation_size
        self.action_size = self.envs[0].action_size  # number of actions if discrete
        self.discrete = self.envs[0].discrete

    def reset(self):
        return np.stack([e.reset(episode_seed(self.run_seed + i, self.episodes[i])) for i, e in enumerate(self.envs)])

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
            nxt[i] = self.envs[i].reset(episode_seed(self.run_seed + i, self.episodes[i]))
        return nxt, reward, term, trunc, final
