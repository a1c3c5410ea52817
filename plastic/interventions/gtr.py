"""GTR (reconstructed variant): a Gaussian-reshaped trust region for PPO with a mixture anchor
(docs/interventions.md, GTR), and the baseline it argues against, PPO with a KL penalty (Schulman et al. 2017, §4).

Only the abstract of the GTR paper was available, so everything here is the spec's [reconstructed] design;
call it "GTR (reconstructed variant)" in every result.

GTR, `objective=penalty`. With anchors θ_1..θ_M (the M most recent rollout policies, newest first,
θ_1 = θ_old) and weights w_k (sum 1), the PPO policy loss gets the term

    β · mean_t Σ_k w_k (1 − K_σ(d_{t,k})),    K_σ(d) = exp(−d² / 2σ²)          (mixture_of_kernels)
    β · mean_t (1 − K_σ(d_t)),  d_t against the mixture density Σ_k w_k π_k      (kernel_of_mixture_density)

with the deviation d = log π_θ(a|s) − log π_k(a|s) (`log_ratio`), π_θ/π_k − 1 (`ratio_minus_one`) or the
analytic per-state KL(π_k(·|s) ‖ π_θ(·|s)) (`state_kl`). The penalty lies in [0, β); its slope in d,
β·d/σ²·K_σ(d), peaks at |d| = σ with β/(σ√e) and fades beyond: a bounded, non-monotonic restoring force.
`clip=none` adds mean(clipped surrogate) − mean(r·A) so the total objective is the unclipped surrogate.
`objective=reshaped_surrogate` (an ablation) replaces the surrogate by mean(A·r·g),
g = sg(K_σ(log r) + (1 − K_σ(log r))·gate).

KL penalty (`kl_penalty`): the loss gets β · mean_t KL_t(π_old ‖ π_θ), with KL_t the analytic per-state KL
(the PPO paper's L^KLPEN) or the sample estimators k1 = −log r, k3 = (r − 1) − log r; β fixed or adapted
after every iteration (d < d_targ/1.5: β/2; d > 1.5·d_targ: 2β). `clip=none` (default) as above.

Hooks (agents/ppo.py): `rollout_columns` once per rollout, outside the gradient (GTR pushes θ_old to the front
of the anchor queue, dropping the oldest, and evaluates every anchor on the rollout with one vmapped forward
pass over the anchor axis; θ_1 = θ_old reuses the rollout's log-probs; the KL penalty stores π_old's
distribution parameters for the analytic KL); `loss_term` in the policy loss (PPO's `actor`), reading those
columns from the loss aux; `post_iteration` after the epochs (the adaptive β).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.fields import nonneg, num, positive, unit_lt1, one_of
from plastic.interventions.base import Intervention

OBJECTIVES = ("penalty", "reshaped_surrogate")
CLIPS = ("none", "ppo_clip")
DEVIATIONS = ("log_ratio", "ratio_minus_one", "state_kl")
ANCHOR_WEIGHTS = ("uniform", "geometric", "advantage_softmax")
MIXTURE_FORMS = ("mixture_of_kernels", "kernel_of_mixture_density")
SIGMA_SCHEDULES = ("fixed", "advantage_ema")
GATES = ("sample_advantage", "none")
KL_SCHEDULES = ("fixed", "adaptive")
KL_ESTIMATORS = ("analytic", "k3", "k1")
POLICY_NET = "actor"   # PPO's policy network (agents/ppo.py: PPO.policy_net)


# ---- pure pieces (unit-tested on hand-built inputs) ----------------------------------------------------
def kernel(d, sigma):
    """Gaussian kernel K_σ(d) = exp(−d² / 2σ²)."""
    return jnp.exp(-jnp.square(d) / (2.0 * jnp.square(sigma)))


def analytic_kl(p, q, discrete: bool):
    """Per-state KL(p ‖ q) of two policy heads' outputs: logits [..., A] (categorical) or (mean, log_std)
    [..., A] (diagonal Gaussian). Returns [...]."""
    if discrete:
        lp, lq = jax.nn.log_softmax(p, axis=-1), jax.nn.log_softmax(q, axis=-1)
        return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)
    (mp, sp), (mq, sq) = p, q
    var_p, var_q = jnp.exp(2.0 * sp), jnp.exp(2.0 * sq)
    return jnp.sum(sq - sp + (var_p + jnp.square(mp - mq)) / (2.0 * var_q) - 0.5, axis=-1)


def mixture_kl(anchor_logits, weights, logits):
    """Per-state KL(Σ_k w_k π_k ‖ π) of categorical heads: anchor_logits [B, M, A], weights [M], logits [B, A]."""
    mix = jnp.sum(weights[None, :, None] * jax.nn.softmax(anchor_logits, axis=-1), axis=1)
    log_mix = jnp.log(jnp.maximum(mix, 1e-30))
    return jnp.sum(mix * (log_mix - jax.nn.log_softmax(logits, axis=-1)), axis=-1)


def anchor_weights(kind, filled, num_anchors: int, rho: float = 0.5, eta: float = 1.0, scores=None):
    """Weights [M] over the anchor slots, newest first, 0 on slots not yet filled, summing to 1 over the
    `filled` newest: uniform, geometric ρ^k, or softmax(η·score_k) of per-anchor advantage scores."""
    valid = jnp.arange(num_anchors) < jnp.maximum(filled, 1)
    if kind == "advantage_softmax":
        return jax.nn.softmax(jnp.where(valid, eta * scores, -jnp.inf))
    raw = jnp.ones(num_anchors) if kind == "uniform" else rho ** jnp.arange(num_anchors, dtype=jnp.float32)
    raw = jnp.where(valid, raw, 0.0)
    return raw / jnp.sum(raw)


def unclip_term(aux):
    """mean(clipped surrogate) − mean(r·A): added to PPO's loss it leaves the unclipped surrogate."""
    ratio = jnp.exp(aux["logp"] - aux["logp_old"])
    return jnp.mean(aux["surrogate"]) - jnp.mean(ratio * aux["adv"])


