"""DQN (Mnih et al. 2015) with the Double-DQN target (van Hasselt et al. 2016) on by default.

Defaults are CleanRL's `dqn.py` for classic control (120-84 MLP, lr 2.5e-4, batch 128, buffer 10k,
one update every 10 env steps, hard target copy every 500 env steps = 50 updates, ε from 1 to 0.05)
and its squared loss. Dopamine's Huber loss is `loss: huber` (its Atari setting); with CleanRL's fast target
copies on CartPole it lets Q diverge (measured: mean Q 2000+ after 30k steps against <= 100 possible, since the
few terminal transitions cannot pull hard enough), so classic control keeps the squared loss. Presets under
experiments/configs/ set other families.

One call of `update` is one gradient step on the online Q-network; every `target_update_period` updates the
target moves toward it with rate `tau` (1.0: a hard copy) through `core.soft_update`, so the
`target_update` hook sees it. Actions are integers in [0, num_actions).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from plastic.agent import AgentState, DiscreteActions, empty_logs
from plastic.core import Net, Update, maybe
from plastic.fields import nonneg, num, positive, unit, unit_lt1, unit_pos, one_of
from plastic.networks import (ACTIVATIONS, INITIALIZERS, NETWORKS, NORMS, TORSOS, ConvNet, adam_options,
    build_network, check_options, with_injection)
from plastic.optim import adam

LOSSES = ("huber", "mse")


@dataclass
class DQNConfig:
    hidden: tuple[int, ...] = positive((120, 84))  # Dense layers (after the convolutions with an image torso);
                                                   # simba/bronet: the first is the width d
    torso: str = one_of("mlp", tuple(TORSOS))  # mlp | nature (Nature-CNN, Atari) | minatar (one 16x3x3 conv)
    network: str = one_of("mlp", NETWORKS)  # mlp | simba | bronet (residual nets; torso=mlp only)
    norm: str = one_of("none", NORMS)  # none | layer: LayerNorm after every hidden Dense of an mlp (Plasticine's LN)
    blocks: int = num(2, ge=1)        # simba/bronet residual blocks (the papers' critic setting)
    activation: str = one_of("relu", ACTIVATIONS)
    init: str = one_of("lecun_normal", INITIALIZERS)
    lr: float = positive(2.5e-4)
    adam_eps: float = positive(1e-8)  # Dopamine's Atari setting: 1.5e-4
    b1: float = unit_lt1(0.9)         # Adam β1 (CBP's LOP setting: 0.99)
    b2: float = unit_lt1(0.999)       # Adam β2 (CBP's LOP setting: 0.99)
    batch_size: int = positive(128)
    gamma: float = unit(0.99)
    double: bool = True               # Double-DQN target: online argmax, target value
    n_step: int = positive(1)         # n-step returns (windows stop at episode ends and at the newest slot)
    reward_clip: float = nonneg(0.0, note="0 = off")  # > 0: rewards clipped to [-c, c] per step for learning
                                                     # (Atari: 1)
    # mse: 0.5 err² (CleanRL's mean err² halved: the same Adam steps up to eps) | huber (δ = 1, Dopamine's Atari)
    loss: str = one_of("mse", LOSSES)
    tau: float = unit_pos(1.0)        # target update rate at each target update (1.0: hard copy)
    target_update_period: int = positive(50)  # in gradient updates (CleanRL: 500 env steps / train_frequency 10)
    epsilon_start: float = unit(1.0)
    epsilon_end: float = unit(0.05)
    eval_epsilon: float = unit(0.001)  # ε of the evaluation policy (Dopamine's Atari 0.001; CleanRL 0.05)
    epsilon_decay_steps: int = nonneg(250_000)  # env steps of the linear decay (CleanRL: half of 500k)
    # where the decay starts: start (env step 0, CleanRL) | learning_starts (after the warm-up: Dopamine, MinAtar)
    epsilon_decay_from: str = one_of("start", ("start", "learning_starts"))
    train_frequency: int = positive(10)  # env steps between update rounds
    utd: int = positive(1)            # gradient updates per update round
    buffer_size: int = positive(10_000)
    learning_starts: int = nonneg(10_000)


class DQN(DiscreteActions):
    name = "dqn"
    capabilities = frozenset({"replay"})  # what interventions may require (Intervention.requires)
    Config = DQNConfig
    roles = {"q": "critic"}

    image_obs = True  # build_agent passes the observation's shape and dtype (for the CNN torsos)

    def __init__(self, cfg: DQNConfig, obs_size: int, action_size: int, probe_point="pre_activation",
                 obs_shape=None, obs_dtype="float32", options: dict | None = None):
        self.cfg, self.obs_size, self.action_size = cfg, obs_size, action_size
        self.options = opts = check_options(self.name, options, ("q",))
        inject = "q" in opts.get("inject", ())
        if cfg.torso == "mlp":
            q = build_network(cfg, action_size, probe_point=probe_point, inject=inject)
        else:
            shape = tuple(obs_shape or (obs_size,))
            if len(shape) != 3:
                raise ValueError(f"dqn.torso={cfg.torso} needs image observations (height, width, channels); "
                                 f"this env's are shaped {shape}: use dqn.torso=mlp")
            # uint8 frames (Atari) are scaled to [0, 1]; MinAtar's 0/1 grids are used as they are
            scale = 1.0 / 255.0 if str(obs_dtype) == "uint8" else 1.0
            q = ConvNet(shape, TORSOS[cfg.torso], cfg.hidden, action_size, cfg.activation, cfg.init, scale,
                        probe_point, inject=inject)
        tx = adam(cfg.lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.adam_eps, **adam_options(opts, "q"))
        self.q = Net.of("q", q, with_injection(tx, q), cfg.lr)
        self.nets = {"q": self.q}

    def role(self, net_name: str) -> str:
        return self.roles[net_name]

    def init(self, key) -> AgentState:
        q = self.q.init(key, jnp.zeros((1, self.obs_size)))
        logs = {**empty_logs(self.q), "q_mean": jnp.zeros(())}
        return AgentState(nets={"q": q}, targets={"q": q.params}, logs=logs)

    def epsilon(self, step):
        c = self.cfg
        start = c.learning_starts if c.epsilon_decay_from == "learning_starts" else 0
        frac = jnp.clip((step - start) / max(c.epsilon_decay_steps, 1), 0.0, 1.0)
        return c.epsilon_start + frac * (c.epsilon_end - c.epsilon_start)

    def act(self, state: AgentState, obs, key, explore: bool = True, step=0):
        greedy = jnp.argmax(self.q_values(state, obs[None])[0]).astype(jnp.int32)
        if not explore:
            return greedy
        k_coin, k_rand = jax.random.split(key)
        return jnp.where(jax.random.uniform(k_coin) < self.epsilon(step), self.random_action(k_rand), greedy)

    def eval_act(self, state: AgentState, obs, key):
        """The evaluation policy: ε-greedy with `eval_epsilon`."""
        k_coin, k_rand = jax.random.split(key)
        greedy = self.act(state, obs, key, explore=False)
        return jnp.where(jax.random.uniform(k_coin) < self.cfg.eval_epsilon, self.random_action(k_rand), greedy)

    def update(self, u: Update, batch, key) -> Update:
        c, state = self.cfg, u.state
        obs, action, next_obs = batch["obs"], batch["action"], batch["next_obs"]
        q_next_target = self.q.apply(state.targets["q"], next_obs)[0]                       # [B, A]
        if c.double:
            a_star = jnp.argmax(self.q_values(state, next_obs), axis=-1)
            q_next = jnp.take_along_axis(q_next_target, a_star[:, None], axis=-1)[:, 0]
        else:
            q_next = jnp.max(q_next_target, axis=-1)
        discount = batch.get("discount", c.gamma)  # gamma^m for an m-step transition (n_step > 1)
        y = jax.lax.stop_gradient(batch["reward"] + discount * (1.0 - batch["terminated"]) * q_next)

        def loss_fn(params, probes):
            q = self.q.apply(params, obs, probes)[0]
            q_a = jnp.take_along_axis(q, action[:, None].astype(jnp.int32), axis=-1)[:, 0]
            err = q_a - y
            loss = optax.huber_loss(err, delta=1.0) if c.loss == "huber" else 0.5 * jnp.square(err)
            return jnp.mean(loss), q_a.mean()

        u, q_mean = u.step(self.q, loss_fn, key=key, inputs=obs)
        u = maybe(u.counters["q"] % c.target_update_period == 0, lambda u: u.polyak(self.q, c.tau), u)
        return u.log(q_mean=q_mean)

    def q_values(self, state: AgentState, obs):
        return self.q.apply(state.nets["q"].params, obs)[0]

    # ---- what the metrics collector (plastic/monitor.py) reads ----------------------------------
    policy_net, critic_net = "q", "q"

    def net_inputs(self, state: AgentState, batch):
        return {"q": batch["obs"]}

    def policy_view(self, out):
        return {"q": out}

    def critic_scalar(self, out, batch):
        return jnp.take_along_axis(out, batch["action"][:, None].astype(jnp.int32), axis=-1)[:, 0]

    @staticmethod
    def validate(cfg: DQNConfig) -> None:
        if cfg.network != "mlp" and cfg.torso != "mlp":
            raise ValueError(f"dqn.network={cfg.network} has no image torso; use dqn.network=mlp with "
                             f"dqn.torso={cfg.torso}, or dqn.torso=mlp")
