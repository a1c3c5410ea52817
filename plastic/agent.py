"""What every agent provides to the drivers, and the pytree state it keeps.

An agent is a static Python object (config + `Net`s); all of its methods are pure functions of pytrees:
  init(key) -> AgentState
  act(state, obs, key, explore, step) -> action          (one seed; the drivers vmap; step = env step)
  eval_act(state, obs, key) -> action                    (the evaluation policy: plastic/evaluation.py)
  random_action(key), action_example()                   (from ContinuousActions / DiscreteActions)
  observe(state, transition) -> state                    (off-policy drivers, after every env step: stream
                                                         statistics such as SAC's normalisers; default: none)
  update(u, batch, key) -> u                             (`u`: plastic.core.Update, the update carry of the
                                                         agent state, the hooks and the update counters; its
                                                         `step` / `polyak` make every optimizer and target step)
For the metrics collector (plastic/monitor.py):
  net_inputs(state, batch) -> {net name: the input that network sees on `batch` (obs, action)}
  policy_net, policy_view(output) -> {"q"} | {"logits"} | {"action"} | {"action", "mean", "log_std"}
  critic_net, critic_scalar(output, batch) -> [E?, B] the scalar whose per-example gradients give the NTK
Every optimizer step inside `update` goes through `plastic.core.gradient_step` (by `Update.step`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from plastic.core import Net


@struct.dataclass
class AgentState:
    nets: dict          # name -> NetState
    targets: dict       # name -> target params
    logs: dict          # name -> scalar, last value of each update log (fixed key set)
    extra: dict = struct.field(default_factory=dict)  # other agent state (e.g. PPO's normalisation stats)


def empty_logs(net: Net) -> dict:
    """Zero-valued logs with exactly the keys `gradient_step` produces for `net`."""
    return {f"loss/{net.name}": jnp.zeros(())}


def init_counters(agent) -> dict[str, Any]:
    """Unbatched int32 counters: env steps and one update counter per network (shared by all seeds)."""
    return {"env_steps": jnp.zeros((), jnp.int32), **{n: jnp.zeros((), jnp.int32) for n in agent.nets}}


class StreamFree:
    """The default `observe`: an agent that keeps no statistics of the env stream."""

    def observe(self, state, transition):
        return state


class ContinuousActions(StreamFree):
    """Actions in [-1, 1]^action_size (the env adapter rescales to the env's bounds)."""
    discrete = False
    default_env = "HalfCheetah-v5"

    def random_action(self, key):
        return jax.random.uniform(key, (self.action_size,), minval=-1.0, maxval=1.0)

    def eval_act(self, state, obs, key):
        """The evaluation policy: the deterministic action (TD3 without noise, SAC the mean's tanh)."""
        return self.act(state, obs, key, explore=False)

    def action_example(self):
        return jnp.zeros(self.action_size, jnp.float32)


class DiscreteActions(StreamFree):
    """Integer actions in [0, action_size), action_size being the number of actions."""
    discrete = True
    default_env = "CartPole-v1"

    def random_action(self, key):
        return jax.random.randint(key, (), 0, self.action_size, jnp.int32)

    def eval_act(self, state, obs, key):
        """The evaluation policy: the greedy action."""
        return self.act(state, obs, key, explore=False)

    def action_example(self):
        return jnp.zeros((), jnp.int32)


def squash_obs_action(obs, action):
    return jnp.concatenate([obs, action], axis=-1)