def ratio_minus_one(log_ratio):
    """r − 1 from log r, with log r clamped to ±20: beyond, K_σ is 0 and its force too (no inf · 0 = NaN)."""
    return jnp.expm1(jnp.clip(log_ratio, -20.0, 20.0))


def _normalised(adv, on: bool):
    return (adv - adv.mean()) / (adv.std() + 1e-8) if on else adv


def _slots_last(x):
    """[M, B, ...] -> [B, M, ...] (the rollout axis first, so the columns are permuted into minibatches)."""
    return jnp.moveaxis(x, 0, 1)


# ---- GTR -----------------------------------------------------------------------------------------------
@dataclass
class GTRConfig:
    # every default is [reconstructed] (docs/interventions.md, GTR) unless marked [project]; the feature flag
    # `gtr.enabled` of the spec is `--intervention gtr` itself
    objective: str = one_of("penalty", OBJECTIVES)  # penalty | reshaped_surrogate (ablation)
    clip: str = one_of("none", CLIPS)  # none | ppo_clip (the paper: clipping is not the bottleneck)
    deviation: str = one_of("log_ratio", DEVIATIONS)  # log_ratio | ratio_minus_one | state_kl (KL(anchor ‖ current))
    sigma: float = positive(0.2)            # kernel width, log-ratio units (PPO's 0.2 band)
    # penalty scale [project]: 0.03, chosen by validation finding 5's search (docs/validation/gtr.md); the spec's
    # 1.0 (sweep {0.3, 1, 3}) is a spring of stiffness 25β per sample at σ 0.2 and holds PPO's policy in place
    beta: float = nonneg(0.03)
    num_anchors: int = num(4, ge=1)         # M, one snapshot per PPO iteration
    anchor_weights: str = one_of("geometric", ANCHOR_WEIGHTS)  # uniform | geometric (rho) | advantage_softmax (eta)
    rho: float = positive(0.5)              # geometric ratio: 0.533 / 0.267 / 0.133 / 0.067 for M = 4
    eta: float = nonneg(10.0)               # advantage_softmax temperature [project placeholder]
    mixture_form: str = one_of("mixture_of_kernels", MIXTURE_FORMS)  # mixture_of_kernels | kernel_of_mixture_density
    # fixed | advantage_ema: σ_t = σ·(1 + kappa·EMA(frac |A| > tau_adv))
    sigma_schedule: str = one_of("fixed", SIGMA_SCHEDULES)
    kappa: float = nonneg(1.0)              # advantage_ema gain [project placeholder]
    tau_adv: float = nonneg(1.0)            # τ_A, in units of normalised advantage (ema and gate) [project]
    ema_decay: float = unit_lt1(0.9)        # advantage_ema decay per iteration [project placeholder]
    gate: str = one_of("sample_advantage", GATES)  # reshaped_surrogate gate: sample_advantage (1[A_t > tau_adv]) | none


