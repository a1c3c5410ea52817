"""The per-seed programs every driver runs, whatever steps the envs.

`OffPolicy` (TD3, SAC, DQN) and `OnPolicy` (PPO) hold the pure functions of one seed (init, act, store,
the update round with its scheduled events and metrics) and their seed-vmapped forms. The drivers
(plastic/drivers/) decide where the envs run and how calls are batched; they compose one of these.

Counters (env steps, update counts per network) are unbatched (`in_axes=None`), so periodic events see a
scalar predicate and stay a real `lax.cond` under the seed vmap (docs/mechanics.md §4.2). The parts of
intervention states that every seed shares (`Hook.shared`) travel with the counters between update
rounds (`share_schedule` / `unshare_schedule`).

The metrics collector is an observer with its own state slot (`TrainState.monitor`). For an update round
its state joins the interventions' (`joined`, under its name), because its gradient group reads every
update through the `post_update` hook; the round's end parts them again (`parted`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from plastic.agent import AgentState, init_counters
from plastic.core import Hooks, Update, maybe, seed_cond
from plastic.replay import Replay
from plastic.shuffle import permutation

METRICS_SALT = 7919  # the metrics batch key: fold_in(update key, METRICS_SALT), outside the training stream
ROWS_SALT = 104_729  # the per-update hook rows' key (`Hook.update_rows`): fold_in(round key, ROWS_SALT)
SHARED = "shared"  # counters[SHARED][name]: the parts of intervention states that are the same for every seed


@struct.dataclass
class TrainState:
    agent: AgentState
    replay: Replay
    interventions: dict     # each active intervention's state, under its name
    monitor: dict           # the metrics collector's state ({} when every metric is off)
    key: jax.Array          # consumed by updates
    act_key: jax.Array      # folded with the env step for acting


@struct.dataclass
class OnPolicyState:
    agent: AgentState
    interventions: dict
    monitor: dict
    key: jax.Array          # consumed by updates
    act_key: jax.Array      # folded with the env step for acting


class OffPolicy:
    """The off-policy agents' per-seed functions: replay, acting hooks, update rounds of `utd` updates."""

    def __init__(self, setup):
        self.setup, self.cfg, self.agent = setup, setup.cfg, setup.agent
        self.interventions, self.monitor, self.placement = setup.interventions, setup.monitor, setup.placement
        self.hooks = setup.hooks
        self.sampler = next((iv for iv in self.interventions if iv.samples_replay), None)
        opts = {}
        for iv in self.interventions:
            opts.update(iv.replay_options())
        self.bucket_size = opts.get("bucket_size", 0)
        capacity = self.cfg.agent_cfg.buffer_size  # independent of run.steps: a resumed run may extend its budget
        if self.bucket_size:
            capacity = -(-capacity // self.bucket_size) * self.bucket_size
        self.capacity = capacity
        self.seed_actions = self.placement.vmap(self.action, in_axes=(0, None, 0))
        self.seed_updates = self.seed_updates_of(True)
        self.seed_stats = seed_log_point(self.placement, self.interventions, self.monitor)

    def init_state(self):
        """`(ts, counters)` of all seeds: seed i of a vmapped run is exactly the single-seed run with
        --seed base+i."""
        envs = self.setup.envs
        obs = jnp.zeros(envs.observation_size, envs.observation_dtype)  # uint8 Atari frames stay uint8
        example = {"obs": obs, "action": self.agent.action_example(),
                   "reward": jnp.zeros(()), "next_obs": obs,
                   "terminated": jnp.zeros(()), "done": jnp.zeros(())}

        def one(agent_state, istate, mstate, k_loop, k_act):
            replay = Replay.create(self.capacity, example, self.bucket_size)
            return TrainState(agent_state, replay, istate, mstate, k_loop, k_act)

        ts, counters = init_seeds(self, one)
        return ts, self.placement.place(counters, False)

    def action(self, ts: TrainState, counters, obs):
        """Action for env step `counters['env_steps']`: uniform random during warm-up, else the policy. The
        key is `fold_in(act_key, step)`, so acting does not depend on how a run was split by checkpoints."""
        step = counters["env_steps"]
        key = jax.random.fold_in(ts.act_key, step)
        k_rand, k_pol = jax.random.split(key)
        random = self.agent.random_action(k_rand)
        policy = self.agent.act(ts.agent, obs, k_pol, explore=True, step=step)
        for j, iv in enumerate(self.interventions):
            policy = iv.on_act(ts.interventions[iv.name], policy, jax.random.fold_in(key, 1 + j), counters)
        return jnp.where(step < self.cfg.agent_cfg.learning_starts, random, policy)

    def store(self, ts: TrainState, counters, transition):
        """Replay write on the seed-stacked buffers (shared slot, in place), then the acting hooks (the agent's
        `observe`, the interventions' `on_env_step`; vmapped over seeds) and the env-step counter."""
        ts = ts.replace(replay=ts.replay.add(transition, counters["env_steps"]))
        ts, stop = jax.vmap(self._acting_hooks, in_axes=(0, 0, None))(ts, transition, counters)
        return ts, {**counters, "env_steps": counters["env_steps"] + 1}, stop

    def _acting_hooks(self, ts: TrainState, transition, counters):
        ts = ts.replace(agent=self.agent.observe(ts.agent, transition))
        stop, istate = jnp.zeros((), bool), ts.interventions
        for iv in self.interventions:
            s, flag = iv.on_env_step(istate[iv.name], transition, self.agent, ts.agent, counters)
            istate, stop = {**istate, iv.name: s}, stop | flag
        return ts.replace(interventions=istate), stop

    def sample_batch(self, replay: Replay, istate: dict, key):
        """One training batch: the replay sampler's draw (`istate`: the interventions' states) or uniform."""
        B = self.cfg.agent_cfg.batch_size
        if self.sampler is not None:
            idx = self.sampler.sample(replay, istate[self.sampler.name], key, B)
        else:
            idx = replay.sample_uniform(key, B)
        n = getattr(self.cfg.agent_cfg, "n_step", 1)
        clip = getattr(self.cfg.agent_cfg, "reward_clip", 0.0)  # per step, before any n-step sum
        if n > 1:
            return replay.gather_nstep(idx, n, self.cfg.agent_cfg.gamma, clip)
        batch = replay.gather(idx)
        return {**batch, "reward": jnp.clip(batch["reward"], -clip, clip)} if clip else batch

    def seed_updates_of(self, measure: bool):
        """The update rounds of all seeds (counters unbatched); with sharded seeds each device runs them on
        its own seeds. `measure=False`: without the metrics collector's measuring code."""
        fn = lambda ts, c: self.updates(ts, c, measure=measure)  # noqa: E731
        return self.placement.per_device(self.placement.vmap(fn, in_axes=(0, None), out_axes=(0, None)),
                                         (True, False), (True, False))

    def updates(self, ts: TrainState, counters, measure: bool = True):
        """Scheduled events, then `utd` gradient updates of one seed. `measure=False`: without the metrics
        collector's measurements (it only marks the groups this round made due)."""
        hstate = share_schedule(joined(self.monitor, ts), counters)
        before, hstate = scheduled_events(self.agent, self.interventions, ts.agent, hstate, counters,
                                          jax.random.fold_in(ts.key, 1_000_003))
        stats = lambda name, k, n: self.agent.net_inputs(  # noqa: E731  (statistics batches: with_batches)
            before, ts.replay.gather(ts.replay.sample_uniform(k, n)))[name]
        ivs = tuple(iv.with_batches(stats) for iv in self.hooks if measure or iv is not self.monitor)
        # Pre-sample all UTD batches, then scan over them: the replay never enters the loop (inside an
        # HLO while loop it would become loop state and XLA would copy the whole buffer every env step).
        key, k_sample = jax.random.split(ts.key)
        sample_keys = jax.random.split(k_sample, self.cfg.agent_cfg.utd)
        batches = jax.vmap(lambda k: self.sample_batch(ts.replay, hstate, k))(sample_keys)
        # rows some hooks read in every update (C-CHAIN's reference batch), drawn here for the same reason
        wants = [iv.update_rows(self.cfg.agent_cfg.batch_size) for iv in ivs]
        n_rows, rows = max(wants, default=0), None
        if n_rows:
            row_keys = jax.random.split(jax.random.fold_in(ts.key, ROWS_SALT), self.cfg.agent_cfg.utd)
            rows = jax.vmap(lambda k: ts.replay.gather(ts.replay.sample_uniform(k, n_rows)))(row_keys)

        def body(carry, xs):
            agent_state, istate, key, counters = carry
            batch, row = xs
            key, k_update = jax.random.split(key)
            hooks = ivs if row is None else tuple(
                iv.with_rows(self.agent.net_inputs(agent_state, row)) if w else iv for iv, w in zip(ivs, wants))
            u = self.agent.update(Update(agent_state, Hooks(istate, hooks), counters), batch, k_update)
            return (u.state, u.hooks.state, key, u.counters), None

        def round_(carry):
            return jax.lax.scan(body, carry, (batches, rows))[0]

        carry = (before, hstate, key, counters)
        every = self.cfg.agent_cfg.train_frequency
        if every == 1:
            agent_state, hstate, key, counters = round_(carry)
        else:  # an update round after every `train_frequency`-th env step (the batches are drawn regardless)
            agent_state, hstate, key, counters = maybe(counters["env_steps"] % every == 0, round_, carry)
        if self.monitor is not None and not measure:
            hstate = {**hstate, self.monitor.name: self.monitor.schedule(hstate[self.monitor.name], carry[3],
                                                                         counters)}
        elif self.monitor is not None:
            def batch_fn(k, mstate):  # fresh rows: drawn and gathered only when measured (inside the cond)
                draw = lambda: ts.replay.sample_uniform(k, self.cfg.metrics.batch_size)  # noqa: E731
                if self.cfg.metrics.batch != "fixed_probe":
                    return (lambda: ts.replay.gather(draw())), mstate
                idx, mstate = self.monitor.probe_indices(mstate, draw())  # recorded at the first collection
                return (lambda: ts.replay.gather(idx)), mstate

            hstate = collect_metrics(self.monitor, before, agent_state, hstate, carry[3], counters, batch_fn,
                                     jax.random.fold_in(ts.key, METRICS_SALT))
        hstate, counters = unshare_schedule(self.hooks, hstate, counters)
        istate, mstate = parted(self.monitor, hstate)
        return ts.replace(agent=agent_state, interventions=istate, monitor=mstate, key=key), counters


class OnPolicy:
    """PPO's per-seed functions: one update per rollout of `num_envs` x `num_steps` env steps."""

    def __init__(self, setup):
        self.setup, self.cfg, self.agent = setup, setup.cfg, setup.agent
        self.interventions, self.monitor, self.placement = setup.interventions, setup.monitor, setup.placement
        self.hooks = setup.hooks
        a = self.cfg.agent_cfg
        self.n_envs, self.unit = a.num_envs, a.num_envs * a.num_steps   # envs per seed, env steps per update
        vmap = self.placement.vmap
        self.seed_update = self.placement.per_device(
            vmap(self.update, in_axes=(0, None, 0), out_axes=(0, None)), (True, False, True), (True, False))
        self.seed_stats = seed_log_point(self.placement, self.interventions, self.monitor)

    def init_state(self):
        """`(ts, counters)` of all seeds (counters not yet placed)."""
        return init_seeds(self, OnPolicyState)

    def act(self, agent_state, obs, key, t):
        """Actions of one seed's `num_envs` envs at env step `t` (`obs`: [E, ...]) and their log-probabilities
        under the acting policy (the rollout's `logp` column)."""
        keys = jax.random.split(key, self.n_envs)
        return jax.vmap(lambda o, k: self.agent.act_logp(agent_state, o, k, True))(obs, keys)

    def update(self, ts: OnPolicyState, counters, rollout):
        """Scheduled events, then one update on a rollout ([T, E, ...]) of one seed. Where an event changed the
        agent (any parameter or normalisation statistic), the rollout's `logp` is recomputed with the changed
        agent, so the update's ratio is taken around the networks it trains; the cond is a real branch under
        the seed vmap (`core.seed_cond`), taken only on updates where some seed's agent changed."""
        key, k_event, k_update = jax.random.split(ts.key, 3)
        hstate = share_schedule(joined(self.monitor, ts), counters)
        agent_state, hstate = scheduled_events(self.agent, self.interventions, ts.agent, hstate, counters, k_event)
        rollout = {**rollout, "logp": seed_cond(changed(ts.agent, agent_state),
                                                lambda _: self.agent.rollout_logp(agent_state, rollout),
                                                rollout["logp"])}
        before, counters_before = agent_state, counters
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), rollout)  # [T * E, ...]

        def rows(k, size):  # a random subset of the rollout (all of it if it is smaller)
            n = self.unit
            idx = permutation(k, n)[:size] if n > size else jnp.arange(n)
            return jax.tree.map(lambda x: x[idx], flat)

        stats = lambda name, k, n: self.agent.net_inputs(before, rows(k, n))[name]  # noqa: E731
        hooks = Hooks(hstate, tuple(iv.with_batches(stats) for iv in self.hooks))
        u = self.agent.update(Update(agent_state, hooks, counters), rollout, k_update)
        agent_state, hstate, counters = u.state, u.hooks.state, u.counters
        if self.monitor is not None:
            def batch_fn(k, mstate):
                return (lambda: rows(k, self.cfg.metrics.batch_size)), mstate

            hstate = collect_metrics(self.monitor, before, agent_state, hstate, counters_before, counters,
                                     batch_fn, jax.random.fold_in(ts.key, METRICS_SALT))
        hstate, counters = unshare_schedule(self.hooks, hstate, counters)
        istate, mstate = parted(self.monitor, hstate)
        return ts.replace(agent=agent_state, interventions=istate, monitor=mstate, key=key), counters


