"""The in-training metrics collector: the metrics library (metrics/) measured inside the jitted step.

`Monitor` is an observer, not one of the run's interventions: its state has its own slot in the training
state (`TrainState.monitor`: vmapped over seeds, checkpointed, and of fixed size: the latest value of every
key; nothing is stacked). It observes updates through the training core's `post_update` hook, called after
every intervention's (an update round passes it last: plastic/setup.py `Setup.hooks`).
When a network's update counter passes a multiple of a group's period (or makes its first update), the
round marks that group due (`schedule`); it is measured in the next round in which that network updates:

- `post_update` (inside `core.gradient_step`, at the network's first update of that round): what only the
  update itself knows: gradient sparsity/L1/L2 and the gradient-to-parameter ratio (of the raw loss
  gradient, before any `grad_transform`), the update-to-parameter ratio (of the applied update), parameter
  RMS and distance from initialisation, and the persistence of GraMa-inactive units.
- `collect` (called by the per-seed programs after a seed's update round, or PPO's update): the metrics of a
  fixed-size batch, a replay sample (off-policy) or a subset of the current rollout (PPO), each group
  under its own `lax.cond`: activity (dormant ratios, FAU, linearised ratio, feature norm, dormant
  overlap), ranks of the penultimate features, policy churn over the round, and the NTK Gram rank of the
  critic.

The one-round delay lets the host drivers keep all of this out of their ordinary training step: they run
a program without any measuring code, and the measuring one only after a round that marked a group
(`pending`), so metrics cost nothing between firings. The device-loop drivers run the same code with the
conds inside their scanned step. The `due` flags depend on the update counters alone, so every seed has the
same: the drivers keep them with the (unbatched) counters between rounds (`Hook.shared`), and each
group's `lax.cond` stays a real branch under the seed vmap. The batch's rows are drawn and gathered inside
the cond (a `fixed_probe` batch's indices are recorded outside it, at the first collection). Values read NaN
(null in metrics.jsonl) until first measured. Keys follow docs/metrics.md §0.2: `<metric>/<network>` and
`<metric>/<network>/<layer>`.

The state is packed: each of its parts (the values, theta0, the unit sets, the NTK capture, the SVD retry,
the due flags) is one flat vector, and `logs` / `view` unpack them. A jitted step pays a dispatch cost for
every array it takes and returns (about 3 us per donated leaf on CPU): the ~100 leaves of the unpacked
state cost a TD3 update +8 % even when no group was due (docs/benchmarks.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metrics.activity import POSITIVE_TESTS, fau_logs, linearised_logs
from metrics.churn import churn_logs
from metrics.norms import feature_norm, norm_logs
from metrics.ntk import jacobian, ntk_logs
from metrics.rank import device_svdvals, rank_logs
from metrics.units import dormant_masks, dormant_scores, ratio_logs, set_overlap
from plastic.core import Hook

GRAMA_LOG_TAUS = (0.0, 0.01)  # the gradient group's `grama_ratio_tau_<τ>` thresholds (docs/metrics.md §2)

BATCH_GROUPS = ("activity", "rank", "churn", "ntk")
PACKED = ("values", "theta0", "dormant", "grama", "ntk", "svd_retry", "due")  # state parts kept as one flat vector
PROBE_PART = "probe_part"  # transient key of the state a `batch_fn` call gets: which draw of the batch it is


def crossed(before, after, period: int):
    """True when an update counter moved past a multiple of `period` (or made its first update)."""
    return (after > before) & ((after // period > before // period) | (before == 0))


def _pooled_overlap(prev: dict, now: dict):
    """set_overlap over the units of all layers together."""
    flat = lambda d: jnp.concatenate([m.reshape(-1) for m in d.values()])  # noqa: E731
    return set_overlap(flat(prev), flat(now))


def _when(pred, fn, current):
    """`fn()` if `pred` else `current` (same structure), under `lax.cond`: only these leaves are outputs."""
    return jax.lax.cond(pred, lambda _: fn(), lambda c: c, current)


def _unchanged(fn, values, extra):
    """What a group `fn() -> (logs, extra)` leaves in place when not due: its keys' values, and `extra`."""
    return {k: values[k] for k in jax.eval_shape(fn)[0]}, extra


