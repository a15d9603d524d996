"""dropblock_jax.bitmask: channels packed as bits give the same masks as booleans do.

The packed path is what ``dropblock`` runs for channel counts with a power-of-two factor of at
least 4; every check here compares it with the naive numpy reference, bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import dropped_mask, normalized

import dropblock_jax as dj
from dropblock_common import sampling as policy
from dropblock_jax import bitmask


def uniform(shape, seed):
    """Inputs in [0.5, 1.5): numpy, not jax.random, whose threefry draw compiles anew per shape."""
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(np.float32)


@pytest.mark.parametrize(
    "channels, bits, dtype",
    [(256, 32, np.uint32), (96, 32, np.uint32), (48, 16, np.uint16), (24, 8, np.uint8), (12, 4, np.uint8)]
    + [(6, 1, np.float32), (3, 1, np.float32), (1, 1, np.float32)],
)
def test_packing_is_the_widest_power_of_two_that_divides_the_channels(channels, bits, dtype):
    for shape, axis in [((2, 5, 5, channels), -1), ((2, channels, 5, 5), 1)]:
        packing = bitmask.packing(shape, axis)
        assert (packing.bits, packing.dtype) == (bits, np.dtype(dtype))
        assert packing.axis == axis % len(shape)
        assert packing.words_shape(shape)[packing.axis] == channels // bits


@pytest.mark.parametrize("shape, axis", [((3, 4, 5, 64), 3), ((3, 48, 4, 5), 1), ((2, 7, 8), 2), ((2, 6, 3), 2)])
def test_pack_and_unpack_are_inverse(shape, axis):
    grid = jnp.asarray(np.random.default_rng(0).random(shape) < 0.3)
    packing = bitmask.packing(shape, axis)
    words = bitmask.pack(grid, packing)
    assert words.shape == packing.words_shape(shape) and words.dtype == packing.dtype
    np.testing.assert_array_equal(bitmask.unpack(words, packing), grid)
    np.testing.assert_array_equal(bitmask.count(words, packing, None), np.sum(grid, keepdims=True))
    np.testing.assert_array_equal(
        bitmask.count(words, packing, tuple(range(1, len(shape)))).reshape(-1),
        np.sum(grid, axis=tuple(range(1, len(shape)))),
    )


def test_packed_order_is_the_flat_order_of_the_words():
    # Position p is bit p % bits of word p // bits: channels last, the grid's own flat order.
    shape = (2, 3, 3, 32)
    packing = bitmask.packing(shape, -1)
    flags = jnp.zeros(np.prod(shape), bool).at[jnp.array([0, 33, 100, 575])].set(True)
    words = bitmask.pack_flat(flags, packing).reshape(packing.words_shape(shape))
    np.testing.assert_array_equal(bitmask.unpack(words, packing).reshape(-1), flags)
    assert words.reshape(-1)[1] == 1 << 1 and words.reshape(-1)[3] == 1 << 4


# (shape in the Flax layout, block_size): channel counts that pack into 4-, 8-, 16- and 32-bit words.
PACKED_CASES = [
    ((2, 12, 11, 32), 3),
    ((2, 9, 10, 64), (4, 2)),
    ((1, 17, 16), 5),
    ((2, 6, 5, 4, 8), (3, 2, 2)),
    ((3, 7, 7, 12), 7),
    ((2, 5, 5, 48), 9),
]


@pytest.mark.parametrize(
    "shape, block_size, channel_axis",
    [(*case, -1) for case in PACKED_CASES] + [(*case, 1) for case in PACKED_CASES[::2]],
)
@pytest.mark.parametrize("seed_region", ["valid", "full"])
def test_packed_masks_equal_the_reference_dilation(shape, block_size, seed_region, channel_axis):
    dims = len(shape) - 2
    spatial = shape[1:-1]
    block = tuple(
        min(k, s) for k, s in zip((block_size,) * dims if isinstance(block_size, int) else block_size, spatial)
    )
    seeds = np.asarray(dj.sample_seeds(jax.random.key(1), shape, 0.3, block_size, seed_region=seed_region))
    x = uniform(shape, seed=2)
    keep = ~dropped_mask(seeds, spatial, block, range(1, dims + 1), seed_region)
    if channel_axis == 1:
        x_in, seeds_in = np.moveaxis(x, -1, 1), np.moveaxis(seeds, -1, 1)
    else:
        x_in, seeds_in = x, seeds
    for normalize in ("none", "batch", "sample"):
        out = dj.apply_seeds(
            x_in, seeds_in, block_size, channel_axis=channel_axis, seed_region=seed_region, normalize=normalize
        )
        out = np.moveaxis(np.asarray(out), 1, -1) if channel_axis == 1 else np.asarray(out)
        np.testing.assert_array_equal(out == 0, ~keep)
        np.testing.assert_allclose(out, normalized(x, keep, normalize), rtol=2e-7)


@pytest.mark.parametrize("channel_axis", [-1, 1])
@pytest.mark.parametrize("drop_prob, block_size, sparse", [(0.1, 7, True), (0.9, 3, False)])
def test_dropblock_equals_apply_seeds_of_sample_seeds_with_the_same_key(channel_axis, drop_prob, block_size, sparse):
    shape = (2, 40, 40, 32) if channel_axis == -1 else (2, 32, 40, 40)
    grid_size = 2 * 32 * (41 - block_size) ** 2
    gamma = dj.seed_rate((40, 40), drop_prob, block_size)
    assert (policy.seed_budget(grid_size, gamma) is not None) == sparse
    x = jnp.asarray(uniform(shape, seed=0))
    key = jax.random.key(3)
    seeds = dj.sample_seeds(key, shape, drop_prob, block_size, channel_axis=channel_axis)
    expected = dj.apply_seeds(x, seeds, block_size, channel_axis=channel_axis)
    np.testing.assert_array_equal(dj.dropblock(x, key, drop_prob, block_size, channel_axis=channel_axis), expected)
    assert abs(float(seeds.mean()) - gamma) < 5 * np.sqrt(gamma / grid_size)


@pytest.mark.slow
def test_sparse_and_dense_packed_seeds_have_the_seed_rate():
    # Each packed draw against its binomial count, |z| < 5 (fixed keys).
    shape = (4, 64, 64, 32)
    packing = bitmask.packing(shape, -1)
    size = np.prod(shape)
    for gamma, budget in [(0.003, policy.seed_budget(size, 0.003)), (0.2, None)]:
        words = dj.sampling.bernoulli_words(jax.random.key(4), jnp.float32(gamma), shape, packing, budget)
        seeds = np.asarray(bitmask.unpack(words, packing))
        z = (seeds.sum() - size * gamma) / np.sqrt(size * gamma * (1 - gamma))
        assert abs(z) < 5, (gamma, seeds.sum(), z)
        # Every channel gets seeds at the rate too (no bit is stuck).
        per_channel = seeds.reshape(-1, 32).sum(axis=0)
        n = size // 32
        assert np.all(np.abs(per_channel - n * gamma) < 5 * np.sqrt(n * gamma * (1 - gamma)))


def test_packed_path_under_vmap_and_grad():
    x = jnp.asarray(uniform((2, 12, 12, 16), seed=0))
    assert bitmask.packing(x.shape, -1).bits == 16
    keys = jax.random.split(jax.random.key(1), 4)
    batched = jax.vmap(lambda k: dj.dropblock(x, k, 0.3, 3))(keys)
    for i in range(4):
        np.testing.assert_array_equal(batched[i], dj.dropblock(x, keys[i], 0.3, 3))
    # out = x * keep * scale, so the gradient of its sum is keep * scale = out / x.
    out = dj.dropblock(x, keys[0], 0.3, 3)
    gradient = jax.grad(lambda x: jnp.sum(dj.dropblock(x, keys[0], 0.3, 3)))(x)
    np.testing.assert_allclose(gradient, out / x, rtol=1e-6)
    assert 0.1 < float((out == 0).mean()) < 0.5


@pytest.mark.parametrize("shape, axis", [((3, 5, 7, 64), -1), ((2, 48, 6, 5), 1), ((4, 9, 3), -1)])
@pytest.mark.parametrize("chunk", [None, 1, 64, 1000])
def test_unset_count_in_chunks_is_the_exact_count(shape, axis, chunk):
    # The chunked path (int32 sums of at most `chunk` positions, their total carried as two
    # int32 halves) is what grids of 2**31 positions or more take; forced here on small grids.
    grid = jnp.asarray(np.random.default_rng(7).random(shape) < 0.4)
    packing = bitmask.packing(shape, axis)
    words = bitmask.pack(grid, packing)
    unset = ~np.asarray(grid)
    for per_row in (False, True):
        got = bitmask.unset_count(words, packing, per_row, jnp.float32, chunk=chunk)
        axes = tuple(range(1, len(shape))) if per_row else None
        np.testing.assert_array_equal(got, unset.sum(axis=axes, keepdims=True).astype(np.float32))
        assert got.dtype == jnp.float32


def test_unset_count_of_more_than_2_31_positions_traces_without_overflow():
    shape = (2, 1024, 1024, 32)  # 2**26 words of 32 bits: 2**31 positions
    packing = bitmask.Packing(axis=3, bits=32)
    words = jax.ShapeDtypeStruct(packing.words_shape(shape), packing.dtype)
    for per_row in (False, True):
        out = jax.eval_shape(lambda w, p=per_row: bitmask.unset_count(w, packing, p, jnp.float32), words)
        assert out.shape == ((2, 1, 1, 1) if per_row else (1, 1, 1, 1)) and out.dtype == jnp.float32
