"""Networks that declare their own layer map.

Every hidden layer is described by a static `LayerSpec` (kernel and bias paths, consumers, the
initializer that built it, optional LayerNorm). Interventions and metrics read only this map; they
never infer structure from parameter order (see docs/mechanics.md §1.2).

Twin critics are one `MLP` with `ensemble=2`: kernels are `[E, in, out]`, so both critics run as one
batched matmul per layer (a fused critic) and unit masks are `[E, H]`.

Architectures (`network` in every agent's config, built by `build_network`):
  mlp     `MLP`: [Dense -> act] * len(hidden) -> Dense(out)
  simba   `SimBa` (Lee et al. 2024): Dense(d) -> N x [x + Dense(d)(act(Dense(4d)(LN(x))))] -> LN -> Dense(out)
  bronet  `BroNet` (Nauman et al. 2024): act(LN(Dense(d))) -> N x [x + LN(Dense(d)(act(LN(Dense(d)(x)))))]
          -> Dense(out)
  simbav2 `SimbaV2` (Lee et al. 2025; SAC only): hyperspherical embedding, LERP blocks and head, bias-free Dense
          layers kept on the unit sphere by the optimizer (`with_sphere`)
The residual networks' layer maps list only the units inside blocks (SimBa: the 4d expansion units; BroNet:
each block's first Dense, normalised by its LayerNorm), never the width-d residual stream
(docs/mechanics.md §1.2-1.3), so unit resets cannot touch the embedding, the skip path or the head.

Plasticity injection (docs/interventions.md, Plasticity injection): with `inject=True` a network also holds
`output_new` and `output_ref` (copies of the output layer) and a scalar `inject_flag`; its output is
`output(x) + [flag] (output_new(x) - output_ref(x))` (`InjectSpec` says where these live).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Two outputs per unit (docs/interventions.md, CReLU and deep Fourier features): CReLU (relu(z), relu(-z)) and deep
# Fourier features (sin z, cos z). A layer of H units then outputs 2H values, stacked as [..., 2, H] where its
# post-activations are recorded (the pair axis is pooled like a spatial axis by every per-unit score) and flattened
# to [f(z_1..H), g(z_1..H)] for the next layer, whose fan-in doubles; the layer map's consumer rows tile twice.
PAIRED: dict[str, Callable] = {
    "crelu": lambda z: (nn.relu(z), nn.relu(-z)),
    "dff": lambda z: (jnp.sin(z), jnp.cos(z)),
}

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "swish": nn.swish,
    **{name: (lambda z, f=f: jnp.stack(f(z), axis=-2)) for name, f in PAIRED.items()},
}


def outputs_per_unit(activation: str) -> int:
    """How many values each unit outputs: 2 for the paired activations (`PAIRED`), else 1."""
    return 2 if activation in PAIRED else 1


def probe_shape(shape: tuple[int, ...], activation: str, probe_point: str) -> tuple[int, ...]:
    """The probe shape of a unit tensor shaped `shape` ([..., H]): a post-activation probe of a paired activation
    has the pair axis ([..., 2, H])."""
    if probe_point == "post_activation" and activation in PAIRED:
        return (*shape[:-1], 2, shape[-1])
    return shape

# name -> (scale, mode, distribution) for jax.nn.initializers.variance_scaling
_INITS = {
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
    "xavier_uniform": (1.0, "fan_avg", "uniform"),
    "kaiming_uniform": (2.0, "fan_in", "uniform"),
    "kaiming_normal": (2.0, "fan_in", "truncated_normal"),
    # PyTorch nn.Linear's default weights (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)); biases
    # start at zero here for every initializer (PyTorch draws them from the same uniform)
    "torch_default": (1.0 / 3.0, "fan_in", "uniform"),
}
INITIALIZERS = tuple(_INITS) + ("orthogonal",)
PROBE_POINTS = ("pre_activation", "post_activation", "weight_grad")
NETWORKS = ("mlp", "simba", "bronet")
SAC_NETWORKS = NETWORKS + ("simbav2",)  # SimbaV2 is SAC with a categorical critic (agents/sac.py)
NORMS = ("none", "layer")  # `norm` of every agent: LayerNorm over the units of each hidden Dense of an mlp


def kernel_initializer(name: str, ensemble: int = 0, scale: float = 1.0):
    """Variance-scaling or orthogonal initializer; with an ensemble axis the leading axis is a batch axis.

    `scale` multiplies the variance. "orthogonal" is CleanRL's PPO `layer_init`: gain sqrt(2) for hidden
    layers, so gain = sqrt(2 * scale) (scale 0.5: gain 1, the value head; 5e-5: gain 0.01, the policy head).
    """
    if name == "orthogonal":
        ortho = orthogonal(jnp.sqrt(2.0 * scale))
        if not ensemble:
            return ortho
        return lambda key, shape, dtype=jnp.float32: jax.vmap(lambda k: ortho(k, shape[1:], dtype))(
            jax.random.split(key, shape[0]))
    if name not in _INITS:
        raise ValueError(f"unknown initializer {name!r}; valid: {', '.join(INITIALIZERS)}")
    s, mode, dist = _INITS[name]
    batch_axis = (0,) if ensemble else ()
    return jax.nn.initializers.variance_scaling(s * scale, mode, dist, in_axis=-2, out_axis=-1,
                                                batch_axis=batch_axis)


def orthogonal(gain: float = 1.0):
    """A (semi-)orthogonal initializer for `[..., in, out]` kernels, Haar-distributed like
    `jax.nn.initializers.orthogonal`, computed with matmuls only (Gram-Schmidt, twice per column).

    jaxlib's CPU QR kernel splits a batch of factorisations (vmapped seeds) over the thread pool it runs
    on and blocks until they finish; two such kernels running side by side on a 2-thread pool wait on
    each other forever (seen here: PPO's init of 2-256 vmapped seeds hanging at random). This one has no
    custom call, so it cannot."""
    def init(key, shape, dtype=jnp.float32):
        n_rows, n_cols = int(np.prod(shape[:-1])), shape[-1]
        tall = (max(n_rows, n_cols), min(n_rows, n_cols))
        q = _gram_schmidt(jax.random.normal(key, tall, jnp.float32))
        q = q if n_rows >= n_cols else q.T
        return (gain * q).reshape(shape).astype(dtype)
    return init


def _gram_schmidt(a):
    """Orthonormal columns of a tall `[m, n]` matrix (its QR's Q with a positive diagonal of R)."""
    n = a.shape[1]

    def column(j, q):
        earlier = (jnp.arange(n) < j).astype(a.dtype)
        v = q[:, j]
        for _ in range(2):  # re-orthogonalise once: as accurate as Householder QR in float32
            v = v - q @ ((q.T @ v) * earlier)
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, n, column, a)


@dataclass(frozen=True)
class LayerSpec:
    """One resettable set of hidden units (static metadata)."""
    name: str
    layer_id: int
    width: int
    ensemble: int                      # 0: no ensemble axis, else E (kernels are [E, in, out])
    kernel: tuple[str, ...]            # path of the kernel inside params
    bias: tuple[str, ...] | None       # None: the units have no bias (SimbaV2's bias-free Dense)
    consumers: tuple[tuple[str, ...], ...]  # kernels whose input rows (axis -2) these units feed
    init: Callable                     # the initializer that built `kernel`
    layer_norm: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (scale, offset) paths
    # per consumer, how many times the unit axis repeats along the consumer's input rows (a conv layer
    # flattened into a Dense kernel feeds rows s * C + c for every spatial position s); () means 1 each
    consumer_tiles: tuple[int, ...] = ()
    # other per-unit parameter vectors ([E?, H]) and the value a reset writes there: SimbaV2's scaler
    unit_params: tuple[tuple[tuple[str, ...], float], ...] = ()

    @property
    def mask_shape(self) -> tuple[int, ...]:
        return (self.ensemble, self.width) if self.ensemble else (self.width,)

    def consumer_rows(self):
        """`(consumer path, row mask builder)` pairs: the builder maps a unit mask `[E?, H]` to the
        consumer's input-row mask `[E?, rows, 1]` (tiled over spatial positions after a flatten)."""
        tiles = self.consumer_tiles or (1,) * len(self.consumers)
        return tuple((c, (lambda m, t=t: jnp.tile(m, t)[..., :, None]))
                     for c, t in zip(self.consumers, tiles))


class Dense(nn.Module):
    features: int
    ensemble: int = 0
    init: str = "lecun_normal"
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        kshape = (x.shape[-1], self.features)
        bshape = (self.features,)
        if self.ensemble:
            kshape, bshape = (self.ensemble, *kshape), (self.ensemble, *bshape)
        kernel = self.param("kernel", kernel_initializer(self.init, self.ensemble, self.init_scale), kshape)
        bias = self.param("bias", nn.initializers.zeros, bshape)
        if not self.ensemble:
            return x @ kernel + bias
        if x.ndim == 2:  # shared input for every member: [B, in] -> [E, B, out]
            return jnp.einsum("bi,eio->ebo", x, kernel) + bias[:, None, :]
        return jnp.einsum("ebi,eio->ebo", x, kernel) + bias[:, None, :]


def ensemble_member(params, e: int):
    """The parameters of ensemble member `e` of an ensemble network, kept as an ensemble of one (every
    array with a member axis sliced to `[e:e+1]`; scalars such as `inject_flag` as they are), for the same
    module cloned with `ensemble=1`. It runs that member alone: TD3's actor loss reads Q1 only, and slicing
    before the forward pass saves the other member's forward and backward matmuls, which slicing the
    output would not."""
    return jax.tree.map(lambda p: p[e:e + 1] if jnp.ndim(p) else p, params)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with per-member affine parameters when `ensemble > 0`."""
    ensemble: int = 0
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        shape = (self.ensemble, x.shape[-1]) if self.ensemble else (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, shape)
        offset = self.param("bias", nn.initializers.zeros, shape)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        if self.ensemble:
            return y * scale[:, None, :] + offset[:, None, :]
        return y * scale + offset


def probed_unit(act, z, name, probes, probe_point, acts):
    """`act(z)` with the layer's probe added at `probe_point`; records the post-activation in `acts`. A paired
    activation's `[..., 2, H]` output is recorded as it is and returned flattened to `[..., 2H]`."""
    if probes is not None and probe_point == "pre_activation":
        z = z + probes[name]
    x = act(z)
    if probes is not None and probe_point == "post_activation":
        x = x + probes[name]
    acts[name] = x
    return x.reshape(*x.shape[:-2], -1) if x.ndim > z.ndim else x


def output_head(mdl, x, out, ensemble, init, scale, inject):
    """The output Dense `output`; with `inject`, also `output_new`, `output_ref` and the scalar parameter
    `inject_flag`, and the output is `output(x) + (output_new(x) - output_ref(x))` once the flag is set
    (docs/interventions.md, Plasticity injection). The difference is taken first, so it is exactly 0 while the
    two copies are equal (right at an injection). The flag is a switch, not a weight (`SWITCHES`): no gradient
    reaches it, interventions that write every weight (shrink-and-perturb, weight decay, L2-init, Hare &
    Tortoise) leave it alone (`weight_mask`), and a target network copies it from its online network
    (`core.soft_update`), so only an injection or a reset changes it."""
    y = Dense(out, ensemble, init, scale, name="output")(x)
    if not inject:
        return y
    new = Dense(out, ensemble, init, scale, name="output_new")(x)
    ref = Dense(out, ensemble, init, scale, name="output_ref")(x)
    flag = mdl.param("inject_flag", nn.initializers.zeros, ())
    return jnp.where(jax.lax.stop_gradient(flag) > 0.5, y + (new - ref), y)


@dataclass(frozen=True)
class InjectSpec:
    """Where a network's injection heads live (paths of Dense modules inside params; each has kernel and
    bias) and the initializer of the head's kernel. Before injection the trainable head is `head`; after it,
    `new`. `ref` and the flag are never trained."""
    head: tuple[str, ...]
    new: tuple[str, ...]
    ref: tuple[str, ...]
    flag: tuple[str, ...]
    init: Callable

    def prefixed(self, *pre: str) -> "InjectSpec":
        return dataclasses.replace(self, head=(*pre, *self.head), new=(*pre, *self.new), ref=(*pre, *self.ref),
                                   flag=(*pre, *self.flag))

    def injected(self, params):
        """Bool scalar: the injection flag is set."""
        return get_path(params, self.flag) > 0.5

    def groups(self):
        return {"head": self.head, "new": self.new, "ref": self.ref, "flag": self.flag}

    def frozen(self, tree, params):
        """`tree` (shaped like params) with every entry that may not be trained now set to 0: `ref` and the
        flag always, `head` once injected, `new` before."""
        on = self.injected(params)
        keep = {"head": ~on, "new": on, "ref": False, "flag": False}
        for g, path in self.groups().items():
            tree = set_path(tree, path, jax.tree.map(lambda x, k=keep[g]: jnp.where(k, x, jnp.zeros_like(x)),
                                                     get_path(tree, path)))
        return tree

    def mask(self, params, groups=("head", "new", "ref", "flag")):
        """Bool tree shaped like `params` (one bool per leaf): True on the leaves of `groups`."""
        prefixes = [getattr(self, g) for g in groups]

        def leaf(path, _):
            keys = tuple(getattr(e, "key", getattr(e, "name", None)) for e in path)
            return any(keys[:len(p)] == p for p in prefixes)
        return jax.tree_util.tree_map_with_path(leaf, params)


def freeze_injected(spec: InjectSpec):
    """An optax transformation (chained after the optimizer) that zeroes the updates of the parts of an
    injection head that are frozen now (`InjectSpec.frozen`), whatever other interventions did to the
    gradients: the frozen head and reference head get exactly zero updates (docs/interventions.md, Plasticity
    injection)."""
    import optax

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        return spec.frozen(updates, params), state

    return optax.GradientTransformation(init, update)


def with_injection(tx, module):
    """`tx`, followed by `freeze_injected` if `module` was built with injection heads."""
    spec = module.inject_spec() if hasattr(module, "inject_spec") else None
    if spec is None:
        return tx
    import optax
    return optax.chain(tx, freeze_injected(spec))


class MLP(nn.Module):
    """`in -> [Dense -> (LN) -> act] * len(hidden) -> Dense(out)`.

    `probes` (optional dict layer-name -> zeros shaped like the unit tensor) are added at
    `probe_point` so that d loss / d probe is the per-sample gradient at each unit (docs/mechanics.md §2.2).
    Returns `(output, activations)` where activations maps layer name -> post-activation values.
    """
    hidden: tuple[int, ...]
    out: int
    activation: str = "relu"
    ensemble: int = 0
    layer_norm: bool = False
    kernel_init: str = "lecun_normal"
    out_init_scale: float = 1.0
    probe_point: str = "pre_activation"
    inject: bool = False               # plasticity injection heads (`output_head`)

    @nn.compact
    def __call__(self, x, probes=None):
        act = ACTIVATIONS[self.activation]
        acts = {}
        for i, width in enumerate(self.hidden):
            name = f"hidden_{i}"
            z = Dense(width, self.ensemble, self.kernel_init, name=name)(x)
            if self.layer_norm:
                z = LayerNorm(self.ensemble, name=f"ln_{i}")(z)
            x = probed_unit(act, z, name, probes, self.probe_point, acts)
        y = output_head(self, x, self.out, self.ensemble, self.kernel_init, self.out_init_scale, self.inject)
        return y, acts

    def layer_map(self) -> tuple[LayerSpec, ...]:
        names = [f"hidden_{i}" for i in range(len(self.hidden))] + ["output"]
        return tuple(
            LayerSpec(
                name=names[i], layer_id=i, width=w, ensemble=self.ensemble,
                kernel=(names[i], "kernel"), bias=(names[i], "bias"),
                consumers=_head_consumers(names[i + 1], self.inject),
                init=kernel_initializer(self.kernel_init, self.ensemble),
                layer_norm=((f"ln_{i}", "scale"), (f"ln_{i}", "bias")) if self.layer_norm else None,
                consumer_tiles=(2,) * len(_head_consumers(names[i + 1], self.inject)) if self.activation in PAIRED
                else (),
            )
            for i, w in enumerate(self.hidden)
        )

    def probe_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        lead = (self.ensemble,) if self.ensemble else ()
        return {f"hidden_{i}": probe_shape((*lead, batch_size, w), self.activation, self.probe_point)
                for i, w in enumerate(self.hidden)}

    def inject_spec(self) -> InjectSpec | None:
        return _inject_spec(self.inject, kernel_initializer(self.kernel_init, self.ensemble, self.out_init_scale))


def _head_consumers(name: str, inject: bool) -> tuple[tuple[str, ...], ...]:
    """The kernels that read a layer's units: the next layer's, and with injection heads all three heads'
    when the next layer is the output (so a unit reset zeroes its rows in every head copy)."""
    if name == "output" and inject:
        return tuple((n, "kernel") for n in ("output", "output_new", "output_ref"))
    return ((name, "kernel"),)


def _inject_spec(inject: bool, init) -> InjectSpec | None:
    if not inject:
        return None
    return InjectSpec(head=("output",), new=("output_new",), ref=("output_ref",), flag=("inject_flag",),
                      init=init)


class GaussianHead(nn.Module):
    """A Gaussian policy with a state-independent log-std: `mlp` gives the mean, one free parameter
    vector the log-std. Returns `((mean, log_std), activations)`; the layer map is the MLP's, under "mlp"."""
    mlp: MLP
    log_std_init: float = 0.0

    @nn.compact
    def __call__(self, x, probes=None):
        mean, acts = self.mlp(x, probes)
        log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.mlp.out,))
        return (mean, jnp.broadcast_to(log_std, mean.shape)), acts

    @property
    def probe_point(self) -> str:
        return self.mlp.probe_point

    def layer_map(self) -> tuple[LayerSpec, ...]:
        pre = lambda p: ("mlp", *p)  # noqa: E731
        return tuple(dataclasses.replace(
            l, kernel=pre(l.kernel), bias=pre(l.bias), consumers=tuple(pre(c) for c in l.consumers),
            layer_norm=None if l.layer_norm is None else tuple(pre(p) for p in l.layer_norm))
            for l in self.mlp.layer_map())

    def probe_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return self.mlp.probe_shapes(batch_size)

    def inject_spec(self) -> InjectSpec | None:
        """The mean's head is injected; the free log-std vector is not part of it and keeps training."""
        spec = self.mlp.inject_spec()
        return None if spec is None else spec.prefixed("mlp")


