"""The host driver: envs stepped on the host (gymnasium MuJoCo, dm_control, Atari), one seed's envs per
seed, the training itself in jitted programs.

`HostOffPolicy` (TD3, SAC, DQN): per env step the host does exactly one jitted call: add the transition of
every seed to its replay, run the update round (`utd` updates, `lax.scan`) of every seed (`vmap`), and
return the next action. This driver is the project's one seam for host-call speed; nothing else knows it:

- the carry `(TrainState, counters)` is held packed between calls (plastic/packing.py: small leaves in one
  buffer per dtype), so each call moves ~30 arrays instead of ~100 (`pack` / `unpack`);
- the step is compiled with or without the metrics collector's measuring code: the ordinary program has
  none, and each step returns a flag for the next, set when its round marked a metric group due
  (plastic/monitor.py). Results do not depend on which program ran: every intervention's code, periodic
  events included, is in every program, and its `lax.cond`s decide when an event fires;
- with `run.pipelined_acting` a learning step is two calls: store + act (with the parameters before this
  step's updates), then the updates, dispatched without waiting, so they run while the host steps the
  envs. Steps that end with a checkpoint stay synchronous, so resuming reproduces the run exactly.

On resume the episodes in flight restart from a fresh reset (each with the seed it would have had).

`HostOnPolicy` (PPO): `num_envs` host envs per seed, one jitted call per vector step to act for every env
of every seed, the rollout stacked on the host, then the vmapped update (plastic/programs.py `OnPolicy`).
"""
from __future__ import annotations

from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

from plastic import loop
from plastic.packing import Packer
from plastic.programs import SHARED, OffPolicy, OnPolicy
from plastic.setup import host_envs, make_setup


class HostOffPolicy(loop.Driver):
    """Off-policy agents on host-stepped envs."""

    SEED_BATCHED = (True, False)  # the carry (TrainState, counters): which parts are vmapped over seeds

    def __init__(self, cfg):
        super().__init__(make_setup(cfg, host_envs(cfg)))
        self.program = p = OffPolicy(self.setup)
        # Programs per kind of step, by one flag: `measure` (the metrics collector's measuring code; without
        # it the collector only marks what is due). The ordinary program has none; each step returns the flag
        # the next one needs (`self._pending`, resolved on the host at the next step). Each program is
        # compiled when first needed (`step_program`).
        self._programs = {}
        self.warm_program = self._packed_program(lambda *a: self._env_step(*a, learn=False))
        self._pending = None  # None: read it from the state at the next step (after init or restore)
        self.first_actions = jax.jit(p.seed_actions)
        self._stats = self._packed_program(self._stats_of)
        self._pending_of = jax.jit(lambda carry: self._with_pending(*self._unpack_traced(carry))[2])
        self._packers = None  # built from the first carry `pack` sees
        self._pack_small = jax.jit(lambda st, sc: self.placement.constrain(
            (self._packers[0].pack_small(st), self._packers[1].pack_small(sc)), self.SEED_BATCHED))
        self._unpack_small = jax.jit(lambda bt, bc: (self._packers[0].unpack_small(bt),
                                                     self._packers[1].unpack_small(bc)))

    def init_state(self):
        self._pending = None
        return self.program.init_state()

    # ---- the run loop's protocol (plastic/loop.py) ---------------------------------------------------
    init_carry = init_state

    def start(self, carry, step: int):
        ts, counters = carry
        if step > 0:  # a resumed run: its episodes restart here, so n-step windows stop at the last transition
            ts = ts.replace(replay=ts.replay.cut_at_newest())
        self._obs = self.envs.reset()
        self._action, self._stop = np.asarray(self.first_actions(ts, counters, self._obs)), None
        self._ep_ret, self._ep_len, self._step = np.zeros(self.n_seeds), np.zeros(self.n_seeds, np.int64), step
        return self.pack(ts, counters)

    def advance(self, carry, n: int, stop: dict, sync_end: bool):
        ls, pipelined = self.cfg.agent_cfg.learning_starts, self.cfg.run.pipelined_acting
        finished = defaultdict(list)  # seed -> (return, length) of the episodes that ended
        for i in range(n):
            nobs, rew, term, trunc, final = self.envs.step(self._action, self._stop)
            self._ep_ret += rew
            self._ep_len += 1
            for j in np.flatnonzero(term | trunc):
                finished[j].append((self._ep_ret[j], self._ep_len[j]))
                self._ep_ret[j], self._ep_len[j] = 0.0, 0
            tr = {"obs": self._obs, "action": self._action, "reward": rew, "next_obs": final,
                  "terminated": term.astype(np.float32), "done": (term | trunc).astype(np.float32)}
            last = i == n - 1
            carry, self._action, self._stop = self.host_step(carry, tr, nobs, learn=self._step >= ls,
                                                             pipelined=pipelined and not (sync_end and last))
            self._obs, self._step = nobs, self._step + 1
            if stop["sig"] is not None and not last:
                return carry, i + 1, None, None
        carry, stats = self._stats(carry)
        eps = [finished.get(j, []) for j in range(self.n_seeds)]
        sums = {"count": [len(e) for e in eps], "return": [sum(x[0] for x in e) for e in eps],
                "length": [sum(x[1] for x in e) for e in eps]}
        return carry, n, sums, jax.device_get(stats)

    def saved(self, carry):
        return self.unpack(carry)

    def agent_state(self, carry):
        return self.unpack(carry)[0].agent

    def meta(self) -> dict:
        return {"episodes": self.envs.episodes}

    def restore_meta(self, meta: dict) -> None:
        self.envs.restore(meta["episodes"], int(meta["env_steps"]))

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

    def step_program(self, kind: str, measure: bool):
        """The packed program of a learning step ("learn": store, updates, act) or of its updates alone
        ("update", pipelined acting) with or without the measuring code."""
        key = (kind, measure)
        if key not in self._programs:
            updates = self.program.seed_updates_of(measure)
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

    def host_step(self, carry, transition, next_obs, learn: bool, pipelined: bool = False):
        """One env step on the packed carry (donated; see `pack`); returns `(carry, action, stop)`, action
        and stop on the host.

        `pipelined` (learning steps only): act before this step's updates and dispatch the updates without
        waiting for them; the action comes back while they run. A learning step runs the program with the
        measuring code when the previous step's flag says so (`measure_due`)."""
        measure = self.measure_due(carry) if learn else False
        if learn and pipelined:
            carry, action, stop, _ = self.warm_program(carry, transition, next_obs)
            carry, self._pending = self.step_program("update", measure)(carry)
            action, stop = jax.device_get((action, stop))  # the flag is read at the next step
        else:
            fn = self.step_program("learn", measure) if learn else self.warm_program
            carry, action, stop, pending = fn(carry, transition, next_obs)
            action, stop, self._pending = jax.device_get((action, stop, pending))  # one transfer
        return carry, action, stop

    def measure_due(self, carry) -> bool:
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

    def _env_step(self, ts, counters, transition, next_obs, learn: bool, updates=None):
        """One env step for all seeds: store, acting hooks, (the update rounds: `updates`, one of
        `OffPolicy.seed_updates_of`), next action, stop flag, and the next step's program flags."""
        ts, counters, stop = self.program.store(ts, counters, transition)
        if learn:
            ts, counters = updates(ts, counters)
        action = self.program.seed_actions(ts, counters, next_obs)
        ts, counters = self.placement.constrain((ts, counters), (True, False))
        return (ts, counters, action, stop, self._with_pending(ts, counters)[2])

    def _stats_of(self, ts, counters):
        """The log-point values of all seeds, for the packed stats program (counters pass through)."""
        ts, stats = self.program.seed_stats(ts)
        return ts, counters, stats


