"""The jitted driver: JAX-native envs (brax, gymnax, probes) stepped inside the training program.

A chunk of training — env steps, replay writes or rollouts, updates, interventions, and the logged values
at its end — is one jitted `lax.scan` over all seeds (the seed axis is vmapped inside the step, with
counters unbatched, exactly as on the host driver). Between chunks the run loop (plastic/loop.py) writes
the log rows, evaluates, checkpoints and checks for signals, so runs resume and report as host-driver runs
do. A chunk is `run.log_every` env steps (rounded to whole PPO iterations).

Keys: seed i's env key is derived from `run.seed + i` and folded with the env-step counter at every step
(acting keys likewise), so a run's randomness does not depend on where it was split into chunks and a
vmapped seed equals the single-seed run with that seed.

- `JitOffPolicy`: TD3, SAC, DQN; the per-seed functions are plastic/programs.py `OffPolicy`'s.
- `JitOnPolicy`: PPO; one scan iteration is a rollout of `num_steps` steps of `num_envs` envs per seed,
  then one update (epochs of minibatch steps) per seed (`OnPolicy`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from plastic import loop
from plastic.checkpoint import uncommitted
from plastic.core import maybe
from plastic.nonstationary import NonstationaryJaxEnv
from plastic.programs import OffPolicy, OnPolicy
from plastic.setup import jax_envs, make_setup

ENV_KEY_SALT = 0x3E7  # env keys: fold_in(PRNGKey(seed + i), ENV_KEY_SALT)


@struct.dataclass
class EnvCarry:
    """Per-seed env state between steps (leading axes [S] or [S, E])."""
    state: object
    obs: jax.Array
    key: jax.Array          # per seed; folded with the env-step counter
    stop: jax.Array         # acting-loop hook asked to end the episode at the next step
    ep_return: jax.Array
    ep_length: jax.Array


class Chunks:
    """What both jitted drivers share: the env carry at reset, the compiled chunk program, and the run loop's
    protocol for a carry `(state, counters, EnvCarry)` that checkpoints whole. Each driver holds one and
    gives it its `chunk(carry, n) -> (carry, episode sums, logged values)`."""

    SEED_BATCHED = (True, False, True)  # (state, counters, EnvCarry)

    def __init__(self, setup, env, chunk):
        self.setup, self.env = setup, env
        self.traces = 0  # Python traces of the chunk program (a retrace test reads it)

        def program(carry, n):
            self.traces += 1
            carry, sums, stats = chunk(carry, n)
            return setup.placement.constrain(carry, self.SEED_BATCHED), sums, stats  # a sharded carry keeps its layout

        self.program = jax.jit(program, static_argnums=(1,), donate_argnums=(0,))

    def env_carry(self, lead: tuple[int, ...]) -> EnvCarry:
        """Reset every env; `lead` is (S,) or (S, E)."""
        cfg, S = self.setup.cfg, self.setup.n_seeds
        keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s), ENV_KEY_SALT))(cfg.run.seed + jnp.arange(S))
        reset_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 0x7FFFFFFF), int(np.prod(lead[1:]))))(keys)
        reset_keys = reset_keys.reshape(*lead, *reset_keys.shape[2:])
        # the non-stationary schedule id of seed i (the same for all its envs); ignored by plain envs
        sched = (cfg.run.seed + jnp.arange(S)).astype(jnp.uint32) if cfg.env.per_seed else jnp.zeros(S, jnp.uint32)
        sched = jnp.broadcast_to(sched.reshape(S, *([1] * (len(lead) - 1))), lead)
        wrapped = isinstance(self.env, NonstationaryJaxEnv)
        reset = (lambda k, s: self.env.reset(k, schedule=s)) if wrapped else (lambda k, s: self.env.reset(k))
        for _ in lead:
            reset = jax.vmap(reset)
        state, obs = reset(reset_keys, sched)
        carry = EnvCarry(state=state, obs=obs, key=keys, stop=jnp.zeros(lead, bool),
                         ep_return=jnp.zeros(lead), ep_length=jnp.zeros(lead, jnp.int32))
        # MJX and brax envs put their model on the device, so part of their reset state is committed: the chunk
        # program compiled a second time on its second call (17 s on playground:CheetahRun). A sharded carry is
        # placed next, whole.
        return carry if self.setup.placement.sharded else uncommitted(carry)

    def advance(self, carry, n: int, stop: dict, sync_end: bool):
        """The run loop's `advance` (plastic/loop.py): signals are checked between chunks."""
        carry, sums, stats = self.program(carry, n)
        sums, stats = jax.device_get((sums, stats))
        return carry, n, sums, stats


