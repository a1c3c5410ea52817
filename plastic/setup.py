"""One set-up per run: what every driver builds from the resolved config, once.

`make_setup(cfg, envs)` constructs each active intervention once, builds the agent with the options those
interventions ask for (`Intervention.agent_options`, merged), then the metrics collector (an observer with
its own state slot, not one of the interventions), and places the seed axis across the local devices. A
driver makes its envs (`host_envs` / `jax_envs`: how many per seed, host-stepped or JAX-native) and keeps
the `Setup`; nothing after this reads the config to build something again.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

import agents
from plastic.config import ExperimentConfig, agent_options, make_intervention, merge_options
from plastic.envs import HostEnvs, is_jax_native
from plastic.jaxenvs import make_jax_env
from plastic.monitor import Monitor
from plastic.nonstationary import wrap_host, wrap_jax
from plastic.sharding import SeedPlacement


@dataclass(eq=False)
class Setup:
    cfg: ExperimentConfig
    placement: SeedPlacement   # the seed axis across local devices
    envs: object               # HostEnvs (host drivers) or a JaxEnv (jitted drivers)
    agent: object
    interventions: tuple       # the active ones, in stacking order
    monitor: Monitor | None    # the metrics collector (None when every metric is off)

    @property
    def hooks(self) -> tuple:
        """Who takes part in an update round: the interventions, then the metrics collector (its gradient
        group reads each update through the `post_update` hook)."""
        return self.interventions + ((self.monitor,) if self.monitor else ())

    @property
    def n_seeds(self) -> int:
        return self.cfg.run.seeds


def make_setup(cfg: ExperimentConfig, envs) -> Setup:
    ivs = {name: make_intervention(name, c, cfg.agent) for name, c in cfg.interventions.items()}
    agent = build_agent(cfg, envs, merge_options(ivs))
    rows = cfg.metrics.batch_size
    if getattr(agent, "on_policy", False):  # a subset of the rollout, or all of it if smaller
        rows = min(rows, cfg.agent_cfg.num_envs * cfg.agent_cfg.num_steps)
    monitor = Monitor(cfg.metrics, agent, rows)
    monitor = monitor if monitor.active else None
    return Setup(cfg, SeedPlacement(cfg.run.devices, cfg.run.seeds), envs, agent, tuple(ivs.values()), monitor)


def host_envs(cfg: ExperimentConfig, per_seed: int = 1) -> HostEnvs:
    """`per_seed` host envs for each seed (seed i owns envs i * per_seed ... i * per_seed + per_seed - 1),
    each made non-stationary by `cfg.env` with its seed's schedule."""
    run = cfg.run
    envs = HostEnvs(run.env, run.seeds * per_seed, run.seed, per_seed=per_seed)
    envs.envs = [wrap_host(e, cfg.env, schedule=run.seed + i // per_seed, envs_per_seed=per_seed)
                 for i, e in enumerate(envs.envs)]
    return envs


def jax_envs(cfg: ExperimentConfig, per_seed: int = 1):
    """The JAX-native env (stepped under the seed vmap), made non-stationary by `cfg.env`."""
    return wrap_jax(make_jax_env(cfg.run.env), cfg.env, envs_per_seed=per_seed)


def build_agent(cfg: ExperimentConfig, envs, options: dict | None = None):
    """The agent for `envs` (host or JAX-native: both expose observation/action sizes and `discrete`),
    built with `options` (by default those the config's interventions ask for)."""
    agent_cls = agents.get(cfg.agent)
    kinds = {True: "discrete", False: "continuous"}
    kwargs = {"probe_point": cfg.metrics.grama_target}
    if agent_cls.discrete is None:  # handles both kinds
        kwargs["discrete"] = envs.discrete
    elif agent_cls.discrete != envs.discrete:
        fits = sorted(n for n, c in agents.REGISTRY.items() if c.discrete in (envs.discrete, None)
                      and (is_jax_native(cfg.run.env) or not getattr(c, "on_policy", False)))
        raise ValueError(f"{cfg.run.env} has {kinds[envs.discrete]} actions but {cfg.agent} needs "
                         f"{kinds[agent_cls.discrete]} ones; agents for this env: {', '.join(fits)}")
    if "total_steps" in inspect.signature(agent_cls).parameters:  # a schedule over the run's budget
        kwargs["total_steps"] = cfg.run.steps
    if getattr(agent_cls, "image_obs", False):
        kwargs["obs_shape"] = envs.observation_shape
        kwargs["obs_dtype"] = str(np.dtype(getattr(envs, "observation_dtype", np.float32)))
    options = agent_options(cfg) if options is None else options
    return agent_cls(cfg.agent_cfg, envs.observation_size, envs.action_size, options=options, **kwargs)
