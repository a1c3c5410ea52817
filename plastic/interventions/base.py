"""The intervention interface: one class, one default no-op method per named hook (the update-round hooks,
their state and statistics batches are plastic.core.Hook's, shared with the metrics collector).

An intervention never edits an agent. It overrides the hooks it needs; the training core
(plastic/core.py) and the drivers (plastic/programs.py) call every hook of every active
intervention, in the order given on the command line (`--intervention grama+swd`).

| hook              | method            | called by                        |
|-------------------|-------------------|----------------------------------|
| loss_term         | `loss_term`       | core.gradient_step, inside grad  |
| grad_transform    | `grad_transform`  | core.gradient_step, before optax |
| post_update       | `post_update`     | core.gradient_step, after optax  |
| periodic          | `post_update` + `core.maybe(count % period == 0, ...)` |
| target_update     | `target_update`   | core.soft_update                 |
| replay_sampler    | `sample`          | programs.OffPolicy, per update   |
| acting_loop       | `on_env_step`     | programs.OffPolicy, per env step |
|                   | `on_act`          | programs.OffPolicy, per action   |
| scheduled_event   | `scheduled_event` | programs, before an update round |
| rollout_columns   | `rollout_columns` | core.Hooks, once per PPO rollout |
| post_iteration    | `post_iteration`  | core.Hooks, after PPO's epochs   |
| agent build       | `agent_options`   | setup.make_setup, merged once    |
| run start         | `initial_state`   | programs.init_seeds, once a seed |

A periodic event's cond costs something on every update: XLA:CPU copies every array a `lax.cond` returns,
on every call, taken or not (seen in the HLO), so a cond over a whole `NetState` copies all parameters and
moments per update. Applying the event branch-free instead (masks all False off the event) costs its
masked writes on every update, and under the seed vmap they did not fuse away: ReGraMa's branch-free reset
cost +9.5 % per TD3 update at 16 seeds, its reset under the cond +0.8 % (docs/benchmarks.md). Measure
both with benchmarks/seeds.py.

State: `init` returns the intervention's own pytree; the trainer keeps it in the train state under
`interventions[name]`, so it is vmapped over seeds and checkpointed with everything else.
"""
from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from plastic.core import Hook

def choice(name, value, valid):
    """A switch's value must be one of `valid`: else a one-line error naming them."""
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


UNIT_ROLES = ("actor", "critic")  # the roles of networks with hidden units (SAC's temperature has none)


def check_roles(name, networks, valid=UNIT_ROLES):
    """`NAME.networks` must name at least one role, each among `valid`: else a one-line error naming them."""
    if not networks or any(n not in valid for n in networks):
        raise ValueError(f"{name}.networks={','.join(networks) or 'nothing'} is not valid; choose among: "
                         f"{', '.join(valid)}")


def nets_with_roles(agent, roles, with_units: bool = False):
    """The agent's networks whose role (actor, critic, temperature) is in `roles`, in the agent's order;
    `with_units`: only those with hidden units in their layer map (what unit-level resets can touch)."""
    return [n for n in agent.nets.values() if agent.role(n.name) in roles and (n.layers or not with_units)]


