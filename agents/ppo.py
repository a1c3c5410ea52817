"""PPO (Schulman et al. 2017) for discrete (categorical) and continuous (Gaussian, state-independent
log-std, no tanh) actions, with CleanRL / PureJaxRL defaults for classic control.

One call of `update` is one PPO iteration on a rollout of `num_steps` steps of `num_envs` envs: values and
log-probs of the rollout policy, GAE, then `epochs` passes of `minibatches` minibatch steps. The policy
("actor") and the value function ("critic") are separate networks, each stepped by `core.gradient_step` on
the same minibatch (the policy on the clipped surrogate minus the entropy bonus, the value net on
`vf_coef` times the value loss), so interventions see every minibatch step of both. With separate Adam
states this equals CleanRL's single optimizer on the summed loss except that the global-norm clip
(`max_grad_norm`) is taken per network.

Rollout dict (from the trainer, leading axes [T, E]): obs, action, logp, reward, next_obs (the true next
observation, also at episode ends), terminated, truncated. `logp` is log pi(action) of the acting policy,
stored while acting (`act_logp`), as rejax and CleanRL do; without the column the update computes it from its
own parameters (`rollout_logp`). Values are computed here. Both come from the parameters that acted, unless a
scheduled event changed the agent at the start of this update: then the program recomputes `logp` with the
changed networks (plastic/programs.py `OnPolicy.update`), so after a reset the ratio, the value clipping and
GAE's values are taken around the reset networks.

Truncation bootstraps: the TD error at every step uses V(next_obs), which is the final observation of a
truncated episode, and the GAE recursion is cut at every episode end (`gae` below). V(obs) and V(next_obs)
come from one pass of the value net (`rollout_values`).

Normalisation (`norm_obs`, `norm_reward`) keeps its running statistics in `AgentState.extra`; they are
updated after each iteration's epochs, so one rollout is normalised with one set of statistics.

The policy loss hands its per-sample terms (`logp`, `logp_old`, `adv`, the clipped `surrogate`, the
distribution parameters `dist`) to the `loss_term` hook as the loss's aux, so a trust-region method such as
GTR can add its own term next to (or instead of) clipping. Interventions can add per-sample columns to the
rollout once per iteration (`rollout_columns` hook, before the epochs, outside the gradient; they reach the
loss as `aux["columns"]`) and act after the epochs (`post_iteration` hook).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from plastic.agent import AgentState, ContinuousActions, DiscreteActions, empty_logs
from plastic.core import Net, Update, seed_cond
from plastic.fields import nonneg, num, positive, unit, unit_lt1, one_of
from plastic.networks import (ACTIVATIONS, INITIALIZERS, NETWORKS, NORMS, GaussianHead, adam_options, build_network,
    check_options, with_injection)
from plastic.optim import adam
from plastic.normalize import RunningStats
from plastic.shuffle import permutation

LOG_2PI_E = math.log(2 * math.pi) + 1.0


@dataclass
class PPOConfig:
    hidden: tuple[int, ...] = positive((64, 64))  # mlp: layer widths; simba/bronet: the first is the width d
    network: str = one_of("mlp", NETWORKS)  # mlp | simba (Lee et al. 2024) | bronet (Nauman et al. 2024)
    norm: str = one_of("none", NORMS)  # none | layer: LayerNorm after every hidden Dense of an mlp (Plasticine's LN)
    blocks: int = num(2, ge=1)        # simba/bronet residual blocks (papers: critic 2, actor 1; one switch here)
    activation: str = one_of("tanh", ACTIVATIONS)
    init: str = one_of("orthogonal", INITIALIZERS)  # CleanRL layer_init: gain sqrt(2); heads 0.01 (policy), 1 (value)
    lr: float = positive(2.5e-4)
    b1: float = unit_lt1(0.9)         # Adam β1 (CBP's LOP setting: 0.99)
    b2: float = unit_lt1(0.999)       # Adam β2 (CBP's LOP setting: 0.99)
    anneal_lr: bool = True            # linear decay to 0 over the run's budget (run.steps)
    num_envs: int = positive(4)       # parallel envs per seed
    num_steps: int = positive(128)    # rollout length per env; batch = num_envs * num_steps
    epochs: int = positive(4)
    minibatches: int = positive(4)
    gamma: float = unit(0.99)
    gae_lambda: float = unit(0.95)
    clip_coef: float = positive(0.2)
    clip_vloss: bool = True           # clip the value update around the rollout's values
    ent_coef: float = nonneg(0.01)
    vf_coef: float = nonneg(0.5)
    max_grad_norm: float = nonneg(0.5, note="0: off")  # per network (0: off)
    norm_adv: bool = True             # per minibatch
    norm_obs: bool = False
    norm_reward: bool = False         # scale rewards by the running std of the discounted return
    clip_obs: float = positive(10.0, allow_inf=True)    # inf: no clipping
    clip_reward: float = positive(10.0, allow_inf=True)  # inf: no clipping
    eval_sample: bool = False         # evaluation policy: a sample (true) or the mode (argmax / mean)
    log_std_init: float = 0.0


def gae(reward, value, next_value, terminated, truncated, gamma: float, lam: float):
    """Generalised advantage estimation over a time-major rollout [T, ...].

    `next_value[t]` is V of the true next observation of step t. Termination drops the bootstrap;
    truncation keeps it; both cut the recursion (the next step belongs to a new episode).
    Returns (advantages, returns = advantages + value)."""
    terminated = terminated.astype(value.dtype)
    done = jnp.maximum(terminated, truncated.astype(value.dtype))
    delta = reward + gamma * (1.0 - terminated) * next_value - value

    def back(acc, x):
        d, dn = x
        acc = d + gamma * lam * (1.0 - dn) * acc
        return acc, acc

    _, adv = jax.lax.scan(back, jnp.zeros_like(value[0]), (delta, done), reverse=True)
    return adv, adv + value


class PPO:
    name = "ppo"
    capabilities = frozenset({"policy_objective"})  # what interventions may require (Intervention.requires)
    Config = PPOConfig
    on_policy = True
    discrete = None                   # either kind: the trainer passes the env's as `discrete=`
    default_env = "gymnax:CartPole-v1"
    roles = {"actor": "actor", "critic": "critic"}

    def __init__(self, cfg: PPOConfig, obs_size: int, action_size: int, probe_point="pre_activation",
                 discrete: bool = True, total_steps: int = 0, options: dict | None = None):
        self.cfg, self.obs_size, self.action_size, self.discrete = cfg, obs_size, action_size, discrete
        self.options = opts = check_options(self.name, options, ("actor", "critic"))
        inject = opts.get("inject", ())
        net = lambda out, scale, name: build_network(  # noqa: E731
            cfg, out, out_init_scale=scale, probe_point=probe_point, inject=name in inject)
        # output scales: gain 0.01 (policy) and 1 (value) for orthogonal init; 1 for the others
        ortho = cfg.init == "orthogonal"
        pi = net(action_size, 5e-5 if ortho else 1.0, "actor")
        if not self.discrete:
            pi = GaussianHead(pi, cfg.log_std_init)
        v = net(1, 0.5 if ortho else 1.0, "critic")
        self.batch_size = cfg.num_envs * cfg.num_steps
        self.minibatch_size = self.batch_size // cfg.minibatches
        lr = cfg.lr
        iterations = total_steps // self.batch_size
        if cfg.anneal_lr and iterations > 0:
            per_iter = cfg.epochs * cfg.minibatches
            lr = lambda count: cfg.lr * jnp.maximum(1.0 - (count // per_iter) / iterations, 0.0)  # noqa: E731
        tx = lambda module, name: with_injection(optax.chain(  # noqa: E731
            optax.clip_by_global_norm(cfg.max_grad_norm) if cfg.max_grad_norm > 0 else optax.identity(),
            adam(lr, b1=cfg.b1, b2=cfg.b2, eps=1e-5, **adam_options(opts, name))), module)
        self.actor = Net.of("actor", pi, tx(pi, "actor"), cfg.lr)
        self.critic = Net.of("critic", v, tx(v, "critic"), cfg.lr)
        self.nets = {"actor": self.actor, "critic": self.critic}

    def role(self, net_name: str) -> str:
        return self.roles[net_name]

    def init(self, key) -> AgentState:
        ka, kc = jax.random.split(key)
        obs = jnp.zeros((1, self.obs_size))
        nets = {"actor": self.actor.init(ka, obs), "critic": self.critic.init(kc, obs)}
        logs = {**empty_logs(self.actor), **empty_logs(self.critic)}
        logs.update({k: jnp.zeros(()) for k in ("entropy", "approx_kl", "clip_fraction", "value_mean")})
        extra = {"obs_rms": RunningStats.create((self.obs_size,)), "ret_rms": RunningStats.create(),
                 "returns": jnp.zeros(self.cfg.num_envs)}
        return AgentState(nets=nets, targets={}, logs=logs, extra=extra)

    # ---- policy ---------------------------------------------------------------------------------
    def normalize(self, state: AgentState, obs):
        return state.extra["obs_rms"].normalize(obs, self.cfg.clip_obs) if self.cfg.norm_obs else obs

    def dist(self, params, obs, probes=None):
        """Distribution parameters (logits, or (mean, log_std)) and activations."""
        return self.actor.apply(params, obs, probes)

    def act(self, state: AgentState, obs, key, explore: bool = True, step=0):
        return self.act_logp(state, obs, key, explore)[0]

    def act_logp(self, state: AgentState, obs, key, explore: bool = True):
        """The action for one observation and its log-probability under the acting policy (the rollout's
        `logp` column: the denominator of the update's ratio)."""
        out, _ = self.dist(state.nets["actor"].params, self.normalize(state, obs)[None])
        action = self._sample(out, key, explore)
        return action, self.log_prob(out, action[None])[0][0]

    def rollout_logp(self, state: AgentState, rollout):
        """log pi(action) of a rollout's ([T, E, ...]) actions under `state`'s policy, in one pass over the
        flattened rollout (under the seed vmap the [T, E] form cost about 5 % of a 64-seed iteration on a CPU:
        docs/benchmarks.md, "PPO against rejax")."""
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, E, ...] -> [T * E, ...]
        out = self.dist(state.nets["actor"].params, flat(self.normalize(state, rollout["obs"])))[0]
        return self.log_prob(out, flat(rollout["action"]))[0].reshape(rollout["action"].shape[:2])

    def eval_act(self, state: AgentState, obs, key):
        """The evaluation policy: the mode (`eval_sample`: a sample)."""
        return self.act(state, obs, key, explore=self.cfg.eval_sample)

    def value(self, state: AgentState, obs):
        return self.critic.apply(state.nets["critic"].params, self.normalize(state, obs))[0][..., 0]

    # ---- what the metrics collector (plastic/monitor.py) reads ----------------------------------
    policy_net, critic_net = "actor", "critic"

    def net_inputs(self, state: AgentState, batch):
        obs = self.normalize(state, batch["obs"])
        return {"actor": obs, "critic": obs}

    def policy_view(self, out):
        if self.discrete:
            return {"logits": out}
        mean, log_std = out
        return {"action": mean, "mean": mean, "log_std": log_std}

    def critic_scalar(self, out, batch):
        return out[..., 0]

    # ---- update ---------------------------------------------------------------------------------
    def update(self, u: Update, rollout, key) -> Update:
        c, state = self.cfg, u.state
        obs = self.normalize(state, rollout["obs"])
        next_obs = self.normalize(state, rollout["next_obs"])
        extra = dict(state.extra)
        reward = rollout["reward"]
        if c.norm_reward:
            reward, extra["returns"], extra["ret_rms"] = self._scale_rewards(state, rollout)
        v_params = state.nets["critic"].params
        flat = lambda x: x.reshape(self.batch_size, *x.shape[2:])  # noqa: E731  [T, E, ...] -> [T * E, ...]
        logp_old = flat(rollout["logp"] if "logp" in rollout else self.rollout_logp(state, rollout))
        value, next_value = self.rollout_values(v_params, obs, next_obs, rollout["truncated"])
        adv, ret = gae(reward, value, next_value, rollout["terminated"], rollout["truncated"], c.gamma,
                       c.gae_lambda)
        data = {"obs": flat(obs), "action": flat(rollout["action"]), "logp": logp_old,
                "adv": flat(adv), "ret": flat(ret), "value": flat(value)}
        columns, hooks = u.hooks.rollout_columns(self, state, data)  # per-sample columns (GTR's anchors)
        if columns:
            data["columns"] = columns

        def minibatch(carry, mb):
            u, key = carry
            key, k_pi, k_v = jax.random.split(key, 3)
            u, aux = u.step(self.actor, lambda p, pr: self.policy_loss(p, pr, mb), key=k_pi, inputs=mb["obs"])
            u, value_mean = u.step(self.critic, lambda p, pr: self.value_loss(p, pr, mb), key=k_v, inputs=mb["obs"])
            u = u.log(entropy=aux["entropy"], approx_kl=aux["approx_kl"], clip_fraction=aux["clip_fraction"],
                      value_mean=value_mean)  # the logs of the last minibatch remain
            return (u, key), None

        def epoch(carry, _):
            u, key = carry
            key, k_perm = jax.random.split(key)
            perm = permutation(k_perm, self.batch_size)  # jax.random.permutation's values, sorted faster
            mbs = jax.tree.map(lambda x: x[perm].reshape(c.minibatches, self.minibatch_size, *x.shape[1:]),
                               data)
            return jax.lax.scan(minibatch, (u, key), mbs)

        (u, _), _ = jax.lax.scan(epoch, (u.replace(hooks=hooks), key), None, length=c.epochs)
        if c.norm_obs:
            extra["obs_rms"] = state.extra["obs_rms"].update(rollout["obs"])
        state = u.state.replace(extra=extra)
        return u.replace(state=state, hooks=u.hooks.post_iteration(self, state, data))  # e.g. adaptive KL β

    def rollout_values(self, v_params, obs, next_obs, truncated):
        """V(obs) and V(next_obs) of a rollout ([T, E, ...]) from one pass of the value net over T * E + E + K
        rows: every obs, the last step's next_obs, and the final observations of up to K = max(E, T * E // 16)
        truncated steps. Elsewhere next_obs[t] is obs[t + 1] (the episode goes on), or V(next_obs[t]) is not
        used (the episode terminated: `gae` drops the bootstrap), so V(obs[t + 1]) stands for it. Where some
        seed truncated more than K steps, that seed's V(next_obs) comes from a pass over all of next_obs (a real
        branch under the seed vmap, `core.seed_cond`). The values are V of the same observations as a pass over
        obs and one over next_obs, bit for bit; computed this way a 64-seed CartPole iteration ran about 6 % faster
        on a CPU (docs/benchmarks.md, The minibatch shuffle and the bootstrap values)."""
        T, E = truncated.shape
        n, k = T * E, (max(E, T * E // 16) if T > 1 else 0)
        flat_obs, flat_next = (x.reshape(n, *x.shape[2:]) for x in (obs, next_obs))
        gathered = truncated.reshape(n).astype(bool).at[n - E:].set(False)  # truncated steps 0 .. T - 2
        rows = jnp.nonzero(gathered, size=k, fill_value=0)[0]
        v = self.critic.apply(v_params, jnp.concatenate([flat_obs, flat_next[n - E:], flat_next[rows]]))[0][..., 0]
        # row of V(next_obs[t]): obs[t + 1] (for the last step, its own next_obs), or the truncated step's slot
        after = jnp.where(gathered, n + E + jnp.cumsum(gathered) - 1, jnp.arange(n) + E)
        value, next_value = v[:n].reshape(T, E), v[after].reshape(T, E)
        full = lambda _: self.critic.apply(v_params, next_obs)[0][..., 0]  # noqa: E731
        return value, seed_cond(jnp.sum(gathered) > k, full, next_value)

    def policy_loss(self, params, probes, mb):
        c = self.cfg
        out, _ = self.dist(params, mb["obs"], probes)
        logp, entropy = self.log_prob(out, mb["action"])
        adv = mb["adv"]
        if c.norm_adv:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        log_ratio = logp - mb["logp"]
        ratio = jnp.exp(log_ratio)
        surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - c.clip_coef, 1.0 + c.clip_coef) * adv)
        loss = -surrogate.mean() - c.ent_coef * entropy.mean()
        aux = {"logp": logp, "logp_old": mb["logp"], "adv": adv, "surrogate": surrogate, "dist": out,
               **({"columns": mb["columns"]} if "columns" in mb else {}), "entropy": entropy.mean(),
               "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),  # the k3 estimator of KL(old || new)
               "clip_fraction": jnp.mean(jnp.abs(ratio - 1.0) > c.clip_coef)}
        return loss, aux

    def value_loss(self, params, probes, mb):
        c = self.cfg
        v = self.critic.apply(params, mb["obs"], probes)[0][..., 0]
        err = jnp.square(v - mb["ret"])
        if c.clip_vloss:
            v_clip = mb["value"] + jnp.clip(v - mb["value"], -c.clip_coef, c.clip_coef)
            err = jnp.maximum(err, jnp.square(v_clip - mb["ret"]))
        return c.vf_coef * 0.5 * err.mean(), v.mean()

    def _scale_rewards(self, state, rollout):
        """Divide rewards by the running std of the discounted return (gymnasium's NormalizeReward),
        the return restarting at episode ends; statistics take this rollout in before scaling."""
        c = self.cfg
        done = jnp.maximum(rollout["terminated"], rollout["truncated"]).astype(jnp.float32)

        def acc(g, x):
            r, d = x
            g = r + c.gamma * g
            return g * (1.0 - d), g

        returns, g = jax.lax.scan(acc, state.extra["returns"], (rollout["reward"], done))
        rms = state.extra["ret_rms"].update(g)
        scaled = jnp.clip(rollout["reward"] / jnp.sqrt(rms.var + 1e-8), -c.clip_reward, c.clip_reward)
        return scaled, returns, rms

    @staticmethod
    def validate(cfg: PPOConfig) -> None:
        if (cfg.num_envs * cfg.num_steps) % cfg.minibatches:
            raise ValueError(f"ppo.minibatches={cfg.minibatches} must divide the rollout batch "
                             f"num_envs * num_steps = {cfg.num_envs * cfg.num_steps}")


    # ---- action kinds ---------------------------------------------------------------------------
    def random_action(self, key):
        return (DiscreteActions if self.discrete else ContinuousActions).random_action(self, key)

    def action_example(self):
        return (DiscreteActions if self.discrete else ContinuousActions).action_example(self)

    def _sample(self, out, key, explore):
        if self.discrete:
            a = jax.random.categorical(key, out[0]) if explore else jnp.argmax(out[0])
            return a.astype(jnp.int32)
        mean, log_std = out
        return (mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape) if explore else mean)[0]

    def log_prob(self, out, action):
        """(log pi(action), entropy) per sample."""
        if self.discrete:
            logp_all = jax.nn.log_softmax(out)
            logp = jnp.take_along_axis(logp_all, action[..., None].astype(jnp.int32), axis=-1)[..., 0]
            return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
        mean, log_std = out
        z = (action - mean) * jnp.exp(-log_std)
        logp = jnp.sum(-0.5 * jnp.square(z) - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)
        return logp, jnp.sum(log_std + 0.5 * LOG_2PI_E, axis=-1)
