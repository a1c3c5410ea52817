"""TD3 (Fujimoto et al. 2018) with CleanRL defaults; twin critics fused into one ensemble MLP.

Actions live in [-1, 1] (the env adapter rescales). One call of `update` is one critic step, plus — every
`policy_delay` critic steps — one actor step and the Polyak update of both targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from plastic.agent import AgentState, ContinuousActions, empty_logs, merge_logs, squash_obs_action
from plastic.core import Net, gradient_step, maybe, soft_update
from plastic.networks import MLP


@dataclass
class TD3Config:
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    init: str = "lecun_normal"
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    policy_delay: int = 2
    exploration_noise: float = 0.1
    target_noise: float = 0.2
    noise_clip: float = 0.5
    train_frequency: int = 1          # env steps between update rounds
    utd: int = 1                      # gradient updates per env step
    buffer_size: int = 1_000_000
    learning_starts: int = 25_000


class TD3(ContinuousActions):
    name = "td3"
    Config = TD3Config
    roles = {"actor": "actor", "critic": "critic"}

    def __init__(self, cfg: TD3Config, obs_size: int, action_size: int, probe_point="pre_activation"):
        self.cfg, self.obs_size, self.action_size = cfg, obs_size, action_size
        actor = MLP(cfg.hidden, action_size, cfg.activation, kernel_init=cfg.init, probe_point=probe_point)
        critic = MLP(cfg.hidden, 1, cfg.activation, ensemble=2, kernel_init=cfg.init, probe_point=probe_point)
        self.actor = Net.of("actor", actor, optax.adam(cfg.actor_lr), cfg.actor_lr)
        self.critic = Net.of("critic", critic, optax.adam(cfg.critic_lr), cfg.critic_lr)
        self.nets = {"actor": self.actor, "critic": self.critic}

    def role(self, net_name: str) -> str:
        return self.roles[net_name]

    def init(self, key) -> AgentState:
        ka, kc = jax.random.split(key)
        obs = jnp.zeros((1, self.obs_size))
        actor = self.actor.init(ka, obs)
        critic = self.critic.init(kc, squash_obs_action(obs, jnp.zeros((1, self.action_size))))
        logs = {**empty_logs(self.actor), **empty_logs(self.critic), "q_mean": jnp.zeros(())}
        return AgentState(nets={"actor": actor, "critic": critic},
                          targets={"actor": actor.params, "critic": critic.params}, logs=logs)

    def policy(self, params, obs, probes=None):
        y, acts = self.actor.apply(params, obs, probes)
        return jnp.tanh(y), acts

    def act(self, state: AgentState, obs, key, explore: bool = True, step=0):
        a, _ = self.policy(state.nets["actor"].params, obs)
        if explore:
            a = a + self.cfg.exploration_noise * jax.random.normal(key, a.shape)
        return jnp.clip(a, -1.0, 1.0)

    def update(self, state: AgentState, batch, counters, key, interventions=(), istate=None):
        c = self.cfg
        k_noise, k_critic, k_actor = jax.random.split(key, 3)
        obs, action, next_obs = batch["obs"], batch["action"], batch["next_obs"]
        B = obs.shape[0]

        noise = jnp.clip(c.target_noise * jax.random.normal(k_noise, action.shape), -c.noise_clip, c.noise_clip)
        next_a = jnp.clip(self.policy(state.targets["actor"], next_obs)[0] + noise, -1.0, 1.0)
        q_next = self.critic.apply(state.targets["critic"], squash_obs_action(next_obs, next_a))[0][..., 0]
        y = batch["reward"] + c.gamma * (1.0 - batch["terminated"]) * jnp.min(q_next, axis=0)

        def critic_loss(params, probes):
            q = self.critic.apply(params, squash_obs_action(obs, action), probes)[0][..., 0]  # [2, B]
            return jnp.sum(jnp.mean(jnp.square(q - y), axis=-1)), q.mean()

        ns, istate, n, q_mean, logs = gradient_step(
            self.critic, state.nets["critic"], critic_loss, batch_size=B, count=counters["critic"],
            key=k_critic, interventions=interventions, istate=istate, inputs=squash_obs_action(obs, action))
        state = merge_logs(state.replace(nets={**state.nets, "critic": ns}), {**logs, "q_mean": q_mean})
        counters = {**counters, "critic": n}

        def actor_phase(operand):
            state, istate, counters = operand
            critic_params = state.nets["critic"].params

            def actor_loss(params, probes):
                a = self.policy(params, obs, probes)[0]
                q1 = self.critic.apply(critic_params, squash_obs_action(obs, a))[0][0, :, 0]
                return -jnp.mean(q1), None

            ns, istate, n, _, logs = gradient_step(
                self.actor, state.nets["actor"], actor_loss, batch_size=B, count=counters["actor"],
                key=k_actor, interventions=interventions, istate=istate, inputs=obs)
            nets = {**state.nets, "actor": ns}
            targets = {
                "actor": soft_update(self.actor, state.targets["actor"], ns.params, c.tau, interventions, istate),
                "critic": soft_update(self.critic, state.targets["critic"], critic_params, c.tau,
                                      interventions, istate),
            }
            state = merge_logs(state.replace(nets=nets, targets=targets), logs)
            return state, istate, {**counters, "actor": n}

        return maybe(counters["critic"] % c.policy_delay == 0, actor_phase, (state, istate, counters))

    # ---- what the metrics collector (plastic/monitor.py) reads ----------------------------------
    policy_net, critic_net = "actor", "critic"

    def net_inputs(self, state: AgentState, batch):
        return {"actor": batch["obs"], "critic": squash_obs_action(batch["obs"], batch["action"])}

    def policy_view(self, out):
        return {"action": jnp.tanh(out)}

    def critic_scalar(self, out, batch):
        return out[..., 0]  # [2, B]: both critics
