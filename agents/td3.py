"""TD3 (Fujimoto et al. 2018) with CleanRL defaults; twin critics fused into one ensemble MLP.

Actions live in [-1, 1] (the env adapter rescales). One call of `update` is one critic step, plus — every
`policy_delay` critic steps — one actor step and the Polyak update of both targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.agent import AgentState, ContinuousActions, empty_logs, squash_obs_action
from plastic.core import Net, Update, maybe
from plastic.fields import nonneg, num, positive, unit, unit_lt1, unit_pos, one_of
from plastic.networks import (ACTIVATIONS, INITIALIZERS, NETWORKS, NORMS, adam_options, build_network, check_options,
    ensemble_member, with_injection)
from plastic.optim import adam


@dataclass
class TD3Config:
    hidden: tuple[int, ...] = positive((256, 256))  # mlp: layer widths; simba/bronet: the first is the width d
    network: str = one_of("mlp", NETWORKS)  # mlp | simba (Lee et al. 2024) | bronet (Nauman et al. 2024)
    norm: str = one_of("none", NORMS)  # none | layer: LayerNorm after every hidden Dense of an mlp (Plasticine's LN)
    blocks: int = num(2, ge=1)        # simba/bronet residual blocks (papers: critic 2, actor 1; one switch here)
    activation: str = one_of("relu", ACTIVATIONS)
    init: str = one_of("lecun_normal", INITIALIZERS)
    actor_lr: float = positive(3e-4)
    critic_lr: float = positive(3e-4)
    b1: float = unit_lt1(0.9)         # Adam β1 (CBP's LOP setting: 0.99)
    b2: float = unit_lt1(0.999)       # Adam β2 (CBP's LOP setting: 0.99)
    batch_size: int = positive(256)
    gamma: float = unit(0.99)
    tau: float = unit_pos(0.005)
    policy_delay: int = positive(2)
    exploration_noise: float = nonneg(0.1)
    target_noise: float = nonneg(0.2)
    noise_clip: float = nonneg(0.5)
    train_frequency: int = positive(1)  # env steps between update rounds
    utd: int = positive(1)            # gradient updates per env step
    buffer_size: int = positive(1_000_000)
    learning_starts: int = nonneg(25_000)


class TD3(ContinuousActions):
    name = "td3"
    capabilities = frozenset({"replay", "td_target"})  # what interventions may require (Intervention.requires)
    Config = TD3Config
    roles = {"actor": "actor", "critic": "critic"}

    def __init__(self, cfg: TD3Config, obs_size: int, action_size: int, probe_point="pre_activation",
                 options: dict | None = None):
        self.cfg, self.obs_size, self.action_size = cfg, obs_size, action_size
        self.options = opts = check_options(self.name, options, ("actor", "critic"))
        inject = opts.get("inject", ())
        actor = build_network(cfg, action_size, probe_point=probe_point, inject="actor" in inject)
        critic = build_network(cfg, 1, ensemble=2, probe_point=probe_point, inject="critic" in inject)
        opt = lambda lr, name: adam(lr, b1=cfg.b1, b2=cfg.b2, **adam_options(opts, name))  # noqa: E731
        self.actor = Net.of("actor", actor, with_injection(opt(cfg.actor_lr, "actor"), actor), cfg.actor_lr)
        self.critic = Net.of("critic", critic, with_injection(opt(cfg.critic_lr, "critic"), critic), cfg.critic_lr)
        self.nets = {"actor": self.actor, "critic": self.critic}
        self.q1 = critic.clone(ensemble=1)  # Q1 alone, for the actor loss (networks.ensemble_member)

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

    def update(self, u: Update, batch, key) -> Update:
        c = self.cfg
        k_noise, k_critic, k_actor = jax.random.split(key, 3)
        obs, action = batch["obs"], batch["action"]
        y = self.td_target(u.state, batch, k_noise)

        def critic_loss(params, probes):
            q = self.critic.apply(params, squash_obs_action(obs, action), probes)[0][..., 0]  # [2, B]
            return jnp.sum(jnp.mean(jnp.square(q - y), axis=-1)), q.mean()

        u, q_mean = u.step(self.critic, critic_loss, key=k_critic, inputs=squash_obs_action(obs, action))
        u = u.log(q_mean=q_mean)

        def actor_phase(u):
            critic_params = u.state.nets["critic"].params

            def actor_loss(params, probes):
                a = self.policy(params, obs, probes)[0]
                q1 = self.q1.apply({"params": ensemble_member(critic_params, 0)}, squash_obs_action(obs, a))[0][0, :, 0]
                return -jnp.mean(q1), None

            u, _ = u.step(self.actor, actor_loss, key=k_actor, inputs=obs)
            return u.polyak(self.actor, c.tau).polyak(self.critic, c.tau)

        return maybe(u.counters["critic"] % c.policy_delay == 0, actor_phase, u)

    # ---- what the metrics collector (plastic/monitor.py) reads ----------------------------------
    policy_net, critic_net = "actor", "critic"

    def net_inputs(self, state: AgentState, batch):
        return {"actor": batch["obs"], "critic": squash_obs_action(batch["obs"], batch["action"])}

    def policy_view(self, out):
        return {"action": jnp.tanh(out)}

    def critic_scalar(self, out, batch):
        return out[..., 0]  # [2, B]: both critics

    # ---- what LEAST (plastic/interventions/least.py) reads, besides the above ------------------------
    def td_target(self, state: AgentState, batch, key, deterministic: bool = False):
        """The critic's TD target `y` [B] on `batch`, exactly as `update` forms it: target actor with clipped
        smoothing noise drawn from `key`, min of the target twins, bootstrapped unless `terminated`.
        `deterministic`: without the smoothing noise."""
        c = self.cfg
        next_obs = batch["next_obs"]
        noise = jnp.clip(c.target_noise * jax.random.normal(key, batch["action"].shape), -c.noise_clip, c.noise_clip)
        if deterministic:
            noise = jnp.zeros_like(noise)
        next_a = jnp.clip(self.policy(state.targets["actor"], next_obs)[0] + noise, -1.0, 1.0)
        q_next = self.critic.apply(state.targets["critic"], squash_obs_action(next_obs, next_a))[0][..., 0]
        return batch["reward"] + c.gamma * (1.0 - batch["terminated"]) * jnp.min(q_next, axis=0)