class _Residual(nn.Module):
    """Shared fields and bookkeeping of the residual networks (`SimBa`, `BroNet`): `width` is the residual
    stream's width d, `blocks` the number of residual blocks. Every Dense uses `kernel_init` (the agent's
    `init`); the output layer `out_init_scale`. The units of block i are the layer `block_{i}_hidden`; its
    consumer is the block's second Dense `block_{i}_out`."""
    width: int
    blocks: int
    out: int
    activation: str = "relu"
    ensemble: int = 0
    kernel_init: str = "lecun_normal"
    out_init_scale: float = 1.0
    probe_point: str = "pre_activation"
    inject: bool = False
    expansion: int = 1                 # block units = expansion * width (SimBa: 4)
    unit_layer_norm: bool = False      # a LayerNorm over the block units, before the activation (BroNet)

    @property
    def units(self) -> int:
        return self.expansion * self.width

    def layer_map(self) -> tuple[LayerSpec, ...]:
        init = kernel_initializer(self.kernel_init, self.ensemble)
        return tuple(LayerSpec(
            name=f"block_{i}_hidden", layer_id=i, width=self.units, ensemble=self.ensemble,
            kernel=(f"block_{i}_hidden", "kernel"), bias=(f"block_{i}_hidden", "bias"),
            consumers=((f"block_{i}_out", "kernel"),), init=init,
            layer_norm=((f"block_{i}_ln", "scale"), (f"block_{i}_ln", "bias")) if self.unit_layer_norm else None)
            for i in range(self.blocks))

    def probe_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        lead = (self.ensemble,) if self.ensemble else ()
        return {f"block_{i}_hidden": (*lead, batch_size, self.units) for i in range(self.blocks)}

    def inject_spec(self) -> InjectSpec | None:
        return _inject_spec(self.inject, kernel_initializer(self.kernel_init, self.ensemble, self.out_init_scale))

    def _dense(self, features, name):
        return Dense(features, self.ensemble, self.kernel_init, name=name)

    def _ln(self, name):
        return LayerNorm(self.ensemble, name=name)

    def _head(self, x):
        return output_head(self, x, self.out, self.ensemble, self.kernel_init, self.out_init_scale, self.inject)


