"""The fully-jitted driver: JAX-native envs (brax, gymnax, probes) stepped inside the training program.

A chunk of training — env steps, replay writes or rollouts, updates, interventions, and the logged values
at its end — is one jitted `lax.scan` over all seeds (the seed axis is vmapped inside the step, with
counters unbatched, exactly as on the host driver). Between chunks the host writes the log rows, streams
progress, checkpoints and checks for signals, so runs resume and report as host-driver runs do. A chunk is
`run.log_every` env steps (rounded to whole PPO iterations), so each log point is a chunk boundary.

Keys: seed i's env key is derived from `run.seed + i` and folded with the env-step counter at every step
(acting keys likewise), so a run's randomness does not depend on where it was split into chunks and a
vmapped seed equals the single-seed run with that seed.

- `JitTrainer`: off-policy agents (TD3, SAC, DQN); the per-seed functions are the host driver's.
- `OnPolicyTrainer`: PPO; one scan iteration is a rollout of `num_steps` steps of `num_envs` envs per seed,
  then one `agent.update` (epochs of minibatch steps) per seed.
- `HostOnPolicyTrainer`: PPO on host-stepped envs (gymnasium MuJoCo, dm_control, Atari): the same chunked
  run and the same jitted update; the rollout is collected by a Python loop, one jitted act call per step.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from plastic.agent import AgentState, init_counters
from plastic.checkpoint import Checkpointer
from plastic.core import maybe
from plastic.envs import HostEnvs
from plastic.evaluation import eval_due, make_evaluation
from plastic.jaxenvs import make_jax_env
from plastic.logger import RunLogger
from plastic.nonstationary import NonstationaryJaxEnv, wrap_host, wrap_jax
from plastic.sharding import SeedPlacement
from plastic.trainer import (METRICS_SALT, Trainer, build_agent, build_interventions, catch_stop_signals,
                             collect_metrics, episode_rows, init_interventions, monitor_of,
                             run_summary, scheduled_events, seed_log_point, share_schedule, unshare_schedule)

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


def _episode_sums(n_seeds):
    return {"count": jnp.zeros(n_seeds, jnp.int32), "return": jnp.zeros(n_seeds), "length": jnp.zeros(n_seeds)}


def _account(ep_return, ep_length, sums, reward, done):
    """Add this step's reward; move finished episodes into the per-seed sums (summed over any env axis).
    Works on jax arrays (inside the jitted loop) and on numpy arrays (the host PPO loop)."""
    where = np.where if isinstance(done, np.ndarray) else jnp.where
    ret, length = ep_return + reward, ep_length + 1
    axes = tuple(range(1, done.ndim))
    sums = {"count": sums["count"] + done.sum(axes).astype(np.int32),
            "return": sums["return"] + where(done, ret, 0.0).sum(axes),
            "length": sums["length"] + where(done, length, 0).sum(axes)}
    return ret * ~done, length * ~done, sums


class ChunkedRun:
    """The host loop shared by the jitted drivers: run chunks, log, checkpoint, stop on signals.

    Subclasses give `init_carry()`, `unit` (env steps per scan iteration) and `_chunk(carry, n)`
    -> (carry, episode sums, logged values) running n iterations."""

    unit = 1

    def _build_chunk(self):
        self.traces = 0  # Python traces of the chunk program (a retrace test reads it)

        def chunk(carry, n):
            self.traces += 1
            carry, sums, stats = self._chunk(carry, n)
            return self.placement.constrain(carry, self.SEED_BATCHED), sums, stats  # a sharded carry keeps its layout

        self._chunk_jit = jax.jit(chunk, static_argnums=(1,), donate_argnums=(0,))

    def total_units(self):
        return -(-self.cfg.run.steps // self.unit)

    def run(self, run_dir: Path, resume: bool = False) -> dict:
        run = self.cfg.run
        ckpt = Checkpointer(Path(run_dir) / "checkpoints")
        carry = self.init_carry()
        start, resume_step = 0, None
        if resume:
            resume_step, carry, meta = ckpt.restore(carry)
            carry = self.placement.place(carry, self.SEED_BATCHED)
            start = int(meta["env_steps"])
            self._restore_meta(meta)
        logger = RunLogger.for_run(self.cfg, run_dir, resume_step, start)
        stop_signal, restore = catch_stop_signals()
        evaluation = make_evaluation(self.cfg, self.agent, self.placement)
        per_chunk = max(1, run.log_every // self.unit)
        units, total = start // self.unit, self.total_units()
        summary = {}
        try:
            while units < total:
                n = min(per_chunk, total - units)
                prev = units * self.unit
                t0 = time.perf_counter()
                carry, sums, stats = self._chunk_jit(carry, n)
                sums, stats = jax.device_get((sums, stats))
                units += n
                done = units * self.unit
                sps = (done - prev) / max(time.perf_counter() - t0, 1e-9)
                evals = evaluation(carry[0].agent, done) if evaluation and eval_due(run, prev, done) else None
                rows = episode_rows(self.cfg, done, sps, stats, sums["count"], sums["return"], sums["length"],
                                    evals)
                logger.write(rows)
                summary = run_summary(rows, done, sps, summary)
                logger.progress(done - prev, {"sps": sps, "return": summary["return"]})
                ce = run.checkpoint_every
                if units == total or (ce and done // ce > prev // ce) or stop_signal["sig"] is not None:
                    ckpt.save(done, carry, {"env_steps": done, **self._meta()})
                if stop_signal["sig"] is not None and units < total:
                    print(f"received signal {stop_signal['sig']}: checkpoint written at step {done}; "
                          f"resume with --resume", flush=True)
                    return {**summary, "interrupted": True, "step": done}
            self.final_state = carry
        finally:
            restore()
            logger.close()
            ckpt.close()
        return {**summary, "interrupted": False}

    def _meta(self) -> dict:
        """Extra checkpoint metadata (host envs: their episode counters)."""
        return {}

    def _restore_meta(self, meta: dict) -> None:
        pass

    def _env_carry(self, lead: tuple[int, ...]):
        """Reset every env; `lead` is (S,) or (S, E)."""
        S = self.n_seeds
        keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s), ENV_KEY_SALT))(
            self.cfg.run.seed + jnp.arange(S))
        reset_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 0x7FFFFFFF), int(np.prod(lead[1:]))))(keys)
        reset_keys = reset_keys.reshape(*lead, *reset_keys.shape[2:])
        # the non-stationary schedule id of seed i (the same for all its envs); ignored by plain envs
        sched = (self.cfg.run.seed + jnp.arange(S)).astype(jnp.uint32) if self.cfg.env.per_seed else jnp.zeros(S, jnp.uint32)
        sched = jnp.broadcast_to(sched.reshape(S, *([1] * (len(lead) - 1))), lead)
        wrapped = isinstance(self.env, NonstationaryJaxEnv)
        reset = (lambda k, s: self.env.reset(k, schedule=s)) if wrapped else (lambda k, s: self.env.reset(k))
        for _ in lead:
            reset = jax.vmap(reset)
        state, obs = reset(reset_keys, sched)
        return EnvCarry(state=state, obs=obs, key=keys, stop=jnp.zeros(lead, bool),
                        ep_return=jnp.zeros(lead), ep_length=jnp.zeros(lead, jnp.int32))


class JitTrainer(ChunkedRun, Trainer):
    """Off-policy agents on a JAX-native env, the whole chunk in one program."""

    SEED_BATCHED = (True, False, True)  # (TrainState, counters, EnvCarry)

    def __init__(self, cfg):
        Trainer.__init__(self, cfg)
        self.env = self.envs
        self._build_chunk()

    def _make_envs(self):
        return wrap_jax(make_jax_env(self.cfg.run.env), self.cfg.env)

    def init_carry(self):
        ts, counters = self.init_state()
        return ts, counters, self.placement.place(self._env_carry((self.n_seeds,)), True)

    def _chunk(self, carry, n):
        ts, counters, ec = carry
        ls = self.cfg.agent_cfg.learning_starts

        def step(c, _):
            ts, counters, ec, sums = c
            t = counters["env_steps"]
            action = self.placement.vmap(self._action, in_axes=(0, None, 0))(ts, counters, ec.obs)
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(ec.key, t)
            state, nobs, reward, term, trunc, final = jax.vmap(self.env.step)(ec.state, action, keys, ec.stop)
            tr = {"obs": ec.obs, "action": action, "reward": reward, "next_obs": final,
                  "terminated": term.astype(jnp.float32), "done": (term | trunc).astype(jnp.float32)}
            ts, counters, stop = self._store(ts, counters, tr)
            ts, counters = self._maybe_learn(ts, counters, t >= ls)
            ret, length, sums = _account(ec.ep_return, ec.ep_length, sums, reward, term | trunc)
            ec = ec.replace(state=state, obs=nobs, stop=stop, ep_return=ret, ep_length=length)
            return (ts, counters, ec, sums), None

        (ts, counters, ec, sums), _ = jax.lax.scan(step, (ts, counters, ec, _episode_sums(self.n_seeds)),
                                                   None, length=n)
        ts, stats = self._seed_stats(ts)
        return (ts, counters, ec), sums, stats

    def _maybe_learn(self, ts, counters, pred):
        """The update rounds under `lax.cond`; the replay is read from the closure, never a cond output,
        so the untaken branch does not copy it."""
        def learn(c):
            agent, istate, key, counters = c
            out, counters = self._seed_updates(ts.replace(agent=agent, interventions=istate, key=key), counters)
            return out.agent, out.interventions, out.key, counters

        agent, istate, key, counters = maybe(pred, learn, (ts.agent, ts.interventions, ts.key, counters))
        return ts.replace(agent=agent, interventions=istate, key=key), counters


@struct.dataclass
class OnPolicyState:
    agent: AgentState
    interventions: dict
    key: jax.Array          # consumed by updates
    act_key: jax.Array      # folded with the env step for acting


class OnPolicyTrainer(ChunkedRun):
    """PPO on a JAX-native env: rollouts of `num_envs` x `num_steps` per seed, then one update."""

    SEED_BATCHED = (True, False, True)  # (OnPolicyState, counters, EnvCarry)

    def __init__(self, cfg):
        self.cfg = cfg
        self.placement = SeedPlacement(cfg.run.devices, cfg.run.seeds)
        self.env = self.envs = wrap_jax(make_jax_env(cfg.run.env), cfg.env, envs_per_seed=cfg.agent_cfg.num_envs)
        self.agent = build_agent(cfg, self.env)
        self.interventions = build_interventions(cfg, self.agent)
        self.monitor = monitor_of(self.interventions)
        a = cfg.agent_cfg
        self.n_seeds, self.n_envs, self.unit = cfg.run.seeds, a.num_envs, a.num_envs * a.num_steps
        self._seed_functions()
        self._build_chunk()

    def _seed_functions(self):
        """The update and the log-point values of all seeds (each device on its own seeds when sharded)."""
        vmap = self.placement.vmap
        self._seed_update = self.placement.per_device(
            vmap(self._update_one, in_axes=(0, None, 0), out_axes=(0, None)), (True, False, True), (True, False))
        self._seed_stats = seed_log_point(self.placement, self.interventions)

    def init_carry(self):
        ts, counters = self._init_states()
        return self.placement.place((ts, counters, self._env_carry((self.n_seeds, self.n_envs))), self.SEED_BATCHED)

    def _init_states(self):
        keys = jax.vmap(jax.random.PRNGKey)(self.cfg.run.seed + jnp.arange(self.n_seeds))

        def one(key):
            k_agent, k_iv, k_loop, k_act = jax.random.split(key, 4)
            agent_state = self.agent.init(k_agent)
            return OnPolicyState(agent_state, init_interventions(self.interventions, self.agent, agent_state, k_iv),
                                 k_loop, k_act)

        ts = self.placement.jit_batched(jax.vmap(one))(keys)
        istate, counters = unshare_schedule(self.interventions, ts.interventions, init_counters(self.agent),
                                           seed_axis=True)
        return ts.replace(interventions=istate), counters

    def _chunk(self, carry, n):
        ts, counters, ec = carry
        E, agent = self.n_envs, self.agent

        def act_one(agent_state, obs, key, t):
            return jax.vmap(lambda o, k: agent.act(agent_state, o, k, True, t))(obs, jax.random.split(key, E))

        def step(c, _):
            ts, counters, ec, sums = c
            t = counters["env_steps"]
            fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
            action = self.placement.vmap(act_one, in_axes=(0, 0, 0, None))(ts.agent, ec.obs, fold(ts.act_key, t), t)
            keys = jax.vmap(lambda k: jax.random.split(k, E))(fold(ec.key, t))
            state, nobs, reward, term, trunc, final = jax.vmap(jax.vmap(self.env.step))(
                ec.state, action, keys, ec.stop)
            tr = {"obs": ec.obs, "action": action, "reward": reward, "next_obs": final,
                  "terminated": term, "truncated": trunc}
            ret, length, sums = _account(ec.ep_return, ec.ep_length, sums, reward, term | trunc)
            ec = ec.replace(state=state, obs=nobs, ep_return=ret, ep_length=length)
            return (ts, {**counters, "env_steps": t + E}, ec, sums), tr

        def iteration(c, _):
            (ts, counters, ec, sums), rollout = jax.lax.scan(step, c, None, length=self.cfg.agent_cfg.num_steps)
            rollout = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), rollout)  # [S, T, E, ...]
            ts, counters = self._seed_update(ts, counters, rollout)
            return (ts, counters, ec, sums), None

        (ts, counters, ec, sums), _ = jax.lax.scan(iteration, (ts, counters, ec, _episode_sums(self.n_seeds)),
                                                   None, length=n)
        ts, stats = self._seed_stats(ts)
        return (ts, counters, ec), sums, stats

    def _update_one(self, ts: OnPolicyState, counters, rollout):
        key, k_event, k_update = jax.random.split(ts.key, 3)
        ts = ts.replace(interventions=share_schedule(ts.interventions, counters))
        agent_state, istate = scheduled_events(self.agent, self.interventions, ts.agent, ts.interventions,
                                               counters, k_event)
        before, counters_before = agent_state, counters
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), rollout)  # [T * E, ...]

        def rows(k, size):  # a random subset of the rollout (all of it if it is smaller)
            n = self.unit
            idx = jax.random.permutation(k, n)[:size] if n > size else jnp.arange(n)
            return jax.tree.map(lambda x: x[idx], flat)

        stats = lambda name, k, n: self.agent.net_inputs(before, rows(k, n))[name]  # noqa: E731
        agent_state, istate, counters = self.agent.update(agent_state, rollout, counters, k_update,
                                                          tuple(iv.with_batches(stats) for iv in self.interventions),
                                                          istate)
        if self.monitor is not None:
            def batch_fn(k, mstate):
                return (lambda: rows(k, self.cfg.metrics.batch_size)), mstate

            istate = collect_metrics(self.monitor, before, agent_state, istate, counters_before, counters,
                                     batch_fn, jax.random.fold_in(ts.key, METRICS_SALT))
        istate, counters = unshare_schedule(self.interventions, istate, counters)
        return ts.replace(agent=agent_state, interventions=istate, key=key), counters


class HostOnPolicyTrainer(OnPolicyTrainer):
    """PPO on host-stepped envs: `num_envs` host envs per seed (seed i owns envs i*E ... i*E + E-1), one
    jitted call per vector step to act for every env of every seed, the rollout stacked on the host, then
    the jitted driver's vmapped update. A "chunk" is a Python loop over iterations. As on the off-policy host
    driver, the episodes in flight are not checkpointed: a resumed run starts fresh episodes (each with the
    seed it would have had)."""

    SEED_BATCHED = (True, False)  # (OnPolicyState, counters)

    def __init__(self, cfg):
        self.cfg = cfg
        self.placement = SeedPlacement(cfg.run.devices, cfg.run.seeds)
        a, run = cfg.agent_cfg, cfg.run
        self.n_seeds, self.n_envs, self.unit = run.seeds, a.num_envs, a.num_envs * a.num_steps
        envs = HostEnvs(run.env, run.seeds * a.num_envs, run.seed)
        envs.envs = [wrap_host(e, cfg.env, schedule=run.seed + i // a.num_envs, envs_per_seed=a.num_envs)
                     for i, e in enumerate(envs.envs)]
        self.env = self.envs = envs
        self.agent = build_agent(cfg, envs)
        self.interventions = build_interventions(cfg, self.agent)
        self.monitor = monitor_of(self.interventions)
        self.traces, self._obs = 0, None
        E = self.n_envs

        def act(ts, obs, t):  # [S, E, D] -> [S, E, ...]
            def one(agent_state, obs, key):
                return jax.vmap(lambda o, k: self.agent.act(agent_state, o, k, True, t))(obs, jax.random.split(key, E))
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(ts.act_key, t)
            return self.placement.vmap(one)(ts.agent, obs, keys)

        self._act = jax.jit(act)
        self._seed_functions()
        self._update = jax.jit(self._seed_update, donate_argnums=(0,))
        self._stats = jax.jit(self._seed_stats, donate_argnums=(0,))
        self._chunk_jit = self._host_chunk

    def init_carry(self):
        # the host envs live outside the carry
        ts, counters = self._init_states()
        return ts, self.placement.place(counters, False)

    def _meta(self):
        return {"episodes": list(self.envs.episodes)}

    def _restore_meta(self, meta):
        self.envs.restore(meta["episodes"], int(meta["env_steps"]))

    def _host_chunk(self, carry, n):
        ts, counters = carry
        S, E = self.n_seeds, self.n_envs
        if self._obs is None:
            self._obs = self.envs.reset().reshape(S, E, -1)
            self._ret, self._len = np.zeros((S, E)), np.zeros((S, E), np.int64)
        sums = {"count": np.zeros(S, np.int64), "return": np.zeros(S), "length": np.zeros(S)}
        shape = lambda x: x.reshape(S, E, *x.shape[1:])  # noqa: E731  [S * E, ...] -> [S, E, ...]
        for _ in range(n):
            steps = []
            for _ in range(self.cfg.agent_cfg.num_steps):
                t = int(counters["env_steps"])
                action = np.asarray(self._act(ts, self._obs, t))
                nobs, reward, term, trunc, final = self.envs.step(action.reshape(S * E, *action.shape[2:]))
                reward, term, trunc = shape(reward), shape(term), shape(trunc)
                steps.append({"obs": self._obs, "action": action, "reward": reward, "next_obs": shape(final),
                              "terminated": term, "truncated": trunc})
                self._ret, self._len, sums = _account(self._ret, self._len, sums, reward, term | trunc)
                self._obs = shape(nobs)
                counters = {**counters, "env_steps": counters["env_steps"] + E}
            rollout = {k: np.stack([s[k] for s in steps], axis=1) for k in steps[0]}  # [S, T, E, ...]
            ts, counters = self._update(ts, counters, rollout)
        ts, stats = self._stats(ts)
        return (ts, counters), sums, stats
