"""The intervention interface: one class, one default no-op method per named hook.

An intervention never edits an agent. It overrides the hooks it needs; the training core
(plastic/core.py) and the trainer (plastic/trainer.py) call every hook of every active
intervention, in the order given on the command line (`--intervention grama+swd`).

| hook              | method            | called by                        |
|-------------------|-------------------|----------------------------------|
| loss_term         | `loss_term`       | core.gradient_step, inside grad  |
| grad_transform    | `grad_transform`  | core.gradient_step, before optax |
| post_update       | `post_update`     | core.gradient_step, after optax  |
| periodic          | `post_update` + `core.maybe(count % period == 0, ...)` |
| target_update     | `target_update`   | core.soft_update                 |
| replay_sampler    | `sample`          | trainer, once per update         |
| acting_loop       | `on_env_step`     | trainer, once per env step       |
| scheduled_event   | `scheduled_event` | trainer, at env-step boundaries  |

State: `init` returns the intervention's own pytree; the trainer keeps it in the train state under
`interventions[name]`, so it is vmapped over seeds and checkpointed with everything else.
"""
from __future__ import annotations

from typing import Any, ClassVar

import jax.numpy as jnp

ALL_AGENTS = ("td3", "sac", "dqn", "ppo")


def choice(name, value, valid):
    """A switch's value must be one of `valid`: else a one-line error naming them."""
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


class Intervention:
    name: ClassVar[str]
    Config: ClassVar[type]
    agents: ClassVar[tuple[str, ...]] = ALL_AGENTS
    samples_replay: ClassVar[bool] = False   # True if it overrides `sample` (replay_sampler hook)
    agent_defaults: ClassVar[dict] = {}      # agent -> {field: default} replacing the Config defaults

    def __init__(self, cfg, agent_name: str):
        self.cfg = cfg
        self.agent_name = agent_name

    def __repr__(self):
        return f"{type(self).__name__}({self.cfg})"

    # ---- setup -------------------------------------------------------------------------------
    def validate(self, run_cfg, agent_cfg) -> None:
        """Raise ValueError (one line, naming valid options) for bad values or combinations."""

    def replay_options(self) -> dict:
        """Extra features this intervention needs from the replay buffer (e.g. bucket statistics)."""
        return {}

    def init(self, key, agent, agent_state=None) -> Any:
        """This intervention's state for one seed; `agent_state` is the freshly initialised agent's."""
        return {}

    # ---- hooks (defaults are identities) ----------------------------------------------------
    def loss_term(self, net, params, state, aux):
        """Extra loss added inside the gradient; `aux` is the agent loss's aux output (PPO's policy loss
        passes per-sample `logp`, `logp_old` and normalised `adv`)."""
        return jnp.zeros(())

    def grad_transform(self, net, grads, params, state):
        return grads

    def post_update(self, net, ns, ctx, state, key):
        return ns, state

    def target_update(self, net, target_params, state):
        return target_params

    def sample(self, replay, state, key, batch_size):
        raise NotImplementedError

    def on_env_step(self, state, transition):
        """acting_loop: returns (state, stop) where `stop` truncates the current episode early."""
        return state, jnp.zeros((), bool)

    def scheduled_event(self, agent, agent_state, state, counters, key):
        return agent_state, state

    def logs(self, state) -> dict:
        """Scalars to log from the intervention's state (e.g. last reset fractions)."""
        return {}
