import os
import tempfile
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402


def _cache_dir() -> str:
    """One fresh directory per run of the suite, shared by its pytest-xdist workers."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        return tempfile.mkdtemp(prefix="plastic-jax-cache-")
    path = Path(tempfile.gettempdir()) / f"plastic-jax-cache-{run}"
    path.mkdir(exist_ok=True)
    return str(path)


# Many tests build the same programs more than once (a full run, then a split run and its resume). JAX's
# persistent compilation cache turns every repeat compilation within one run of the suite into a disk read
# (measured: the two host-driver resume tests take 69 s instead of 128 s).
# Processes the tests start (sweep tasks, notebooks, Slurm jobs) inherit the directory through JAX's own variable.
os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir()
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import slurm_cluster as _slurm  # noqa: E402
slurm_cluster = _slurm.slurm_cluster  # session fixture: a private single-node Slurm (tests/slurm_cluster.py)
