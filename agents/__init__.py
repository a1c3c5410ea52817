"""Agent registry. Add a new agent: one file here with a class exposing the `plastic.agent` API."""
from __future__ import annotations

from agents.dqn import DQN
from agents.ppo import PPO
from agents.sac import SAC
from agents.td3 import TD3

REGISTRY = {cls.name: cls for cls in (TD3, SAC, DQN, PPO)}


def get(name: str):
    if name not in REGISTRY:
        raise ValueError(f"unknown agent {name!r}; valid: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
