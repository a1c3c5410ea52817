"""The drivers: where the envs run and how calls are batched. Each composes a `Setup` (plastic/setup.py) and
a per-seed program (plastic/programs.py) and is run by the one run loop (plastic/loop.py).

- host (plastic/drivers/host.py): host-stepped envs; `HostOffPolicy`, `HostOnPolicy`;
- jit (plastic/drivers/jit.py): JAX-native envs stepped inside the program; `JitOffPolicy`, `JitOnPolicy`.
"""
from __future__ import annotations

import agents
from plastic.config import ExperimentConfig
from plastic.drivers.host import HostOffPolicy, HostOnPolicy
from plastic.drivers.jit import JitOffPolicy, JitOnPolicy
from plastic.envs import is_jax_native

DRIVERS = {("host", False): HostOffPolicy, ("host", True): HostOnPolicy,
           ("jit", False): JitOffPolicy, ("jit", True): JitOnPolicy}   # (driver, on-policy agent) -> class


def driver_of(cfg: ExperimentConfig) -> str:
    """'host' or 'jit': `run.driver`, or with 'auto' the jitted driver exactly for JAX-native envs."""
    if cfg.run.driver != "auto":
        return cfg.run.driver
    return "jit" if is_jax_native(cfg.run.env) else "host"


def make_trainer(cfg: ExperimentConfig):
    """The driver for this config: host or jitted, off- or on-policy agent."""
    driver = driver_of(cfg)
    if driver == "jit" and not is_jax_native(cfg.run.env):
        raise ValueError(f"the jitted driver needs a JAX-native env (brax:NAME, gymnax:NAME, playground:NAME, "
                         f"probe:NAME), "
                         f"got {cfg.run.env!r}; use --run.driver host")
    return DRIVERS[driver, bool(getattr(agents.get(cfg.agent), "on_policy", False))](cfg)
