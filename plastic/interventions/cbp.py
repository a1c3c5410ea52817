"""Continual Backprop (docs/interventions.md, Continual Backprop; Dohare et al. 2024, the generate-and-test of
`lop/algos/gnt.py`).

After EVERY optimizer step of each covered network (`post_update`), for each hidden layer of its layer map:

  age_i += 1
  m_i    <- eta·m_i + (1 − eta)·mean_b h_i                        running mean activation
  u_i    <- eta·u_i + (1 − eta)·y_i                               utility, y_i by `utility` (below)
  uhat_i  = u_i / (1 − eta^age_i)                                 bias-corrected; units are RANKED by uhat
  eligible: age_i > maturity;  n = rho · #eligible  ->  k units (`fractional`: Bernoulli(n) when n < 1, else
  floor(n); or a per-layer accumulator) -> the k eligible units with the smallest uhat (rank mask, static
  shapes, ties to the lower index) are replaced: incoming column ~ U(−b, b) (`init_bound`), bias 0, outgoing
  rows 0, LayerNorm affine (1, 0) (`layernorm`), age = u = m = 0, Adam moments (and per-element counts, when
  the agent's optimizer has them) zeroed at every touched entry (`plastic.surgery.reset_units`).

`h` is the layer's post-activation on the update's minibatch (`ctx.inputs`), recomputed with one forward pass
(`activations`: the parameters the step started from, i.e. the loss's own forward pass as in the reference,
or the parameters after it). Weight magnitudes are read after the step, before any replacement, as the
reference does. Utilities:

  contribution                y_i = mean_k |W_out[i, k]| · mean_b |h_i|
  instantaneous_contribution  the same with no averaging: u_i = y_i (LOP `cbpi.yml` sets decay_rate 0 for
                              everything; `utility=contribution decay=0` reproduces that exactly)
  weight                      y_i = mean_k |W_out[i, k]|
  adaptation                  y_i = 1 / mean_j |W_in[j, i]|
  random                      uhat_i ~ U(0, 1), redrawn every update

With conv layers, means run over batch and spatial positions, and |W_out| over every consumer entry the
unit feeds (all spatial rows after a flatten, all kernel taps in a conv consumer). Twin critics (`[E, H]`)
are scored, counted and replaced per member. `replacement_rate=0` is a no-op (state included), as in gnt.py.

`next_bias_correction=on` adds `sum_i W_out[i, :] · m_i / (1 − eta^age_i)` over the replaced units to the
consumer's bias before their outgoing rows are zeroed (the intended correction); `off` (default) leaves it
alone, which is what the released code does in effect (it clears m_i first).

Optimizer (`optimizer`): `zero_moments_keep_count` works with any Adam (optax's scalar count is kept).
The two per-element modes need the agent's Adam built with `plastic.optim.adam(count=...)`; CBP asks for
it through `agent_options()` and `init` refuses to run if the agent's optimizer state does not have it.

Logs, per network: `cbp/replaced/NET` (units replaced so far, all layers and members),
`cbp/replaced/NET/LAYER`, `cbp/eligible_fraction/NET` (units older than `maturity`, at the last update).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from metrics.units import unit_magnitude
from plastic.core import seed_cond
from plastic.fields import nonneg, unit, unit_lt1, one_of
from plastic.interventions.base import Intervention, check_roles, nets_with_roles
from plastic.networks import get_path, set_path
from plastic.optim import AdamGnTState, ElementwiseAdamState
from plastic.surgery import LAYERNORM, cap_mask, reset_units

UTILITIES = ("contribution", "instantaneous_contribution", "weight", "adaptation", "random")
FRACTIONAL = ("bernoulli", "accumulate")
INIT_BOUNDS = ("lecun_uniform", "kaiming_uniform", "layer_init")
BIAS_CORRECTION = ("off", "on")
OPTIMIZERS = ("zero_moments_keep_count", "zero_moments_per_element_count", "adamgnt_released")
ACTIVATIONS = ("before_step", "after_step")
# cbp.optimizer -> the Adam count the agent must build its optimizers with (plastic.optim.adam(count=...))
ADAM_COUNT = {"zero_moments_per_element_count": "per_element", "adamgnt_released": "adamgnt_released"}
_COUNT_STATE = {"per_element": ElementwiseAdamState, "adamgnt_released": AdamGnTState}
# torch.nn.init.calculate_gain per hidden activation; gnt.py maps swish (and elu) to relu's gain. The paired
# activations (crelu, dff) have none: neither torch nor gnt.py defines one, so `validate` refuses them
GAINS = {"relu": math.sqrt(2.0), "swish": math.sqrt(2.0), "tanh": 5.0 / 3.0, "sigmoid": 1.0}


@dataclass
class CBPConfig:
    replacement_rate: float = unit(1e-4)  # rho, fraction of eligible units replaced per update [authors' code]
    maturity: int = nonneg(10_000)    # updates a unit is protected after (re)birth; LOP cfg/ant/cbp.yml
                                      # (gnt.py class default 20, cbp_linear.py 100)
    decay: float = unit_lt1(0.99)     # eta, for the utility and the running mean [authors' code]
    # contribution | instantaneous_contribution | weight | adaptation | random
    utility: str = one_of("contribution", UTILITIES)
    fractional: str = one_of("bernoulli", FRACTIONAL)  # bernoulli (gnt.py accumulate=False) | accumulate
    # lecun_uniform b = sqrt(3/fan_in) (LOP PPO learner default) |
    # kaiming_uniform b = gain·sqrt(3/fan_in) (gnt.py class default) | layer_init
    init_bound: str = one_of("lecun_uniform", INIT_BOUNDS)
    # off (released code's effective behaviour) | on (intended correction)
    next_bias_correction: str = one_of("off", BIAS_CORRECTION)
    layernorm: str = one_of("reset_unit_affine", LAYERNORM)  # reset_unit_affine (cbp_linear.py) | keep
    # zero_moments_keep_count | zero_moments_per_element_count | adamgnt_released (LOP)
    optimizer: str = one_of("zero_moments_keep_count", OPTIMIZERS)
    networks: tuple[str, ...] = ("actor", "critic")  # roles: policy(-mean) and value networks in LOP
    # [project] before_step: h from the parameters the update started from
    # (the loss's forward pass, as LOP logs features) | after_step
    activations: str = one_of("before_step", ACTIVATIONS)


def _uniform_init(bound_sq_scale: float, ensemble: int):
    """U(−b, b) with b = sqrt(3 · scale / fan_in) (variance-scaling uniform; fan_in over `[..., in, out]`)."""
    return jax.nn.initializers.variance_scaling(bound_sq_scale, "fan_in", "uniform", in_axis=-2, out_axis=-1,
                                                batch_axis=(0,) if ensemble else ())


def _activation(net) -> str:
    module = getattr(net.module, "mlp", net.module)   # GaussianHead wraps its MLP
    return getattr(module, "activation", "relu")


def _consumer_units(layer, kernel, tile):
    """A consumer kernel `[E?, (kh, kw,) tile·H, out]` viewed as `[E?, (kh, kw,) tile, H, out]` (row
    `s·H + c` feeds from unit c), and the axes to reduce to get one value per unit `[E?, H]`."""
    k = kernel.reshape(*kernel.shape[:-2], tile, layer.width, kernel.shape[-1])
    lead = 1 if layer.ensemble else 0
    return k, tuple(a for a in range(lead, k.ndim) if a != k.ndim - 2)


def _signed_unit_mean(x, ensemble: int):
    """mean of x over batch (and spatial) axes -> `[E?, H]`."""
    return jnp.mean(x, axis=tuple(range(1 if ensemble else 0, x.ndim - 1)))


def outgoing_magnitude(layer, params):
    """mean |W_out| per unit over every entry of every consumer the unit feeds, `[E?, H]`."""
    total, count = 0.0, 0
    tiles = layer.consumer_tiles or (1,) * len(layer.consumers)
    for path, tile in zip(layer.consumers, tiles):
        k, axes = _consumer_units(layer, jnp.abs(get_path(params, path)), tile)
        total = total + jnp.sum(k, axis=axes)
        count += math.prod(k.shape[a] for a in axes)
    return total / count


def any_of(preds):
    """Logical or of boolean scalars."""
    return functools.reduce(jnp.logical_or, preds)


def consumer_bias_path(path):
    return (*path[:-1], "bias")


class CBP(Intervention):
    name = "cbp"
    Config = CBPConfig
    resources = {"weight_writes": "share"}   # re-initialises units outside the optimizer

    def __init__(self, cfg, agent_name, roles=None):
        if isinstance(cfg.next_bias_correction, bool):   # a YAML preset's unquoted off / on
            cfg.next_bias_correction = "on" if cfg.next_bias_correction else "off"
        super().__init__(cfg, agent_name, roles)

    # ---- setup -----------------------------------------------------------------------------------
    def validate(self, run_cfg, agent_cfg):
        c = self.cfg
        check_roles("cbp", c.networks)
        act = getattr(agent_cfg, "activation", "relu")
        if c.init_bound == "kaiming_uniform" and act not in GAINS:
            raise ValueError(f"cbp.init_bound=kaiming_uniform needs a Kaiming gain for {self.agent_name}.activation="
                             f"{act}, which has none; use {self.agent_name}.activation among: {', '.join(GAINS)}, "
                             f"or cbp.init_bound=lecun_uniform|layer_init")
        if c.next_bias_correction == "on" and getattr(agent_cfg, "network", "mlp") == "simbav2":
            raise ValueError(f"cbp.next_bias_correction=on adds to the next layer's bias; {self.agent_name}.network="
                             f"simbav2 has bias-free layers (use cbp.next_bias_correction=off)")

    def agent_options(self) -> dict:
        """The agent's Adam must count steps per element for the two per-element optimizer modes."""
        count = ADAM_COUNT.get(self.cfg.optimizer)
        return {"adam_count": count} if count else {}

    def _nets(self, agent):
        return nets_with_roles(agent, self.cfg.networks, with_units=True)

    def init(self, key, agent, agent_state=None):
        c = self.cfg
        out = {}
        for net in self._nets(agent):
            if agent_state is not None and c.optimizer in ADAM_COUNT:
                _check_optimizer(net.name, agent_state.nets[net.name].opt_state, ADAM_COUNT[c.optimizer],
                                 c.optimizer)
            layers = {}
            for l in net.layers:
                s = {"age": jnp.zeros(l.mask_shape, jnp.int32), "u": jnp.zeros(l.mask_shape),
                     "m": jnp.zeros(l.mask_shape)}
                if c.fractional == "accumulate":
                    s["acc"] = jnp.zeros(l.mask_shape[:-1])
                layers[l.name] = s
            out[net.name] = {"layers": layers, "replaced": jnp.zeros((), jnp.int32),
                             "replaced_layer": {l.name: jnp.zeros((), jnp.int32) for l in net.layers},
                             "eligible_fraction": jnp.zeros(())}
        return out

    # ---- the test: statistics and selection ------------------------------------------------------
    def statistics(self, net, params, acts, layers_state, key):
        """Step 1-4 for every layer: new `{age, u, m}` and the ranking score `uhat` (dict layer -> `[E?, H]`).
        `acts` maps layer -> post-activation on the minibatch; weight magnitudes come from `params`."""
        c = self.cfg
        eta_u = 0.0 if c.utility == "instantaneous_contribution" else c.decay
        new, uhat = {}, {}
        for l in net.layers:
            s, h = layers_state[l.name], acts[l.name]
            age = s["age"] + 1
            m = c.decay * s["m"] + (1 - c.decay) * _signed_unit_mean(h, l.ensemble)
            if c.utility in ("contribution", "instantaneous_contribution"):
                y = outgoing_magnitude(l, params) * unit_magnitude(h, l.ensemble)
            elif c.utility == "weight":
                y = outgoing_magnitude(l, params)
            elif c.utility == "adaptation":
                y = 1.0 / unit_magnitude(get_path(params, l.kernel), l.ensemble)
            else:
                y = jnp.zeros(l.mask_shape)
            u = eta_u * s["u"] + (1 - eta_u) * y
            if c.utility == "random":
                uhat[l.name] = jax.random.uniform(jax.random.fold_in(key, l.layer_id), l.mask_shape)
            else:
                uhat[l.name] = u / (1 - eta_u ** age.astype(u.dtype))
            new[l.name] = {**s, "age": age, "u": u, "m": m}
        return new, uhat

    def counts(self, net, layers_state, key):
        """Steps 5-6: how many units to replace per layer (int32 `[E?]`) and the updated accumulators."""
        c = self.cfg
        ks, new = {}, {}
        for l in net.layers:
            s = layers_state[l.name]
            n = c.replacement_rate * jnp.sum(s["age"] > c.maturity, axis=-1).astype(jnp.float32)   # [E?]
            if c.fractional == "accumulate":
                acc = s["acc"] + n
                k = jnp.floor(acc)
                s = {**s, "acc": acc - k}
            else:
                coin = jax.random.uniform(jax.random.fold_in(key, l.layer_id), n.shape)
                k = jnp.where(n < 1, (coin < n).astype(jnp.float32), jnp.floor(n))
            ks[l.name], new[l.name] = k.astype(jnp.int32), s
        return ks, new

    def masks(self, net, layers_state, uhat, ks):
        """Step 7: the `k` eligible units with the smallest `uhat` per layer (bool `[E?, H]`)."""
        return {l.name: cap_mask(layers_state[l.name]["age"] > self.cfg.maturity, uhat[l.name], ks[l.name][..., None])
                for l in net.layers}

    def select(self, net, layers_state, uhat, key):
        """Steps 5-7: the units to replace per layer (bool `[E?, H]`) and the updated accumulators."""
        ks, new = self.counts(net, layers_state, key)
        return self.masks(net, layers_state, uhat, ks), new

    # ---- the generation: replacement ---------------------------------------------------------------
    def unit_init(self, net):
        """`LayerSpec -> initializer` for the new incoming columns, or None for the layer's own initializer."""
        if self.cfg.init_bound == "layer_init":
            return None
        scale = 1.0 if self.cfg.init_bound == "lecun_uniform" else GAINS[_activation(net)] ** 2
        return lambda layer: _uniform_init(scale, layer.ensemble)

    def bias_correction(self, net, params, masks, layers_state):
        """Add `sum_i W_out[i, :] · m_i / (1 − eta^age_i)` over the replaced units to each consumer's bias."""
        eta = self.cfg.decay
        for l in net.layers:
            s, mask = layers_state[l.name], masks[l.name]
            mhat = s["m"] / (1 - eta ** s["age"].astype(s["m"].dtype))
            w = jnp.where(mask, mhat, 0.0)
            any_replaced = jnp.any(mask, axis=-1, keepdims=True)
            tiles = l.consumer_tiles or (1,) * len(l.consumers)
            for path, tile in zip(l.consumers, tiles):
                k, _ = _consumer_units(l, get_path(params, path), tile)
                lead = (w.shape[0],) if l.ensemble else ()
                w_b = w.reshape(*lead, *([1] * (k.ndim - 2 - len(lead))), l.width, 1)
                corr = jnp.sum(k * w_b, axis=tuple(range(len(lead), k.ndim - 1)))   # [E?, out]
                bpath = consumer_bias_path(path)
                b = get_path(params, bpath)
                params = set_path(params, bpath, jnp.where(any_replaced, b + corr, b))
        return params

    def replace(self, net, ns, masks, layers_state, key):
        """Replace the units of `masks`; returns the new NetState and the cleared per-unit state."""
        c = self.cfg
        if c.next_bias_correction == "on":
            ns = ns.replace(params=self.bias_correction(net, ns.params, masks, layers_state))
        ns = reset_units(net, ns, masks, key, outgoing="zero", layernorm=c.layernorm,
                         optimizer="zero_moments_keep_count", init=self.unit_init(net))
        cleared = {}
        for l in net.layers:
            s, mask = layers_state[l.name], masks[l.name]
            cleared[l.name] = {**s, "age": jnp.where(mask, 0, s["age"]), "u": jnp.where(mask, 0.0, s["u"]),
                               "m": jnp.where(mask, 0.0, s["m"])}
        return ns, cleared

    def step(self, net, ns, inputs, params_before, s, key):
        """One generate-and-test call on one network; returns `(ns, s, masks)`.

        The test (statistics) runs on every call. The generation runs under two `seed_cond`s, real branches
        under the seed vmap too: the counts where some unit is eligible (none is before `maturity`), the
        ranking and the replacement where some unit is to be replaced (a small fraction of the calls)."""
        c = self.cfg
        k_util, k_frac, k_reset = (jax.random.fold_in(key, i) for i in range(3))
        src = params_before if c.activations == "before_step" and params_before is not None else ns.params
        _, acts = net.apply(src, inputs)
        layers, uhat = self.statistics(net, ns.params, acts, s["layers"], k_util)
        none = {l.name: jnp.zeros(l.mask_shape[:-1], jnp.int32) for l in net.layers}
        eligible = any_of(jnp.any(layers[l.name]["age"] > c.maturity) for l in net.layers)
        ks, layers = seed_cond(eligible, lambda op: self.counts(net, op[1], k_frac), (none, layers))

        def generate(op):
            ns, layers, _ = op
            masks = self.masks(net, layers, uhat, ks)
            ns, layers = self.replace(net, ns, masks, layers, k_reset)
            return ns, layers, masks

        no_masks = {l.name: jnp.zeros(l.mask_shape, bool) for l in net.layers}
        ns, layers, masks = seed_cond(any_of(jnp.any(k > 0) for k in ks.values()), generate,
                                      (ns, layers, no_masks))
        n = {k: jnp.sum(m).astype(jnp.int32) for k, m in masks.items()}
        eligible = sum(jnp.sum(layers[l.name]["age"] > c.maturity) for l in net.layers)
        # units just replaced have age 0; count them as they were (eligible) before the replacement
        eligible = eligible + sum(n.values())
        s = {**s, "layers": layers, "replaced": s["replaced"] + sum(n.values()),
             "replaced_layer": {k: s["replaced_layer"][k] + v for k, v in n.items()},
             "eligible_fraction": eligible / sum(math.prod(l.mask_shape) for l in net.layers)}
        return ns, s, masks

    def post_update(self, net, ns, ctx, state, key):
        if net.name not in state or self.cfg.replacement_rate == 0:
            return ns, state
        ns, s, _ = self.step(net, ns, ctx.inputs, ctx.params_before, state[net.name], key)
        return ns, {**state, net.name: s}

    def logs(self, state):
        out = {}
        for net, s in state.items():
            out[f"cbp/replaced/{net}"] = s["replaced"]
            out[f"cbp/eligible_fraction/{net}"] = s["eligible_fraction"]
            for layer, v in s["replaced_layer"].items():
                out[f"cbp/replaced/{net}/{layer}"] = v
        return out


def _check_optimizer(net_name, opt_state, count, mode):
    """The per-element optimizer modes are only what they claim if the agent's Adam counts per element."""
    want = _COUNT_STATE[count]
    kinds = (ElementwiseAdamState, AdamGnTState, optax.ScaleByAdamState)
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kinds)) if isinstance(x, kinds)]
    if not found or not all(isinstance(x, want) for x in found):
        raise ValueError(f"cbp.optimizer={mode} needs the agent to build the {net_name} optimizer with "
                         f"plastic.optim.adam(count={count!r}) (cbp's agent_options {{'adam_count': {count!r}}}), "
                         f"but its Adam state is {type(found[0]).__name__ if found else 'missing'}")
