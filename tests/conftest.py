import os
import sys
import tempfile
from pathlib import Path

# The suite's programs are tiny and compiled once or twice each, so compiling dominates its time: LLVM at -O0
# compiles them about a third faster (the HLO passes are the same; the numbers agree with a default build to
# float rounding, not bit for bit, so a test compares runs made under the same flags; a test that trains for
# long runs a little slower). Processes the tests start inherit the flags.
from flags import xla_flags  # noqa: E402

os.environ.setdefault("XLA_FLAGS", xla_flags())
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
# The thresholds travel the same way, so those processes also cache the many small programs every run compiles.
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Where PYTHONDONTWRITEBYTECODE is set (some CI images), every process the suite starts (sweep tasks, Slurm jobs,
# notebook kernels, scripts) would compile its imports from source, about 2 s each: the suite keeps their bytecode in
# a directory next to the JAX cache instead (never in the source tree or site-packages), shared by those processes.
if os.environ.get("PYTHONDONTWRITEBYTECODE"):
    _jax_cache = Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    _pycache = str(_jax_cache.with_name(_jax_cache.name.replace("jax-cache", "pycache")))
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ["PYTHONPYCACHEPREFIX"] = _pycache
    sys.dont_write_bytecode, sys.pycache_prefix = False, _pycache

import slurm_cluster as _slurm  # noqa: E402
slurm_cluster = _slurm.slurm_cluster  # session fixture: a private single-node Slurm (tests/slurm_cluster.py)


# The suite runs on two pytest-xdist workers (pyproject.toml: `-n 2 --dist loadgroup`), which take tests in
# collection order: the files whose tests take longest go first, so that no worker is left alone with a long
# test at the end. Order within a file is kept; the Slurm tests stay on one worker (their xdist_group).
LONGEST_FIRST = ("test_validation.py", "test_census.py", "test_jit_driver.py", "test_trainer.py", "test_playground.py",
                 "test_cli.py",
                 "test_notebooks.py", "test_sharding.py", "test_slurm.py", "test_sweep.py", "test_ppo.py",
                 "test_monitor.py", "test_cnn.py", "test_dqn.py", "test_gtr.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