class SimBa(_Residual):
    """SimBa (Lee et al. 2024, "SimBa: Simplicity Bias for Scaling Up Parameters in Deep RL"):
    `Dense(d) -> blocks x [x + Dense(d)(act(Dense(4d)(LN(x))))] -> LN -> Dense(out)`.

    The block's LayerNorm normalises the residual stream, not the 4d units, so a unit reset has no
    LayerNorm caveat here. The paper's running-statistics observation normalisation is not part of the
    network (PPO has `norm_obs`; off-policy agents see raw observations)."""
    expansion: int = 4

    @nn.compact
    def __call__(self, x, probes=None):
        act, acts = ACTIVATIONS[self.activation], {}
        x = self._dense(self.width, "embed")(x)
        for i in range(self.blocks):
            z = self._dense(self.units, f"block_{i}_hidden")(self._ln(f"block_{i}_pre_ln")(x))
            h = probed_unit(act, z, f"block_{i}_hidden", probes, self.probe_point, acts)
            x = x + self._dense(self.width, f"block_{i}_out")(h)
        return self._head(self._ln("final_ln")(x)), acts


class BroNet(_Residual):
    """BroNet (Nauman et al. 2024, "Bigger, Regularized, Optimistic"):
    `act(LN(Dense(d))) -> blocks x [x + LN(Dense(d)(act(LN(Dense(d)(x)))))] -> Dense(out)`.

    The LayerNorm `block_{i}_ln` normalises the block units before the activation (the probe sits after it,
    docs/mechanics.md §2.2), so resetting one unit changes every unit's normalisation: such resets are not
    function-preserving (docs/mechanics.md §1.3)."""
    unit_layer_norm: bool = True

    @nn.compact
    def __call__(self, x, probes=None):
        act, acts = ACTIVATIONS[self.activation], {}
        x = act(self._ln("embed_ln")(self._dense(self.width, "embed")(x)))
        for i in range(self.blocks):
            z = self._ln(f"block_{i}_ln")(self._dense(self.units, f"block_{i}_hidden")(x))
            h = probed_unit(act, z, f"block_{i}_hidden", probes, self.probe_point, acts)
            x = x + self._ln(f"block_{i}_out_ln")(self._dense(self.width, f"block_{i}_out")(h))
        return self._head(x), acts


