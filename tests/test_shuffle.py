"""plastic.shuffle: the minibatch shuffle gives jax.random.permutation's values, and its sort is a stable argsort."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastic.shuffle import MAX_N, permutation, stable_argsort


@pytest.mark.parametrize("n", [1, 2, 3, 512, 1625, 1626, 2048])  # 1626 and 2048: two sorting rounds
def test_permutation_is_jax_random_permutation(n):
    keys = jax.random.split(jax.random.PRNGKey(n), 64)
    ours = jax.jit(jax.vmap(lambda k: permutation(k, n)))(keys)
    theirs = jax.vmap(lambda k: jax.random.permutation(k, n))(keys)
    assert ours.dtype == theirs.dtype == jnp.int32
    np.testing.assert_array_equal(ours, theirs)


def test_permutation_takes_typed_keys_and_larger_n():
    key = jax.random.key(7)
    np.testing.assert_array_equal(permutation(key, 700), jax.random.permutation(key, 700))
    big = jax.random.PRNGKey(1)
    np.testing.assert_array_equal(permutation(big, MAX_N + 1), jax.random.permutation(big, MAX_N + 1))


def test_stable_argsort_orders_by_key_then_index_with_many_ties():
    """Keys that tie in their high bits, in their low bits, or entirely: the order of numpy's stable argsort."""
    rng = np.random.default_rng(0)
    sort = jax.jit(stable_argsort)
    for n in (2, 5, 100, 512, 3000):
        for high, low in ((2, 1), (5, 4), (50, 2 ** 20), (2 ** 12, 2), (2 ** 12, 2 ** 20)):
            keys = (rng.integers(0, high, n).astype(np.uint32) << 20) | rng.integers(0, low, n).astype(np.uint32)
            np.testing.assert_array_equal(sort(jnp.asarray(keys)), np.argsort(keys, kind="stable"))
    keys = np.array([2 ** 32 - 1, 0, 2 ** 31, 2 ** 32 - 1, 0], np.uint32)  # the extremes
    np.testing.assert_array_equal(sort(jnp.asarray(keys)), [1, 4, 2, 0, 3])
    with pytest.raises(ValueError, match="at most 65536"):
        stable_argsort(jnp.zeros(MAX_N + 1, jnp.uint32))
