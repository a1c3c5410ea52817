"""Sample Weight Decay (and its reverse control SWA): age-weighted replay sampling (docs/interventions.md, SWD / SWA).

`age_j = t - t_add[j]` in add() calls (env steps per seed); the newest transition has age 0.
  T > 0  SWD  w = max(w_min, 1 - age / T)
  T < 0  SWA  w = min(1, w_min + age / |T|)
  T = 0  uniform
Indices are drawn i.i.d. from p = w / Σw over live slots; no importance correction.

Samplers:
- `exact`: every slot is drawn with probability w_j / Σw (the float32 weights are the reference) up to a
  relative error below 1e-9 at N = 1e6, T = 8e4, w_min = 0.1: the thresholds are the exact prefix sums
  rounded once to a double-float (5e-16 relative per slot, tested), the rest is the 2^-48 grid of the
  uniforms. A single float32 cumulative sum (the former jax.random.choice) cannot do this: near Σw its
  thresholds are 2^-24·Σw apart while a slot's interval is about Σw / N, so at N = 1e6 slot
  probabilities were off by up to 6% (14% with its 23-bit uniforms; total variation 8e-3, 2.6e-2).
  Here (`sample_exact`): a two-level inverse CDF in double-float (hi, lo) float32 pairs. A block of 64
  slots is drawn from prefix sums over the blocks, made exact by cutting every weight into three parts
  whose float32 sums are exact in any order; then a slot of it from the block's own exact prefix sums;
  each level with a 48-bit uniform. O(N) per batch (the weights, one pass cutting and summing them),
  O(N/64 · log) over blocks and O(64·B) for the drawn blocks; at 1M slots and batch 256 about 0.6x the
  former cost on CPU (docs/interventions.md, benchmarks/swd_sampler.py).
- `bucketed` ([reconstructed]): a unit of contiguous slots is drawn with probability
  ∝ count_u · w(t - t_mean_u), then a slot uniformly inside it; O(N/S + S + B) per batch. The units are
  the buckets of S slots (their means maintained by the replay buffer on add()), except that the bucket
  holding the write pointer is split at it: its newest slots and its oldest (after wrap-around) are two
  units, each a contiguous time window. Left whole, that bucket's mean age is mid-buffer, and its newest
  slots were drawn at about a tenth of their exact probability (total variation to `exact` up to 6e-3 at
  N = 1e6, T = 8e4, S = 1e3; split: 8.5e-4 wherever the pointer is in a full buffer, tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.fields import num, one_of, unit
from plastic.interventions.base import Intervention

SAMPLERS = ("exact", "bucketed")


@dataclass
class SWDConfig:
    T: int = 80_000             # > 0: SWD, < 0: SWA (reverse control), 0: uniform (module doc)
    w_min: float = unit(0.1)
    sampler: str = one_of("exact", SAMPLERS)  # exact | bucketed
    bucket_size: int = num(1000, ge=1)


def age_weights(age, T: float, w_min: float):
    """Unnormalised sampling weight of a transition of the given age (float array)."""
    age = age.astype(jnp.float32)
    if T > 0:
        return jnp.maximum(w_min, 1.0 - age / T)
    if T < 0:
        return jnp.minimum(1.0, w_min + age / abs(T))
    return jnp.ones_like(age)


# ---------------------------------------------------------------------------------------------
# The exact sampler: a two-level inverse CDF in double-float ("float-float") arithmetic.
#
# A double-float is a pair of float32 (hi, lo) standing for hi + lo, with |lo| <= ulp(hi)/2 (about 48
# significant bits). Only +, -, *, floor, comparisons and bit masks are used (no division), and every
# step that must be error-free stays exact if the compiler contracts a product and a sum into an FMA.

EXACT_BLOCK = 64    # slots per block of the exact sampler (a power of two)


def two_sum(a, b):
    """Error-free sum (Knuth): s = fl(a + b) and s + e == a + b exactly."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _dd_add(x, y):
    """Sum of two non-negative double-floats, renormalised (relative error about 2^-47). Adding (0, 0)
    returns the other operand bit for bit."""
    s, e = two_sum(x[0], y[0])
    e = e + (x[1] + y[1])
    hi = s + e
    return hi, e - (hi - s)