def l2normalize(x, axis: int = -1, eps: float = 1e-8):
    """`x` divided by its ℓ2 norm along `axis` (a norm below `eps` counts as `eps`, so 0 stays 0)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def sphere_initializer(ensemble: int = 0):
    """SimbaV2's kernel initializer: a Haar (semi-)orthogonal `[E?, in, out]` kernel whose columns (each output
    unit's incoming weights) are then scaled to unit norm, as the reference normalises its networks right after
    initialising them."""
    base = kernel_initializer("orthogonal", ensemble, 0.5)  # gain 1
    return lambda key, shape, dtype=jnp.float32: l2normalize(base(key, shape, dtype), axis=-2)


def sphere_projection():
    """An optax transformation (chained after the optimizer) that keeps every `kernel` of a hyperspherical
    network on the unit sphere: the update becomes `normalize(θ + u) − θ` on kernels (per column, along the input
    axis), unchanged elsewhere. SimbaV2 (Lee et al. 2025) renormalises after each optimizer step; here it is part of
    the step, so every network step the core takes (and nothing else) projects."""
    import optax

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        def leaf(path, u, p):
            if getattr(path[-1], "key", None) != "kernel":
                return u
            return l2normalize(p + u, axis=-2) - p
        return jax.tree_util.tree_map_with_path(leaf, updates, params), state

    return optax.GradientTransformation(init, update)


class Scaler(nn.Module):
    """SimbaV2's learnable per-feature scale: the parameter starts at `scale` and the forward pass multiplies by
    `parameter · init / scale`, so the scale starts at `init` while Adam moves it in units of `scale`."""
    init_value: float
    scale: float
    ensemble: int = 0

    @nn.compact
    def __call__(self, x):
        shape = (self.ensemble, x.shape[-1]) if self.ensemble else (x.shape[-1],)
        s = self.param("scaler", nn.initializers.constant(self.scale), shape)
        s = s[:, None, :] if self.ensemble else s
        return s * (self.init_value / self.scale) * x


class SimbaV2(nn.Module):
    """SimbaV2 (Lee et al. 2025, "Hyperspherical Normalization for Scalable Deep RL", arXiv 2502.15280), as its
    released code builds it (docs/interventions.md, SimbaV2):

      embed   x' = [x, c_shift] / ‖·‖  ->  h = norm(Scaler(W x'))                       (W: width d)
      block   r = h;  u = act(Scaler(W1 h)) + 1e-8  (4d units);  m = norm(W2 u)
              h = norm(r + α ⊙ (m − r))                                                  (α: a Scaler)
      head    per branch: W2' Scaler(W1' h) + b   (W1': d -> d, no activation; W2': d -> out / branches)

    Every Dense is bias-free, initialised by `sphere_initializer`, and kept on the unit sphere by the optimizer
    (`sphere_projection`, chained by `with_sphere`). Scalers start at `init` with parameter scale `scale`:
    sqrt(2/d) for the embedding (and /2 inside blocks: /sqrt(expansion)), α at 1/(blocks+1) with scale 1/sqrt(d),
    1 for the head. `branches = 2` gives the actor its separate mean and log-std heads. The layer map lists each
    block's 4d units (`block_{i}_hidden`, no bias; its scaler resets to its start), never the residual stream."""
    width: int
    blocks: int
    out: int
    activation: str = "relu"
    ensemble: int = 0
    probe_point: str = "pre_activation"
    branches: int = 1
    c_shift: float = 3.0
    expansion: int = 4
    eps: float = 1e-8

    @property
    def units(self) -> int:
        return self.expansion * self.width

    def _scales(self):
        s = (2.0 / self.width) ** 0.5
        return s, s / self.expansion ** 0.5, 1.0 / (self.blocks + 1), 1.0 / self.width ** 0.5

    def _dense(self, features, name):
        return HyperDense(features, self.ensemble, name=name)

    @nn.compact
    def __call__(self, x, probes=None):
        act, acts = ACTIVATIONS[self.activation], {}
        s, s_block, alpha, alpha_scale = self._scales()
        x = jnp.concatenate([x, jnp.full((*x.shape[:-1], 1), self.c_shift, x.dtype)], axis=-1)
        h = l2normalize(Scaler(s, s, self.ensemble, name="embed_scaler")(self._dense(self.width, "embed")(
            l2normalize(x))))
        for i in range(self.blocks):
            z = Scaler(s_block, s_block, self.ensemble, name=f"block_{i}_scaler")(
                self._dense(self.units, f"block_{i}_hidden")(h))
            u = probed_unit(act, z, f"block_{i}_hidden", probes, self.probe_point, acts) + self.eps
            m = l2normalize(self._dense(self.width, f"block_{i}_out")(u))
            h = l2normalize(h + Scaler(alpha, alpha_scale, self.ensemble, name=f"block_{i}_alpha")(m - h))
        outs = []
        for k in range(self.branches):
            y = Scaler(1.0, 1.0, self.ensemble, name=f"head_{k}_scaler")(self._dense(self.width, f"head_{k}_hidden")(h))
            y = self._dense(self.out // self.branches, f"head_{k}_out")(y)
            shape = (self.ensemble, y.shape[-1]) if self.ensemble else (y.shape[-1],)
            b = self.param(f"head_{k}_bias", nn.initializers.zeros, shape)
            outs.append(y + (b[:, None, :] if self.ensemble else b))
        return jnp.concatenate(outs, axis=-1), acts

    def layer_map(self) -> tuple[LayerSpec, ...]:
        return tuple(LayerSpec(
            name=f"block_{i}_hidden", layer_id=i, width=self.units, ensemble=self.ensemble,
            kernel=(f"block_{i}_hidden", "kernel"), bias=None, consumers=((f"block_{i}_out", "kernel"),),
            init=sphere_initializer(self.ensemble),
            unit_params=(((f"block_{i}_scaler", "scaler"), self._scales()[1]),))
            for i in range(self.blocks))

    def probe_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        lead = (self.ensemble,) if self.ensemble else ()
        return {f"block_{i}_hidden": (*lead, batch_size, self.units) for i in range(self.blocks)}

    sphere_kernels = True  # `with_sphere` chains `sphere_projection` to its optimizer


class HyperDense(nn.Module):
    """A bias-free Dense whose kernel starts on the unit sphere (`sphere_initializer`); `ensemble` as `Dense`."""
    features: int
    ensemble: int = 0

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1], self.features)
        kernel = self.param("kernel", sphere_initializer(self.ensemble),
                            (self.ensemble, *shape) if self.ensemble else shape)
        if not self.ensemble:
            return x @ kernel
        return jnp.einsum("bi,eio->ebo" if x.ndim == 2 else "ebi,eio->ebo", x, kernel)


