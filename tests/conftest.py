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
jax.config.update("jax_compilation_cache_dir", _cache_dir())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