def _split(a):
    """a == hi + lo exactly, each with at most 12 significant bits (hi: a with its low 12 mantissa bits
    cleared)."""
    hi = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(a, jnp.uint32) & jnp.uint32(0xFFFFF000), jnp.float32)
    return hi, a - hi


def two_prod(a, b):
    """Error-free product (Dekker): p = fl(a * b) and p + e == a * b exactly (no overflow or underflow)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def uniform48(bits):
    """U = u1 + u2, uniform on the grid k·2^-48 in [0, 1), from two uint32 arrays (24 bits of each)."""
    return (bits[0] >> 8).astype(jnp.float32) * 2.0 ** -24, (bits[1] >> 8).astype(jnp.float32) * 2.0 ** -48


def draw_target(total, u):
    """U · total as a double-float, from a double-float total and U = (u1, u2) of `uniform48`; absolute
    error below 2^-46 · total. Should rounding bring it to the total or above, 0 instead (so the first
    threshold above the target always exists, and is one of positive weight)."""
    (th, tl), (u1, u2) = total, u
    ph, pl = two_prod(th, u1)
    rh, rl = two_sum(ph, pl + (th * u2 + tl * u1))
    over = (rh > th) | ((rh == th) & (rl >= tl))
    return jnp.where(over, 0.0, rh), jnp.where(over, 0.0, rl)


def weight_parts(x, block: int):
    """x (entries in [0, 1]) cut at fixed bit positions into three float32 parts (a list, each like x),
    for sums of `block` = 2^g of them: part 1 keeps the bits from 2^-(23-g) up, part 2 the next 24-g bits,
    part 3 the next 24-g (down to 2^-53 at 64); lower bits are dropped, so weights >= 2^-30 are kept
    exactly. Part i is a multiple of u_i = 2^-(i(24-g)-1) and at most 2^(24-g) u_i, so a sum of `block`
    of them, and every partial sum, is below 2^24 units: exact in float32 whatever the order."""
    g = block.bit_length() - 1
    parts, rest = [], x
    for i in (1, 2, 3):
        scale = 2.0 ** (i * (24 - g) - 1)
        part = jnp.floor(rest * scale) * (1.0 / scale)
        rest = rest - part
        parts.append(part)
    return parts


def _column_sums(p):
    """Sums over the leading axis (a power of two) by halving: elementwise adds of contiguous halves,
    which XLA:CPU fuses and vectorises (several times faster than a row reduction of the parts here)."""
    while p.shape[0] > 1:
        half = p.shape[0] // 2
        p = p[:half] + p[half:]
    return p[0]


def dd_combine(h, lo):
    """The double-float sum of three exact double-float parts [3, ...] (rounded once, to about 2^-48)."""
    return _dd_add(_dd_add((h[0], lo[0]), (h[1], lo[1])), (h[2], lo[2]))


def exact_scan(h, lo=None):
    """Inclusive prefix sums along the last axis of the double-floats (h, lo) >= 0 (lo = None: of the
    float32 array h): Hillis-Steele doubling steps in a loop (C_i += C_{i-d}, d = 1, 2, 4, ...). Every
    step is exact while all values are multiples of one unit u and below 2^46 u (the parts of `weight_parts`
    and their sums); the prefix sums are then exact and do not depend on the order of summation."""
    n, axis = h.shape[-1], h.ndim - 1
    zeros = jnp.zeros_like(h)

    def step(i, c):
        d = jnp.left_shift(1, i)     # C shifted right by d, zeros in front
        shifted = [jax.lax.dynamic_slice_in_dim(jnp.concatenate([zeros, a], axis), n - d, n, axis) for a in c]
        return _dd_add(c, tuple(shifted))

    return jax.lax.fori_loop(0, (n - 1).bit_length(), step, (h, zeros if lo is None else lo))


def exact_long_scan(h, width: int = 128):
    """`exact_scan` of a long last axis in two passes (about half the work, the same exact result): within
    rows of `width`, then each row gets the sum of the rows before it."""
    n, lead = h.shape[-1], [(0, 0)] * (h.ndim - 1)
    r = -(-n // width)
    rh, rl = exact_scan(jnp.pad(h, lead + [(0, r * width - n)]).reshape(h.shape[:-1] + (r, width)))
    th, tl = (jnp.pad(a[..., :-1], lead + [(1, 0)]) for a in exact_scan(rh[..., -1], rl[..., -1]))
    ch, cl = _dd_add((rh, rl), (th[..., None], tl[..., None]))
    return ch.reshape(h.shape[:-1] + (r * width,))[..., :n], cl.reshape(h.shape[:-1] + (r * width,))[..., :n]


def exact_search(at, n: int, th, tl):
    """First i < n with C_i > t, else n: a binary search over non-decreasing double-floats, comparing
    (hi, lo) lexicographically. `at(i)` gives (C_hi, C_lo) at index i [B] of the sequence of each target
    t = (th, tl) [B]."""
    def step(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        a, b = at(jnp.minimum(mid, n - 1))
        right = (a > th) | ((a == th) & (b > tl)) | (mid == n)
        return jnp.where(right, lo, mid + 1), jnp.where(right, mid, hi)

    bounds = (jnp.zeros(th.shape, jnp.int32), jnp.full(th.shape, n, jnp.int32))
    return jax.lax.fori_loop(0, n.bit_length(), step, bounds)[0]


def exact_blocks(w, block: int = EXACT_BLOCK):
    """The weights as [block, M] (zero-padded; slot j = k·M + b is slot k of block b, so block b holds the
    slots b, b + M, b + 2M, ...) and the level-1 thresholds P [M], a double-float: P_b = Σ_{b' <= b} S_b',
    S_b' the weight of block b'.

    Each `weight_parts` part is summed per block exactly, and its prefix sums over blocks are exact too (part i
    is a multiple of u_i = 2^-(i(24-g)-1) and its prefix sums stay below N·2^(24-g) u_i <= 2^46 u_i for
    N <= 2^(22+g) slots, 2^28 at 64); only the sum of the three is rounded (to about 2^-48 P). So P is
    non-decreasing, and a block of weight 0 has exactly the threshold of the block before it."""
    assert block & (block - 1) == 0, f"block={block} must be a power of two"
    n = w.shape[0]
    m = -(-n // block)
    x = jnp.pad(w, (0, m * block - n)).reshape(block, m)
    sums = jnp.stack([_column_sums(part) for part in weight_parts(x, block)])          # [3, M], exact
    return x, dd_combine(*exact_long_scan(sums))


def slot_thresholds(rows):
    """The level-2 thresholds of blocks given as rows [R, K] of their weights: L_k = Σ_{k' <= k} w_k'
    within each row, a double-float [R, K] (exact prefix sums of each `weight_parts` part, their sum rounded
    once). A slot of weight 0 has exactly the threshold before it."""
    return dd_combine(*exact_scan(jnp.stack(weight_parts(rows, rows.shape[-1]))))


def sample_exact(w, key, batch_size: int, block: int = EXACT_BLOCK):
    """`batch_size` slots drawn i.i.d. with probability w_j / Σw (w >= 0 float32 [N], entries <= 1).

    Level 1 draws a block of `block` slots: the first b with P_b > U·P_M (`exact_blocks`), level 2 a slot
    of it: the first k with L_k > U'·L_K (`slot_thresholds` of its row), U and U' independent 48-bit
    uniforms (`draw_target`). Slot k of block b is so drawn with probability
    (P_b - P_{b-1}) / P_M · (L_k - L_{k-1}) / L_K; weights 0 have an interval of length 0 and are never
    drawn. With fewer draws than blocks, the level-2 thresholds of the drawn blocks are computed per
    draw, otherwise those of all blocks once (the same numbers, the same draw). Without any weight (an
    empty buffer) every index is N - 1."""
    x, (ph, pl) = exact_blocks(w, block)
    m = x.shape[1]
    bits = jax.random.bits(key, (4, batch_size), jnp.uint32)
    th, tl = draw_target((ph[-1], pl[-1]), uniform48(bits[:2]))
    b = jnp.minimum(exact_search(lambda i: (ph[i], pl[i]), m, th, tl), m - 1)
    if batch_size <= m:
        lh, ll = slot_thresholds(x[:, b].T)                                     # [B, block]
        rows = jnp.arange(batch_size)
    else:
        lh, ll = slot_thresholds(x.T)                                           # [M, block]
        rows = b
    at_slot = lambda k: (lh[rows, k], ll[rows, k])                              # noqa: E731
    total = at_slot(jnp.full_like(b, block - 1))
    th, tl = draw_target(total, uniform48(bits[2:]))
    k = exact_search(at_slot, block, th, tl)
    return jnp.minimum(k * m + b, w.shape[0] - 1)


class SWD(Intervention):
    name = "swd"
    Config = SWDConfig
    requires = frozenset({"replay"})
    samples_replay = True

    def replay_options(self):
        return {"bucket_size": self.cfg.bucket_size} if self.cfg.sampler == "bucketed" else {}

    def weights(self, replay):
        """Unnormalised weight w of every slot, float32 [N] in [0, 1] (0 for dead slots)."""
        live = jnp.arange(replay.capacity) < replay.size
        return jnp.where(live, age_weights(replay.ages(), self.cfg.T, self.cfg.w_min), 0.0)

    def probabilities(self, replay):
        """Exact p over all N slots (0 for dead slots)."""
        w = self.weights(replay)
        return w / w.sum()

    def bucket_units(self, replay):
        """The bucketed sampler's units: `(p, first slot, live count)`, each [M + 1]. Unit b < M is bucket b
        (p ∝ count_b · w(t - t_mean_b)); the bucket holding the newest slot keeps only its slots after the write
        pointer (the oldest data), and unit M is its slots up to the newest one."""
        S, M = replay.bucket_size, replay.bucket_tmean.shape[0]
        counts = replay.bucket_counts()
        first = jnp.arange(M, dtype=jnp.int32) * S
        age = (replay.t - 1).astype(jnp.float32) - replay.bucket_tmean
        newest = (replay.ptr - 1) % replay.capacity
        b = newest // S
        j = jnp.arange(S)
        ages = ((replay.t - 1) - jax.lax.dynamic_slice_in_dim(replay.t_add, b * S, S)).astype(jnp.float32)
        k = newest - b * S + 1                        # slots b*S ... newest: the newest data
        new, old = j < k, (j >= k) & (j < counts[b])  # old: the slots after the pointer, live after wrap-around
        n_new, n_old = jnp.sum(new).astype(jnp.float32), jnp.sum(old).astype(jnp.float32)
        mean = lambda m, n: jnp.sum(jnp.where(m, ages, 0.0)) / jnp.maximum(n, 1.0)  # noqa: E731
        counts = jnp.append(counts.at[b].set(n_old), n_new)
        first = jnp.append(first.at[b].add(k), b * S)
        age = jnp.append(age.at[b].set(mean(old, n_old)), mean(new, n_new))
        w = counts * age_weights(age, self.cfg.T, self.cfg.w_min)
        return w / w.sum(), first, counts

    def slot_probabilities(self, replay):
        """What the bucketed sampler draws, per slot [N] (for tests and diagnostics)."""
        p, first, counts = self.bucket_units(replay)
        M = p.shape[0] - 1
        slots = jnp.arange(replay.capacity)
        unit = slots // replay.bucket_size                 # its bucket, or unit M for the newest slots
        unit = jnp.where((slots >= first[M]) & (slots < first[M] + counts[M]), M, unit)
        inside = (slots >= first[unit]) & (slots < first[unit] + counts[unit])  # a live slot of its unit
        return jnp.where(inside, (p / jnp.maximum(counts, 1.0))[unit], 0.0)

    def sample(self, replay, state, key, batch_size):
        if self.cfg.sampler == "exact":
            return sample_exact(self.weights(replay), key, batch_size)
        kb, ks = jax.random.split(key)
        p, first, counts = self.bucket_units(replay)
        u = jax.random.choice(kb, p.shape[0], (batch_size,), replace=True, p=p)
        offset = jnp.floor(jax.random.uniform(ks, (batch_size,)) * counts[u]).astype(jnp.int32)
        return first[u] + jnp.minimum(offset, counts[u].astype(jnp.int32) - 1)