def changed(before, after) -> jax.Array:
    """Whether any network parameter or `extra` leaf (normalisation statistics) of an agent state differs
    (one seed; NaN counts as a change)."""
    pick = lambda s: ({n: s.nets[n].params for n in s.nets}, s.extra)  # noqa: E731
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.any(a != b), pick(before), pick(after)))
    return jnp.any(jnp.stack(leaves)) if leaves else jnp.zeros((), bool)


def share_schedule(istate, counters) -> dict:
    """One seed's intervention states, with the parts every seed shares (`Hook.shared`) put back
    from the counters, where the drivers keep them between update rounds (`unshare_schedule`)."""
    held = counters.get(SHARED, {})
    return {**istate, **{n: {**istate[n], **held[n]} for n in held}}


def unshare_schedule(interventions, istate, counters, seed_axis: bool = False):
    """`(istate, counters)` with the `Hook.shared` parts of the intervention states (schedule flags
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


def init_seeds(program, make):
    """`(ts, counters)` of all seeds of `program` (seed i from `PRNGKey(run.seed + i)`): each seed's agent and
    hook states, then `make(agent_state, istate, mstate, key, act_key)` builds its state; the hooks' shared
    parts go to the counters (`unshare_schedule`)."""
    def one(key):
        k_agent, k_iv, k_loop, k_act = jax.random.split(key, 4)
        agent_state = program.agent.init(k_agent)
        ivs, agent = program.interventions, program.agent
        istate = init_hooks(ivs, agent, agent_state, k_iv)
        for iv in ivs:
            agent_state = iv.initial_state(agent, agent_state, istate[iv.name])
        # the metrics collector last (its key as when it was the last of the hooks), on the starting state
        mstate = {} if program.monitor is None else program.monitor.init(
            jax.random.fold_in(k_iv, len(ivs)), agent, agent_state=agent_state)
        return make(agent_state, istate, mstate, k_loop, k_act)

    keys = jax.vmap(jax.random.PRNGKey)(program.cfg.run.seed + jnp.arange(program.setup.n_seeds))
    ts = program.placement.jit_batched(jax.vmap(one))(keys)
    hstate, counters = unshare_schedule(program.hooks, joined(program.monitor, ts), init_counters(program.agent),
                                       seed_axis=True)
    istate, mstate = parted(program.monitor, hstate)
    return ts.replace(interventions=istate, monitor=mstate), counters


def init_hooks(hooks, agent, agent_state, key) -> dict:
    """The state of every intervention, then of the metrics collector (`Setup.hooks`), for one seed."""
    return {iv.name: iv.init(jax.random.fold_in(key, j), agent, agent_state=agent_state)
            for j, iv in enumerate(hooks)}


def joined(monitor, ts) -> dict:
    """The interventions' states of `ts` with the metrics collector's under its name: an update round's."""
    return ts.interventions if monitor is None else {**ts.interventions, monitor.name: ts.monitor}


