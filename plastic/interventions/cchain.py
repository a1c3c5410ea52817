"""C-CHAIN: continual churn reduction (Tang, Obando-Ceron, Castro, Courville, Berseth, *Mitigating Plasticity
Loss in Continual Reinforcement Learning by Reducing Churn*, ICML 2025, arXiv 2506.00592; its code
github.com/bluecontra/C-CHAIN; docs/interventions.md, C-CHAIN).

Churn is how much one update changes the network's outputs on data it did not train on. C-CHAIN adds to the
loss of each selected network (`loss_term` hook)

    λ · D( f_θ(x_ref), sg f_θ⁻(x_ref) )

where θ⁻ are the network's parameters one update earlier (the update before the one now being taken), x_ref a
reference batch drawn afresh for every update (replay agents: uniform replay rows drawn with the update batches,
`Hook.update_rows`; PPO: a random subset of the current rollout, as C-CHAIN's second shuffled minibatch), and D
the distance between outputs:
- a critic (DQN's Q-network, TD3's and SAC's twin critics): the mean squared difference of every output
  (C-CHAIN's DQN: all actions' Q-values);
- a policy: the mean squared difference of the action mean (PPO on continuous actions, C-CHAIN's DMC code;
  SAC's pre-tanh mean, TD3's action) or, for a categorical policy, KL(π_θ⁻ ‖ π_θ). C-CHAIN's ProcGen code
  uses the cross-entropy −Σ_a π_θ⁻(a) log π_θ(a), which has the same gradient but adds the constant entropy
  H(π_θ⁻) to D's value: with it, the adaptive λ below would follow the policy's entropy, not its churn
  (that script pairs it with its own constants: λ 10, ratio 10 000, window 200, warmup 20, floor 1).
The first update of a network has no θ⁻ and no term; nor has an update whose parameters were written outside the
optimizer since the last one (a reset, ReDo's or ReGraMa's recycling, shrink & perturb, an injection: stacked with
those, θ⁻ would pull the network back towards what the write replaced).

λ adapts ("auto"): it starts at `coef`, and once `warmup` rounds are done, after every round it becomes
`target_ratio · mean|L| / (mean D + 1e-8)` (at least `min_coef`) over the last `window` rounds, with L the
network's own loss. A round is an update (replay agents; C-CHAIN's DQN) or a PPO iteration, whose statistics are
its last update's (C-CHAIN's DMC PPO). Defaults: DQN's (λ 50, ratio 0.01, window 50 000, warmup 10 000); PPO's
are the DMC script's (λ 100, ratio 0.05, window 100, warmup 50). Where this differs from the scripts:
- PPO's L is the actor's loss here, the clipped surrogate plus the entropy bonus (the scripts: the surrogate
  alone; equal at `ppo.ent_coef 0`, CleanRL's continuous default); the DMC script also multiplies λ by the
  learning-rate annealing fraction, and regularises from the third update of a task on (here the second);
- the scripts restart λ, its statistics and θ⁻ at every task switch; here they run through the whole stream;
- TD3 and SAC are not in the C-CHAIN paper: the same rule on their critic (value churn, as the earlier CHAIN
  paper's value-churn reduction, arXiv 2409.04792) or actor, with DQN's defaults.

Logs: `cchain/coef/NET` (λ) and `cchain/reg/NET` (D of the last update).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.fields import nonneg, num
from plastic.interventions.base import UNIT_ROLES as ROLES, Intervention, nets_with_roles


def unwritten(params, after):
    """Whether `params` are exactly those the last update left (no reset, recycling or perturbation since)."""
    return jnp.all(jnp.stack([jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(after))]))


@dataclass
class CChainConfig:
    coef: float = nonneg(50.0)          # λ until the warmup is done (C-CHAIN's DQN: reg_coef 50)
    target_ratio: float = nonneg(0.01)  # λ = target_ratio · mean|L| / mean D after the warmup (target_rel_loss_scale)
    window: int = num(50_000, ge=1)     # rounds the means run over (DQN: the last 50 000 updates)
    warmup: int = num(10_000, ge=0)     # rounds before λ adapts (DQN: from the 10 000th update)
    min_coef: float = nonneg(0.0)       # floor of the adapted λ (the ProcGen and Gym scripts: 1)
    rows: int = num(0, ge=0)            # reference batch size; 0: the agent's batch (PPO: its minibatch)
    networks: tuple[str, ...] = ()      # roles; (): the critic of a replay agent, PPO's actor


class CChain(Intervention):
    name = "cchain"
    Config = CChainConfig
    on_policy = False  # set at `init` from the agent, with the other facts the hooks read
    agent_defaults = {"ppo": {"coef": 100.0, "target_ratio": 0.05, "window": 100, "warmup": 50}}

    def validate(self, run_cfg, agent_cfg):
        bad = [r for r in self.cfg.networks if r not in ROLES or r not in self.roles.values()]
        if bad:
            have = [r for r in ROLES if r in self.roles.values()]
            raise ValueError(f"cchain.networks={','.join(self.cfg.networks)} is not valid for {self.agent_name}; "
                             f"choose among: {', '.join(have)}")
        if getattr(agent_cfg, "network", "mlp") == "simbav2" and "critic" in (self.cfg.networks or ("critic",)):
            raise ValueError(f"cchain regularises the churn of scalar Q-values; {self.agent_name}.network=simbav2's "
                             f"critic outputs a categorical distribution (use --cchain.networks actor)")


    # ---- state ----------------------------------------------------------------------------------
    def init(self, key, agent, agent_state=None):
        # static facts of the agent that the hooks need (set again, identically, whenever a state is built)
        self.view, self.on_policy = agent.policy_view, bool(getattr(agent, "on_policy", False))
        self.n_rows = self.cfg.rows or (agent.minibatch_size if self.on_policy else agent.cfg.batch_size)
        roles = self.cfg.networks or (("actor",) if self.on_policy else ("critic",))
        nets = nets_with_roles(agent, roles)
        self.kinds = {n.name: agent.role(n.name) for n in nets}
        w = self.cfg.window
        out = {}
        for i, n in enumerate(nets):
            params = agent_state.nets[n.name].params
            out[n.name] = {"prev": params, "after": params, "started": jnp.zeros((), bool),
                           "coef": jnp.asarray(self.cfg.coef, jnp.float32), "key": jax.random.fold_in(key, i),
                           "loss_hist": jnp.zeros((w,)), "reg_hist": jnp.zeros((w,)),
                           "n_loss": jnp.zeros((), jnp.int32), "n_reg": jnp.zeros((), jnp.int32),
                           "last_loss": jnp.zeros(()), "last_regularised": jnp.zeros((), bool),
                           "reg": jnp.zeros(())}
        return out

    def update_rows(self, batch_size):
        return 0 if self.on_policy else (self.cfg.rows or batch_size)

    # ---- the regulariser ------------------------------------------------------------------------
    def distance(self, net, out, old):
        """D between the current outputs `out` and the previous ones `old` on the reference batch."""
        if self.kinds[net.name] == "critic":
            return jnp.mean(jnp.square(out - old))
        new_v, old_v = self.view(out), self.view(old)
        if "logits" in new_v:  # KL(π_θ⁻ ‖ π_θ)
            old_logp = jax.nn.log_softmax(old_v["logits"])
            return jnp.mean(jnp.sum(jnp.exp(old_logp) * (old_logp - jax.nn.log_softmax(new_v["logits"])), -1))
        key = "mean" if "mean" in new_v else "action"
        return jnp.mean(jnp.square(new_v[key] - old_v[key]))

    def loss_term(self, net, params, state, aux):
        if net.name not in state:
            return jnp.zeros(())
        s = state[net.name]
        if self.rows is not None:
            x = jax.tree.map(lambda a: a[:self.n_rows], self.rows[net.name])
        else:
            x = self.batches(net.name, s["key"], self.n_rows)
        out = net.apply(params, x)[0]
        old = jax.lax.stop_gradient(net.apply(s["prev"], x)[0])
        on = s["started"] & unwritten(params, s["after"])
        d = jnp.where(on, self.distance(net, out, old), 0.0)
        return s["coef"] * d, {"reg": d, "on": on}

    @property
    def needs_batches(self):  # PPO's reference rows come from its rollout (`Hook.with_batches`)
        return self.on_policy

    # ---- after each update, and after each PPO iteration ----------------------------------------
    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state
        s, term = state[net.name], ctx.terms[self.name]
        s = {**s, "prev": ctx.params_before, "after": ns.params, "key": jax.random.split(s["key"])[0],
             "reg": term["reg"], "last_loss": jnp.abs(ctx.loss), "last_regularised": term["on"],
             "started": jnp.ones((), bool)}
        return ns, {**state, net.name: s if self.on_policy else self.end_round(s)}

    def post_iteration(self, agent, agent_state, state, data):
        return {n: self.end_round(s) for n, s in state.items()}

    def end_round(self, s):
        """Push a round's |L| (and its D if its last update was regularised) into the windows; adapt λ once
        `warmup` rounds are done."""
        w, done = self.cfg.window, s["last_regularised"]
        loss_hist = s["loss_hist"].at[s["n_loss"] % w].set(s["last_loss"])
        reg_hist = jnp.where(done, s["reg_hist"].at[s["n_reg"] % w].set(s["reg"]), s["reg_hist"])
        n_loss, n_reg = s["n_loss"] + 1, s["n_reg"] + done.astype(jnp.int32)
        mean_loss = jnp.sum(loss_hist) / jnp.minimum(n_loss, w)
        mean_reg = jnp.sum(reg_hist) / jnp.maximum(jnp.minimum(n_reg, w), 1)
        adapted = jnp.maximum(self.cfg.target_ratio * mean_loss / (mean_reg + 1e-8), self.cfg.min_coef)
        coef = jnp.where(n_loss >= max(self.cfg.warmup, 1), adapted, s["coef"])
        return {**s, "loss_hist": loss_hist, "reg_hist": reg_hist, "n_loss": n_loss, "n_reg": n_reg,
                "coef": coef.astype(jnp.float32)}

    def logs(self, state):
        return self.net_logs(state, "coef", "reg")
