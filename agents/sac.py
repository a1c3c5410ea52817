"""SAC (Haarnoja et al. 2018) with CleanRL defaults: twin critics (fused), tanh-squashed Gaussian
actor with log-std squashed into [-5, 2], automatic temperature tuning with target entropy -|A| from
α = 1 (`alpha_init`; `alpha` is the temperature when `autotune` is off), weights drawn as PyTorch's
nn.Linear default, which CleanRL's SAC inherits (`init: torch_default`; biases start at zero).

One call of `update` is one critic step and a Polyak update of the critic target; every `policy_delay`
critic steps it also runs `policy_delay` actor (and temperature) steps on the same batch, as CleanRL
does, so actor and critic take the same number of steps on average.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.agent import AgentState, ContinuousActions, empty_logs, squash_obs_action
from plastic.core import Net, Update, maybe
from plastic.fields import nonneg, num, positive, unit, unit_lt1, unit_pos, one_of
from plastic.networks import (ACTIVATIONS, INITIALIZERS, NETWORKS, NORMS, adam_options, build_network, check_options,
                              with_injection)
from plastic.optim import adam

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class SACConfig:
    hidden: tuple[int, ...] = positive((256, 256))  # mlp: layer widths; simba/bronet: the first is the width d
    network: str = one_of("mlp", NETWORKS)  # mlp | simba (Lee et al. 2024) | bronet (Nauman et al. 2024)
    norm: str = one_of("none", NORMS)  # none | layer: LayerNorm after every hidden Dense of an mlp (Plasticine's LN)
    blocks: int = num(2, ge=1)        # simba/bronet residual blocks (papers: critic 2, actor 1; one switch here)
    activation: str = one_of("relu", ACTIVATIONS)
    # CleanRL's SAC is PyTorch: U(±1/sqrt(fan_in)) weights. lecun_normal (3x the variance, what flax draws) learns
    # HalfCheetah ~5k steps later (docs/validation/sanity.md)
    init: str = one_of("torch_default", INITIALIZERS)
    actor_lr: float = positive(3e-4)
    critic_lr: float = positive(1e-3)
    alpha_lr: float = positive(1e-3)
    b1: float = unit_lt1(0.9)         # Adam β1 of every network (CBP's LOP setting: 0.99)
    b2: float = unit_lt1(0.999)       # Adam β2 (CBP's LOP setting: 0.99)
    batch_size: int = positive(256)
    gamma: float = unit(0.99)
    tau: float = unit_pos(0.005)
    policy_delay: int = positive(2)
    autotune: bool = True
    alpha: float = nonneg(0.2)        # the fixed temperature when autotune is off
    # autotune's initial temperature: 1, as CleanRL (log_alpha = 0), SB3 ("auto_1.0") and softlearning start it
    alpha_init: float = positive(1.0)
    train_frequency: int = positive(1)  # env steps between update rounds
    utd: int = positive(1)
    buffer_size: int = positive(1_000_000)
    learning_starts: int = nonneg(5_000)


class SAC(ContinuousActions):
    name = "sac"
    capabilities = frozenset({"replay", "td_target"})  # what interventions may require (Intervention.requires)
    Config = SACConfig
    roles = {"actor": "actor", "critic": "critic", "alpha": "temperature"}

    def __init__(self, cfg: SACConfig, obs_size: int, action_size: int, probe_point="pre_activation",
                 options: dict | None = None):
        self.cfg, self.obs_size, self.action_size = cfg, obs_size, action_size
        self.options = opts = check_options(self.name, options, ("actor", "critic"))
        inject = opts.get("inject", ())
        actor = build_network(cfg, 2 * action_size, probe_point=probe_point, inject="actor" in inject)
        critic = build_network(cfg, 1, ensemble=2, probe_point=probe_point, inject="critic" in inject)
        opt = lambda lr, name: adam(lr, b1=cfg.b1, b2=cfg.b2, **adam_options(opts, name))  # noqa: E731
        self.actor = Net.of("actor", actor, with_injection(opt(cfg.actor_lr, "actor"), actor), cfg.actor_lr)
        self.critic = Net.of("critic", critic, with_injection(opt(cfg.critic_lr, "critic"), critic), cfg.critic_lr)
        self.alpha = Net("alpha", opt(cfg.alpha_lr, "alpha"),
                         init_fn=lambda key: {"log_alpha": jnp.log(jnp.asarray(
                             cfg.alpha_init if cfg.autotune else cfg.alpha, jnp.float32))})
        self.nets = {"actor": self.actor, "critic": self.critic, "alpha": self.alpha}
        self.target_entropy = -float(action_size)

    def role(self, net_name: str) -> str:
        return self.roles[net_name]

    def init(self, key) -> AgentState:
        ka, kc, kt = jax.random.split(key, 3)
        obs = jnp.zeros((1, self.obs_size))
        nets = {"actor": self.actor.init(ka, obs),
                "critic": self.critic.init(kc, squash_obs_action(obs, jnp.zeros((1, self.action_size)))),
                "alpha": self.alpha.init(kt)}
        logs = {**empty_logs(self.actor), **empty_logs(self.critic), "loss/alpha": jnp.zeros(()),
                "alpha": jnp.zeros(()), "entropy": jnp.zeros(()), "q_mean": jnp.zeros(())}
        return AgentState(nets=nets, targets={"critic": nets["critic"].params}, logs=logs)

    @staticmethod
    def _gaussian(y):
        """The actor's output -> (mean, log_std) of the pre-tanh Gaussian (log_std squashed into its range)."""
        mean, log_std = jnp.split(y, 2, axis=-1)
        return mean, LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(log_std) + 1.0)

    def policy(self, params, obs, key, probes=None):
        """Sample a squashed action; returns (action, log_prob, activations, deterministic action)."""
        y, acts = self.actor.apply(params, obs, probes)
        mean, log_std = self._gaussian(y)
        std = jnp.exp(log_std)
        x = mean + std * jax.random.normal(key, mean.shape)
        a = jnp.tanh(x)
        logp = jnp.sum(-0.5 * jnp.square((x - mean) / std) - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)
        logp = logp - jnp.sum(jnp.log(1.0 - jnp.square(a) + 1e-6), axis=-1)
        return a, logp, acts, jnp.tanh(mean)

    def act(self, state: AgentState, obs, key, explore: bool = True, step=0):
        a, _, _, greedy = self.policy(state.nets["actor"].params, obs, key)
        return a if explore else greedy

    def update(self, u: Update, batch, key) -> Update:
        c = self.cfg
        k_next, k_critic, k_actor = jax.random.split(key, 3)
        obs, action = batch["obs"], batch["action"]
        y = self.td_target(u.state, batch, k_next)

        def critic_loss(params, probes):
            q = self.critic.apply(params, squash_obs_action(obs, action), probes)[0][..., 0]
            return jnp.sum(jnp.mean(jnp.square(q - y), axis=-1)), q.mean()

        u, q_mean = u.step(self.critic, critic_loss, key=k_critic, inputs=squash_obs_action(obs, action))
        u = u.polyak(self.critic, c.tau).log(q_mean=q_mean)

        def actor_step(i, u):
            k_pi, k_a, k_t = jax.random.split(jax.random.fold_in(k_actor, i), 3)
            critic_params = u.state.nets["critic"].params
            alpha = jnp.exp(u.state.nets["alpha"].params["log_alpha"])

            def actor_loss(params, probes):
                a, logp, _, _ = self.policy(params, obs, k_pi, probes)
                q = jnp.min(self.critic.apply(critic_params, squash_obs_action(obs, a))[0][..., 0], axis=0)
                return jnp.mean(alpha * logp - q), logp

            u, logp = u.step(self.actor, actor_loss, key=k_a, inputs=obs)
            if c.autotune:
                logp = jax.lax.stop_gradient(logp)

                def alpha_loss(params, probes):
                    return -jnp.mean(jnp.exp(params["log_alpha"]) * (logp + self.target_entropy)), None

                u, _ = u.step(self.alpha, alpha_loss, key=k_t)
            return u.log(alpha=jnp.exp(u.state.nets["alpha"].params["log_alpha"]), entropy=-jnp.mean(logp))

        def actor_phase(u):
            return jax.lax.fori_loop(0, c.policy_delay, actor_step, u, unroll=True)

        return maybe(u.counters["critic"] % c.policy_delay == 0, actor_phase, u)

    # ---- what the metrics collector (plastic/monitor.py) reads ----------------------------------
    policy_net, critic_net = "actor", "critic"

    def net_inputs(self, state: AgentState, batch):
        return {"actor": batch["obs"], "critic": squash_obs_action(batch["obs"], batch["action"])}

    def policy_view(self, out):
        mean, log_std = self._gaussian(out)
        return {"action": jnp.tanh(mean), "mean": mean, "log_std": log_std}

    def critic_scalar(self, out, batch):
        return out[..., 0]  # [2, B]: both critics

    # ---- what LEAST (plastic/interventions/least.py) reads, besides the above ------------------------
    def td_target(self, state: AgentState, batch, key, deterministic: bool = False):
        """The critic's soft TD target `y` [B] on `batch`, exactly as `update` forms it: next action sampled
        from the current actor with `key`, min of the target twins minus alpha log-prob, bootstrapped unless
        `terminated`. `deterministic`: the pre-tanh Gaussian's mean instead of a sample (log-prob at it)."""
        c = self.cfg
        next_obs = batch["next_obs"]
        alpha = jnp.exp(state.nets["alpha"].params["log_alpha"])
        if deterministic:
            mean, log_std = self._gaussian(self.actor.apply(state.nets["actor"].params, next_obs)[0])
            next_a = jnp.tanh(mean)
            next_logp = (jnp.sum(-log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)
                         - jnp.sum(jnp.log(1.0 - jnp.square(next_a) + 1e-6), axis=-1))
        else:
            next_a, next_logp, _, _ = self.policy(state.nets["actor"].params, next_obs, key)
        q_next = self.critic.apply(state.targets["critic"], squash_obs_action(next_obs, next_a))[0][..., 0]
        soft_v = jnp.min(q_next, axis=0) - alpha * next_logp
        return batch["reward"] + c.gamma * (1.0 - batch["terminated"]) * soft_v
