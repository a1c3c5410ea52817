"""Off-policy trainer for host-stepped envs with seeds as a batch axis.

Per env step the host does exactly one jitted call: add the transition of every seed to its replay, run UTD
gradient updates (`lax.scan`) for every seed (`vmap`), and return the next action. Between calls the run's
carry `(TrainState, counters)` is held packed (plastic/packing.py: small leaves in one buffer per dtype),
so each call moves ~30 arrays instead of ~100; `pack` / `unpack` convert. Counters
(env steps, update counts per network) are unbatched (`in_axes=None`), so periodic events see a scalar
predicate and stay a real `lax.cond` under `vmap` (docs/mechanics.md §4.2).

The step is compiled with or without the metrics collector's measuring code: the ordinary program has none,
and each step returns a flag for the next, set when its round marked a metric group due (plastic/monitor.py).
Results do not depend on which program ran. Every intervention's code, periodic events included, is in
every program: its `lax.cond`s decide when an event fires, whatever the agent's update pattern.

The action for env step `i` is drawn with key `fold_in(act_key, i)`, so acting does not depend on how a
run was split by checkpoints; on resume the episode in flight restarts from a fresh reset.

With `run.pipelined_acting` a learning step is two calls instead: store + act (with the parameters before
this step's updates), then the updates, dispatched without waiting, so they run while the host steps the
envs. Steps that write a scheduled checkpoint stay synchronous, so resuming reproduces the run exactly.
"""
from __future__ import annotations

import signal
import time
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import agents
from plastic.agent import AgentState, init_counters
from plastic.checkpoint import Checkpointer
from plastic.core import maybe
from plastic.config import ExperimentConfig, agent_options, make_intervention
from plastic.envs import HostEnvs, is_jax_native
from plastic.evaluation import eval_due, make_evaluation
from plastic.logger import RunLogger
from plastic.monitor import Monitor
from plastic.nonstationary import phase_info, wrap_host
from plastic.packing import Packer
from plastic.replay import Replay
from plastic.sharding import SeedPlacement


@struct.dataclass
class TrainState:
    agent: AgentState
    replay: Replay
    interventions: dict
    key: jax.Array          # consumed by updates
    act_key: jax.Array      # folded with the env step for acting