def with_sphere(tx, module):
    """`tx`, followed by `sphere_projection` if `module` keeps its kernels on the unit sphere (SimbaV2)."""
    if not getattr(module, "sphere_kernels", False):
        return tx
    import optax
    return optax.chain(tx, sphere_projection())


def build_network(cfg, out: int, *, ensemble: int = 0, out_init_scale: float = 1.0,
                  probe_point: str = "pre_activation", inject: bool = False, branches: int = 1):
    """The network an agent config asks for (`cfg.network`: mlp | simba | bronet | simbav2) with `out` outputs.
    The residual networks take their width from `cfg.hidden[0]` and their depth from `cfg.blocks`; `cfg.norm =
    layer` puts a LayerNorm (learned scale and offset) between each hidden Dense of an mlp and its activation
    (a config without `norm`, e.g. a new agent's, gets none). SimbaV2 has its own initializer and splits its head
    into `branches` (SAC's actor: mean and log-std); it has no injection heads."""
    if cfg.network == "mlp":
        return MLP(tuple(cfg.hidden), out, cfg.activation, ensemble, layer_norm=getattr(cfg, "norm", "none") == "layer",
                   kernel_init=cfg.init, out_init_scale=out_init_scale, probe_point=probe_point, inject=inject)
    if cfg.network == "simbav2":
        if inject:
            raise ValueError("plasticity injection needs an output layer to copy; the simbav2 network's head is "
                             "two normalised layers (use another network)")
        return SimbaV2(cfg.hidden[0], cfg.blocks, out, cfg.activation, ensemble, probe_point, branches)
    cls = {"simba": SimBa, "bronet": BroNet}[cfg.network]
    return cls(cfg.hidden[0], cfg.blocks, out, cfg.activation, ensemble, cfg.init, out_init_scale, probe_point,
               inject)


