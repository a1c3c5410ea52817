"""Declared ranges of numeric config fields.

A numeric field of a config dataclass states its valid range where it is declared, with one of the helpers
below (each returns a `dataclasses.field` whose metadata holds a `Range`):

    actor_lr: float = positive(3e-4)                  # > 0
    learning_starts: int = nonneg(5_000)              # >= 0
    gamma: float = unit(0.99)                         # [0, 1]
    tau: float = unit_pos(0.005)                      # (0, 1]
    decay: float = unit_lt1(0.99)                     # [0, 1)
    adapt_factor: float = num(2.0, gt=1)              # any bounds: gt / ge / lt / le
    shrink: float = unit(-1.0, special=(-1.0,), note="-1: the mode's default")   # a sentinel outside the range
    hidden: tuple[int, ...] = positive((256, 256))    # a tuple: every entry
    period: int = count(1000, "updates")              # >= 1: "must be a positive number of updates"
    mode: str = one_of("toward_init", MODES)          # a switch: one of the names in MODES

`plastic.config.validate` walks every section of a run's config before anything is built and checks each
field with `field_problem`: a switch declared with `one_of` must be one of its choices; a float (each float of
a tuple) must be finite, unless its range says `allow_inf` (NaN is never valid); a number must lie in its
declared range unless it is one of the range's `special` values. A float field without a declared range is still
checked for finiteness. Ranges that depend on another field (`least.min_rows <= least.K_max`) stay in the config's
`validate` method.

Messages name the field as the user types it: `sac.actor_lr must be > 0, got -1.0`,
`reset.scope='everything' is not valid; choose one of: all, last_k_layers, heads_only, all_but_encoder`.
"""
from __future__ import annotations

import dataclasses
import math

KEY = "plastic.range"  # dataclasses.Field.metadata key of a field's Range
CHOICES = "plastic.choices"  # ... and of a switch's valid values


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclasses.dataclass(frozen=True)
class Range:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    special: tuple = ()        # values valid outside [lo, hi] (sentinels such as -1: "the default")
    allow_inf: bool = False    # +-inf is a valid value (NaN never is)
    note: str = ""             # shown after the requirement, in parentheses: what the sentinels mean
    what: str = ""             # the requirement in words, instead of the bounds ("a positive number of updates")

    def contains(self, v) -> bool:
        if v in self.special:
            return True
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def requirement(self) -> str:
        """`> 0`, `>= 1`, `in [0, 1)`, ... (or `what`), with the note."""
        if self.what:
            text = self.what
        elif self.lo is not None and self.hi is not None:
            text = (f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}"
                    f"{')' if self.hi_open else ']'}")
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        elif self.hi is not None:
            text = f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        else:
            text = "a number"
        return f"{text} ({self.note})" if self.note else text


ANY = Range()  # the range of a field declared without one: any finite number


def range_of(f: dataclasses.Field) -> Range:
    return f.metadata.get(KEY, ANY)


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def one_of(default, choices):
    """A switch with `default` whose value must be one of `choices` (a tuple of names)."""
    if default not in choices:
        raise TypeError(f"default {default!r} is not one of {choices}")
    return dataclasses.field(default=default, metadata={CHOICES: tuple(choices)})


def field_problem(where: str, value, f: dataclasses.Field) -> str | None:
    """The one-line error for `value` of the declared field `f` (named `where`), or None if it is valid."""
    choices = f.metadata.get(CHOICES)
    if choices is not None:
        if value not in choices:
            return f"{where}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}"
        return None
    return problem(where, value, range_of(f))


def first_problem(obj, name) -> str | None:
    """The one-line error of the first field of the config dataclass `obj` that breaks its declared constraint
    (`name(field)`: how the message names it), or None."""
    for f in dataclasses.fields(obj):
        msg = field_problem(name(f.name), getattr(obj, f.name), f)
        if msg:
            return msg
    return None


def check(obj, ns: str) -> None:
    """Every declared constraint of the config dataclass `obj` (its fields named `ns.FIELD`): a ValueError with
    the first problem's one-line message (plastic.config.check_fields does this for every section of a run)."""
    msg = first_problem(obj, lambda n: f"{ns}.{n}")
    if msg:
        raise ValueError(msg)


def problem(where: str, value, rng: Range = ANY) -> str | None:
    """The one-line error for `value` (a number or a tuple; anything else is not checked) of the field named
    `where` with range `rng`, or None if it is valid."""
    entries = value if isinstance(value, tuple) else (value,)
    subject = f"{where} entries" if isinstance(value, tuple) else where
    for v in entries:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v) and not rng.allow_inf):
            if rng is ANY or rng.what:
                need = "a finite number" if rng is ANY else f"finite and {rng.requirement()}"
            else:
                need = f"a {'number (inf allowed)' if rng.allow_inf else 'finite number'} {rng.requirement()}"
            return f"{subject} must be {need}, got {_show(value)}"
        if not rng.contains(v):
            return f"{subject} must be {rng.requirement()}, got {_show(value)}"
    return None


def num(default, *, gt=None, ge=None, lt=None, le=None, special=(), allow_inf=False, note="", what=""):
    """A field with `default` whose values (every entry, for a tuple) must satisfy the given bounds."""
    if gt is not None and ge is not None or lt is not None and le is not None:
        raise TypeError("give at most one lower (gt, ge) and one upper (lt, le) bound")
    rng = Range(lo=gt if gt is not None else ge, hi=lt if lt is not None else le, lo_open=gt is not None,
                hi_open=lt is not None, special=tuple(special), allow_inf=allow_inf, note=note, what=what)
    return dataclasses.field(default=default, metadata={KEY: rng})


def positive(default, **kw):
    """> 0"""
    return num(default, gt=0, **kw)


def nonneg(default, **kw):
    """>= 0"""
    return num(default, ge=0, **kw)


def unit(default, **kw):
    """in [0, 1]"""
    return num(default, ge=0, le=1, **kw)


def unit_pos(default, **kw):
    """in (0, 1]"""
    return num(default, gt=0, le=1, **kw)


def unit_lt1(default, **kw):
    """in [0, 1)"""
    return num(default, ge=0, lt=1, **kw)


def count(default, of: str, **kw):
    """>= 1, said as "a positive number of {of}" (updates, env steps)"""
    return num(default, ge=1, what=f"a positive number of {of}", **kw)
