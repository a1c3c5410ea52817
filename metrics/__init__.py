"""Plasticity metrics: pure functions returning arrays or flat `dict[str, Array]`.

Definitions: docs/metrics.md; every function has a reference test in tests/.
"""
from metrics.activity import (
    ACTIVE_TESTS, active_mask, fau_logs, linearised_fraction, linearised_logs, positive_preactivation,
)
from metrics.churn import (
    action_change, categorical_kl, churn_logs, gaussian_kl, greedy_churn,
)
from metrics.norms import (
    feature_norm, grad_stats, grad_to_param_ratio, layer_groups, norm_logs, param_dist_init_rms, param_rms,
    update_to_param_ratio,
)
from metrics.ntk import jacobian, ntk_logs, ntk_rank
from metrics.rank import (
    approx_rank, effective_rank, fallback_if_nonfinite, feature_rank, host_singular_values, matrix_rank, rank_logs,
    singular_values, srank,
)
from metrics.units import (
    dormant_masks, dormant_scores, grama_scores, normalize_scores, ratio_logs, set_overlap, unit_magnitude,
)

__all__ = [
    "action_change",
    "active_mask",
    "ACTIVE_TESTS",
    "approx_rank",
    "categorical_kl",
    "churn_logs",
    "dormant_masks",
    "dormant_scores",
    "effective_rank",
    "fallback_if_nonfinite",
    "fau_logs",
    "feature_norm",
    "feature_rank",
    "gaussian_kl",
    "grad_stats",
    "grad_to_param_ratio",
    "grama_scores",
    "greedy_churn",
    "host_singular_values",
    "jacobian",
    "layer_groups",
    "linearised_fraction",
    "linearised_logs",
    "matrix_rank",
    "norm_logs",
    "normalize_scores",
    "ntk_logs",
    "ntk_rank",
    "param_dist_init_rms",
    "param_rms",
    "positive_preactivation",
    "rank_logs",
    "ratio_logs",
    "set_overlap",
    "singular_values",
    "srank",
    "unit_magnitude",
    "update_to_param_ratio",
]