# build options interventions may ask for (Intervention.agent_options): Adam's step count (plastic.optim.adam),
# injection heads on the named networks, TRAC around the named networks' Adam (a plastic.optim.TracSpec)
AGENT_OPTIONS = ("adam_count", "inject", "trac")


def check_norm(agent: str, cfg) -> None:
    """`norm = layer` is for mlp networks: the residual ones have their own LayerNorms, conv torsos none. A paired
    activation (two outputs per unit) is for mlp networks and conv torsos: a residual stream keeps its width."""
    if cfg.activation in PAIRED and cfg.network != "mlp":
        raise ValueError(f"{agent}.activation={cfg.activation} applies to {agent}.network=mlp (and conv torsos): it "
                         f"doubles each layer's outputs, which {cfg.network}'s residual stream cannot take; choose one "
                         f"of: {', '.join(a for a in ACTIVATIONS if a not in PAIRED)}")
    if getattr(cfg, "norm", "none") == "none":
        return
    if cfg.network != "mlp":
        raise ValueError(f"{agent}.norm={cfg.norm} applies to {agent}.network=mlp; {cfg.network} has its own "
                         f"LayerNorms (use {agent}.norm=none)")
    if getattr(cfg, "torso", "mlp") != "mlp":
        raise ValueError(f"{agent}.norm={cfg.norm} applies to MLP networks, not the {cfg.torso} conv torso (use "
                         f"{agent}.norm=none)")


