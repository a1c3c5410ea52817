"""The training core: every gradient step of every agent goes through `gradient_step`.

Hook order inside one step of one network (docs/mechanics.md §6):

    loss_fn(params, probes) + Σ loss_term          # `loss_term` hook (L2-init, GTR); sees loss_fn's aux
    value_and_grad w.r.t. (params, probes)         # probes -> per-unit gradients, same backward pass
    grads <- grad_transform(...) for each          # `grad_transform` hook (NE masking, coupled WD)
    optimizer update
    post_update(...) for each, in order            # `post_update` / `periodic` hooks (CBP, ReGraMa, ...)

Targets go through `soft_update` (the `target_update` hook). Agents call both through the update carry
`Update` (`u.step`, `u.polyak`). Replay sampling (`replay_sampler`) and acting (`acting_loop`,
`scheduled_event`) are driven by the drivers (plastic/programs.py, plastic/drivers/).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from metrics.units import grama_scores
from plastic.networks import LayerSpec, copy_switches
from plastic.seed_axis import any_seed, seed_axis_bound


@struct.dataclass
class NetState:
    params: Any
    opt_state: Any


@dataclass(frozen=True, eq=False)
class Net:
    """Static description of one trained network: module, optimizer, layer map."""
    name: str
    tx: optax.GradientTransformation
    module: nn.Module | None = None
    init_fn: Callable | None = None  # for parameter-only "networks" (e.g. SAC's log α)
    layers: tuple[LayerSpec, ...] = field(default=())
    lr: float | None = None          # nominal learning rate (diagnostics such as reset_unit_step_ratio)

    @classmethod
    def of(cls, name, module, tx, lr=None):
        return cls(name=name, tx=tx, module=module, layers=module.layer_map(), lr=lr)

    def apply(self, params, x, probes=None):
        return self.module.apply({"params": params}, x, probes)

    def init(self, key, example_input=None) -> NetState:
        if self.module is not None:
            params = self.module.init(key, example_input)["params"]
        else:
            params = self.init_fn(key)
        return NetState(params, self.tx.init(params))

    def zero_probes(self, batch_size: int):
        if self.module is None or not self.layers:
            return None
        return {k: jnp.zeros(s) for k, s in self.module.probe_shapes(batch_size).items()}

    @property
    def probe_point(self) -> str:
        return getattr(self.module, "probe_point", "pre_activation")


@struct.dataclass
class UpdateContext:
    """What the `post_update` hooks see about the step that just happened."""
    count: jax.Array           # this network's update count, including this update
    grads: Any                 # parameter gradients after grad_transform
    probe_grads: Any           # per-sample unit gradients (dict layer -> [E?, B, H]) or None
    # dict layer -> (G normalised, g raw) GraMa scores of this update, or None with `score_fn` computing them
    # (`gradient_step` passes a function): read them through `grama()`, inside the branch that needs them, so
    # that an update on which no hook measures them does not reduce the probe gradients (docs/benchmarks.md,
    # "PPO against rejax": about 6 % of a PPO iteration at 16 seeds)
    scores: Any
    loss: jax.Array
    updates: Any = None        # the parameter updates the optimizer applied in this step
    inputs: Any = None         # the network's main input on this batch (e.g. to measure output jumps)
    params_before: Any = None  # the parameters this update started from
    raw_grads: Any = None      # the loss gradients before any grad_transform (dense, e.g. NE's growth score)
    opt_state_before: Any = None  # the optimizer state this update started from (to undo or skip a step)
    terms: Any = None          # hook name -> what its `loss_term` reported for this update (see `Hook.loss_term`)
    score_fn: Any = struct.field(pytree_node=False, default=None)

    def grama(self) -> dict:
        """The GraMa scores of this update: dict layer -> (G normalised, g raw)."""
        return self.score_fn() if self.scores is None and self.score_fn is not None else self.scores


class Hook:
    """What takes part in an update round: the hooks the core calls (`gradient_step`, `soft_update`, `Hooks`)
    with identity defaults, the per-seed state, and the statistics batches. Interventions
    (plastic/interventions/base.py, which add configuration, claims, acting hooks and schedules) and the
    metrics collector (plastic/monitor.py, an observer of the updates) are Hooks; the core knows nothing else
    of either."""
    name: ClassVar[str]
    # Keys of the state dict that depend on the (unbatched) update counters alone, hence are the same for every
    # seed (schedule flags): the drivers keep them with the counters between update rounds, so the
    # `lax.cond`s that read them stay real branches under the seed vmap (programs.unshare_schedule)
    shared: ClassVar[tuple[str, ...]] = ()
    needs_batches: ClassVar[bool] = False  # True (or a property): the driver binds `batches` for each trace
    batches = None
    rows = None                            # per-update replay rows (`update_rows`), bound by the driver

    def init(self, key, agent, agent_state=None) -> Any:
        """This hook's state for one seed; `agent_state` is the freshly initialised agent's."""
        return {}

    def with_batches(self, batches):
        """This hook for one traced update round, with `self.batches(net_name, key, n)`: the named network's
        input on `n` fresh samples (a uniform replay draw; PPO: rows of the current rollout), gathered only
        when called, so an event scores on its own batch inside its `lax.cond`. Itself when it does not need
        batches."""
        if not self.needs_batches:
            return self
        twin = copy.copy(self)
        twin.batches = batches
        return twin

    def update_rows(self, batch_size: int) -> int:
        """How many fresh replay rows this hook reads in every gradient update of an off-policy agent whose
        batch size is `batch_size` (0: none). The driver draws them with the update batches, outside the
        update loop (a replay read inside the loop would make the whole buffer loop state), and binds each
        update's rows as `self.rows` (`with_rows`): network name -> that network's input on the rows (at least
        as many rows as asked for when several hooks ask: the largest count)."""
        return 0

    def with_rows(self, rows):
        """This hook for one traced update, with `self.rows` (see `update_rows`)."""
        twin = copy.copy(self)
        twin.rows = rows
        return twin

    def loss_term(self, net, params, state, aux):
        """Extra loss added inside the gradient; `aux` is the agent loss's aux output (PPO's policy loss
        passes per-sample `logp`, `logp_old` and normalised `adv`). Returns the term, or `(term, info)`:
        `info` (a pytree, outside the gradient) reaches this hook's `post_update` as `ctx.terms[name]`."""
        return jnp.zeros(())

    def grad_transform(self, net, grads, params, state):
        return grads

    def post_update(self, net, ns, ctx, state, key):
        """After the optimizer step: `ctx` (UpdateContext) holds this update's gradients, updates, probe
        gradients, GraMa scores and inputs. Returns `(ns, state)`."""
        return ns, state

    def target_update(self, net, target_params, state):
        return target_params

    def rollout_columns(self, agent, agent_state, state, data):
        """On-policy agents (PPO), once per rollout before the epochs, outside the gradient: `data` is the
        flat rollout (obs normalised, action, logp of the rollout policy, raw adv, ...; leading axis the
        rollout batch). Returns `(columns, state)`; non-empty `columns` (arrays with that leading axis) are
        permuted into the minibatches with the rollout and reach `loss_term` as `aux["columns"][self.name]`."""
        return {}, state

    def post_iteration(self, agent, agent_state, state, data):
        """On-policy agents (PPO), after the epochs of one iteration: `agent_state` holds the updated
        networks, `data` the flat rollout with the columns. Returns the new state."""
        return state