def _settle(values, held, measure):
    """A deferred measurement: if `held["pending"]`, `measure(held)` logs into `values` and clears the
    flag; otherwise both are returned unchanged. Returns `(values, held)`."""
    def fn():
        return measure(held), {**held, "pending": jnp.zeros((), bool)}

    logs, held = _when(held["pending"], fn, _unchanged(fn, values, held))
    return {**values, **logs}, held


def _rows(batch, n):
    """The first `n` (obs, action) rows of a batch, observations as float32 (uint8 frames too: the
    networks cast and scale them the same way)."""
    return {"obs": batch["obs"][:n].astype(jnp.float32), "action": batch["action"][:n]}


def _features(net, acts):
    """Penultimate features: the last hidden layer's outputs, `[B, d]` (`[E, B, d]` for an ensemble);
    conv outputs are flattened over positions and channels."""
    phi = acts[net.layers[-1].name]
    lead = 2 if net.layers[-1].ensemble else 1
    return phi.reshape(*phi.shape[:lead], -1)


def _feature_width(net) -> int:
    """Columns of `_features` (per ensemble member): the last hidden layer's width, times its spatial
    positions when it is a conv layer (flattened over positions and channels)."""
    last = net.layers[-1]
    return last.width * (last.consumer_tiles[0] if last.consumer_tiles else 1)


def _activation(module) -> str:
    return getattr(module, "activation", None) or getattr(getattr(module, "mlp", None), "activation", "relu")