def check_options(agent: str, options: dict | None, injectable) -> dict:
    """An agent's build options (merged `agent_options` of the active interventions), checked:
    `adam_count` (see plastic.optim.adam), `inject` (names of networks, among `injectable`, built with
    plasticity-injection heads) and `trac` (see `adam_options`)."""
    options = dict(options or {})
    unknown = [k for k in options if k not in AGENT_OPTIONS]
    if unknown:
        raise ValueError(f"{agent}: unknown build option(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(AGENT_OPTIONS)}")
    bad = [n for n in options.get("inject", ()) if n not in injectable]
    if bad:
        raise ValueError(f"{agent}: cannot build injection heads on {', '.join(bad)}; "
                         f"networks with a head: {', '.join(injectable)}")
    return options


def adam_options(options: dict, net_name: str) -> dict:
    """The keyword arguments of `plastic.optim.adam` that the build `options` give the network `net_name`: its
    step count and, if TRAC wraps it, the TRAC spec."""
    trac = options.get("trac")
    return {"count": options.get("adam_count", "global"),
            "trac": trac if trac is not None and net_name in trac.nets else None}


TORSOS = {  # name -> ((features, kernel, stride) per conv layer); "mlp": no convolutions
    "mlp": (),
    "nature": ((32, 8, 4), (64, 4, 2), (64, 3, 1)),   # Mnih et al. 2015 (84x84 Atari frames)
    "minatar": ((16, 3, 1),),                         # Young & Tian 2019 (10x10 MinAtar grids)
}


