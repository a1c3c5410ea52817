"""Policy churn (docs/metrics.md §8): how much one gradient step changes the policy on a held-out batch.

Rows are all axes but the last (the action / logit axis); every function averages over rows.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


@jax.jit
def greedy_churn(values_old, values_new):
    """Discrete `policy_churn` (docs/metrics.md §8, Schaul et al. 2022): fraction of rows whose greedy action
    (argmax over the last axis of Q-values or logits; ties to the first index) changes. float32."""
    changed = jnp.argmax(values_old, axis=-1) != jnp.argmax(values_new, axis=-1)
    return jnp.mean(changed.astype(jnp.float32))


@jax.jit
def action_change(a_old, a_new):
    """Continuous `policy_churn` proxy (docs/metrics.md §8): mean over rows of ||a_new − a_old||² (squared L2
    over the last axis), e.g. deterministic actions mu(s) before and after the step. float32."""
    d = jnp.asarray(a_new, jnp.float32) - jnp.asarray(a_old, jnp.float32)
    return jnp.mean(jnp.sum(jnp.square(d), axis=-1))


@jax.jit
def gaussian_kl(mean_old, log_std_old, mean_new, log_std_new):
    """Stochastic-policy churn (docs/metrics.md §8): mean over rows of KL(pi_old || pi_new) for diagonal
    Gaussians, summed over action dims: log(s_new/s_old) + (s_old² + (m_old − m_new)²) / (2 s_new²) − 1/2.
    KL is invariant under a bijection applied to both distributions, so this is also the KL of the
    tanh-squashed policies. float32."""
    m0, m1 = jnp.asarray(mean_old, jnp.float32), jnp.asarray(mean_new, jnp.float32)
    l0, l1 = jnp.asarray(log_std_old, jnp.float32), jnp.asarray(log_std_new, jnp.float32)
    kl = l1 - l0 + (jnp.exp(2 * l0) + jnp.square(m0 - m1)) / (2 * jnp.exp(2 * l1)) - 0.5
    return jnp.mean(jnp.sum(kl, axis=-1))


@jax.jit
def categorical_kl(logits_old, logits_new):
    """Discrete stochastic churn (docs/metrics.md §8): mean over rows of KL(softmax(old) || softmax(new)) =
    sum_a p_old (log p_old − log p_new), computed with `log_softmax` for stability. float32."""
    lp0 = jax.nn.log_softmax(jnp.asarray(logits_old, jnp.float32), axis=-1)
    lp1 = jax.nn.log_softmax(jnp.asarray(logits_new, jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(lp0) * (lp0 - lp1), axis=-1))


@partial(jax.jit, static_argnames=("network",))
def churn_logs(network: str, old: dict, new: dict) -> dict:
    """`policy_churn/<network>` (and `policy_churn_kl/<network>`) from before/after views of the policy on
    the same batch (docs/metrics.md §8). Key sets: {"q"}: greedy churn; {"logits"}: greedy churn and categorical
    KL; {"action"}: action change; {"action", "mean", "log_std"}: action change and Gaussian KL. Any other
    key set, or differing key sets: ValueError."""
    keys = set(old)
    if set(new) != keys:
        raise ValueError(f"old and new views differ: {sorted(old)} vs {sorted(new)}")
    if keys == {"q"}:
        return {f"policy_churn/{network}": greedy_churn(old["q"], new["q"])}
    if keys == {"logits"}:
        return {f"policy_churn/{network}": greedy_churn(old["logits"], new["logits"]),
                f"policy_churn_kl/{network}": categorical_kl(old["logits"], new["logits"])}
    if keys == {"action"}:
        return {f"policy_churn/{network}": action_change(old["action"], new["action"])}
    if keys == {"action", "mean", "log_std"}:
        return {f"policy_churn/{network}": action_change(old["action"], new["action"]),
                f"policy_churn_kl/{network}": gaussian_kl(old["mean"], old["log_std"],
                                                          new["mean"], new["log_std"])}
    raise ValueError(f"unknown policy view keys {sorted(keys)}; expected one of {{'q'}}, {{'logits'}}, "
                     "{'action'}, {'action', 'mean', 'log_std'}")