class GTR(Intervention):
    name = "gtr"
    Config = GTRConfig
    requires = frozenset({"policy_objective"})
    resources = {"policy_objective": "own"}

    # -- state ------------------------------------------------------------------------------------------
    def init(self, key, agent, agent_state=None):
        if agent_state is None:
            raise ValueError("gtr needs the freshly initialised agent state to build its anchor queue")
        if not agent.discrete and self.cfg.deviation == "state_kl" \
                and self.cfg.mixture_form == "kernel_of_mixture_density":
            raise ValueError("gtr.mixture_form=kernel_of_mixture_density with gtr.deviation=state_kl needs a "
                             "discrete action space (the KL of a Gaussian mixture has no closed form)")
        M = self.cfg.num_anchors
        pi = agent_state.nets[POLICY_NET].params
        return {"anchors": jax.tree.map(lambda p: jnp.broadcast_to(p, (M, *p.shape)), pi),  # newest first
                "filled": jnp.zeros((), jnp.int32),      # snapshots pushed so far (capped at M)
                "iterations": jnp.zeros((), jnp.int32),  # rollouts seen (not capped: starts the advantage EMA)
                "weights": anchor_weights("uniform", 0, M),
                "sigma": jnp.asarray(self.cfg.sigma, jnp.float32),
                "adv_ema": jnp.zeros(()),
                "penalty": jnp.zeros(()),                # β·penalty of θ_old against the older anchors
                "deviation": jnp.zeros(())}              # mean |d| of θ_old from the older anchors

    def push(self, state, params):
        """The anchor queue after one PPO iteration: `params` in front, the oldest dropped."""
        anchors = jax.tree.map(lambda q, p: jnp.concatenate([p[None].astype(q.dtype), q[:-1]]),
                               state["anchors"], params)
        return {**state, "anchors": anchors, "filled": jnp.minimum(state["filled"] + 1, self.cfg.num_anchors),
                "iterations": state["iterations"] + 1}

    # -- once per rollout ---------------------------------------------------------------------------------
    def rollout_columns(self, agent, agent_state, state, data):
        c = self.cfg
        state = self.push(state, agent_state.nets[POLICY_NET].params)
        anchors = jax.lax.stop_gradient(state["anchors"])
        obs, action, logp_old = data["obs"], data["action"], data["logp"]
        adv = _normalised(data["adv"], getattr(agent.cfg, "norm_adv", True))
        if c.objective == "reshaped_surrogate":  # it gates on log r against θ_old: no anchor columns
            return {}, {**state, **self._sigma(state, adv)}

        def dist(p):
            return agent.dist(p, obs)[0]

        cols = {}
        if c.deviation == "state_kl":  # the anchors' distributions, θ_1 included
            outs = jax.vmap(dist)(anchors)
            logp_k = jax.vmap(lambda o: agent.log_prob(o, action)[0])(outs)
            cols["dist"] = jax.tree.map(_slots_last, outs)
        else:                          # θ_1 = θ_old: the rollout's log-probs; M − 1 forward passes
            older = jax.tree.map(lambda x: x[1:], anchors)
            rest = jax.vmap(lambda p: agent.log_prob(dist(p), action)[0])(older)
            logp_k = jnp.concatenate([logp_old[None], rest])
        cols["logp"] = _slots_last(logp_k)   # [B, M]
        cols = jax.lax.stop_gradient(cols)

        scores = None
        if c.anchor_weights == "advantage_softmax":
            # first-order estimate of each anchor's surrogate gain over θ_old on this rollout:
            # mean_t Â_t·(log π_k − log π_old)
            scores = jnp.mean(adv[:, None] * (cols["logp"] - logp_old[:, None]), axis=0)
        w = anchor_weights(c.anchor_weights, state["filled"], c.num_anchors, c.rho, c.eta, scores)
        state = {**state, "weights": w, **self._sigma(state, adv)}
        sigma = state["sigma"]
        if c.deviation != "state_kl":  # diagnostics: θ_old against its anchors (θ_1 contributes 0)
            d = self._deviation(logp_old, None, cols, agent.discrete)
            pen = self.penalty(d, w, sigma, logp_old, cols["logp"])
            state = {**state, "penalty": c.beta * jnp.mean(pen), "deviation": jnp.mean(jnp.abs(d) @ w)}
        return cols, state

    def _sigma(self, state, adv):
        """σ for this iteration: fixed, or σ·(1 + κ·EMA of the fraction of |Â| > τ_A) (the EMA starts at
        the first rollout's fraction; `iterations`, not `filled`, which stops at M, tells the first)."""
        c = self.cfg
        if c.sigma_schedule == "fixed":
            return {"sigma": jnp.asarray(c.sigma, jnp.float32)}
        frac = jnp.mean(jnp.abs(adv) > c.tau_adv)
        ema = jnp.where(state["iterations"] <= 1, frac,
                        c.ema_decay * state["adv_ema"] + (1.0 - c.ema_decay) * frac)
        return {"sigma": c.sigma * (1.0 + c.kappa * ema), "adv_ema": ema}

    # -- inside the gradient ---------------------------------------------------------------------------
    def _deviation(self, logp, out, cols, discrete):
        """d [B, M] of the current policy from every anchor (mixture_of_kernels)."""
        dev = self.cfg.deviation
        if dev == "state_kl":
            anchors = cols["dist"]
            cur = jax.tree.map(lambda x: x[:, None], out)
            return analytic_kl(anchors, cur, discrete)
        lr = logp[:, None] - cols["logp"]
        return lr if dev == "log_ratio" else ratio_minus_one(lr)

    def penalty(self, d, w, sigma, logp=None, logp_k=None, out=None, cols=None, discrete=True):
        """Per-sample penalty in [0, 1): Σ_k w_k (1 − K_σ(d_k)) (exactly 0 where every d_k = 0), or for
        kernel_of_mixture_density 1 − K_σ(d) with d against Σ_k w_k π_k."""
        c = self.cfg
        if c.mixture_form == "mixture_of_kernels":
            return jnp.sum(w * (1.0 - kernel(d, sigma)), axis=-1)
        if c.deviation == "state_kl":
            dm = mixture_kl(cols["dist"], w, out)
        else:
            log_mix = jax.nn.logsumexp(logp_k, b=w[None, :], axis=-1)
            dm = logp - log_mix if c.deviation == "log_ratio" else ratio_minus_one(logp - log_mix)
        return 1.0 - kernel(dm, sigma)

    def per_sample_penalty(self, state, aux, discrete):
        c = self.cfg
        cols = jax.lax.stop_gradient(aux["columns"][self.name])
        w, sigma = jax.lax.stop_gradient(state["weights"]), jax.lax.stop_gradient(state["sigma"])
        d = None if c.mixture_form == "kernel_of_mixture_density" else \
            self._deviation(aux["logp"], aux["dist"], cols, discrete)
        return self.penalty(d, w, sigma, aux["logp"], cols["logp"], aux["dist"], cols, discrete)

    def loss_term(self, net, params, state, aux):
        c = self.cfg
        if net.name != POLICY_NET or "logp" not in aux:
            return jnp.zeros(())
        discrete = not isinstance(aux["dist"], tuple)
        if c.objective == "reshaped_surrogate":
            ratio = jnp.exp(aux["logp"] - aux["logp_old"])
            k = kernel(aux["logp"] - aux["logp_old"], jax.lax.stop_gradient(state["sigma"]))
            gate = (aux["adv"] > c.tau_adv).astype(k.dtype) if c.gate == "sample_advantage" else 0.0
            g = jax.lax.stop_gradient(k + (1.0 - k) * gate)
            surr = (aux["surrogate"] if c.clip == "ppo_clip" else ratio * aux["adv"]) * g
            return jnp.mean(aux["surrogate"]) - jnp.mean(surr)
        term = unclip_term(aux) if c.clip == "none" else jnp.zeros(())
        if c.beta != 0:
            term = term + c.beta * jnp.mean(self.per_sample_penalty(state, aux, discrete))
        return term

    def logs(self, state):
        return {"gtr/penalty_old": state["penalty"], "gtr/deviation_old": state["deviation"],
                "gtr/sigma": state["sigma"], "gtr/weight_newest": state["weights"][0],
                "gtr/anchors_filled": state["filled"]}