@struct.dataclass
class Hooks:
    """The update carry's hook side: the `Hook`s an update passes through, in order (static: the
    interventions, then the metrics collector when it is on), and their states (one seed), under their names. An agent's
    `update` takes it and hands it to each `gradient_step` / `soft_update` and back; every hook call is made
    here, in the core (plastic/programs.py builds it for each update round)."""
    state: dict = struct.field(default_factory=dict)
    interventions: tuple = struct.field(pytree_node=False, default=())

    def rollout_columns(self, agent, agent_state, data):
        """The `rollout_columns` hook of every intervention (PPO, once per rollout): `(columns, hooks)`,
        columns under the intervention's name (only those that return some)."""
        columns, state = {}, self.state
        for iv in self.interventions:
            cols, s = iv.rollout_columns(agent, agent_state, state[iv.name], data)
            state = {**state, iv.name: s}
            if cols:
                columns[iv.name] = cols
        return columns, self.replace(state=state)

    def post_iteration(self, agent, agent_state, data):
        """The `post_iteration` hook of every intervention (PPO, after the epochs of one iteration)."""
        state = self.state
        for iv in self.interventions:
            state = {**state, iv.name: iv.post_iteration(agent, agent_state, state[iv.name], data)}
        return self.replace(state=state)


def gradient_step(net: Net, ns: NetState, loss_fn, *, batch_size: int, count, key, hooks: Hooks = Hooks(),
                  inputs=None):
    """One optimizer step of `net`, through the `loss_term`, `grad_transform` and `post_update` hooks of
    `hooks` (in order).

    `loss_fn(params, probes) -> (loss, aux)`; `inputs` is the network's main input on this batch, passed
    on to the `post_update` hooks. Returns `(ns, hooks, count + 1, aux, logs)` where logs holds the loss
    of this update. The GraMa scores (from the probe gradients of the same backward pass) are computed only
    where a hook reads them (`UpdateContext.grama`): the metrics collector's gradient group logs their
    ratios, ReGraMa resets by them.
    """
    interventions, istate = hooks.interventions, hooks.state
    probes = net.zero_probes(batch_size)

    def objective(params, probes):
        loss, aux = loss_fn(params, probes)
        total, terms = loss, {}
        for iv in interventions:
            term = iv.loss_term(net, params, istate[iv.name], aux)
            term, terms[iv.name] = term if isinstance(term, tuple) else (term, term)
            total = total + term
        return total, (loss, aux, jax.lax.stop_gradient(terms))

    (_, (loss, aux, terms)), (grads, probe_grads) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True)(ns.params, probes)
    raw_grads = grads
    for iv in interventions:
        grads = iv.grad_transform(net, grads, ns.params, istate[iv.name])
    updates, opt_state = net.tx.update(grads, ns.opt_state, ns.params)
    params_before, opt_state_before = ns.params, ns.opt_state
    ns = NetState(optax.apply_updates(ns.params, updates), opt_state)
    count = count + 1

    def scores():
        return grama_scores(net.layers, probe_grads, raw_grads, net.probe_point) if net.layers else {}

    ctx = UpdateContext(count=count, grads=grads, updates=updates, probe_grads=probe_grads, scores=None,
                        loss=loss, inputs=inputs, params_before=params_before, raw_grads=raw_grads,
                        opt_state_before=opt_state_before, terms=terms, score_fn=scores)
    for i, iv in enumerate(interventions):
        ns, s = iv.post_update(net, ns, ctx, istate[iv.name], jax.random.fold_in(key, i))
        istate = {**istate, iv.name: s}

    logs = {f"loss/{net.name}": loss}
    return ns, hooks.replace(state=istate), count, aux, logs