class Trainer:
    """Off-policy agents on host-stepped envs (the host driver)."""

    SEED_BATCHED = (True, False)  # the run's carry (TrainState, counters): which parts are vmapped over seeds

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        run, a = cfg.run, cfg.agent_cfg
        self.placement = SeedPlacement(run.devices, run.seeds)  # the seed axis across local devices
        self.envs = self._make_envs()
        self.agent = build_agent(cfg, self.envs)
        self.interventions = build_interventions(cfg, self.agent)
        self.monitor = monitor_of(self.interventions)
        self.sampler = next((iv for iv in self.interventions if iv.samples_replay), None)
        opts = {}
        for iv in self.interventions:
            opts.update(iv.replay_options())
        self.bucket_size = opts.get("bucket_size", 0)
        capacity = a.buffer_size  # independent of run.steps, so a resumed run may extend its budget
        if self.bucket_size:
            capacity = -(-capacity // self.bucket_size) * self.bucket_size
        self.capacity = capacity
        S = run.seeds
        # Programs per kind of step, by one flag: `measure` (the metrics collector's measuring code; without
        # it the collector only marks what is due). The ordinary program has none; each step returns the flag
        # the next one needs (`self._pending`, resolved on the host at the next step). Each program is
        # compiled when first needed (`_step_program`). See plastic/monitor.py.
        self._acting_ivs = tuple(iv for iv in self.interventions if iv is not self.monitor)  # on_act hooks
        self._programs = {}
        self._warm = self._packed_program(lambda *a: self._env_step(*a, learn=False))
        # the update rounds of all seeds (counters unbatched), full: the device-loop driver (jit_trainer) calls
        # them inside its scan; with sharded seeds each device runs them on its own seeds
        self._seed_updates = self._seed_updates_of(True)
        self._pending = None  # None: read it from the state at the next step (after init or restore)
        vmap = self.placement.vmap
        self._first_action = jax.jit(vmap(self._action, in_axes=(0, None, 0)))
        self._seed_stats = seed_log_point(self.placement, self.interventions)
        self._stats = self._packed_program(self._stats_of)
        self._pending_of = jax.jit(lambda carry: self._with_pending(*self._unpack_traced(carry))[2])
        self._packers = None  # built from the first carry `pack` sees
        self._pack_small = jax.jit(lambda st, sc: self.placement.constrain(
            (self._packers[0].pack_small(st), self._packers[1].pack_small(sc)), self.SEED_BATCHED))
        self._unpack_small = jax.jit(lambda bt, bc: (self._packers[0].unpack_small(bt),
                                                     self._packers[1].unpack_small(bc)))
        self.n_seeds = S

    # ---- the packed carry between host calls --------------------------------------------------------
    def pack(self, ts, counters):
        """The carry `host_step` and the stats program take. Its large leaves (kernels, moments, the replay)
        are those of `ts` themselves, so stepping the carry (which donates it) consumes `ts`."""
        if self._packers is None:
            self._packers = (Packer(ts, batched=True), Packer(counters, batched=False))
        (lt, st), (lc, sc) = self._packers[0].split(ts), self._packers[1].split(counters)
        bt, bc = self._pack_small(st, sc)
        return (lt, bt), (lc, bc)

    def unpack(self, carry):
        """`(ts, counters)` of a packed carry, sharing its large leaves (no copy of the replay)."""
        (lt, bt), (lc, bc) = carry
        st, sc = self._unpack_small(bt, bc)
        return self._packers[0].join(lt, st), self._packers[1].join(lc, sc)

    def _pack_traced(self, ts, counters):
        carry = (self._packers[0].pack(ts), self._packers[1].pack(counters))
        return self.placement.constrain(carry, self.SEED_BATCHED)

    def _unpack_traced(self, carry):
        return self._packers[0].unpack(carry[0]), self._packers[1].unpack(carry[1])

    def _seed_updates_of(self, measure: bool):
        """The update rounds of all seeds: inside the fused step, or alone when pipelined."""
        fn = lambda ts, c: self._updates(ts, c, measure=measure)  # noqa: E731
        return self.placement.per_device(self.placement.vmap(fn, in_axes=(0, None), out_axes=(0, None)),
                                         (True, False), (True, False))

    def _step_program(self, kind: str, measure: bool):
        """The packed program of a learning step ("learn": store, updates, act) or of its updates alone
        ("update", pipelined acting) with or without the measuring code."""
        key = (kind, measure)
        if key not in self._programs:
            updates = self._seed_updates_of(measure)
            if kind == "learn":
                fn = lambda *a: self._env_step(*a, learn=True, updates=updates)  # noqa: E731
            else:
                fn = lambda ts, c: self._with_pending(*updates(ts, c))  # noqa: E731
            self._programs[key] = self._packed_program(fn)
        return self._programs[key]

    def _packed_program(self, fn):
        """`fn(ts, counters, *args) -> (ts, counters, *outs)` as a jitted `(carry, *args) -> (carry, *outs)`
        that donates the carry."""
        def program(carry, *args):
            ts, counters, *outs = fn(*self._unpack_traced(carry), *args)
            return (self._pack_traced(ts, counters), *outs)

        return jax.jit(program, donate_argnums=(0,))

    def _make_envs(self):
        run = self.cfg.run
        envs = HostEnvs(run.env, run.seeds, run.seed)
        envs.envs = [wrap_host(e, self.cfg.env, schedule=run.seed + i) for i, e in enumerate(envs.envs)]
        return envs

    # ---- state ---------------------------------------------------------------------------------
    def init_state(self):
        # seed i of a vmapped run is exactly the single-seed run with --seed base+i
        keys = jax.vmap(jax.random.PRNGKey)(self.cfg.run.seed + jnp.arange(self.n_seeds))
        obs = jnp.zeros(self.envs.observation_size, self.envs.observation_dtype)  # uint8 Atari frames stay uint8
        example = {"obs": obs, "action": self.agent.action_example(),
                   "reward": jnp.zeros(()), "next_obs": obs,
                   "terminated": jnp.zeros(()), "done": jnp.zeros(())}

        def one(key):
            k_agent, k_iv, k_loop, k_act = jax.random.split(key, 4)
            agent_state = self.agent.init(k_agent)
            istate = init_interventions(self.interventions, self.agent, agent_state, k_iv)
            replay = Replay.create(self.capacity, example, self.bucket_size)
            return TrainState(agent_state, replay, istate, k_loop, k_act)

        self._pending = None
        ts = self.placement.jit_batched(jax.vmap(one))(keys)
        istate, counters = unshare_schedule(self.interventions, ts.interventions, init_counters(self.agent),
                                           seed_axis=True)
        return ts.replace(interventions=istate), self.placement.place(counters, False)

    # ---- per-seed pure functions (vmapped) -------------------------------------------------------
    def _action(self, ts: TrainState, counters, obs):
        """Action for env step `counters['env_steps']`: uniform random during warm-up, else the policy."""
        step = counters["env_steps"]
        key = jax.random.fold_in(ts.act_key, step)
        k_rand, k_pol = jax.random.split(key)
        random = self.agent.random_action(k_rand)
        policy = self.agent.act(ts.agent, obs, k_pol, explore=True, step=step)
        for j, iv in enumerate(self._acting_ivs):
            policy = iv.on_act(ts.interventions[iv.name], policy, jax.random.fold_in(key, 1 + j), counters)
        return jnp.where(step < self.cfg.agent_cfg.learning_starts, random, policy)

    def host_step(self, carry, transition, next_obs, learn: bool, pipelined: bool = False):
        """One env step on the packed carry (donated; see `pack`); returns `(carry, action, stop)`, action
        and stop on the host.

        `pipelined` (learning steps only): act before this step's updates and dispatch the updates without
        waiting for them; the action comes back while they run. A learning step runs the program with the
        measuring code when the previous step's flag says so (`_due`)."""
        measure = self._due(carry) if learn else False
        if learn and pipelined:
            carry, action, stop, _ = self._warm(carry, transition, next_obs)
            carry, self._pending = self._step_program("update", measure)(carry)
            action, stop = jax.device_get((action, stop))  # the flag is read at the next step
        else:
            fn = self._step_program("learn", measure) if learn else self._warm
            carry, action, stop, pending = fn(carry, transition, next_obs)
            action, stop, self._pending = jax.device_get((action, stop, pending))  # one transfer
        return carry, action, stop

    def _due(self, carry) -> bool:
        """Whether this learning step runs the measuring code, from the flag the previous step returned."""
        if self.monitor is None:
            return False
        if self._pending is None:
            self._pending = self._pending_of(carry)
        return bool(np.asarray(self._pending))  # pipelined: waits for the previous updates, needed anyway

    def _with_pending(self, ts, counters):
        """`(ts, counters, measure)`: whether a metric group is marked due on some seed (the next round then
        runs the measuring program)."""
        measure = jnp.zeros((), bool)
        if self.monitor is not None:
            measure = self.monitor.pending(counters[SHARED][self.monitor.name])  # the flags every seed shares
        return ts, counters, measure

    def _env_step(self, ts: TrainState, counters, transition, next_obs, learn: bool, updates=None):
        """One env step for all seeds: store, acting hooks, (UTD update rounds: `updates`, one of
        `_seed_updates_of`), next action, stop flag, and the next step's program flags."""
        ts, counters, stop = self._store(ts, counters, transition)
        if learn:
            ts, counters = updates(ts, counters)
        action = self.placement.vmap(self._action, in_axes=(0, None, 0))(ts, counters, next_obs)
        ts, counters = self.placement.constrain((ts, counters), (True, False))
        return (ts, counters, action, stop, self._with_pending(ts, counters)[2])

    def _store(self, ts: TrainState, counters, transition):
        """Replay write on the seed-stacked buffers (shared slot, in place), then the acting hooks
        (vmapped over seeds) and the env-step counter."""
        ts = ts.replace(replay=ts.replay.add(transition, counters["env_steps"]))
        ts, stop = jax.vmap(self._acting_hooks, in_axes=(0, 0, None))(ts, transition, counters)
        return ts, {**counters, "env_steps": counters["env_steps"] + 1}, stop

    def _acting_hooks(self, ts: TrainState, transition, counters):
        stop, istate = jnp.zeros((), bool), ts.interventions
        for iv in self.interventions:
            s, flag = iv.on_env_step(istate[iv.name], transition, self.agent, ts.agent, counters)
            istate, stop = {**istate, iv.name: s}, stop | flag
        return ts.replace(interventions=istate), stop

    def sample_batch(self, ts: TrainState, key):
        B = self.cfg.agent_cfg.batch_size
        if self.sampler is not None:
            idx = self.sampler.sample(ts.replay, ts.interventions[self.sampler.name], key, B)
        else:
            idx = ts.replay.sample_uniform(key, B)
        n = getattr(self.cfg.agent_cfg, "n_step", 1)
        clip = getattr(self.cfg.agent_cfg, "reward_clip", 0.0)  # per step, before any n-step sum
        if n > 1:
            return ts.replay.gather_nstep(idx, n, self.cfg.agent_cfg.gamma, clip)
        batch = ts.replay.gather(idx)
        return {**batch, "reward": jnp.clip(batch["reward"], -clip, clip)} if clip else batch

    def _updates(self, ts: TrainState, counters, measure: bool = True):
        """Scheduled events, then `utd` gradient updates of one seed. `measure=False`: without the metrics
        collector's measurements (it only marks the groups this round made due)."""
        stats = lambda name, k, n: self.agent.net_inputs(  # noqa: E731  (statistics batches: with_batches)
            ts.agent, ts.replay.gather(ts.replay.sample_uniform(k, n)))[name]
        ivs = tuple(iv.with_batches(stats) for iv in self.interventions if measure or iv is not self.monitor)
        ts = ts.replace(interventions=share_schedule(ts.interventions, counters))
        agent_state, istate = scheduled_events(self.agent, self.interventions, ts.agent, ts.interventions,
                                               counters, jax.random.fold_in(ts.key, 1_000_003))
        ts = ts.replace(agent=agent_state, interventions=istate)

        before = ts.agent
        # Pre-sample all UTD batches, then scan over them: the replay never enters the loop (inside an
        # HLO while loop it would become loop state and XLA would copy the whole buffer every env step).
        key, k_sample = jax.random.split(ts.key)
        sample_keys = jax.random.split(k_sample, self.cfg.agent_cfg.utd)
        batches = jax.vmap(lambda k: self.sample_batch(ts, k))(sample_keys)

        def body(carry, batch):
            agent_state, istate, key, counters = carry
            key, k_update = jax.random.split(key)
            agent_state, istate, counters = self.agent.update(agent_state, batch, counters, k_update,
                                                              ivs,
                                                              istate)
            return (agent_state, istate, key, counters), None

        def round_(carry):
            return jax.lax.scan(body, carry, batches)[0]

        carry = (ts.agent, ts.interventions, key, counters)
        every = self.cfg.agent_cfg.train_frequency
        if every == 1:
            agent_state, istate, key, counters = round_(carry)
        else:  # an update round after every `train_frequency`-th env step (the batches are drawn regardless)
            agent_state, istate, key, counters = maybe(counters["env_steps"] % every == 0, round_, carry)
        if self.monitor is not None and not measure:
            istate = {**istate, self.monitor.name: self.monitor.schedule(istate[self.monitor.name], carry[3],
                                                                         counters)}
        elif self.monitor is not None:
            def batch_fn(k, mstate):  # fresh rows: drawn and gathered only when measured (inside the cond)
                draw = lambda: ts.replay.sample_uniform(k, self.cfg.metrics.batch_size)  # noqa: E731
                if self.cfg.metrics.batch != "fixed_probe":
                    return (lambda: ts.replay.gather(draw())), mstate
                idx, mstate = self.monitor.probe_indices(mstate, draw())  # recorded at the first collection
                return (lambda: ts.replay.gather(idx)), mstate

            istate = collect_metrics(self.monitor, before, agent_state, istate, carry[3], counters, batch_fn,
                                     jax.random.fold_in(ts.key, METRICS_SALT))
        istate, counters = unshare_schedule(self.interventions, istate, counters)
        return ts.replace(agent=agent_state, interventions=istate, key=key), counters

    def _stats_of(self, ts: TrainState, counters):
        """The log-point values of all seeds, for the packed stats program (counters pass through)."""
        ts, stats = self._seed_stats(ts)
        return ts, counters, stats

    # ---- host loop -----------------------------------------------------------------------------
    def run(self, run_dir: Path, resume: bool = False) -> dict:
        cfg, run = self.cfg, self.cfg.run
        ckpt = Checkpointer(Path(run_dir) / "checkpoints")
        ts, counters = self.init_state()
        start, resume_step = 0, None
        if resume:
            resume_step, (ts, counters), meta = ckpt.restore((ts, counters))
            ts, counters = self.placement.place((ts, counters), self.SEED_BATCHED)
            start = int(meta["env_steps"])
            self.envs.restore(meta["episodes"], start)
        logger = RunLogger.for_run(cfg, run_dir, resume_step, start)
        stop_signal, restore = catch_stop_signals()
        evaluation = make_evaluation(cfg, self.agent, self.placement)
        ls = cfg.agent_cfg.learning_starts
        ep_ret = np.zeros(self.n_seeds)
        ep_len = np.zeros(self.n_seeds, np.int64)
        finished = defaultdict(list)
        obs = self.envs.reset()
        action, stop = np.asarray(self._first_action(ts, counters, obs)), None
        carry = self.pack(ts, counters)
        t_last, step_last, summary = time.perf_counter(), start, {}

        def save(step):
            ckpt.save(step, self.unpack(carry), {"env_steps": step, "episodes": self.envs.episodes})

        try:
            for step in range(start, run.steps):
                nobs, rew, term, trunc, final = self.envs.step(action, stop)
                ep_ret += rew
                ep_len += 1
                for i in np.flatnonzero(term | trunc):
                    finished[i].append((ep_ret[i], ep_len[i]))
                    ep_ret[i], ep_len[i] = 0.0, 0
                tr = {"obs": obs, "action": action, "reward": rew, "next_obs": final,
                      "terminated": term.astype(np.float32), "done": (term | trunc).astype(np.float32)}
                done = step + 1
                ckpt_due = self._checkpoint_due(done)
                carry, action, stop = self.host_step(carry, tr, nobs, learn=step >= ls,
                                                     pipelined=run.pipelined_acting and not ckpt_due)
                obs = nobs
                if done % run.log_every == 0 or done == run.steps:
                    now = time.perf_counter()
                    sps = (done - step_last) / max(now - t_last, 1e-9)
                    carry, stats = self._stats(carry)
                    stats = jax.device_get(stats)
                    evals = None
                    if evaluation is not None and eval_due(run, step_last, done):
                        evals = evaluation(self.unpack(carry)[0].agent, done)
                    rows = self._rows(done, sps, stats, finished, evals)
                    finished.clear()
                    logger.write(rows)
                    summary = run_summary(rows, done, sps, summary)
                    logger.progress(done - step_last, {"sps": sps, "return": summary["return"]})
                    t_last, step_last = time.perf_counter(), done
                    if ckpt_due and done != run.steps:
                        save(done)
                if stop_signal["sig"] is not None:
                    save(done)
                    print(f"received signal {stop_signal['sig']}: checkpoint written at step {done}; "
                          f"resume with --resume", flush=True)
                    return {**summary, "interrupted": True, "step": done}
            if ckpt.latest_step() != run.steps:
                save(run.steps)
            self.final_state = self.unpack(carry)
        finally:
            restore()
            logger.close()
            ckpt.close()
        return {**summary, "interrupted": False}

    def _checkpoint_due(self, done: int) -> bool:
        """Checkpoints are written at log points: the first one at or after each multiple of
        checkpoint_every, and at the end (so the rows kept on resume always end at a log point)."""
        run = self.cfg.run
        if done == run.steps:
            return True
        ce, le = run.checkpoint_every, run.log_every
        return bool(ce) and done % le == 0 and done // ce > (done - le) // ce

    def _rows(self, step, sps, stats, finished, evals=None) -> list[dict]:
        """`finished`: seed -> list of (return, length) of the episodes that ended since the last row."""
        eps = [finished.get(i, []) for i in range(self.n_seeds)]
        return episode_rows(self.cfg, step, sps, stats, [len(e) for e in eps],
                            [sum(x[0] for x in e) for e in eps], [sum(x[1] for x in e) for e in eps], evals)


METRICS_SALT = 7919  # the metrics batch key: fold_in(update key, METRICS_SALT), outside the training stream


def build_interventions(cfg: ExperimentConfig, agent) -> tuple:
    """The active interventions in stacking order, then the metrics collector (if any metric is on)."""
    ivs = tuple(make_intervention(n, c, cfg.agent) for n, c in cfg.interventions.items())
    rows = cfg.metrics.batch_size
    if getattr(agent, "on_policy", False):  # a subset of the rollout, or all of it if smaller
        rows = min(rows, cfg.agent_cfg.num_envs * cfg.agent_cfg.num_steps)
    monitor = Monitor(cfg.metrics, agent, rows)
    return ivs + (monitor,) if monitor.active else ivs


def monitor_of(interventions):
    return next((iv for iv in interventions if isinstance(iv, Monitor)), None)


SHARED = "shared"  # counters[SHARED][name]: the parts of intervention states that are the same for every seed


def share_schedule(istate, counters) -> dict:
    """One seed's intervention states, with the parts every seed shares (`Intervention.shared`) put back
    from the counters, where the drivers keep them between update rounds (`unshare_schedule`)."""
    held = counters.get(SHARED, {})
    return {**istate, **{n: {**istate[n], **held[n]} for n in held}}


def unshare_schedule(interventions, istate, counters, seed_axis: bool = False):
    """`(istate, counters)` with the `Intervention.shared` parts of the intervention states (schedule flags
    that depend on the update counters alone, such as the metrics collector's `due`) moved into
    `counters[SHARED]`. Kept with the counters (unbatched, `in_axes=None`), every `lax.cond` on them stays
    a real branch under the seed vmap; in the seed-batched state each would become a `select` that runs the
    measurement or event on every step. `seed_axis`: `istate` is seed-batched (the vmapped init), take seed
    0's (equal for all seeds)."""
    held = {}
    for iv in interventions:
        if iv.shared:
            state = dict(istate[iv.name])
            part = {k: state.pop(k) for k in iv.shared}
            istate, held[iv.name] = {**istate, iv.name: state}, jax.tree.map(lambda x: x[0], part) if seed_axis else part
    return istate, ({**counters, SHARED: held} if held else counters)


def init_interventions(interventions, agent, agent_state, key) -> dict:
    """Every intervention's state for one seed."""
    return {iv.name: iv.init(jax.random.fold_in(key, j), agent, agent_state=agent_state)
            for j, iv in enumerate(interventions)}


def collect_metrics(monitor, before, agent_state, istate, counters_before, counters, batch_fn, key) -> dict:
    """The monitor's batch metrics after one update round of one seed (`before`: the agent state the
    round started from, for policy churn)."""
    policy = monitor.policy_net
    mstate = monitor.collect(agent_state, istate[monitor.name], counters_before, counters, batch_fn, key,
                             None if policy is None else before.nets[policy].params)
    return {**istate, monitor.name: mstate}


def scheduled_events(agent, interventions, agent_state, istate, counters, key):
    """The `scheduled_event` hook of every intervention, in order (one seed)."""
    for iv in interventions:
        agent_state, s = iv.scheduled_event(agent, agent_state, istate[iv.name], counters, key)
        istate = {**istate, iv.name: s}
    return agent_state, istate


def seed_log_point(placement, interventions):
    """The log-point program of all seeds, `ts -> (ts, logs)`: the metrics collector's measurements deferred
    to log time (`Monitor.at_log_point`: the NTK rank, ranks whose device SVD failed), then every seed's
    logged values. The deferred work runs under one `lax.cond` on whether any seed holds some: outside the
    seed vmap, so it is a real branch (inside, each seed's flag would make it a `select` that measures on
    every call); seeds without deferred work keep their values (per-seed `select` inside the branch)."""
    mon, vmap = monitor_of(interventions), placement.vmap

    def fn(ts):
        if mon is not None:
            m = ts.interventions[mon.name]
            m = maybe(jnp.any(vmap(mon.deferred)(m)), vmap(mon.at_log_point), m)
            ts = ts.replace(interventions={**ts.interventions, mon.name: m})
        return ts, vmap(lambda t: logged_values(interventions, t.agent, t.interventions))(ts)

    return placement.per_device(fn, True, (True, True))


def logged_values(interventions, agent_state, istate) -> dict:
    """Logged values of one seed: the last update's logs, then every intervention's and the metrics
    collector's (the latest value of each metric)."""
    logs = dict(agent_state.logs)
    for iv in interventions:
        logs.update(iv.logs(istate[iv.name]))
    return logs


_STOP = {"sig": None, "depth": 0}


def catch_stop_signals():
    """Record SIGTERM / SIGUSR1 (Slurm preemption) instead of dying: returns `(flag, restore)`; the loop
    checkpoints and exits when `flag["sig"]` is set, and calls `restore()` when it ends. Catchers nest and
    share one flag: a signal caught by an enclosing one (the sweep task runner, while the run is still being
    built and compiled) stops the run at its first step."""
    if _STOP["depth"] == 0:
        _STOP["sig"] = None
    _STOP["depth"] += 1

    def handler(signum, _frame):
        _STOP["sig"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def restore():
        _STOP["depth"] -= 1
        for s, h in old.items():
            signal.signal(s, h)

    return _STOP, restore


def episode_rows(cfg, step, sps, stats, count, return_sum, length_sum, evals=None) -> list[dict]:
    """One log row per seed: episode summaries from per-seed sums, the evaluation at this log point if any
    (`evals`: key -> per-seed values), then the seed's logged values."""
    rows = []
    agg = cfg.metrics.ratio_aggregation
    for i in range(cfg.run.seeds):
        n = int(count[i])
        row = {"step": step, "seed": i, "sps": sps, "episodes": n,
               "episode_return": float(return_sum[i]) / n if n else None,
               "episode_length": float(length_sum[i]) / n if n else None}
        row.update({k: float(v[i]) for k, v in (evals or {}).items()})
        if cfg.env.nonstationary != "none":  # the phase of the row's last env step (task, scale, sign)
            phase = phase_info(cfg.env, step - 1, cfg.run.seed + i if cfg.env.per_seed else 0)
            row.update({f"nonstationary/{k}": v for k, v in phase.items()})
        row.update({k: np.asarray(v)[i].item() for k, v in stats.items()})
        if agg == "mean_of_layers":  # GraMa ratios are pooled in-step; re-aggregate per layer here
            for k in [k for k in row if k.startswith("grama_ratio") and k.count("/") == 1]:
                layers = [v for kk, v in row.items() if kk.startswith(k + "/")]
                row[k] = float(np.mean(layers)) if layers else row[k]
        rows.append(row)
    return rows


def run_summary(rows, step, sps, last) -> dict:
    """The run's summary after a log point: step, SPS, the mean training return over the seeds that finished
    an episode, and the mean evaluation return (kept from the last evaluation between them)."""
    rets = [r["episode_return"] for r in rows if r.get("episode_return") is not None]
    evals = [r["eval/episode_return"] for r in rows if "eval/episode_return" in r]
    return {"step": step, "sps": sps, "return": float(np.mean(rets)) if rets else None,
            "eval_return": float(np.mean(evals)) if evals else last.get("eval_return")}


def build_agent(cfg: ExperimentConfig, envs):
    """The agent for `envs` (host or JAX-native: both expose observation/action sizes and `discrete`)."""
    agent_cls = agents.get(cfg.agent)
    kinds = {True: "discrete", False: "continuous"}
    kwargs = {"probe_point": cfg.metrics.grama_target}
    if agent_cls.discrete is None:  # handles both kinds
        kwargs["discrete"] = envs.discrete
    elif agent_cls.discrete != envs.discrete:
        fits = sorted(n for n, c in agents.REGISTRY.items() if c.discrete in (envs.discrete, None)
                      and (is_jax_native(cfg.run.env) or not getattr(c, "on_policy", False)))
        raise ValueError(f"{cfg.run.env} has {kinds[envs.discrete]} actions but {cfg.agent} needs "
                         f"{kinds[agent_cls.discrete]} ones; agents for this env: {', '.join(fits)}")
    if getattr(agent_cls, "on_policy", False):
        kwargs["total_steps"] = cfg.run.steps
    if getattr(agent_cls, "image_obs", False):
        kwargs["obs_shape"] = envs.observation_shape
        kwargs["obs_dtype"] = str(np.dtype(getattr(envs, "observation_dtype", np.float32)))
    return agent_cls(cfg.agent_cfg, envs.observation_size, envs.action_size, options=agent_options(cfg), **kwargs)


def driver_of(cfg: ExperimentConfig) -> str:
    """'host' or 'jit': `run.driver`, or with 'auto' the jitted driver exactly for JAX-native envs."""
    if cfg.run.driver != "auto":
        return cfg.run.driver
    return "jit" if is_jax_native(cfg.run.env) else "host"


def make_trainer(cfg: ExperimentConfig):
    """The trainer for this config: host or fully-jitted driver, off- or on-policy agent."""
    from plastic.jit_trainer import HostOnPolicyTrainer, JitTrainer, OnPolicyTrainer
    on_policy = getattr(agents.get(cfg.agent), "on_policy", False)
    driver = driver_of(cfg)
    if driver == "jit" and not is_jax_native(cfg.run.env):
        raise ValueError(f"the jitted driver needs a JAX-native env (brax:NAME, gymnax:NAME, probe:NAME), "
                         f"got {cfg.run.env!r}; use --run.driver host")
    if on_policy:
        return OnPolicyTrainer(cfg) if driver == "jit" else HostOnPolicyTrainer(cfg)
    return JitTrainer(cfg) if driver == "jit" else Trainer(cfg)