# ---- KL penalty (the baseline) -------------------------------------------------------------------------
@dataclass
class KLPenaltyConfig:
    beta: float = nonneg(1.0)       # β (the initial β when adaptive); PPO paper Table 1 sweeps {0.3, 1, 3, 10}
    # fixed | adaptive (PPO paper §4: after each iteration, d < d_targ/1.5: β/2,
    # d > 1.5·d_targ: 2β, d = mean KL(π_old ‖ π_new) on the rollout)
    beta_schedule: str = one_of("fixed", KL_SCHEDULES)
    kl_target: float = positive(0.01)  # d_targ (PPO paper's best adaptive setting, Table 1: 0.003 / 0.01 / 0.03)
    adapt_tolerance: float = num(1.5, gt=1)  # the paper's 1.5
    adapt_factor: float = num(2.0, gt=1)  # the paper's 2
    # analytic (per-state KL of the distributions, the paper's L^KLPEN) | k3 | k1
    estimator: str = one_of("analytic", KL_ESTIMATORS)
    clip: str = one_of("none", CLIPS)  # none (the paper's L^KLPEN has no clipping) | ppo_clip (clip + penalty)


class KLPenalty(Intervention):
    name = "kl_penalty"
    Config = KLPenaltyConfig
    requires = frozenset({"policy_objective"})
    resources = {"policy_objective": "own"}

    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        if c.beta_schedule == "adaptive" and c.beta <= 0:
            raise ValueError("kl_penalty.beta must be > 0 with beta_schedule=adaptive (β is only ever halved "
                             "or doubled)")

    def init(self, key, agent, agent_state=None):
        return {"beta": jnp.asarray(self.cfg.beta, jnp.float32), "kl": jnp.zeros(())}

    def rollout_columns(self, agent, agent_state, state, data):
        if self.cfg.estimator != "analytic":
            return {}, state
        out = agent.dist(agent_state.nets[POLICY_NET].params, data["obs"])[0]  # π_old's distribution
        return {"dist": jax.lax.stop_gradient(out)}, state

    def per_sample_kl(self, aux):
        """KL(π_old ‖ π_θ) per sample: analytic, or k1 = −log r, k3 = (r − 1) − log r (r = π_θ/π_old)."""
        if self.cfg.estimator == "analytic":
            old = jax.lax.stop_gradient(aux["columns"][self.name]["dist"])
            return analytic_kl(old, aux["dist"], not isinstance(aux["dist"], tuple))
        log_r = aux["logp"] - aux["logp_old"]
        return -log_r if self.cfg.estimator == "k1" else jnp.expm1(log_r) - log_r

    def loss_term(self, net, params, state, aux):
        c = self.cfg
        if net.name != POLICY_NET or "logp" not in aux:
            return jnp.zeros(())
        term = unclip_term(aux) if c.clip == "none" else jnp.zeros(())
        if c.beta != 0:
            term = term + jax.lax.stop_gradient(state["beta"]) * jnp.mean(self.per_sample_kl(aux))
        return term

    def post_iteration(self, agent, agent_state, state, data):
        """d = mean KL(π_old ‖ π_new) over the rollout with the configured estimator; the adaptive rule."""
        c = self.cfg
        out = agent.dist(agent_state.nets[POLICY_NET].params, data["obs"])[0]
        logp = agent.log_prob(out, data["action"])[0]
        aux = {"logp": logp, "logp_old": data["logp"], "dist": out, "columns": data.get("columns", {})}
        kl = jnp.mean(self.per_sample_kl(aux))
        beta = state["beta"]
        if c.beta_schedule == "adaptive":
            beta = jnp.where(kl < c.kl_target / c.adapt_tolerance, beta / c.adapt_factor,
                             jnp.where(kl > c.kl_target * c.adapt_tolerance, beta * c.adapt_factor, beta))
        return {"beta": beta, "kl": kl}

    def logs(self, state):
        return {"kl_penalty/beta": state["beta"], "kl_penalty/kl": state["kl"]}