class Monitor(Hook):
    name = "metrics"
    shared = ("due",)  # the schedule: every seed has the same update counters

    def __init__(self, cfg, agent, rows: int | None = None):
        """`rows`: the size of the metrics batch (default `cfg.batch_size`; PPO: at most its rollout)."""
        self.cfg = cfg
        self.agent = agent
        self.rows = rows or cfg.batch_size
        self.ntk_rows = min(cfg.ntk_batch, self.rows)
        layered = [n for n, net in agent.nets.items() if net.layers]
        wanted = layered if "all" in cfg.networks else list(cfg.networks)
        unknown = [n for n in wanted if n not in layered]
        if unknown:
            raise ValueError(f"metrics.networks names {', '.join(unknown)}; this agent's networks with layers: "
                             f"{', '.join(layered)} (or all)")
        self.nets = tuple(wanted)
        self.periods = {g: getattr(cfg, f"{g}_every") for g in ("grad",) + BATCH_GROUPS}
        self.policy_net = agent.policy_net if agent.policy_net in self.nets else None
        self.critic_net = agent.critic_net if agent.critic_net in self.nets else None
        self.rank_rows, self.draws = self._rank_rows(agent)
        self._layout = self._layouts(agent) if self.active else {}

    def _rank_rows(self, agent) -> tuple[int, int]:
        """`(rows of the rank group, draws of the metrics batch per collection)`. A rank of `n x d` features
        is at most min(n, d), so off-policy the rank group measures max(rows, widest feature width) rows:
        the metrics batch (the first draw, all the other groups see) and `draws − 1` further draws of
        `batch_size` replay rows (docs/metrics.md §5: n >= d). PPO's batch is a subset of its rollout that its
        driver draws (a second random subset would repeat rows): there the rank group keeps `rows`."""
        if not self.periods["rank"] or getattr(agent, "on_policy", False):
            return self.rows, 1
        rows = max(self.rows, max(_feature_width(agent.nets[n]) for n in self.nets))
        return rows, -(-rows // self.cfg.batch_size)

    @property
    def active(self) -> bool:
        return any(self.periods.values())

    # ---- state ---------------------------------------------------------------------------------
    def init(self, key, agent, agent_state=None):
        """NaN for every key this configuration can produce (found by tracing the measurements), the
        parameters at initialisation, the previous dormant / GraMa-inactive sets, the fixed probe indices;
        the parts named in PACKED as flat vectors (their layouts, `self._layout`, are fixed at construction)."""
        return self.pack(self._unpacked_state(agent, agent_state))

    def _layouts(self, agent) -> dict:
        """part -> the function unflattening its packed vector, from the state's shapes alone."""
        shapes = jax.eval_shape(lambda k: self._unpacked_state(agent, agent.init(k)), jax.random.PRNGKey(0))
        zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)  # noqa: E731
        return {k: ravel_pytree(zeros(shapes[k]))[1] for k in PACKED if k in shapes}

    def _unpacked_state(self, agent, agent_state) -> dict:
        c = self.cfg
        state = {"values": {}, "theta0": {n: agent_state.nets[n].params for n in self.nets},
                 "probe_idx": jnp.zeros(c.batch_size * self.draws, jnp.int32), "probe_set": jnp.zeros((), bool),
                 "dormant": {}, "grama": {}}
        for n in self.nets:
            net = agent.nets[n]
            masks = {l.name: jnp.zeros(l.mask_shape, bool) for l in net.layers}
            state["dormant"][n], state["grama"][n] = masks, masks

        def example_of(rows):
            return {"obs": jnp.zeros((rows, agent.obs_size)),
                    "action": jnp.zeros((rows, *agent.action_example().shape), agent.action_example().dtype)}

        example = example_of(self.rows)
        rank_example = example_of(self.rank_rows) if self.rank_rows > self.rows else None
        if self.periods["rank"]:  # features whose device SVD failed, kept for a host recompute
            feats = {n: jax.eval_shape(lambda s, b, n=n: _features(agent.nets[n], agent.nets[n].apply(
                s.nets[n].params, agent.net_inputs(s, b)[n])[1]), agent_state,
                rank_example or example) for n in self.nets}
            state["svd_retry"] = {n: {"phi": jnp.zeros(f.shape, jnp.float32), "pending": jnp.zeros((), bool)}
                                  for n, f in feats.items()}
        if self.periods["ntk"]:  # what the NTK group captures when due, measured at the next log point
            x = agent.net_inputs(agent_state, example)[self.critic_net][:self.ntk_rows]
            state["ntk"] = {"params": agent_state.nets[self.critic_net].params, "x": x.astype(jnp.float32),
                            "rows": _rows(example, self.ntk_rows), "pending": jnp.zeros((), bool)}
        shapes = dict(jax.eval_shape(lambda s, b, r: self._measure_all(
            s, state, b, rank_batch=None if r is None else (lambda: r)), agent_state, example, rank_example)["values"])
        for n in self.nets:
            params = agent_state.nets[n].params
            if self.periods["grad"]:
                shapes.update(jax.eval_shape(lambda p, n=n: self._grad_values(n, p, p, p, p, None, state)[0],
                                             params))
        state["values"] = {k: jnp.full((), jnp.nan, jnp.float32) for k in sorted(shapes)}
        owners = {"churn": [self.policy_net], "ntk": [self.critic_net]}
        state["due"] = {g: {n: jnp.zeros((), bool) for n in owners.get(g, self.nets) if n is not None}
                        for g, p in self.periods.items() if p}
        return state

    def pack(self, view: dict) -> dict:
        """The state from its unpacked view (only the parts present in `view` are packed)."""
        return {k: ravel_pytree(v)[0] if k in PACKED else v for k, v in view.items()}

    def view(self, state: dict, *parts) -> dict:
        """The named parts of the state (default: all) unpacked."""
        parts = parts or tuple(state)
        return {k: self._layout[k](state[k]) if k in PACKED else state[k] for k in parts}

    def logs(self, state) -> dict:
        return dict(self._layout["values"](state["values"]))

    # ---- measured inside gradient_step -----------------------------------------------------------
    def post_update(self, net, ns, ctx, state, key):
        if not self.periods["grad"] or net.name not in self.nets:
            return ns, state
        n = net.name

        flags = self.view(state, "due")["due"]

        def fire():  # unpacked inside the branch: slices outside it would run on every step
            view = self.view(state, "values", "grama", "theta0")
            # the raw loss gradient (before every grad_transform: NE's masks, coupled weight decay), docs/metrics.md §3
            vals, grama = self._grad_values(n, ctx.raw_grads, ctx.updates, ctx.params_before, ns.params,
                                            ctx.grama(), view)
            return self.pack({"values": {**view["values"], **vals}, "grama": {**view["grama"], n: grama}})

        moved = _when(flags["grad"][n], fire, {"values": state["values"], "grama": state["grama"]})
        flags = {**flags, "grad": {**flags["grad"], n: jnp.zeros((), bool)}}  # measured at its first update
        return ns, {**state, **moved, **self.pack({"due": flags})}

    def _grad_values(self, n, grads, updates, before, after, scores, state):
        """The gradient group of network `n`: `grads` is the raw loss gradient (`UpdateContext.raw_grads`,
        read by grad_sparsity/l1/l2 and grad_to_param_ratio), `updates` the update the optimizer applied."""
        c = self.cfg
        vals = norm_logs(n, grads, updates, before, after, state["theta0"][n], c.grad_zero_threshold)
        net = self.agent.nets[n]
        if scores is None:  # tracing the key set
            G = {l.name: jnp.ones(l.mask_shape) for l in net.layers}
        else:
            G = {l.name: scores[l.name][0] for l in net.layers}
        now = dormant_masks(G, 0.0)
        vals[f"grama_persistence/{n}"] = _pooled_overlap(state["grama"][n], now)
        # the GraMa ratios of the update's training batch (pooled; plastic/loop.py re-aggregates for
        # `ratio_aggregation=mean_of_layers`)
        vals.update(ratio_logs("grama_ratio", n, G, GRAMA_LOG_TAUS))
        return vals, now

    # ---- measured after an update round ---------------------------------------------------------
    def probe_indices(self, state, fresh_idx):
        """`metrics.batch`: fresh indices, or the ones drawn at the first collection (`fixed_probe`). With
        several draws per collection (`self.draws`) draw i holds its own slice of the fixed indices (its
        number is `state[PROBE_PART]`, set by `collect`); the set counts as drawn after the last one."""
        if self.cfg.batch != "fixed_probe":
            return fresh_idx, state
        if self.draws == 1:
            idx = jnp.where(state["probe_set"], state["probe_idx"], fresh_idx)
            return idx, {**state, "probe_idx": idx, "probe_set": jnp.ones((), bool)}
        part, size = state.get(PROBE_PART, 0), fresh_idx.shape[0]
        idx = jnp.where(state["probe_set"], state["probe_idx"][part * size:(part + 1) * size], fresh_idx)
        held = jax.lax.dynamic_update_slice(state["probe_idx"], idx, (part * size,))
        return idx, {**state, "probe_idx": held, "probe_set": state["probe_set"] | (part == self.draws - 1)}

    def collect(self, agent_state, state, before, after, batch_fn, key, policy_before=None):
        """Batch metrics of one seed after an update round, then `schedule`. The groups marked due by an
        earlier round are measured if their network updated in this one. `before`/`after`: the (unbatched)
        update counters around the round; `batch_fn(key, state) -> (fetch, state)` draws the metrics batch's
        indices, `fetch()` gathers its rows (called inside the measuring cond);
        `policy_before`: the policy network's parameters before the round (churn is its change over it)."""
        flags = self.view(state, "due")["due"]
        fire = {(n, g): flags[g][n] & (after[n] > before[n]) for g in BATCH_GROUPS if g in flags for n in flags[g]}
        if fire:
            anything = jnp.any(jnp.stack(list(fire.values())))
            # `batch_fn` records a fixed probe's indices here (at the first collection); the rows, and fresh
            # indices, are drawn by `fetch` inside the cond: the replay is an operand of the cond, not one of
            # its outputs, so it is not copied. Only what a measurement changes crosses the cond (theta0 and
            # the GraMa sets stay outside).
            fetch, state = batch_fn(key, state)
            fetch_rank, state = self._rank_batch(batch_fn, key, state)
            moving = ("values", "dormant") + tuple(k for k in ("ntk", "svd_retry") if k in state)

            def measure():  # unpacked inside the branch (its slices would otherwise run on every step)
                batch = fetch()
                rank_rows = None if fetch_rank is None else (lambda: fetch_rank(batch))  # gathered if rank is due
                st = self._measure_all(agent_state, self.view(state, *moving), batch, fire, policy_before, rank_rows)
                return self.pack({k: st[k] for k in moving})

            state = {**state, **_when(anything, measure, {k: state[k] for k in moving})}
            flags = {g: {n: f & ~fire[(n, g)] if (n, g) in fire else f for n, f in fs.items()} for g, fs in flags.items()}
        return self.schedule({**state, **self.pack({"due": flags})}, before, after)

    def _rank_batch(self, batch_fn, key, state):
        """`(fetch, state)`: None when the metrics batch is enough (one draw); else `fetch(batch)` gives the
        rank group's rows: the batch followed by `draws − 1` further draws (keys `fold_in(key, i)`,
        independent uniform replay rows like the first), cut to `rank_rows`, drawn and gathered by `fetch`
        inside the measuring cond like the first draw (fixed-probe indices are recorded here)."""
        if self.draws == 1:
            return None, state
        fetches = []
        for i in range(1, self.draws):
            more, state = batch_fn(jax.random.fold_in(key, i), {**state, PROBE_PART: i})
            state = {k: v for k, v in state.items() if k != PROBE_PART}
            fetches.append(more)

        def fetch(batch):
            parts = [batch] + [f() for f in fetches]
            got = sum(jax.tree.leaves(p)[0].shape[0] for p in parts)
            if got < self.rank_rows:
                raise ValueError(f"the metrics batch function returned {got} rows over {self.draws} draws; the "
                                 f"rank group needs {self.rank_rows}")
            return jax.tree.map(lambda *a: jnp.concatenate(a)[:self.rank_rows], *parts)

        return fetch, state

    def schedule(self, state, before, after):
        """Marks the groups whose period boundary this round crossed (the network's update counter moved
        past a multiple of the period, or made its first update). A marked group is measured in the next
        round in which its network updates: the gradient group at that update (`post_update`), the batch
        groups after that round (`collect`). Host drivers run a round without any measuring code unless a
        group is marked (`pending`), so the measurements sit one round after the boundary everywhere."""
        flags = self.view(state, "due")["due"]
        flags = {g: {n: f | crossed(before[n], after[n], self.periods[g]) for n, f in fs.items()}
                 for g, fs in flags.items()}
        return {**state, **self.pack({"due": flags})}

    def pending(self, state):
        """Whether any group is marked due (one seed)."""
        return jnp.any(state["due"])

    def _measure_all(self, agent_state, state, batch, due=None, policy_before=None, rank_batch=None):
        """Every due batch group of every network: new state (or, with `due=None`, every key: init).
        `rank_batch`: a function giving the rank group's rows when they are more than `batch` (`_rank_batch`),
        called only where the rank group is measured."""
        inputs = self.agent.net_inputs(agent_state, batch)
        values, dormant = dict(state["values"]), dict(state["dormant"])
        for n in self.nets:
            net = self.agent.nets[n]
            x = inputs[n]
            out, acts = net.apply(agent_state.nets[n].params, x)
            phi = _features(net, acts)

            def group(g, fn, extra=None):
                """fn() -> (logs, extra'): measured if due; else the current values of its keys and `extra`."""
                if due is None:
                    return fn()
                if (n, g) not in due:
                    return {}, extra
                return _when(due[(n, g)], fn, _unchanged(fn, values, extra))

            groups = {}
            if self.periods["activity"]:
                groups["activity"] = (lambda: self._activity(n, net, acts, phi, dormant[n]), dormant[n])
            if self.periods["rank"]:
                # the device SVD only: a host callback in the step program would take every training
                # step off JAX's fast dispatch path. Non-finite values (GPU SVD failures) keep the
                # features, and at_log_point recomputes them with SciPy's gesvd (docs/metrics.md §5).
                def ranks():
                    f = phi
                    if rank_batch is not None:  # its own forward pass, only when the group is due
                        f = _features(net, net.apply(agent_state.nets[n].params,
                                                     self.agent.net_inputs(agent_state, rank_batch())[n])[1])
                    sv = device_svdvals(f.astype(jnp.float32))
                    ok = jnp.all(jnp.isfinite(sv))
                    held = state["svd_retry"][n]
                    # a measurement that succeeds supersedes an earlier failed one: only the latest is recomputed
                    retry = {"phi": jnp.where(ok, held["phi"], f), "pending": ~ok}
                    return self._ranks(n, f, sv), retry

                groups["rank"] = (ranks, state["svd_retry"][n])
            if n == self.policy_net and self.periods["churn"]:
                old = out if policy_before is None else net.apply(policy_before, x)[0]
                groups["churn"] = (lambda: (churn_logs(n, self.agent.policy_view(old),
                                                       self.agent.policy_view(out)), None), None)
            if n == self.critic_net and self.periods["ntk"]:
                B = self.ntk_rows
                x_rows, rows = x[:B].astype(jnp.float32), _rows(batch, B)
                if due is None:  # init: trace the keys
                    values.update(self._ntk(n, net, agent_state.nets[n].params, x_rows, rows))
                else:
                    capture = {"params": agent_state.nets[n].params, "x": x_rows, "rows": rows,
                               "pending": jnp.ones((), bool)}
                    groups["ntk"] = (lambda: ({}, capture), state["ntk"])
            for g, (fn, extra) in groups.items():
                logs, extra = group(g, fn, extra)
                values.update(logs)
                if g == "activity":
                    dormant[n] = extra
                if g == "ntk":
                    state = {**state, "ntk": extra}
                if g == "rank":
                    state = {**state, "svd_retry": {**state["svd_retry"], n: extra}}
        return {**state, "values": values, "dormant": dormant}

    def deferred(self, state):
        """Whether `at_log_point` has work for this seed (a captured NTK, a failed device SVD)."""
        view = self.view(state, *[k for k in ("svd_retry", "ntk") if k in state])
        flags = [h["pending"] for h in view.get("svd_retry", {}).values()]
        flags += [view["ntk"]["pending"]] if "ntk" in view else []
        return jnp.any(jnp.stack(flags)) if flags else jnp.zeros((), bool)

    def at_log_point(self, state):
        """Measurements deferred to the log-time program: feature ranks whose device SVD failed (recomputed
        by `metrics.rank.singular_values`, which falls back on SciPy's gesvd on the host), and the NTK rank
        captured by `collect` (critic parameters and rows at the period boundary), whose B x P Jacobian
        would otherwise sit in every training step's program, whose temporary memory grows with it
        (+2.7 ms per TD3 update at B = 64, measured)."""
        def settle(view):
            for n, held in view.get("svd_retry", {}).items():
                vals, held = _settle(view["values"], held, lambda h, n=n: self._ranks(n, h["phi"]))
                view = {**view, "values": vals, "svd_retry": {**view["svd_retry"], n: held}}
            if "ntk" in view:
                n = self.critic_net
                vals, held = _settle(view["values"], view["ntk"], lambda h: self._ntk(
                    n, self.agent.nets[n], h["params"], h["x"], h["rows"]))
                view = {**view, "values": vals, "ntk": held}
            return view

        parts = [k for k in ("values", "svd_retry", "ntk") if k in state]
        return {**state, **self.pack(settle(self.view(state, *parts)))}

    def _activity(self, n, net, acts, phi, prev):
        """Activity logs of one network and its dormant set at the first τ (for the next overlap)."""
        c, act = self.cfg, _activation(net.module)
        scores = dormant_scores(acts, net.layers)
        logs = ratio_logs("dormant_ratio", n, scores, c.dormant_taus, c.ratio_aggregation)
        logs.update(fau_logs(n, acts, act))
        if act in POSITIVE_TESTS:   # the pre-activation's sign is not recoverable from a paired activation's outputs
            logs.update(linearised_logs(n, acts, net.layers, act, c.linearised_frac))
        logs[f"feature_norm/{n}"] = feature_norm(phi)
        now = dormant_masks(scores, c.dormant_taus[0] if c.dormant_taus else 0.0)
        logs[f"dormant_overlap/{n}"] = _pooled_overlap(prev, now)
        return logs, now

    def _ranks(self, n, phi, sv=None):
        c = self.cfg
        return rank_logs(n, phi, c.srank_delta, c.approx_rank_p, c.feature_rank_eps, sv=sv)

    def _ntk(self, n, net, params, x, rows):
        """NTK Gram rank of the critic's scalar output on `ntk_batch` samples (docs/metrics.md §6): `x` its
        inputs, `rows` the batch's (obs, action) rows."""
        c = self.cfg
        ens = net.layers[0].ensemble
        rows = (x, rows)

        def scalar(params, row):
            xb, bb = row
            q = self.agent.critic_scalar(net.apply(params, xb[None])[0], jax.tree.map(lambda a: a[None], bb))
            if ens:
                q = {"critic1": q[0], "critic2": q[1], "min": jnp.min(q, axis=0)}[c.ntk_branch]
            return q[0]

        return ntk_logs(n, jacobian(scalar, params, rows), c.ntk_tol)