class HostOnPolicy(loop.Driver):
    """PPO on host-stepped envs: seed i owns envs i*E ... i*E + E-1. A chunk is a Python loop over
    iterations; signals are checked between chunks."""

    SEED_BATCHED = (True, False)  # (OnPolicyState, counters)

    def __init__(self, cfg):
        super().__init__(make_setup(cfg, host_envs(cfg, per_seed=cfg.agent_cfg.num_envs)))
        self.program = p = OnPolicy(self.setup)
        self.n_envs, self.unit = p.n_envs, p.unit

        def act(ts, obs, t):  # [S, E, D] -> actions [S, E, ...], log-probabilities [S, E]
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(ts.act_key, t)
            return self.placement.vmap(lambda a, o, k: p.act(a, o, k, t))(ts.agent, obs, keys)

        self._act = jax.jit(act)
        self._update = jax.jit(p.seed_update, donate_argnums=(0,))
        self._stats = jax.jit(p.seed_stats, donate_argnums=(0,))

    def init_carry(self):
        ts, counters = self.program.init_state()   # the host envs live outside the carry
        return ts, self.placement.place(counters, False)

    def start(self, carry, step: int):
        S, E = self.n_seeds, self.n_envs
        self._obs = self.envs.reset().reshape(S, E, -1)
        self._ret, self._len = np.zeros((S, E)), np.zeros((S, E), np.int64)
        return carry

    def advance(self, carry, n: int, stop: dict, sync_end: bool):
        ts, counters = carry
        S, E = self.n_seeds, self.n_envs
        sums = loop.episode_sums(S, np)
        shape = lambda x: x.reshape(S, E, *x.shape[1:])  # noqa: E731  [S * E, ...] -> [S, E, ...]
        for _ in range(n):
            steps = []
            for _ in range(self.cfg.agent_cfg.num_steps):
                t = int(counters["env_steps"])
                action, logp = jax.device_get(self._act(ts, self._obs, t))
                nobs, reward, term, trunc, final = self.envs.step(action.reshape(S * E, *action.shape[2:]))
                reward, term, trunc = shape(reward), shape(term), shape(trunc)
                steps.append({"obs": self._obs, "action": action, "logp": logp, "reward": reward,
                              "next_obs": shape(final), "terminated": term, "truncated": trunc})
                self._ret, self._len, sums = loop.account(self._ret, self._len, sums, reward, term | trunc)
                self._obs = shape(nobs)
                counters = {**counters, "env_steps": counters["env_steps"] + E}
            rollout = {k: np.stack([s[k] for s in steps], axis=1) for k in steps[0]}  # [S, T, E, ...]
            ts, counters = self._update(ts, counters, rollout)
        ts, stats = self._stats(ts)
        return (ts, counters), n, sums, jax.device_get(stats)

    def meta(self) -> dict:
        return {"episodes": list(self.envs.episodes)}

    def restore_meta(self, meta: dict) -> None:
        self.envs.restore(meta["episodes"], int(meta["env_steps"]))
