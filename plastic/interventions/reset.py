"""Full and partial resets: primacy bias (Nikishin et al. 2022) and SR-SAC
(docs/interventions.md, Full and partial resets).

At scheduled points (`scheduled_event` hook, between update rounds) the selected networks are replaced by
a freshly initialised copy — all of them (`scope=all`) or only their last layers — while the replay buffer
is kept. The fresh parameters are those of `agent.init(fold_in(base_key, n))` for the n-th reset (n = 1,
2, ...), `base_key` being the seed's intervention key, so runs are reproducible and resumable.

Schedule (`schedule`): `every_env_steps` (Nikishin: every `interval` env steps), `every_updates` (SR-SAC:
every `interval` updates of `update_net`), `at_env_steps` (an explicit list, e.g. BRO's). The hook runs at the
start of each learning round, so a reset fires at the first round whose counter has reached the next due
point (exactly at the multiple for env steps; for updates, at the round boundary right after it).

Optimizer: `fresh` gives a fully reset network the optimizer state `tx.init(new params)` (count 0); a network
reset only in part has one Adam count for all its leaves, so there `fresh` zeroes the moments of the reset
leaves and keeps the count (docs/mechanics.md §3.4; per-group optimizer states are not available without
changing the agents). `zero_moments_keep_count` always does the latter.

Logs: `reset/count` (resets so far), `reset/last_env_step` (env step of the last reset), and
`reset/events/NET` (the same count, for each network a reset replaces).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.core import NetState, maybe
from plastic.fields import nonneg, num, one_of
from plastic.interventions.base import Intervention, check_roles
from plastic.optim import restart_entries

SCHEDULES = ("every_env_steps", "every_updates", "at_env_steps")
SCOPES = ("all", "last_k_layers", "heads_only", "all_but_encoder")
OPTIMIZERS = ("fresh", "zero_moments_keep_count")
TARGETS = ("copy_new_online", "keep")
TEMPERATURE = ("reset", "keep")


@dataclass
class ResetConfig:
    schedule: str = one_of("every_env_steps", SCHEDULES)  # every_env_steps | every_updates (SR-SAC) | at_env_steps
    interval: int = 200_000           # env steps (Nikishin SAC) or updates (SR-SAC: 2_560_000)
    at_env_steps: tuple[int, ...] = num((), ge=1)  # schedule=at_env_steps (e.g. BRO 15001,50001,250001,...)
    update_net: str = ""              # schedule=every_updates: the counter used; "" = the critic (DQN: q)
    max_resets: int = nonneg(0, note="0 = unlimited")  # 0 = unlimited (SPR: total_resets=4)
    scope: str = one_of("all", SCOPES)  # all | last_k_layers | heads_only (= last 1) | all_but_encoder
    k: int = num(1, ge=1)             # scope=last_k_layers: number of Dense layers counted from the output
    networks: tuple[str, ...] = ("actor", "critic")  # roles reset (SAC's temperature: see `temperature`)
    optimizer: str = one_of("fresh", OPTIMIZERS)  # fresh | zero_moments_keep_count
    targets: str = one_of("copy_new_online", TARGETS)  # copy_new_online | keep
    temperature: str = one_of("reset", TEMPERATURE)  # SAC: reset | keep (SBX keeps it)
    copy_encoder_opt_state: bool = True  # scope=all_but_encoder: keep the encoder's optimizer state
    keep_buffer: bool = True          # defining property; only true


class Reset(Intervention):
    name = "reset"
    shared = ("seen",)  # the reset points passed: follows the shared counters
    Config = ResetConfig
    resources = {"weight_writes": "share"}
    # PPO has no buffer to relearn from in the single-task setting (docs/interventions.md, Full and partial resets)
    requires = frozenset({"replay"})
    census = {"interval": 40}

    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        network = getattr(agent_cfg, "network", "mlp")
        if c.scope != "all" and network != "mlp":
            raise ValueError(f"reset.scope={c.scope} counts layers of a plain chain; {self.agent_name}.network="
                             f"{network} is residual: use reset.scope=all")
        if c.schedule != "at_env_steps" and c.interval < 1:
            raise ValueError(f"reset.interval must be a positive number of "
                             f"{'updates' if c.schedule == 'every_updates' else 'env steps'}, got {c.interval}")
        if c.schedule == "at_env_steps" and (not c.at_env_steps or list(c.at_env_steps) != sorted(set(c.at_env_steps))):
            raise ValueError(f"reset.at_env_steps must be a non-empty increasing list of positive env steps, "
                             f"got {','.join(map(str, c.at_env_steps)) or 'nothing'}")
        if not c.keep_buffer:
            raise ValueError("reset.keep_buffer=false is not supported; resets always keep the replay buffer")
        nets = tuple(self.roles)
        if c.update_net and nets and c.update_net not in nets:
            raise ValueError(f"reset.update_net={c.update_net!r} is not a network of this agent; "
                             f"choose one of: {', '.join(nets)}")
        check_roles("reset", c.networks)

    # ---- what is reset ---------------------------------------------------------------------------
    def _counter(self, agent):
        if self.cfg.update_net:
            if self.cfg.update_net not in agent.nets:
                raise ValueError(f"reset.update_net={self.cfg.update_net!r} is not a network of this agent; "
                                 f"choose one of: {', '.join(agent.nets)}")
            return self.cfg.update_net
        return next(n for n in agent.nets if agent.role(n) == "critic")

    def reset_nets(self, agent):
        """Names of the networks a reset touches."""
        out = []
        for n in agent.nets:
            role = agent.role(n)
            if role in self.cfg.networks or (role == "temperature" and self.cfg.temperature == "reset"):
                out.append(n)
        return out

    def selection(self, net, params):
        """(reset, encoder): bool trees shaped like `params` (one scalar per leaf): the leaves a reset
        redraws, and the kept encoder leaves (scope=all_but_encoder)."""
        c = self.cfg
        leaves = lambda v: jax.tree.map(lambda _: v, params)  # noqa: E731
        if c.scope == "all" or not net.layers:  # parameter-only nets (SAC's log alpha) are reset whole
            return leaves(True), leaves(False)
        # Dense/conv modules in forward order: each hidden layer (with its LayerNorm), then the output layer
        modules = [(l.kernel[:-1], () if l.layer_norm is None else (l.layer_norm[0][:-1],)) for l in net.layers]
        modules.append((net.layers[-1].consumers[0][:-1], ()))
        if c.scope == "all_but_encoder":
            enc = [m for l, m in zip(net.layers, modules) if l.name.startswith("conv_")]
            chosen = [m for m in modules if m not in enc]
        else:
            k = 1 if c.scope == "heads_only" else c.k
            chosen, enc = modules[-k:], []

        def under(groups):
            prefixes = [p for m, ln in groups for p in (m, *ln)]

            def leaf(path, _):
                keys = tuple(getattr(e, "key", getattr(e, "name", None)) for e in path)
                return any(keys[:len(p)] == p for p in prefixes)
            return jax.tree_util.tree_map_with_path(leaf, params)

        reset = under(chosen)
        if c.scope != "all_but_encoder":
            # leaves outside the layer map (e.g. a free log-std vector) belong to the head
            mapped = under(modules)
            reset = jax.tree.map(lambda r, m: r or not m, reset, mapped)
        return reset, under(enc)

    def init(self, key, agent, agent_state=None):
        self._counter(agent)  # a bad update_net is an error at build time
        self._reset_names = tuple(self.reset_nets(agent))  # for the per-network event counts in `logs`
        return {"key": key, "count": jnp.zeros((), jnp.int32), "seen": jnp.zeros((), jnp.int32),
                "last_env_step": jnp.zeros((), jnp.int32)}

    def due_index(self, agent, counters, env_steps=None):
        """How many reset points the schedule has passed (an int32 scalar, unbatched)."""
        c = self.cfg
        env_steps = counters["env_steps"] if env_steps is None else env_steps
        if c.schedule == "every_env_steps":
            due = env_steps // c.interval
        elif c.schedule == "every_updates":
            due = counters[self._counter(agent)] // c.interval
        else:
            due = jnp.sum(env_steps >= jnp.asarray(c.at_env_steps, jnp.int32)).astype(jnp.int32)
        return jnp.minimum(due, c.max_resets) if c.max_resets else due

    def scheduled_event(self, agent, agent_state, state, counters, key):
        """The hook runs once per env step of the learning phase (before that step's updates), so an env-step
        schedule fires when this step passes a point: the predicate depends on the unbatched counters only
        and stays a real `lax.cond` under the seed vmap. An update schedule compares with the points already
        seen (`seen`, shared by the seeds like the counters it follows: `Intervention.shared`), so it stays a
        real `lax.cond` too."""
        due = self.due_index(agent, counters)
        if self.cfg.schedule == "every_updates":
            fire = due > state["seen"]
        else:
            fire = due > self.due_index(agent, counters, counters["env_steps"] - 1)

        def event(operand):
            agent_state, s = operand
            n = s["count"] + 1
            return self.reset(agent, agent_state, jax.random.fold_in(s["key"], n)), \
                {**s, "count": n, "last_env_step": counters["env_steps"].astype(jnp.int32)}

        agent_state, state = maybe(fire, event, (agent_state, state))
        return agent_state, {**state, "seen": jnp.maximum(state["seen"], due).astype(jnp.int32)}

    def reset(self, agent, agent_state, key):
        """The agent state after one reset with fresh-initialisation key `key`."""
        c = self.cfg
        fresh = agent.init(key)
        nets, targets = dict(agent_state.nets), dict(agent_state.targets)
        for name in self.reset_nets(agent):
            net, old, new = agent.nets[name], agent_state.nets[name], fresh.nets[name]
            sel, enc = self.selection(net, old.params)
            pick = lambda s, a, b: a if s else b  # noqa: E731 (static per leaf)
            params = jax.tree.map(pick, sel, new.params, old.params)
            if c.optimizer == "fresh" and all(jax.tree.leaves(sel)):
                opt_state = new.opt_state
            else:
                zero = sel
                if c.scope == "all_but_encoder" and not c.copy_encoder_opt_state:
                    zero = jax.tree.map(lambda a, b: a or b, sel, enc)
                opt_state = restart_entries(net.tx, old.opt_state, zero, params)
            nets[name] = NetState(params, opt_state)
            if name in targets and c.targets == "copy_new_online":
                targets[name] = jax.tree.map(pick, sel, params, targets[name])
        return agent_state.replace(nets=nets, targets=targets)

    def expected_events(self, agent, counters):
        """Env-step schedules: one reset per point `p` with learning_starts < p <= env steps (the hook runs at
        the env steps of the learning phase), at most `max_resets`; every reset net counts each. The
        `every_updates` schedule fires at the round after its counter crosses a multiple, which the final
        counters alone do not tell: not stated here (tests/test_reset.py checks it)."""
        c = self.cfg
        if c.schedule == "every_updates":
            return {}
        first, last = agent.cfg.learning_starts + 1, counters["env_steps"]
        if c.schedule == "every_env_steps":
            n = max(last // c.interval - (first - 1) // c.interval, 0)
        else:
            n = sum(first <= p <= last for p in c.at_env_steps)
        n = min(n, c.max_resets) if c.max_resets else n
        return {name: n for name in self.reset_nets(agent)}

    def logs(self, state):
        out = {"reset/count": state["count"], "reset/last_env_step": state["last_env_step"]}
        out.update({f"reset/events/{n}": state["count"] for n in self._reset_names})
        return out