class JitOffPolicy(loop.Driver):
    """Off-policy agents on a JAX-native env, a whole chunk in one program."""

    SEED_BATCHED = Chunks.SEED_BATCHED  # (TrainState, counters, EnvCarry)

    def __init__(self, cfg):
        super().__init__(make_setup(cfg, jax_envs(cfg)))
        self.env = self.envs
        self.program = OffPolicy(self.setup)
        self.chunks = Chunks(self.setup, self.env, self.chunk)
        self.chunk_program, self.advance = self.chunks.program, self.chunks.advance

    def init_carry(self):
        ts, counters = self.program.init_state()
        return ts, counters, self.placement.place(self.chunks.env_carry((self.n_seeds,)), True)

    def chunk(self, carry, n):
        ts, counters, ec = carry
        ls, p = self.cfg.agent_cfg.learning_starts, self.program

        def step(c, _):
            ts, counters, ec, sums = c
            t = counters["env_steps"]
            action = p.seed_actions(ts, counters, ec.obs)
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(ec.key, t)
            state, nobs, reward, term, trunc, final = jax.vmap(self.env.step)(ec.state, action, keys, ec.stop)
            tr = {"obs": ec.obs, "action": action, "reward": reward, "next_obs": final,
                  "terminated": term.astype(jnp.float32), "done": (term | trunc).astype(jnp.float32)}
            ts, counters, stop = p.store(ts, counters, tr)
            ts, counters = self._maybe_learn(ts, counters, t >= ls)
            ret, length, sums = loop.account(ec.ep_return, ec.ep_length, sums, reward, term | trunc)
            ec = ec.replace(state=state, obs=nobs, stop=stop, ep_return=ret, ep_length=length)
            return (ts, counters, ec, sums), None

        (ts, counters, ec, sums), _ = jax.lax.scan(step, (ts, counters, ec, loop.episode_sums(self.n_seeds)),
                                                   None, length=n)
        ts, stats = p.seed_stats(ts)
        return (ts, counters, ec), sums, stats

    def _maybe_learn(self, ts, counters, pred):
        """The update rounds under `lax.cond`: everything of the state passes through the cond but the replay
        (update rounds only read it), which the branch reads from the closure, so the untaken branch does not
        copy it."""
        def learn(c):
            rest, counters = c
            out, counters = self.program.seed_updates(rest.replace(replay=ts.replay), counters)
            return out.replace(replay=None), counters

        rest, counters = maybe(pred, learn, (ts.replace(replay=None), counters))
        return rest.replace(replay=ts.replay), counters


class JitOnPolicy(loop.Driver):
    """PPO on a JAX-native env: rollouts of `num_envs` x `num_steps` per seed, then one update."""

    SEED_BATCHED = Chunks.SEED_BATCHED  # (OnPolicyState, counters, EnvCarry)

    def __init__(self, cfg):
        super().__init__(make_setup(cfg, jax_envs(cfg, per_seed=cfg.agent_cfg.num_envs)))
        self.env = self.envs
        self.program = p = OnPolicy(self.setup)
        self.n_envs, self.unit = p.n_envs, p.unit
        self.chunks = Chunks(self.setup, self.env, self.chunk)
        self.chunk_program, self.advance = self.chunks.program, self.chunks.advance

    def init_carry(self):
        ts, counters = self.program.init_state()
        return self.placement.place((ts, counters, self.chunks.env_carry((self.n_seeds, self.n_envs))),
                                    self.SEED_BATCHED)

    def chunk(self, carry, n):
        ts, counters, ec = carry
        E, p = self.n_envs, self.program

        def step(c, _):
            ts, counters, ec, sums = c
            t = counters["env_steps"]
            fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
            act = self.placement.vmap(p.act, in_axes=(0, 0, 0, None))
            action, logp = act(ts.agent, ec.obs, fold(ts.act_key, t), t)
            keys = jax.vmap(lambda k: jax.random.split(k, E))(fold(ec.key, t))
            state, nobs, reward, term, trunc, final = jax.vmap(jax.vmap(self.env.step))(
                ec.state, action, keys, ec.stop)
            tr = {"obs": ec.obs, "action": action, "logp": logp, "reward": reward, "next_obs": final,
                  "terminated": term, "truncated": trunc}
            ret, length, sums = loop.account(ec.ep_return, ec.ep_length, sums, reward, term | trunc)
            ec = ec.replace(state=state, obs=nobs, ep_return=ret, ep_length=length)
            return (ts, {**counters, "env_steps": t + E}, ec, sums), tr

        def iteration(c, _):
            (ts, counters, ec, sums), rollout = jax.lax.scan(step, c, None, length=self.cfg.agent_cfg.num_steps)
            rollout = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), rollout)  # [S, T, E, ...]
            ts, counters = p.seed_update(ts, counters, rollout)
            return (ts, counters, ec, sums), None

        (ts, counters, ec, sums), _ = jax.lax.scan(iteration, (ts, counters, ec, loop.episode_sums(self.n_seeds)),
                                                   None, length=n)
        ts, stats = p.seed_stats(ts)
        return (ts, counters, ec), sums, stats
