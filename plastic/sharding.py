"""The seed axis of a run split across the local devices of a node (`run.devices`).

Every driver keeps its train state as a few sub-trees that are either *seed-batched* (built by
`jax.vmap` over a per-seed init, or by vmapped env resets: every leaf has the seed axis in front) or
*shared* (the counters: one value for all seeds). With k > 1 devices the batched sub-trees are placed with
`NamedSharding(mesh, P("seed"))` on a 1-D mesh over the first k local devices, so each device holds and
trains S / k seeds, and the shared ones are replicated. The drivers place their initial (or restored)
state, run their vmapped per-seed work (update rounds, metrics, log-point values) per device (`per_device`:
shard_map, so no op of it is split or gathered by the compiler), and pin their programs' state outputs to the
same layout (`constrain`), so every call gets the layout the previous one returned (donation unchanged).
Inputs from the host (a host env's observations and transitions) stay numpy arrays: jit gives them the
seed sharding of the program it compiled and copies each device its slice.
Which sub-trees are batched is said by the driver (a prefix tree of booleans over its carry), never guessed
from shapes: a shared array may well have a leading dimension equal to the seed count.

With one device (`run.devices 1`, or a machine with one device) nothing is placed and every program is the
one an unsharded run compiles.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from plastic.config import ConfigError, check_devices
from plastic.seed_axis import SEED_VMAP_AXIS

SEED_AXIS = "seed"


def device_count(requested: int, n_seeds: int, available: int) -> int:
    """How many devices the seed axis is split over. `requested` 0: all `available` devices if their number
    divides the seed count, else the largest divisor of it below that; k > 0: exactly k (a one-line
    ConfigError if k exceeds `available` or does not divide `n_seeds`)."""
    if requested == 0:
        return max(k for k in range(1, min(available, n_seeds) + 1) if n_seeds % k == 0)
    if requested > available:
        raise ConfigError(f"run.devices={requested} but this node has {available} local device(s); "
                          f"use at most {available} (or 0: automatic)")
    check_devices(requested, n_seeds)
    return requested


def split_cpu(requested: int) -> bool:
    """`run.devices k` (k > 1) on a CPU: make JAX's CPU platform k devices (`jax_num_cpu_devices`), so that
    the seed axis is split over k cores. XLA:CPU runs one device's program on about one core (a 64-seed PPO
    run is as fast on one core as on two), so an unsplit CPU leaves the others idle (docs/benchmarks.md).
    Only where nothing chose the count already (XLA_FLAGS' `--xla_force_host_platform_device_count`, the
    config option) and JAX has not started its backends yet (the CLI calls it before building the run;
    in a notebook set `jax.config.update("jax_num_cpu_devices", k)` right after importing jax). A node with
    accelerators keeps them as its local devices. Returns whether it set the count."""
    if requested <= 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") \
            or jax.config.jax_num_cpu_devices != -1:
        return False
    try:
        jax.config.update("jax_num_cpu_devices", requested)
    except RuntimeError:  # the backends run already: the run gets the devices there are
        return False
    return True


class SeedPlacement:
    """Where a run's seeds live: `count` local devices, a "seed" mesh over them when `count` > 1."""

    def __init__(self, requested: int, n_seeds: int, devices: list | None = None):
        devices = list(jax.local_devices() if devices is None else devices)
        self.requested, self.available, self.n_seeds = requested, len(devices), n_seeds
        self.count = device_count(requested, n_seeds, len(devices))
        self.mesh = Mesh(np.array(devices[:self.count]), (SEED_AXIS,)) if self.count > 1 else None

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    @property
    def seed_sharding(self) -> NamedSharding:
        """Leading (seed) axis split over the mesh, every other axis whole."""
        return NamedSharding(self.mesh, P(SEED_AXIS))

    @property
    def shared_sharding(self) -> NamedSharding:
        """A full copy on every device of the mesh."""
        return NamedSharding(self.mesh, P())

    def describe(self) -> str:
        """For the startup line after 'N seed(s)': '' unsharded, else over how many devices, how many seeds
        each (and why not all of them when the automatic choice could not use all)."""
        if not self.sharded:
            return ""
        kind, each = self.mesh.devices.flat[0].platform, self.n_seeds // self.count
        if self.requested == 0 and self.count < self.available:
            return (f" sharded over {self.count} of {self.available} {kind} devices ({each} each; {self.count} is "
                    f"the largest count dividing {self.n_seeds} seeds)")
        return f" sharded over {self.count} {kind} devices ({each} each)"

    def place(self, tree, batched):
        """`tree` placed on the mesh. `batched` is a prefix tree of `tree` with a bool per sub-tree: True
        for seed-batched sub-trees (split along their leading axis), False for shared ones (replicated).
        Unsharded: `tree` itself, untouched."""
        if not self.sharded:
            return tree
        return jax.tree.map(lambda b, sub: jax.device_put(sub, self.seed_sharding if b else self.shared_sharding),
                            batched, tree)

    def constrain(self, tree, batched):
        """Inside a jitted program: pin `tree` to the shardings `place` gives it, so a program's state output
        keeps the layout of its input (without it, a batched leaf computed only from shared values, like the
        replay's write pointer broadcast over seeds, comes out replicated, and the next call would compile
        again for the new layout). Unsharded: `tree`, untouched."""
        if not self.sharded:
            return tree
        return jax.tree.map(lambda b, sub: jax.lax.with_sharding_constraint(
            sub, self.seed_sharding if b else self.shared_sharding), batched, tree)

    def per_device(self, fn, in_batched, out_batched):
        """`fn`, a function vmapped over seeds, run by every device on its own seeds (`shard_map`): sharded,
        the compiler partitions none of its ops. Left to the partitioner, ops it cannot split (the SVDs of
        the rank and NTK metrics are LAPACK / cuSolver custom calls) are gathered onto one device. `in_batched`
        / `out_batched`: a bool (prefix) per positional argument / output, as in `place`; shared outputs
        (the counters) are computed alike on every device. Unsharded: `fn` itself."""
        if not self.sharded:
            return fn
        spec = lambda b: P(SEED_AXIS) if b else P()  # noqa: E731
        return jax.shard_map(fn, mesh=self.mesh, in_specs=jax.tree.map(spec, in_batched),
                             out_specs=jax.tree.map(spec, out_batched), check_vma=False)

    def vmap(self, fn, in_axes=0, out_axes=0):
        """`jax.vmap(fn, in_axes, out_axes)` over the run's seeds (`in_axes` / `out_axes`: 0, None or a tuple
        of them per argument / output). A single-seed run gets `fn` on its one seed instead: the seed axis is
        squeezed off the batched arguments and put back on the batched outputs (free reshapes), so the
        program has no batch axis of size 1 (XLA:CPU runs a 256x256 matmul with a unit batch axis about
        25 % slower than the plain one: docs/benchmarks.md) and every `lax.cond` stays a real branch.
        Several seeds, sharded or not: `jax.vmap` itself."""
        if self.n_seeds > 1:   # named, so that `plastic.seed_axis.any_seed` can ask whether any seed needs a branch
            return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes, axis_name=SEED_VMAP_AXIS)

        def axes(spec, n):
            spec = tuple(spec) if isinstance(spec, (tuple, list)) else (spec,) * n
            if len(spec) != n or any(a not in (0, None) for a in spec):
                raise ValueError(f"seed axes must be 0 or None per entry, got {spec!r} for {n} entries")
            return spec

        def one_seed(*args):
            ins = axes(in_axes, len(args))
            out = fn(*(jax.tree.map(lambda x: x[0], a) if ax == 0 else a for a, ax in zip(args, ins)))
            single = not isinstance(out_axes, (tuple, list))
            outs = axes(out_axes, 1 if single else len(out))
            out = (out,) if single else out
            out = tuple(jax.tree.map(lambda x: x[None], o) if ax == 0 else o for o, ax in zip(out, outs))
            return out[0] if single else out

        return one_seed

    def jit_batched(self, fn):
        """`jax.jit(fn)` for a function whose every output is seed-batched (a vmapped init): sharded, the
        outputs are created split over the mesh, never gathered on one device first."""
        return jax.jit(fn, out_shardings=self.seed_sharding) if self.sharded else jax.jit(fn)

    def is_placed(self, tree, batched) -> bool:
        """Whether every leaf of `tree` has the sharding `place` gives it (for tests and checks)."""
        if not self.sharded:
            return True
        ok = []

        def check(b, sub):
            want = self.seed_sharding if b else self.shared_sharding
            ok.extend(isinstance(x, jax.Array) and x.sharding.is_equivalent_to(want, x.ndim)
                      for x in jax.tree.leaves(sub))

        jax.tree.map(check, batched, tree)
        return all(ok)