class Intervention(Hook):
    name: ClassVar[str]
    Config: ClassVar[type]
    # What the agent must offer (its `capabilities`): "replay" (an off-policy agent with a replay buffer),
    # "td_target" (a critic whose TD target `agent.td_target` recomputes), "policy_objective" (PPO's clipped
    # policy loss, which the intervention rewrites). The config layer applies it to every registered agent
    # that has them (plastic.config.supported_agents), so a new agent needs no edit here.
    requires: ClassVar[frozenset[str]] = frozenset()
    samples_replay: ClassVar[bool] = False   # True if it overrides `sample` (replay_sampler hook)
    resources: ClassVar[dict] = {}           # claims() of every configuration (see `claims`)
    agent_defaults: ClassVar[dict] = {}      # agent -> {field: default} replacing the Config defaults
    # metrics field -> this intervention's config field it is set from, so that a metric measures what the
    # method acts on (ReGraMa: metrics.grama_target from grama.score_target); plastic.config applies it, and an
    # explicit different value of the metrics field is a config error
    metrics_fields: ClassVar[dict] = {}
    # Scheduled periodic events (resets, recycling, perturbations, injections, topology updates): a configuration
    # under which they fire often in a short run, {field: value}. tests/test_census.py trains every intervention
    # that sets it, on every agent it supports, on both drivers and every network selection, and checks the
    # logged per-network counts `NAME/events/NET` against `expected_events`. {}: no scheduled events.
    census: ClassVar[dict] = {}

    def __init__(self, cfg, agent_name: str, roles: dict[str, str] | None = None):
        self.cfg = cfg
        self.agent_name = agent_name
        # the agent's networks and their roles ("actor", "critic", "temperature"), from the agent class's `roles`:
        # the config layer passes them (plastic.config.make_intervention), so interventions never import agents/
        self.roles = dict(roles or {})

    def __repr__(self):
        return f"{type(self).__name__}({self.cfg})"

    # ---- setup -------------------------------------------------------------------------------
    def validate(self, run_cfg, agent_cfg) -> None:
        """Raise ValueError (one line, naming valid options) for bad combinations: rules that relate several
        fields, or a field to the run or agent config. A single field's range or choices are declared on the
        field (plastic/fields.py) and checked before this runs."""

    def claims(self) -> dict:
        """Shared resources this intervention takes, resource -> "own" (no other intervention may take it)
        or "share" (others may too, unless one owns it). Two claims of one resource with an "own" among
        them make the stack a one-line config error. Resources in use: "replay_sampler" (replaces uniform
        sampling), "weight_support" (which weights may be non-zero: NE's masks), "weight_writes" (writes
        weights outside the optimizer: resets, perturbations), "policy_objective" (rewrites PPO's clipped
        surrogate), "episode_stops" (ends episodes early)."""
        return {**self.resources, **({"replay_sampler": "own"} if self.samples_replay else {})}

    def replay_options(self) -> dict:
        """Extra features this intervention needs from the replay buffer (e.g. bucket statistics)."""
        return {}

    def agent_options(self) -> dict:
        """Options the agent must be BUILT with (plastic.networks.AGENT_OPTIONS), e.g. `{"adam_count":
        "per_element"}` (CBP's optimizer) or `{"inject": ("actor", "critic")}` (injection heads). The trainer
        merges them over the active interventions; two different values of one key are a config error."""
        return {}

    @classmethod
    def defaults_for(cls, agent: str, agent_cfg) -> dict:
        """{field: default} replacing the Config defaults for this agent and its settings (`agent_defaults`
        by default); the config builder applies them to the fields a preset or an override did not set."""
        return dict(cls.agent_defaults.get(agent, {}))

    @classmethod
    def census_selections(cls, roles) -> list[dict]:
        """The network selections the census runs, as field overrides, for an agent whose networks have the
        roles `roles`: each of its actor and critic roles alone, then both (through a `networks` field)."""
        if "networks" not in cls.Config.__dataclass_fields__:
            return [{}]
        units = [r for r in UNIT_ROLES if r in set(roles)]
        return [{"networks": (r,)} for r in units] + ([{"networks": tuple(units)}] if len(units) > 1 else [])

    def expected_events(self, agent, counters) -> dict[str, int]:
        """The schedule: network name -> how many events it has had in a run whose counters (env steps and
        each network's updates, plain ints) now stand at `counters`, computed from the schedule alone. An
        intervention with scheduled events overrides it and logs each network's count as `NAME/events/NET`."""
        return {}

    # ---- hooks (defaults are identities) ----------------------------------------------------
    def sample(self, replay, state, key, batch_size):
        raise NotImplementedError

    def on_env_step(self, state, transition, agent, agent_state, counters):
        """acting_loop, after each env step of one seed: `transition` is the step just taken (obs, action,
        reward, next_obs, terminated, done), `agent_state` the agent acting now, `counters` the shared
        counters before this step is counted. Returns `(state, stop)`; `stop` ends the episode at the
        seed's next env step, which is stored as a truncation (terminated 0, done 1)."""
        return state, jnp.zeros((), bool)

    def on_act(self, state, action, key, counters):
        """acting_loop, on each exploring policy action of one seed (not on warm-up random actions):
        returns the action to take (e.g. extra exploration noise). Off-policy host and jitted drivers."""
        return action

    def scheduled_event(self, agent, agent_state, state, counters, key):
        return agent_state, state

    def initial_state(self, agent, agent_state, state):
        """The agent state a run starts from, given this intervention's initial `state` (NE: the network
        with its initial masks applied); once per seed, after every intervention's `init` and before the
        metrics collector's, so that its θ₀ is the network training starts from. Default: unchanged."""
        return agent_state

    def logs(self, state) -> dict:
        """Scalars to log from the intervention's state (e.g. last reset fractions)."""
        return {}

    def net_logs(self, state, *keys) -> dict:
        """`NAME/KEY/NET` for each network's state (a dict per network) and each of `keys`, network by network."""
        return {f"{self.name}/{k}/{net}": s[k] for net, s in state.items() for k in keys}