@struct.dataclass
class Update:
    """The update carry an agent's `update(u, batch, key) -> u` threads through its steps: the agent state
    (plastic.agent.AgentState), the `Hooks` and the unbatched update counters (one per network). `step` and
    `polyak` make every hook call, keep each network's count and merge the logs, so an agent's update holds
    its losses and its schedule (PureJaxRL-style loss code) and nothing of the interventions."""
    state: Any
    hooks: Hooks = struct.field(default_factory=Hooks)
    counters: dict = struct.field(default_factory=dict)

    def step(self, net: Net, loss_fn, *, key, inputs=None):
        """One optimizer step of `net` on `loss_fn(params, probes) -> (loss, aux)` (`gradient_step`):
        `state.nets[net.name]` and `counters[net.name]` advance, the step's logs (loss, GraMa ratios) are
        merged into `state.logs`. `inputs`: the network's main input on this batch (its leading axis is the
        batch size). Returns `(update, aux)`."""
        batch_size = 0 if inputs is None else jax.tree.leaves(inputs)[0].shape[0]
        ns, hooks, count, aux, logs = gradient_step(
            net, self.state.nets[net.name], loss_fn, batch_size=batch_size, count=self.counters[net.name],
            key=key, hooks=self.hooks, inputs=inputs)
        state = self.state.replace(nets={**self.state.nets, net.name: ns}, logs={**self.state.logs, **logs})
        return self.replace(state=state, hooks=hooks, counters={**self.counters, net.name: count}), aux

    def polyak(self, net: Net, tau: float, online=None):
        """`state.targets[net.name]` <- `soft_update` towards `online` (default: the network's current
        parameters)."""
        online = self.state.nets[net.name].params if online is None else online
        target = soft_update(net, self.state.targets[net.name], online, tau, self.hooks)
        return self.replace(state=self.state.replace(targets={**self.state.targets, net.name: target}))

    def log(self, **values):
        """Merge `values` into `state.logs` (whose key set is fixed at `init`)."""
        return self.replace(state=self.state.replace(logs={**self.state.logs, **values}))


def soft_update(net: Net, target, online, tau: float, hooks: Hooks = Hooks()):
    """Polyak averaging followed by the `target_update` hooks of `hooks`. Switches (an injection's flag,
    `plastic.networks.SWITCHES`) are not averaged: the target takes the online network's."""
    new = copy_switches(optax.incremental_update(online, target, tau), online)
    for iv in hooks.interventions:
        new = iv.target_update(net, new, hooks.state[iv.name])
    return new


def maybe(pred, fn, operand):
    """`fn(operand)` if `pred` else `operand`, under `lax.cond` (pred should be an unbatched scalar)."""
    return jax.lax.cond(pred, fn, lambda x: x, operand)


def seed_cond(pred, fn, operand):
    """`fn(operand)` where the per-seed `pred` holds, else `operand`, as a real branch under the seed vmap.

    A `lax.cond` on a per-seed predicate becomes a `select` under `vmap` that runs `fn` on every call. Here
    the cond reads "some seed's `pred` holds" (`plastic.seed_axis.any_seed`, an unbatched scalar), so `fn`
    runs only on the calls where some seed needs it; inside, every seed whose own `pred` is False keeps
    its operand exactly (a `where` over the operand). Outside the seed vmap (one seed) it is `maybe`."""
    if not seed_axis_bound():
        return maybe(pred, fn, operand)

    def branch(x):
        return jax.tree.map(lambda new, old: jnp.where(pred, new, old), fn(x), x)

    return jax.lax.cond(any_seed(pred), branch, lambda x: x, operand)