class ConvNet(nn.Module):
    """Image input: `[VALID conv -> act] * len(convs) -> flatten -> [Dense -> act] * len(hidden) -> Dense(out)`.

    Inputs arrive flat (`[B, prod(obs_shape)]`, as every replay stores them) and are reshaped to
    `[B, *obs_shape]` (channels last) and multiplied by `input_scale` (1/255 for uint8 frames). Each conv
    channel is one unit of the layer map: its incoming column is `kernel[..., c]`, its outgoing rows are
    the next conv's input channel `c` or, after the flatten, the Dense rows `s * C + c` for every spatial
    position `s` (`LayerSpec.consumer_tiles`). Unit scores average over batch and spatial positions.
    """
    obs_shape: tuple[int, ...]
    convs: tuple[tuple[int, int, int], ...]
    hidden: tuple[int, ...]
    out: int
    activation: str = "relu"
    kernel_init: str = "lecun_normal"
    input_scale: float = 1.0
    probe_point: str = "pre_activation"
    inject: bool = False               # plasticity injection heads on the output layer (`output_head`)

    def _spatial(self):
        """Static (height, width) after each conv."""
        h, w = self.obs_shape[0], self.obs_shape[1]
        sizes = []
        for _, k, s in self.convs:
            h, w = (h - k) // s + 1, (w - k) // s + 1
            if h < 1 or w < 1:
                raise ValueError(f"observations of shape {self.obs_shape} are too small for the convolutions "
                                 f"{self.convs} (features, kernel, stride); choose a smaller torso")
            sizes.append((h, w))
        return sizes

    def _names(self):
        return [f"conv_{i}" for i in range(len(self.convs))] + [f"hidden_{i}" for i in range(len(self.hidden))]

    @nn.compact
    def __call__(self, x, probes=None):
        act = ACTIVATIONS[self.activation]
        init = kernel_initializer(self.kernel_init)
        x = x.astype(jnp.float32).reshape(x.shape[0], *self.obs_shape) * self.input_scale
        acts, names = {}, self._names()
        for i, (feat, k, s) in enumerate(self.convs):
            z = nn.Conv(feat, (k, k), (s, s), padding="VALID", kernel_init=init, name=names[i])(x)
            x = probed_unit(act, z, names[i], probes, self.probe_point, acts)
        x = x.reshape(x.shape[0], -1)
        for j, width in enumerate(self.hidden):
            name = names[len(self.convs) + j]
            z = Dense(width, 0, self.kernel_init, name=name)(x)
            x = probed_unit(act, z, name, probes, self.probe_point, acts)
        return output_head(self, x, self.out, 0, self.kernel_init, 1.0, self.inject), acts

    def layer_map(self) -> tuple[LayerSpec, ...]:
        names = self._names() + ["output"]
        widths = [f for f, _, _ in self.convs] + list(self.hidden)
        n_conv, spatial = len(self.convs), self._spatial()
        init = kernel_initializer(self.kernel_init)
        # the last conv feeds the first Dense through the flatten: its rows repeat per spatial position (and per
        # output of a paired activation, within each position)
        pair = outputs_per_unit(self.activation)
        tile = lambda i: pair * (spatial[i][0] * spatial[i][1] if i == n_conv - 1 else 1)  # noqa: E731
        layers = []
        for i, w in enumerate(widths):
            consumers = _head_consumers(names[i + 1], self.inject)
            layers.append(LayerSpec(name=names[i], layer_id=i, width=w, ensemble=0, kernel=(names[i], "kernel"),
                                    bias=(names[i], "bias"), consumers=consumers, init=init,
                                    consumer_tiles=(tile(i),) * len(consumers)))
        return tuple(layers)

    def inject_spec(self) -> InjectSpec | None:
        return _inject_spec(self.inject, kernel_initializer(self.kernel_init))

    def probe_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        shapes = {f"conv_{i}": (batch_size, h, w, f) for i, ((f, _, _), (h, w)) in
                  enumerate(zip(self.convs, self._spatial()))}
        shapes.update({f"hidden_{j}": (batch_size, w) for j, w in enumerate(self.hidden)})
        return {k: probe_shape(v, self.activation, self.probe_point) for k, v in shapes.items()}


SWITCHES = ("inject_flag",)  # parameters that switch a network's structure; they are not weights


def _is_switch(path) -> bool:
    return bool(path) and getattr(path[-1], "key", None) in SWITCHES


def weight_mask(params):
    """Bool pytree like `params`: True on every weight, False on the switches (`SWITCHES`). What an
    intervention that writes "all parameters" (shrink-and-perturb, weight decay, L2-init) may write."""
    return jax.tree_util.tree_map_with_path(lambda path, _: not _is_switch(path), params)


def copy_switches(tree, source):
    """`tree` with its switches (`SWITCHES`) taken from `source` (same structure): a target network follows its
    online network's structure, and a write of every weight keeps the structure it found."""
    return jax.tree_util.tree_map_with_path(lambda path, t, s: s if _is_switch(path) else t, tree, source)


def get_path(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def set_path(tree, path, value):
    """Functional update of a nested dict at `path` (copies only the dicts on the path)."""
    if not path:
        return value
    new = dict(tree)
    new[path[0]] = set_path(tree[path[0]], path[1:], value)
    return new
