"""Extension in two files: a new agent and a new intervention, each written in this file and registered with
one line (here a `monkeypatch` of the registry dict; in the package, one line in agents/__init__.py or
plastic/interventions/__init__.py), train on both drivers with vmapped seeds, stack with an existing method,
fire their scheduled events on schedule and resume bit-identically, with no other file edited."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import agents
from helpers import METRICS_OFF, EVAL_OFF, assert_resume_identical, rows
from plastic import interventions as ivs
from plastic.agent import AgentState, DiscreteActions, empty_logs
from plastic.config import build, supported_agents
from plastic.core import Net, maybe
from plastic.fields import count, positive, unit
from plastic.interventions.base import Intervention
from plastic.networks import build_network, check_options
from plastic.optim import adam
from plastic.drivers import make_trainer
from plastic.programs import SHARED


# ---- a new agent: fitted Q-iteration on one network, the bootstrap from its own frozen copy --------------------
@dataclass
class ToyQConfig:
    hidden: tuple[int, ...] = positive((16, 16))
    network: str = "mlp"
    blocks: int = 1
    activation: str = "relu"
    init: str = "lecun_normal"
    lr: float = positive(1e-3)
    gamma: float = unit(0.9)
    epsilon: float = unit(0.2)
    batch_size: int = positive(16)
    train_frequency: int = positive(2)
    utd: int = positive(1)
    buffer_size: int = positive(1000)
    learning_starts: int = 100


class ToyQ(DiscreteActions):
    name = "toyq"
    capabilities = frozenset({"replay"})
    Config = ToyQConfig
    roles = {"q": "critic"}
    policy_net = critic_net = "q"

    def __init__(self, cfg, obs_size, action_size, probe_point="pre_activation", options=None):
        self.cfg, self.obs_size, self.action_size = cfg, obs_size, action_size
        opts = check_options(self.name, options, ("q",))
        q = build_network(cfg, action_size, probe_point=probe_point)
        self.q = Net.of("q", q, adam(cfg.lr, count=opts.get("adam_count", "global")), cfg.lr)
        self.nets = {"q": self.q}

    def role(self, net_name):
        return self.roles[net_name]

    def init(self, key):
        q = self.q.init(key, jnp.zeros((1, self.obs_size)))
        return AgentState(nets={"q": q}, targets={}, logs=empty_logs(self.q))

    def act(self, state, obs, key, explore=True, step=0):
        greedy = jnp.argmax(self.q.apply(state.nets["q"].params, obs[None])[0][0]).astype(jnp.int32)
        if not explore:
            return greedy
        k_coin, k_rand = jax.random.split(key)
        return jnp.where(jax.random.uniform(k_coin) < self.cfg.epsilon, self.random_action(k_rand), greedy)

    def update(self, u, batch, key):
        frozen = u.state.nets["q"].params
        y = batch["reward"] + self.cfg.gamma * (1.0 - batch["terminated"]) * jnp.max(
            self.q.apply(frozen, batch["next_obs"])[0], axis=-1)

        def loss_fn(params, probes):
            q = self.q.apply(params, batch["obs"], probes)[0]
            q_a = jnp.take_along_axis(q, batch["action"][:, None].astype(jnp.int32), axis=-1)[:, 0]
            return jnp.mean(jnp.square(q_a - jax.lax.stop_gradient(y))), None

        return u.step(self.q, loss_fn, key=key, inputs=batch["obs"])[0]

    def net_inputs(self, state, batch):
        return {"q": batch["obs"]}

    def policy_view(self, out):
        return {"q": out}

    def critic_scalar(self, out, batch):
        return jnp.take_along_axis(out, batch["action"][:, None].astype(jnp.int32), axis=-1)[:, 0]


# ---- a new intervention: zero every output bias of the selected networks every `period` updates ---------------
@dataclass
class ZeroHeadBiasConfig:
    period: int = count(50, "updates")
    networks: tuple[str, ...] = ("actor", "critic")   # roles


class ZeroHeadBias(Intervention):
    name = "zero_head_bias"
    Config = ZeroHeadBiasConfig
    resources = {"weight_writes": "share"}
    census = {"period": 7}

    def _nets(self, agent):
        return [n for n in agent.nets.values() if agent.role(n.name) in self.cfg.networks]

    def expected_events(self, agent, counters):
        return {n.name: counters[n.name] // self.cfg.period for n in self._nets(agent)}

    def init(self, key, agent, agent_state=None):
        return {n.name: jnp.zeros((), jnp.int32) for n in self._nets(agent)}

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state:
            return ns, state

        def event(o):
            ns, k = o
            params = {**ns.params, "output": {**ns.params["output"], "bias": jnp.zeros_like(ns.params["output"]["bias"])}}
            return ns.replace(params=params), k + 1

        ns, k = maybe(ctx.count % self.cfg.period == 0, event, (ns, state[net.name]))
        return ns, {**state, net.name: k}

    def logs(self, state):
        return {f"zero_head_bias/events/{n}": k for n, k in state.items()}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(agents.REGISTRY, ToyQ.name, ToyQ)              # the agent's registry line
    monkeypatch.setitem(ivs.REGISTRY, ZeroHeadBias.name, ZeroHeadBias)  # the intervention's


def _trainer(steps, driver, stack="zero_head_bias+redo"):
    ov = {**METRICS_OFF, **EVAL_OFF, "run.progress": "off", "run.tensorboard": "false", "run.log_every": 60,
          "run.checkpoint_every": 60, "run.driver": driver, "zero_head_bias.period": 7, "redo.period": 11,
          "redo.tau": 0.1}
    return make_trainer(build("toyq", stack, overrides=ov, env="probe:d_obs", steps=steps, seeds=2))


def test_a_new_agent_hosts_every_method_it_can(registered):
    """The new agent is offered every registered method whose requirements it meets (its `capabilities`)."""
    assert "toyq" in supported_agents(ZeroHeadBias)
    hosted = {n for n, c in ivs.REGISTRY.items() if "toyq" in supported_agents(c)}
    assert {"grama", "redo", "reset", "swd", "shrink_perturb", "cbp", "zero_head_bias"} <= hosted
    assert not {"least", "gtr", "kl_penalty"} & hosted   # they need a TD target or PPO's objective


@pytest.mark.parametrize("driver", ["jit", "host"])
def test_new_agent_and_intervention_train_fire_on_schedule_and_resume(registered, tmp_path, driver):
    full = assert_resume_identical(lambda steps: _trainer(steps, driver), tmp_path, 240, 120)
    counters = {k: int(np.asarray(v)) for k, v in full.final_state[1].items() if k != SHARED}
    assert counters["q"] == (240 - 100) // 2   # one update every 2 env steps after 100 random ones
    last = [r for r in rows(tmp_path / "full") if r["step"] == 240]
    assert len(last) == 2
    for name in ("zero_head_bias", "redo"):
        iv = next(i for i in full.interventions if i.name == name)
        expected = iv.expected_events(full.agent, counters)
        assert expected == {"q": counters["q"] // (7 if name == "zero_head_bias" else 11)}
        for row in last:
            assert {k.rsplit("/", 1)[1]: v for k, v in row.items() if k.startswith(f"{name}/events/")} == expected
    # the 70th update was an event (period 7), after its optimizer step: the head's bias is exactly zero
    bias = np.asarray(full.final_state[0].agent.nets["q"].params["output"]["bias"])
    assert counters["q"] % 7 == 0 and not bias.any()
    kernel = np.asarray(full.final_state[0].agent.nets["q"].params["output"]["kernel"])
    assert kernel.any()   # and nothing else
