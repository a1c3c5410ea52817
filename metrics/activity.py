"""Fraction of active units (FAU) and linearised units (docs/metrics.md §4).

Activation tensors are post-activations `[E?, B, (spatial...), H]` (leading ensemble axis `E` for twin
critics, as in `metrics.units`). FAU pools over every entry; the linearised ratio is per unit (per member).
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

_DFF_LIMIT = math.sqrt(2.0) - 0.01

# "active" tests on the post-activation h (docs/metrics.md §4 FAU table, the complement of "saturated")
ACTIVE_TESTS = {
    "relu": lambda h: h > 0,
    "swish": lambda h: h > 0,
    "tanh": lambda h: jnp.abs(h) <= 0.99,
    "sigmoid": lambda h: (h >= 0.01) & (h <= 0.99),
    "dff": lambda h: jnp.abs(h) <= _DFF_LIMIT,
    "crelu": lambda h: h > 0,   # each entry is a ReLU output (of z or of -z)
}

# pre-activation z > 0 recovered from h (strictly monotone activations with act(0) = 0, or 0.5 for sigmoid)
POSITIVE_TESTS = {
    "relu": lambda h: h > 0,
    "swish": lambda h: h > 0,
    "tanh": lambda h: h > 0,
    "sigmoid": lambda h: h > 0.5,
}


@partial(jax.jit, static_argnames=("activation",))
def active_mask(h, activation: str):
    """Boolean mask of active entries of the post-activation `h` (docs/metrics.md §4 FAU table): relu and
    swish `h > 0`; tanh `|h| <= 0.99`; sigmoid `0.01 <= h <= 0.99`; dff `|h| <= sqrt(2) − 0.01`. Same shape
    as `h`. Unknown activation: ValueError listing `ACTIVE_TESTS`."""
    if activation not in ACTIVE_TESTS:
        raise ValueError(f"unknown activation {activation!r} for FAU; valid: {sorted(ACTIVE_TESTS)}")
    return ACTIVE_TESTS[activation](jnp.asarray(h))


@partial(jax.jit, static_argnames=("network", "activation"))
def fau_logs(network: str, acts: dict, activation: str) -> dict:
    """FAU (docs/metrics.md §4): `fau/<network>/<layer>` is the mean of `active_mask` over every entry of the
    layer's tensor (ensemble, batch, spatial and unit axes all pooled); `fau/<network>` pools all entries of
    all layers (sum active / sum entries, so wider layers weigh more). float32."""
    logs, active, total = {}, 0.0, 0
    for name, h in acts.items():
        a = jnp.sum(active_mask(h, activation), dtype=jnp.float32)
        logs[f"fau/{network}/{name}"] = a / h.size
        active, total = active + a, total + h.size
    if acts:
        logs[f"fau/{network}"] = active / total
    return logs


@partial(jax.jit, static_argnames=("activation",))
def positive_preactivation(h, activation: str):
    """Whether the pre-activation z > 0, recovered from the post-activation `h` (docs/metrics.md §4): relu, swish,
    tanh `h > 0`; sigmoid `h > 0.5`. A dead ReLU's z <= 0 gives False. dff is not invertible: ValueError."""
    if activation not in POSITIVE_TESTS:
        raise ValueError(f"pre-activation sign not recoverable from {activation!r} outputs; "
                         f"valid: {sorted(POSITIVE_TESTS)}")
    return POSITIVE_TESTS[activation](jnp.asarray(h))


def _positive_counts(h, activation: str, ensemble: int = 0):
    """Per unit (per member) count of samples and spatial positions with positive pre-activation, and the
    number of such entries per unit (static)."""
    axes = tuple(range(1 if ensemble else 0, h.ndim - 1))
    count = jnp.sum(positive_preactivation(h, activation), axis=axes, dtype=jnp.int32)
    return count, math.prod(h.shape[a] for a in axes)


@partial(jax.jit, static_argnames=("activation", "ensemble"))
def linearised_fraction(h, activation: str, ensemble: int = 0):
    """Per unit (per member), the fraction of samples and spatial positions with positive pre-activation:
    `[E, H]` or `[H]` (axes as in `metrics.units.unit_magnitude`)."""
    count, n = _positive_counts(h, activation, ensemble)
    return count.astype(jnp.float32) / n


def linearised_logs(network: str, acts: dict, layers, activation: str, frac: float = 0.9) -> dict:
    """`linearised_ratio` (docs/metrics.md §4; LucMc/continual-learning): a unit (per member for ensembles) is
    linearised if its pre-activation is positive on a fraction >= `frac` of the samples (and spatial
    positions). Keys `linearised_ratio/<network>/<layer>` (fraction of the layer's units) and
    `linearised_ratio/<network>` pooled over the units of all layers and members. `layers` are LayerSpecs
    (`.name`, `.ensemble`). float32.

    The test is done on integer counts, `count >= ceil(frac * n)` with `frac` a static Python float read
    as its decimal value, so a unit positive on exactly 90% of n samples is linearised at frac = 0.9 (a
    float32 `count / n` can round just below 0.9)."""
    specs = tuple((l.name, int(l.ensemble)) for l in layers)
    return _linearised_logs(network, {name: acts[name] for name, _ in specs}, specs, activation, float(frac))


@partial(jax.jit, static_argnames=("network", "specs", "activation", "frac"))
def _linearised_logs(network, acts, specs, activation, frac):
    """`linearised_logs` on hashable `(name, ensemble)` layer specs, jitted with everything but `acts` static."""
    logs, flagged, total = {}, 0.0, 0
    for name, ensemble in specs:
        count, n = _positive_counts(acts[name], activation, ensemble)
        need = math.ceil(round(frac * n, 6))
        k = jnp.sum(count >= need, dtype=jnp.float32)
        logs[f"linearised_ratio/{network}/{name}"] = k / count.size
        flagged, total = flagged + k, total + count.size
    if total:
        logs[f"linearised_ratio/{network}"] = flagged / total
    return logs
