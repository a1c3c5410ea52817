"""Plasticity metrics: pure functions returning arrays or flat `dict[str, Array]`.

Definitions follow ../shared/specs/metrics.md; every function has a reference test in tests/.
"""
from metrics.units import (  # noqa: F401
    dormant_scores, grama_scores, normalize_scores, ratio_logs, unit_magnitude,
)
