"""Orbax checkpoints of the whole training state: params, optimizer states, targets, replay buffers,
RNG keys, intervention state and counters (one pytree), plus host metadata as JSON."""
from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

logging.getLogger("absl").setLevel(logging.ERROR)


class CheckpointError(RuntimeError):
    pass


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).resolve()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_without_empty(state)),
                                                        meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, abstract_state, step=None):
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}; nothing to resume")
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_without_empty(abstract_state)), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            if "tree structures do not match" in str(e) or "tree structure" in msg:
                # every checkpoint of the run has this layout: deleting one to fall back on another cannot help
                raise CheckpointError(f"checkpoint {self.directory / str(step)} holds a training state of another "
                                      f"layout than this code builds (the run was saved by another version of "
                                      f"plastic: an agent or intervention gained or lost state); resume it with "
                                      f"the version that wrote it, or start a new run") from None
            raise CheckpointError(f"checkpoint {self.directory / str(step)} is unreadable or does not match "
                                  f"this config ({msg}); delete it to resume from an earlier one") from None
        # orbax hands back arrays committed to a device; fresh state is uncommitted, and jit compiles a
        # program per placement. Re-created uncommitted, a resumed run reuses the programs (and the
        # persistent compilation cache entries) of a fresh one. Arrays spread over several devices (a run
        # whose seeds are sharded, plastic/sharding.py) were restored into the target's sharding and stay.
        state = uncommitted(out.state)
        return step, _with_empty(abstract_state, state), out.meta

    def close(self):
        self.manager.close()


def _empty(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and 0 in tuple(x.shape)


def _without_empty(tree):
    """`tree` with every zero-size array as None: orbax cannot write those (MJX's state of a model without
    actuator activations has some, e.g. `act`), and they hold no data. A tree without any keeps its layout."""
    return jax.tree.map(lambda x: None if _empty(x) else x, tree)


def _with_empty(abstract, restored):
    """`restored` (read with `_without_empty(abstract)`) with the zero-size arrays of `abstract` put back."""
    leaves, treedef = jax.tree.flatten(abstract)
    kept = iter(jax.tree.leaves(restored))
    return treedef.unflatten([jnp.zeros(a.shape, a.dtype) if _empty(a) else next(kept) for a in leaves])


def uncommitted(tree):
    """`tree` with every array on one device re-created uncommitted (arrays spread over several devices, a
    sharded run's, kept). jit compiles a program per mix of committed and uncommitted inputs, and a program's
    outputs are committed: a carry that starts as a mix makes its program compile twice. Fresh state is
    uncommitted, while orbax restores committed arrays and MJX / brax envs put their model on the device."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)) if _on_one_device(x) else x, tree)


def _on_one_device(x) -> bool:
    return isinstance(x, jax.Array) and len(x.sharding.device_set) == 1


def latest_checkpoint(run_dir) -> int | None:
    """The step of the newest complete orbax checkpoint in RUN_DIR/checkpoints (None if there is none)."""
    d = Path(run_dir) / "checkpoints"
    steps = [int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()] if d.is_dir() else []
    return max(steps) if steps else None
