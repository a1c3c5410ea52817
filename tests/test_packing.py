"""The host driver's packed carry (plastic/packing.py): exact round trips, fewer arrays per call."""
import jax
import jax.numpy as jnp
import numpy as np

from helpers import make
from plastic.packing import Packer


def _tree(S):
    return {"kernel": jnp.arange(S * 80 * 70, dtype=jnp.float32).reshape(S, 80, 70),  # large: stays as it is
            "bias": jnp.linspace(-1, 1, S * 7).reshape(S, 7), "count": jnp.arange(S, dtype=jnp.int32),
            "key": jax.vmap(jax.random.PRNGKey)(jnp.arange(S)), "mask": jnp.arange(S * 3).reshape(S, 3) % 2 == 0,
            "nested": [jnp.full((S, 2, 2), 3.5), jnp.zeros((S,), jnp.int32)]}


def test_pack_unpack_is_an_exact_round_trip():
    tree = _tree(3)
    p = Packer(tree, batched=True)
    packed = jax.jit(p.pack)(tree)
    large, bufs = packed
    assert [x.shape for x in large] == [(3, 80, 70)] and len(bufs) == 4  # bool, float32, int32, uint32
    assert all(b.shape[0] == 3 for b in bufs)                            # the seed axis stays leading
    out = jax.jit(p.unpack)(packed)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # unbatched (the counters): scalars pack too
    c = {"env_steps": jnp.asarray(5, jnp.int32), "updates": {"q": jnp.asarray(7, jnp.int32)}}
    pc = Packer(c, batched=False)
    assert pc.crossing == 1
    assert jax.tree.map(int, pc.unpack(pc.pack(c))) == {"env_steps": 5, "updates": {"q": 7}}


def test_trainer_carry_moves_fewer_arrays_and_unpacks_to_the_state():
    _, tr = make("td3", "Pendulum-v1", 10, "grama", seeds=2)
    ts, counters = tr.init_state()
    want = jax.device_get((ts, counters))
    n_leaves = len(jax.tree.leaves((ts, counters)))
    carry = tr.pack(ts, counters)
    assert len(jax.tree.leaves(carry)) < n_leaves // 2
    got = jax.device_get(tr.unpack(carry))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
