"""Plasticity injection (Nikishin et al. 2023; docs/interventions.md, Plasticity injection), alias `inject`.

Every selected network is built with two extra copies of its output layer, `output_new` and `output_ref`,
and a scalar flag (`agent_options() -> {"inject": (network names...)}`, plastic.networks.output_head):

    output = h_old(phi(x)) + [flag] (h_new(phi(x)) - h_ref(phi(x)))

Before injection the flag is 0 and the network is the plain one (`h_old` trains). At an injection
(`scheduled_event`, at the env steps `at`):
  - `h_new` gets fresh parameters from the head's own initializer (kernel; bias 0) and `h_ref` a copy of them,
    so the new terms cancel exactly (the difference is taken first) and the outputs are bit-identical;
  - the flag is set; from then on `h_old` and `h_ref` are frozen and `h_new` trains in place of `h_old`, so the
    number of trainable parameters is unchanged; the encoder `phi` keeps training;
  - `h_old`, `h_new` and `h_ref` get zero Adam moments (fresh for `h_new`; the scalar count is kept; with a
    per-element count, `plastic.optim`, the count of these entries restarts too).
Frozen parts get exactly zero updates: `grad_transform` zeroes their gradients (so their moments stay 0) and
the agent's optimizer ends with `plastic.networks.freeze_injected`, which zeroes their updates whatever the
other interventions' gradient transforms added. Interventions that write weights directly (shrink-and-perturb,
decoupled weight decay, Hare & Tortoise) still write them, but never the flag (a switch:
`plastic.networks.weight_mask`), so they cannot undo an injection; a unit reset zeroes the unit's rows in all
three head copies (they are all consumers of the last hidden layer), which keeps `h_new - h_ref` exact. A
full or head reset makes a fresh network: flag 0 (not injected), and its target follows.

A second injection first folds the trained difference into the old head (`h_old <- h_old + h_new - h_ref`,
exact up to float rounding: the outputs move by rounding only), then injects as above.

Targets (`targets`): `mirror` copies the fresh head parameters and the flag into the target network at the
injection, and every target update keeps the target's flag equal to the online one (`core.soft_update`
copies switches instead of averaging them); `keep` sets the target's flag to 0 at every target update, so
targets keep the plain head (their `h_old` follows the frozen online head by Polyak averaging).

Logs: `injection/count` (injections so far), `injection/last_env_step`, and `injection/events/NET` (the same
count, for each injected network).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from plastic.core import NetState, maybe
from plastic.fields import num, one_of
from plastic.interventions.base import UNIT_ROLES, Intervention, check_roles, choice
from plastic.networks import get_path, set_path
from plastic.optim import restart_entries

SPLITS = ("last_layer",)
UNSUPPORTED_SPLITS = ("last_k_layers", "after_encoder")
TARGETS = ("mirror", "keep")


@dataclass
class InjectionConfig:
    at: tuple[int, ...] = num((), ge=1)  # env steps; () = [run.steps // 2] (spec placeholder [project]), set when
                                      # the config is built and saved with it (points past the run never fire)
    split: str = "last_layer"         # last_layer (Plasticine [third-party code]); the spec's last_k_layers and
                                      # after_encoder are not implemented (validate says so before the choices)
    networks: tuple[str, ...] = ("actor", "critic")  # roles whose heads are injected (DQN's q is a critic)
    targets: str = one_of("mirror", TARGETS)  # mirror | keep ([project]; docs/interventions.md, Plasticity injection)


class Injection(Intervention):
    name = "injection"
    Config = InjectionConfig
    resources = {"weight_writes": "share"}  # an injection writes fresh head weights outside the optimizer
    census = {"at": (60, 130)}

    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        if c.split in UNSUPPORTED_SPLITS:
            raise ValueError(f"injection.split={c.split} is not implemented (its head copies would hold hidden "
                             f"units of their own); choose one of: {', '.join(SPLITS)}")
        choice("injection.split", c.split, SPLITS)
        check_roles("injection", c.networks)
        if not self.net_names():
            raise ValueError(f"injection.networks={','.join(c.networks)} selects no network of "
                             f"{self.agent_name}; choose among: {', '.join(UNIT_ROLES)}")
        steps = getattr(run_cfg, "steps", None)
        if not c.at and steps is not None:
            c.at = (max(1, steps // 2),)  # resolved once; config.yaml keeps it, so a resumed run keeps it
        if not c.at or list(c.at) != sorted(set(c.at)):
            raise ValueError(f"injection.at must be a non-empty increasing list of positive env steps, "
                             f"got {','.join(map(str, c.at)) or 'nothing'}")

    def net_names(self) -> tuple[str, ...]:
        """The agent's networks whose heads are injected."""
        return tuple(n for n, r in self.roles.items() if r in self.cfg.networks)

    def agent_options(self) -> dict:
        return {"inject": self.net_names()}

    def spec(self, net):
        """The network's `InjectSpec`, or None if it has no injection heads."""
        module = net.module
        return module.inject_spec() if module is not None and hasattr(module, "inject_spec") else None

    # ---- state and schedule --------------------------------------------------------------------------
    def init(self, key, agent, agent_state=None):
        for name in self.net_names():
            if self.spec(agent.nets[name]) is None:
                raise ValueError(f"injection: network {name} of {agent.name} has no injection heads; build the "
                                 f"agent with plastic.setup.build_agent (options={{'inject': ...}})")
        return {"key": key, "count": jnp.zeros((), jnp.int32), "last_env_step": jnp.zeros((), jnp.int32)}

    def _calls(self, agent):
        """(env steps at the hook's first call, env steps between calls): off-policy agents call it at every
        env step of the learning phase (the first at learning_starts + 1), PPO once per rollout."""
        if getattr(agent, "on_policy", False):
            return agent.batch_size, agent.batch_size
        return agent.cfg.learning_starts + 1, 1

    def due_index(self, agent, env_steps):
        """How many injection points lie at or before `env_steps` (an int32 scalar). Points before the
        hook's first call count at the first call."""
        first, _ = self._calls(agent)
        points = jnp.maximum(jnp.asarray(self.cfg.at, jnp.int32), first)
        return jnp.sum(env_steps >= points).astype(jnp.int32)

    def scheduled_event(self, agent, agent_state, state, counters, key):
        """Fires when the env steps since the previous call passed an injection point: the predicate reads the
        unbatched counters only, so it stays a real `lax.cond` under the seed vmap."""
        e = counters["env_steps"]
        _, stride = self._calls(agent)
        fire = self.due_index(agent, e) > self.due_index(agent, e - stride)

        def event(operand):
            agent_state, s = operand
            n = s["count"] + 1
            return (self.inject(agent, agent_state, jax.random.fold_in(s["key"], n)),
                    {**s, "count": n, "last_env_step": e.astype(jnp.int32)})

        return maybe(fire, event, (agent_state, state))

    # ---- the injection -------------------------------------------------------------------------------
    @staticmethod
    def fresh_head(spec, params, key):
        """New head parameters (kernel from the head's initializer, bias 0), shaped like the head."""
        head = get_path(params, spec.head)
        kernel = spec.init(key, head["kernel"].shape, head["kernel"].dtype)
        return {**head, "kernel": kernel, "bias": jnp.zeros_like(head["bias"])}

    @staticmethod
    def injected_params(spec, params, fresh):
        """`params` after an injection with fresh head `fresh`: a trained difference of an earlier injection
        folded into the old head, new and reference heads set to `fresh`, flag set."""
        on = spec.injected(params)
        old, new, ref = (get_path(params, p) for p in (spec.head, spec.new, spec.ref))
        params = set_path(params, spec.head, jax.tree.map(lambda h, n, r: jnp.where(on, h + (n - r), h),
                                                          old, new, ref))
        params = set_path(params, spec.new, fresh)
        params = set_path(params, spec.ref, jax.tree.map(lambda x: x, fresh))
        return set_path(params, spec.flag, jnp.ones_like(get_path(params, spec.flag)))

    def inject(self, agent, agent_state, key):
        """The agent state right after one injection with key `key`."""
        nets, targets = dict(agent_state.nets), dict(agent_state.targets)
        for i, name in enumerate(self.net_names()):
            net, ns = agent.nets[name], nets[name]
            spec = self.spec(net)
            fresh = self.fresh_head(spec, ns.params, jax.random.fold_in(key, i))
            params = self.injected_params(spec, ns.params, fresh)
            zero = spec.mask(params)  # head, new, ref and flag: fresh (zero) optimizer state
            opt_state = restart_entries(net.tx, ns.opt_state, zero, params)
            nets[name] = NetState(params, opt_state)
            if name in targets and self.cfg.targets == "mirror":
                targets[name] = self.injected_params(spec, targets[name], fresh)
        return agent_state.replace(nets=nets, targets=targets)

    # ---- hooks ---------------------------------------------------------------------------------------
    def grad_transform(self, net, grads, params, state):
        """Zero gradients for the parts that may not train now (the reference head and the flag always, the
        old head once injected, the new head before)."""
        spec = self.spec(net)
        return grads if spec is None else spec.frozen(grads, params)

    def target_update(self, net, target_params, state):
        """`mirror`: nothing to do, the target's flag is the online one (`core.soft_update` copies switches,
        so a reset that un-injects the online network un-injects its target too); `keep`: 0."""
        spec = self.spec(net)
        if spec is None or self.cfg.targets == "mirror":
            return target_params
        return set_path(target_params, spec.flag, jnp.zeros_like(get_path(target_params, spec.flag)))

    def expected_events(self, agent, counters):
        """One injection per point `at` that the hook has reached by now (a point before the hook's first call
        fires at that call); every injected network counts each."""
        first, _ = self._calls(agent)
        n = sum(max(p, first) <= counters["env_steps"] for p in self.cfg.at)
        return {name: n for name in self.net_names()}

    def logs(self, state):
        out = {"injection/count": state["count"], "injection/last_env_step": state["last_env_step"]}
        out.update({f"injection/events/{n}": state["count"] for n in self.net_names()})
        return out
