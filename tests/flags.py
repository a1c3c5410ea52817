"""The suite's XLA flags beside the device count (set in conftest.py before JAX starts), and a way out of them.

LLVM -O0 compiles the suite's programs faster; its numbers agree with the default -O2 build to float rounding
only. A test that starts a process with XLA_FLAGS of its own builds them with `xla_flags`, so its runs compare
with the suite's bit for bit. A test whose claim is that two *different* programs compute the same bits (a disabled
method equals the base agent) makes it in the build users run: `in_default_build` runs its check in a fresh
process with XLA's default flags.
"""
import os
import subprocess
import sys
from pathlib import Path

XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"
HERE = Path(__file__).resolve().parent


def xla_flags(devices: int = 1, default_build: bool = False) -> str:
    """XLA_FLAGS for `devices` host devices, with the suite's optimisation level unless `default_build`."""
    return f"--xla_force_host_platform_device_count={devices}" + ("" if default_build else f" {XLA_TEST_FLAGS}")


def in_default_build(module: str, function: str, *args) -> None:
    """`module.function(*args)` (a module of tests/, plain-literal args) in a process with XLA's default
    optimisation; fails with its stderr tail if the call raises."""
    env = {**os.environ, "XLA_FLAGS": xla_flags(default_build=True),
           "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    code = f"import {module}; {module}.{function}(*{args!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=HERE.parent, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
