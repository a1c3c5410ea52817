"""The evaluation protocol: complete episodes of the deterministic policy on separate eval envs.

At the first log point at or after every multiple of `run.eval_every` env steps, and at the end of the run,
each seed's current agent plays `run.eval_episodes` complete episodes with its evaluation policy
(`agent.eval_act`: TD3 without exploration noise, SAC the mean action, DQN ε-greedy with `dqn.eval_epsilon`,
PPO the mode or, with `ppo.eval_sample`, a sample) on envs of its own. Episode j of every evaluation starts
from the same env seed, derived from `run.eval_seed` and j only: the same episodes for every training seed,
every method and every evaluation point, so scores differ only through the policies. Acting keys (DQN's ε,
PPO's sampling) come from the same fixed stream.

Evaluation reads the agent's parameters and nothing else: it has its own envs and keys and writes nothing
into the training state, so the training rows of a run are the same with evaluation on or off (tested on
both drivers), and a resumed run evaluates exactly as an uninterrupted one. On a non-stationary env
(plastic/nonstationary.py) the eval envs stay in the phase of the last training step for the whole
evaluation (the task, scale, permutation or reward sign the agent is being trained on).

Two backends, one result: `JaxEvaluation` plays the episodes of all seeds as one jitted `lax.while_loop`
(JAX-native envs, both drivers); `HostEvaluation` steps `seeds x episodes` host envs (gymnasium, dm_control,
Atari) from Python with one jitted act call per step for all of them. Each returns, per seed, the mean
return and length of its episodes: the row keys `eval/episode_return` and `eval/episode_length`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from plastic.envs import is_jax_native, make_env
from plastic.jaxenvs import make_jax_env
from plastic.nonstationary import NonstationaryJaxEnv, wrap_host, wrap_jax

EVAL_TAG = 0xE7A1  # keeps eval env seeds apart from the training episodes' (plastic.envs.episode_seed)


def eval_due(run, prev: int, done: int) -> bool:
    """Whether the log point at `done` env steps (the previous one at `prev`) evaluates: the first log point
    at or after each multiple of `run.eval_every`, and the last one of the run."""
    every = run.eval_every
    return bool(every) and (done // every > prev // every or done >= run.steps)


def episode_seeds(run) -> list[int]:
    """The env seed of eval episode j (j < eval_episodes): the same for every training seed and method."""
    return [int(np.random.SeedSequence([run.eval_seed, j, EVAL_TAG]).generate_state(1)[0])
            for j in range(run.eval_episodes)]


def make_evaluation(cfg, agent, placement):
    """The run's evaluation (None when `run.eval_every` is 0): jitted on JAX-native envs, host-stepped
    otherwise."""
    if not cfg.run.eval_every:
        return None
    cls = JaxEvaluation if is_jax_native(cfg.run.env) else HostEvaluation
    return cls(cfg, agent, placement)


class Evaluation:
    def __init__(self, cfg, agent, placement):
        self.cfg, self.agent, self.placement = cfg, agent, placement
        run = cfg.run
        self.n_seeds, self.n = run.seeds, run.eval_episodes
        self.seeds = episode_seeds(run)
        self.key = jax.random.fold_in(jax.random.PRNGKey(run.eval_seed), EVAL_TAG)  # acting keys
        # the non-stationary schedule id of each training seed (as the training envs use it)
        self.schedules = [run.seed + i if cfg.env.per_seed else 0 for i in range(run.seeds)]

    def phase_step(self, step: int) -> int:
        """The per-seed env step whose phase the evaluation after `step` env steps plays in: the last one."""
        return max(step - 1, 0)

    def __call__(self, agent_states, step: int) -> dict:
        """`{"eval/episode_return": [S], "eval/episode_length": [S]}` (numpy, the mean over the episodes)
        of the agents `agent_states` (seed-batched) after `step` env steps."""
        ret, length = self._episodes(agent_states, step)
        return {"eval/episode_return": np.asarray(ret, np.float64).mean(-1),
                "eval/episode_length": np.asarray(length, np.float64).mean(-1)}

    def _act_fn(self):
        """`(agent_states [S], obs [S, N, ...], t) -> actions [S, N, ...]`, the evaluation policy."""
        agent = self.agent

        def one(agent_state, obs, key):
            keys = jax.random.split(key, obs.shape[0])
            return jax.vmap(lambda o, k: agent.eval_act(agent_state, o, k))(obs, keys)

        def act(agent_states, obs, t):
            return self.placement.vmap(one, in_axes=(0, 0, None))(agent_states, obs, jax.random.fold_in(self.key, t))

        return act


class JaxEvaluation(Evaluation):
    """All seeds' episodes in one jitted `lax.while_loop` over a JAX-native env (vmapped over seeds and
    episodes), which runs until every episode has ended."""

    def __init__(self, cfg, agent, placement):
        super().__init__(cfg, agent, placement)
        self.env = wrap_jax(make_jax_env(cfg.run.env), cfg.env, envs_per_seed=0)  # the phase stays put
        self._run = jax.jit(self._rollout)

    def _episodes(self, agent_states, step):
        sched = jnp.asarray(self.schedules, jnp.uint32)
        return jax.device_get(self._run(agent_states, jnp.asarray(self.phase_step(step), jnp.int32), sched))

    def _rollout(self, agent_states, phase_step, schedules):
        env, S, N = self.env, self.n_seeds, self.n
        keys = jnp.stack([jax.random.PRNGKey(s % 2 ** 31) for s in self.seeds])  # [N]
        if isinstance(env, NonstationaryJaxEnv):  # reset in the phase of `phase_step`, each seed's schedule
            state, obs = jax.vmap(lambda s: jax.vmap(lambda k: env.reset(k, step=phase_step, schedule=s))(keys))(
                schedules)
        else:  # the same first states for every seed
            state, obs = jax.tree.map(lambda x: jnp.broadcast_to(x, (S, *x.shape)), jax.vmap(env.reset)(keys))
        act = self._act_fn()
        step_keys = jax.vmap(lambda k: jax.random.split(k)[1])(keys)  # [N]: fold_in(., t) per step

        def cond(c):
            t, _, _, _, _, done = c
            return (t < env.max_episode_steps) & ~jnp.all(done)

        def body(c):
            t, state, obs, ret, length, done = c
            action = act(agent_states, obs, t)
            k = jax.vmap(lambda kk: jax.random.fold_in(kk, t))(step_keys)
            state, obs, reward, term, trunc = jax.vmap(jax.vmap(env.transition), in_axes=(0, 0, None))(
                state, action, k)
            live = ~done
            return (t + 1, state, obs, ret + jnp.where(live, reward, 0.0), length + live.astype(jnp.int32),
                    done | term | trunc)

        zeros = jnp.zeros((S, N))
        init = (jnp.zeros((), jnp.int32), state, obs, zeros, jnp.zeros((S, N), jnp.int32), jnp.zeros((S, N), bool))
        _, _, _, ret, length, _ = jax.lax.while_loop(cond, body, init)
        return ret, length


class HostEvaluation(Evaluation):
    """`seeds x episodes` host envs, stepped from Python until every episode has ended; one jitted call per
    step acts for all of them."""

    def __init__(self, cfg, agent, placement):
        super().__init__(cfg, agent, placement)
        S, N = self.n_seeds, self.n
        self.envs = [wrap_host(make_env(cfg.run.env), cfg.env, schedule=self.schedules[i], envs_per_seed=0)
                     for i in range(S) for _ in range(N)]
        self._act = jax.jit(self._act_fn())

    def _episodes(self, agent_states, step):
        S, N = self.n_seeds, self.n
        for e in self.envs:
            if hasattr(e, "env_steps"):  # non-stationary: the phase of the last training step
                e.env_steps = self.phase_step(step)
        obs = np.stack([e.reset(self.seeds[k % N]) for k, e in enumerate(self.envs)])
        ret, length = np.zeros(S * N), np.zeros(S * N, np.int64)
        done = np.zeros(S * N, bool)
        t = 0
        while not done.all():
            actions = np.asarray(self._act(agent_states, obs.reshape(S, N, *obs.shape[1:]), t))
            actions = actions.reshape(S * N, *actions.shape[2:])
            for k in np.flatnonzero(~done):
                o, r, term, trunc = self.envs[k].step(actions[k])
                obs[k], ret[k], length[k] = o, ret[k] + r, length[k] + 1
                done[k] = term or trunc
            t += 1
        return ret.reshape(S, N), length.reshape(S, N)