def parted(monitor, hstate: dict):
    """`(interventions' states, the metrics collector's)` of an update round's states (`joined`)."""
    if monitor is None:
        return hstate, {}
    hstate = dict(hstate)
    return hstate, hstate.pop(monitor.name)


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


def seed_log_point(placement, interventions, mon):
    """The log-point program of all seeds, `ts -> (ts, logs)`: the metrics collector's (`mon`) measurements
    deferred to log time (`Monitor.at_log_point`: the NTK rank, ranks whose device SVD failed), then every seed's
    logged values. The deferred work runs under one `lax.cond` on whether any seed holds some: outside the
    seed vmap, so it is a real branch (inside, each seed's flag would make it a `select` that measures on
    every call); seeds without deferred work keep their values (per-seed `select` inside the branch)."""
    vmap = placement.vmap

    def fn(ts):
        if mon is not None:
            ts = ts.replace(monitor=maybe(jnp.any(vmap(mon.deferred)(ts.monitor)), vmap(mon.at_log_point),
                                          ts.monitor))
        return ts, vmap(lambda t: logged_values(interventions, mon, t))(ts)

    return placement.per_device(fn, True, (True, True))


def logged_values(interventions, mon, ts) -> dict:
    """Logged values of one seed: the last update's logs, then every intervention's and the metrics
    collector's (the latest value of each metric)."""
    logs = dict(ts.agent.logs)
    for iv in interventions:
        logs.update(iv.logs(ts.interventions[iv.name]))
    if mon is not None:
        logs.update(mon.logs(ts.monitor))
    return logs
