"""dropblock_jax: properties, exact masks and normalisation, transformations and errors."""

from decimal import Decimal
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import dropped_mask, normalized

import dropblock_jax as dj
from dropblock_common import sampling as policy

jit_dropblock = jax.jit(
    dj.dropblock,
    static_argnames=(
        "block_size",
        "channel_axis",
        "seed_region",
        "calibrate",
        "share_channels",
        "share_batch",
        "normalize",
        "noise",
    ),
)
jit_apply_seeds = jax.jit(dj.apply_seeds, static_argnames=("block_size", "channel_axis", "seed_region", "normalize"))

# (shape in the Flax layout, block_size): 1D/2D/3D, odd, even, rectangular and oversize blocks.
CASES = [
    ((2, 17, 3), 5),
    ((2, 12, 2), 4),
    ((2, 14, 14, 3), 7),
    ((2, 10, 9, 2), (4, 3)),
    ((2, 6, 6, 2), 9),
    ((1, 8, 7, 6, 2), (3, 2, 4)),
    ((3, 5, 5, 1), 1),
]


def random_x(shape, dtype=jnp.float32, seed=0):
    # numpy, not jax.random: a threefry draw compiles for a second or more per new shape.
    return jnp.asarray(np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(np.float32)).astype(dtype)


def block_tuple(block_size, dims):
    return (block_size,) * dims if isinstance(block_size, int) else block_size


@pytest.mark.parametrize("shape, block_size", CASES)
@pytest.mark.parametrize("seed_region", ["valid", "full"])
def test_mask_is_the_dilation_of_the_seeds(shape, block_size, seed_region):
    key = jax.random.key(3)
    seeds = dj.sample_seeds(key, shape, 0.3, block_size, seed_region=seed_region)
    out = jit_apply_seeds(random_x(shape), seeds, block_size, seed_region=seed_region, normalize="none")
    spatial = shape[1:-1]
    block = tuple(min(k, s) for k, s in zip(block_tuple(block_size, len(spatial)), spatial))
    expected_dropped = dropped_mask(np.asarray(seeds), spatial, block, range(1, len(shape) - 1), seed_region)
    np.testing.assert_array_equal(np.asarray(out) == 0, expected_dropped)


@pytest.mark.parametrize("normalize", ["batch", "sample", "expected", "none"])
@pytest.mark.parametrize("shape, block_size", CASES[:4])
@pytest.mark.parametrize("share_channels", [False, True])
def test_normalisation_is_exact(shape, block_size, normalize, share_channels):
    x = random_x(shape)
    seeds = dj.sample_seeds(jax.random.key(1), shape, 0.4, block_size, share_channels=share_channels)
    out = jit_apply_seeds(x, seeds, block_size, normalize=normalize, expected_drop=0.25)
    spatial = shape[1:-1]
    block = tuple(min(k, s) for k, s in zip(block_tuple(block_size, len(spatial)), spatial))
    keep = ~dropped_mask(np.asarray(seeds), spatial, block, range(1, len(shape) - 1), "valid")
    np.testing.assert_allclose(out, normalized(np.asarray(x), keep, normalize, 0.25), rtol=2e-7)


@pytest.mark.parametrize("shape, block_size", CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_shape_and_dtype_are_kept(shape, block_size, dtype):
    out = jit_dropblock(random_x(shape, dtype), jax.random.key(0), 0.2, block_size)
    assert out.shape == shape and out.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(out)))


def test_identity_at_zero_returns_x_itself():
    x = random_x((2, 8, 8, 3))
    assert dj.dropblock(x, jax.random.key(0), 0.0, 3) is x


def test_traced_zero_changes_nothing():
    x = random_x((2, 8, 8, 3))
    np.testing.assert_array_equal(jit_dropblock(x, jax.random.key(0), jnp.float32(0.0), 3), x)


@pytest.mark.parametrize("seed_region", ["valid", "full"])
@pytest.mark.parametrize("calibrate", [False, True])
@pytest.mark.parametrize("drop_prob", [1.0, jnp.float32(1.0)])
def test_drop_prob_one_gives_zeros(seed_region, calibrate, drop_prob):
    out = jit_dropblock(
        random_x((2, 9, 9, 2)), jax.random.key(0), drop_prob, 3, seed_region=seed_region, calibrate=calibrate
    )
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("normalize", ["batch", "sample", "expected", "none"])
def test_everything_dropped_gives_zeros_not_nan(normalize):
    shape = (2, 6, 6, 2)
    seeds = jnp.ones((2, 4, 4, 2), bool)
    out = jit_apply_seeds(random_x(shape), seeds, 3, normalize=normalize, expected_drop=1.0)
    np.testing.assert_array_equal(out, 0.0)


def test_sample_normalisation_handles_one_fully_dropped_sample():
    seeds = jnp.zeros((2, 4, 4, 1), bool).at[0].set(True)
    out = jit_apply_seeds(jnp.ones((2, 6, 6, 1)), seeds, 3, normalize="sample")
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[1], 1.0)


@pytest.mark.slow
def test_float16_with_many_kept_units_does_not_overflow():
    # 2 * 256 * 256 * 2 = 262144 units, far above float16's 65504: a count kept in float16
    # overflows to inf and zeroes the output (torchvision's behaviour).
    shape = (2, 256, 256, 2)
    x = random_x(shape, jnp.float16)
    seeds = dj.sample_seeds(jax.random.key(0), shape, 0.1, 7)
    out16 = jit_apply_seeds(x, seeds, 7)
    out32 = jit_apply_seeds(x.astype(jnp.float32), seeds, 7)
    assert out16.dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(out16)))
    assert float(jnp.abs(out16).mean()) > 0.5
    np.testing.assert_allclose(out16.astype(jnp.float32), out32.astype(jnp.float16).astype(jnp.float32), rtol=0)


@pytest.mark.parametrize("shape, block_size", CASES[:6])
def test_valid_mode_drops_whole_blocks_inside_the_map(shape, block_size):
    # Every dropped region is a union of whole k-blocks lying inside the map: the
    # morphological opening of the dropped set by the block is the dropped set itself.
    out = np.asarray(jit_dropblock(random_x(shape), jax.random.key(5), 0.3, block_size))
    dims = len(shape) - 2
    spatial = shape[1:-1]
    block = tuple(min(k, s) for k, s in zip(block_tuple(block_size, dims), spatial))
    dropped = out == 0
    grid = [s - k + 1 for s, k in zip(spatial, block)]
    fits = np.ones((shape[0], *grid, shape[-1]), bool)
    for offset in np.ndindex(*block):
        window = tuple(slice(o, o + g) for o, g in zip(offset, grid))
        fits &= dropped[(slice(None), *window, slice(None))]
    opened = dropped_mask(fits, spatial, block, range(1, dims + 1), "valid")
    np.testing.assert_array_equal(opened, dropped)
    assert dropped.any()


def test_channel_and_batch_sharing():
    x = random_x((4, 16, 16, 8))
    key = jax.random.key(2)
    per_channel = np.asarray(jit_dropblock(x, key, 0.3, 3)) == 0
    shared_c = np.asarray(jit_dropblock(x, key, 0.3, 3, share_channels=True)) == 0
    shared_b = np.asarray(jit_dropblock(x, key, 0.3, 3, share_batch=True)) == 0
    shared_bc = np.asarray(jit_dropblock(x, key, 0.3, 3, share_batch=True, share_channels=True)) == 0
    assert not (per_channel == per_channel[..., :1]).all()
    assert not (per_channel == per_channel[:1]).all()
    assert (shared_c == shared_c[..., :1]).all() and not (shared_c == shared_c[:1]).all()
    assert (shared_b == shared_b[:1]).all() and not (shared_b == shared_b[..., :1]).all()
    assert (shared_bc == shared_bc[:1, ..., :1]).all()


def test_channels_first_is_the_transpose_of_channels_last():
    x = random_x((2, 12, 10, 3))
    seeds = dj.sample_seeds(jax.random.key(0), x.shape, 0.3, (3, 2))
    last = jit_apply_seeds(x, seeds, (3, 2))
    first = jit_apply_seeds(jnp.moveaxis(x, -1, 1), jnp.moveaxis(seeds, -1, 1), (3, 2), channel_axis=1)
    np.testing.assert_array_equal(jnp.moveaxis(first, 1, -1), last)
    seeds_first = dj.sample_seeds(jax.random.key(0), (2, 3, 12, 10), 0.3, (3, 2), channel_axis=1)
    assert seeds_first.shape == (2, 3, 10, 9)


def test_noise_replaces_dropped_units_without_rescale():
    x = random_x((2, 16, 16, 4))
    out = np.asarray(jit_dropblock(x, jax.random.key(0), 0.3, 5, noise=True))
    plain = np.asarray(jit_dropblock(x, jax.random.key(0), 0.3, 5, normalize="none"))
    kept = out == np.asarray(x)
    assert 0.5 < kept.mean() < 0.95
    noise = out[~kept]
    assert abs(noise.mean()) < 0.1 and 0.85 < noise.std() < 1.15
    # noise=True splits the key, so only the statistics, not the mask, are comparable.
    assert abs(kept.mean() - (plain != 0).mean()) < 0.1


def test_changing_a_traced_drop_prob_does_not_retrace():
    traces = []

    @jax.jit
    def step(x, key, drop_prob):
        traces.append(1)
        return dj.dropblock(x, key, drop_prob, 5, calibrate=True, normalize="expected")

    x = random_x((2, 12, 12, 2))
    outs = [step(x, jax.random.key(0), p) for p in (0.05, 0.1, 0.2, 0.3)]
    assert len(traces) == 1
    assert float((outs[0] == 0).mean()) < float((outs[3] == 0).mean())


@pytest.mark.slow
def test_traced_rate_matches_concrete_rate():
    x = random_x((4, 14, 14, 4))
    for calibrate in (False, True):
        concrete = jit_dropblock(x, jax.random.key(7), 0.15, 5, calibrate=calibrate, normalize="expected")
        traced = jax.jit(
            lambda p, c=calibrate: dj.dropblock(x, jax.random.key(7), p, 5, calibrate=c, normalize="expected")
        )(0.15)
        np.testing.assert_allclose(traced, concrete, rtol=1e-5)


def test_vmap_over_keys_equals_separate_calls():
    x = random_x((2, 10, 10, 3))
    keys = jax.random.split(jax.random.key(0), 4)
    batched = jax.vmap(lambda k: dj.dropblock(x, k, 0.2, 3))(keys)
    for i in range(4):
        np.testing.assert_array_equal(batched[i], dj.dropblock(x, keys[i], 0.2, 3))


@pytest.mark.slow
def test_vmap_over_inputs_matches_per_sample_normalisation():
    x = random_x((3, 10, 10, 2))
    key = jax.random.key(0)
    per_sample = jax.vmap(lambda xi: dj.dropblock(xi[None], key, 0.2, 3)[0])(x)
    # Every sample sees the same key, hence the batch-shared mask, each scaled on its own.
    shared = dj.dropblock(x, key, 0.2, 3, share_batch=True, normalize="sample")
    np.testing.assert_allclose(per_sample, shared, rtol=1e-6)
    assert float((per_sample == 0).mean()) > 0.05


@pytest.mark.parametrize("normalize", ["batch", "sample", "expected", "none"])
def test_gradient_is_keep_times_scale(normalize):
    x = random_x((2, 10, 10, 3))
    weights = random_x((2, 10, 10, 3), seed=1)
    key = jax.random.key(4)

    def loss(x):
        return jnp.sum(dj.dropblock(x, key, 0.3, 3, normalize=normalize) * weights)

    grad = jax.jit(jax.grad(loss))(x)
    out = dj.dropblock(x, key, 0.3, 3, normalize=normalize)
    keep_times_scale = out / x  # x > 0, so this is the mask times its scale
    np.testing.assert_allclose(grad, keep_times_scale * weights, rtol=2e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("dropped_value", [None, 0.0, float("nan")])
def test_the_select_on_bits_is_where_to_the_bit_and_in_its_derivatives(dtype, dropped_value):
    # functional._where_dropped selects with integer arithmetic on the bits; it must give where's
    # bits (signed zeros, infinities and a NaN payload kept, the dropped value written exactly)
    # and where's derivatives in forward and reverse mode, broadcasting a mask as shared masks do.
    from dropblock_jax import functional

    payload_nan = jax.lax.bitcast_convert_type(jnp.array(0x7FA01234, jnp.int32), jnp.float32)
    row = jnp.array([-0.0, 0.0, -2.5, jnp.inf, -jnp.inf, 3.0, 1e-30, 7.0]).at[5].set(payload_nan)
    values = jnp.stack([row, -row]).astype(dtype)[..., None]  # (2, 8, 1)
    values = jnp.broadcast_to(values, (2, 8, 3))
    dropped = jnp.array([[0, 1, 0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1, 0, 1]], jnp.int32)[..., None]  # broadcast
    fill = None if dropped_value is None else jnp.asarray(dropped_value, dtype)
    expected = jnp.where(dropped != 0, jnp.zeros((), dtype) if fill is None else fill, values)
    got = functional._where_dropped(dropped, values, fill)
    integer = {2: jnp.int16, 4: jnp.int32}[jnp.dtype(dtype).itemsize]
    np.testing.assert_array_equal(
        jax.lax.bitcast_convert_type(got, integer), jax.lax.bitcast_convert_type(expected, integer)
    )
    tangent = jnp.ones_like(values)
    where_map = lambda v: jnp.where(dropped != 0, jnp.zeros((), dtype), v)  # noqa: E731
    select_map = lambda v: functional._where_dropped(dropped, v, fill)  # noqa: E731
    np.testing.assert_array_equal(jax.jvp(select_map, (values,), (tangent,))[1], where_map(tangent))
    weights = jnp.arange(48, dtype=jnp.float32).reshape(2, 8, 3).astype(dtype)
    finite = jnp.where(jnp.isfinite(values), values, 1).astype(dtype)
    grad = jax.grad(lambda v: jnp.sum((select_map(v) * weights).astype(jnp.float32)))(finite)
    np.testing.assert_array_equal(grad, where_map(weights))


def test_forward_mode_through_dropblock_is_the_mask_times_the_scale():
    x = random_x((2, 10, 10, 16))
    key = jax.random.key(3)
    out, tangent = jax.jvp(lambda x: dj.dropblock(x, key, 0.3, 3), (x,), (jnp.ones_like(x),))
    np.testing.assert_allclose(tangent, out / x, rtol=1e-6)
    assert 0.05 < float((tangent == 0).mean()) < 0.6


def test_gradient_with_respect_to_a_traced_rate_is_zero():
    x = random_x((2, 10, 10, 3))
    grad = jax.grad(lambda p: jnp.sum(dj.dropblock(x, jax.random.key(0), p, 3, normalize="expected")))(0.2)
    assert float(grad) == 0.0


def test_raw_prng_keys_are_accepted():
    x = random_x((2, 8, 8, 2))
    assert dj.dropblock(x, jax.random.PRNGKey(0), 0.2, 3).shape == x.shape


def test_two_keys_give_different_masks_and_one_key_the_same():
    x = random_x((2, 16, 16, 2))
    a, b = (dj.dropblock(x, jax.random.key(i), 0.2, 3) for i in (0, 1))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, dj.dropblock(x, jax.random.key(0), 0.2, 3))


X = jnp.ones((2, 8, 8, 3))
KEY = jax.random.key(0)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: dj.dropblock(jnp.ones((2, 3)), KEY, 0.1, 3), ValueError, r"x\.ndim=2"),
        (lambda: dj.dropblock(jnp.ones((1, 2, 2, 2, 2, 2)), KEY, 0.1, 3), ValueError, r"x\.ndim=6"),
        (lambda: dj.dropblock(X, KEY, 0.1, 0), ValueError, r"block_size=0"),
        (lambda: dj.dropblock(X, KEY, 0.1, -2), ValueError, r"block_size=-2"),
        (lambda: dj.dropblock(X, KEY, 0.1, 2.0), TypeError, r"block_size=2\.0"),
        (lambda: dj.dropblock(X, KEY, 0.1, (3, 3, 3)), ValueError, r"block_size=\(3, 3, 3\)"),
        (lambda: dj.dropblock(X, KEY, -0.1, 3), ValueError, r"drop_prob=-0\.1"),
        (lambda: dj.dropblock(X, KEY, 1.1, 3), ValueError, r"drop_prob=1\.1"),
        (lambda: dj.dropblock(X, KEY, float("nan"), 3), ValueError, r"drop_prob=nan"),
        (lambda: dj.dropblock(X, KEY, jnp.array([0.1, 0.2]), 3), ValueError, r"drop_prob must be a scalar"),
        (lambda: dj.dropblock(jnp.ones((2, 8, 8, 3), jnp.int32), KEY, 0.1, 3), TypeError, r"x\.dtype=int32"),
        (lambda: dj.dropblock(X, KEY, 0.1, 3, channel_axis=2), ValueError, r"channel_axis=2"),
        (lambda: dj.dropblock(X, 0, 0.1, 3), TypeError, r"key=0"),
        (lambda: dj.dropblock(X, jnp.zeros(2, jnp.float32), 0.1, 3), TypeError, r"key must be one JAX PRNG key"),
        (lambda: dj.dropblock(X, jax.random.split(KEY, 3), 0.1, 3), TypeError, r"jax\.vmap"),
        # uint32 words, but not as many as a raw key of the default implementation has.
        (lambda: dj.dropblock(X, np.zeros(7, np.uint32), 0.1, 3), TypeError, r"key must be one JAX PRNG key"),
        (lambda: dj.dropblock(X, KEY, 0.1, 3, seed_region="same"), ValueError, r"seed_region='same'"),
        (lambda: dj.dropblock(X, KEY, 0.1, 3, normalize="mean"), ValueError, r"normalize='mean'"),
        (lambda: dj.apply_seeds(X, jnp.ones((2, 8, 8, 3), bool), 3), ValueError, r"seeds\.shape=\(2, 8, 8, 3\)"),
        (
            lambda: dj.apply_seeds(X, jnp.ones((2, 6, 6, 3), bool), 3, normalize="expected"),
            ValueError,
            r"expected_drop",
        ),
        (lambda: dj.sample_seeds(KEY, (2, 8), 0.1, 3), ValueError, r"shape\.ndim=2"),
        # Rank against spatial_dims: x and spatial_dims named.
        (
            lambda: dj.dropblock(jnp.ones((8, 8)), KEY, 0.1, 3, spatial_dims=2),
            ValueError,
            r"spatial_dims=2, got x\.ndim=2",
        ),
        (lambda: dj.dropblock(X[None], KEY, 0.1, 3, spatial_dims=2), ValueError, r"spatial_dims=2, got x\.ndim=5"),
        (lambda: dj.dropblock(X, KEY, 0.1, 3, spatial_dims=4), ValueError, r"spatial_dims=4"),
        (lambda: dj.dropblock(X, KEY, 0.1, 3, spatial_dims=True), ValueError, r"spatial_dims=True"),
        (
            lambda: dj.sample_seeds(KEY, (8,), 0.1, 3, spatial_dims=2),
            ValueError,
            r"^shape must .*spatial_dims=2, got shape\.ndim=1",
        ),
        (
            lambda: dj.apply_seeds(X[0], jnp.ones((6, 6, 3)), 3, spatial_dims=3),
            ValueError,
            r"spatial_dims=3, got x\.ndim=3",
        ),
        # Boolean options must be bools: a string is truthy whatever it says.
        (lambda: dj.dropblock(X, KEY, 0.1, 3, calibrate="False"), TypeError, r"calibrate='False'"),
        (lambda: dj.dropblock(X, KEY, 0.1, 3, share_channels=1), TypeError, r"share_channels=1"),
        (lambda: dj.dropblock(X, KEY, 0.1, 3, share_batch=None), TypeError, r"share_batch=None"),
        (lambda: dj.dropblock(X, KEY, 0.1, 3, noise="yes"), TypeError, r"noise='yes'"),
        (lambda: dj.sample_seeds(KEY, X.shape, 0.1, 3, calibrate=0), TypeError, r"calibrate=0"),
        (lambda: dj.dropblock(X, KEY, 0.1, 3, normalize=None), ValueError, r"normalize=None"),
        (lambda: dj.apply_seeds(X, jnp.ones((2, 6, 6, 3)), 3, normalize=None), ValueError, r"normalize=None"),
        # drop_prob: a bool is not a rate, whatever its type; nor is a string.
        (lambda: dj.dropblock(X, KEY, True, 3), TypeError, r"drop_prob=True"),
        (lambda: dj.dropblock(X, KEY, np.bool_(True), 3), TypeError, r"drop_prob"),
        (lambda: dj.dropblock(X, KEY, jnp.array(False), 3), TypeError, r"drop_prob"),
        (lambda: jax.jit(lambda p: dj.dropblock(X, KEY, p, 3))(jnp.array(True)), TypeError, r"drop_prob.*bool"),
        (lambda: dj.dropblock(X, KEY, "0.1", 3), TypeError, r"drop_prob='0\.1'"),
        (lambda: dj.sample_seeds(KEY, X.shape, "0.1", 3), TypeError, r"drop_prob='0\.1'"),
        (
            lambda: dj.apply_seeds(X, jnp.ones((2, 6, 6, 3)), 3, normalize="expected", expected_drop=2.0),
            ValueError,
            r"expected_drop=2\.0",
        ),
        (
            lambda: dj.apply_seeds(X, jnp.ones((2, 6, 6, 3)), 3, normalize="expected", expected_drop=1.0),
            ValueError,
            r"expected_drop=1\.0",
        ),
        (lambda: dj.apply_seeds(X, jnp.ones((2, 6, 6, 3)), 3, expected_drop=True), TypeError, r"expected_drop"),
        (lambda: dj.dropblock(X.astype(jnp.float8_e4m3fn), KEY, 0.1, 3), TypeError, r"x\.dtype=float8_e4m3fn"),
        (lambda: dj.apply_seeds(X.astype(jnp.float8_e5m2), jnp.ones((2, 6, 6, 3)), 3), TypeError, r"x\.dtype=float8"),
        (lambda: dj.sample_seeds(KEY, (2, 4, -1, 8), 0.1, 3), ValueError, r"^shape must .*shape=\(2, 4, -1, 8\)"),
        (lambda: dj.sample_seeds(KEY, (2, 0, 5, 8), 0.1, 3), ValueError, r"^shape must .*shape=\(2, 0, 5, 8\)"),
    ],
)
def test_bad_arguments_raise_with_the_argument_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("rate", [Fraction(1, 10), Decimal("0.1")])
def test_a_real_number_of_no_jax_type_is_its_float(rate):
    x = jnp.ones((2, 16, 16, 4))
    np.testing.assert_array_equal(dj.dropblock(x, KEY, rate, 3), dj.dropblock(x, KEY, 0.1, 3))
    np.testing.assert_array_equal(dj.sample_seeds(KEY, x.shape, rate, 3), dj.sample_seeds(KEY, x.shape, 0.1, 3))
    assert dj.seed_rate((16, 16), rate, 3) == dj.seed_rate((16, 16), 0.1, 3)


@pytest.mark.parametrize(
    "analytic, name",
    [
        (lambda p: dj.seed_rate((8, 8), p, 3), "drop_prob"),
        (lambda p: dj.seed_rate((8, 8), p, 3, calibrate=True), "drop_prob"),
        (lambda g: dj.expected_drop_fraction((8, 8), 3, g), "gamma"),
    ],
)
def test_a_traced_rate_where_a_concrete_one_is_needed_says_so_and_what_to_do(analytic, name):
    with pytest.raises(TypeError, match=rf"^{name} must be concrete .*traced {name}=.*pass the traced drop_prob"):
        jax.jit(analytic)(0.1)
    assert 0 < analytic(0.1) < 1  # concrete, it works


def test_traced_block_size_says_to_make_it_static():
    with pytest.raises(TypeError, match=r"block_size must hold Python ints"):
        jax.jit(dj.dropblock)(X, KEY, 0.1, 3)


def test_a_traced_expected_drop_is_not_checked_and_works():
    seeds = jnp.zeros((2, 6, 6, 3), bool).at[:, 2, 2].set(True)
    out = jax.jit(lambda e: dj.apply_seeds(X, seeds, 3, normalize="expected", expected_drop=e))(0.5)
    np.testing.assert_array_equal(np.unique(np.asarray(out)), [0.0, 2.0])


# --- spatial_dims: one unbatched example (jax.vmap: tests/test_training_loops_jax.py) ---------


@pytest.mark.slow
def test_one_example_is_a_batch_of_one_in_every_function():
    x = random_x((9, 8, 4))
    key = jax.random.key(5)
    seeds = dj.sample_seeds(key, x.shape, 0.3, 3, spatial_dims=2)
    np.testing.assert_array_equal(seeds, dj.sample_seeds(key, (1, *x.shape), 0.3, 3)[0])
    assert seeds.shape == (7, 6, 4)
    out = dj.apply_seeds(x, seeds, 3, spatial_dims=2)
    np.testing.assert_array_equal(out, dj.apply_seeds(x[None], seeds[None], 3)[0])
    # A batch of one: the sample normalisation is the batch one, and sharing the batch is moot.
    for options in ({"normalize": "sample"}, {"share_batch": True}):
        np.testing.assert_array_equal(
            dj.dropblock(x, key, 0.3, 3, spatial_dims=2, **options), dj.dropblock(x, key, 0.3, 3, spatial_dims=2)
        )
    # A batched input with spatial_dims given is a batch, as without it.
    np.testing.assert_array_equal(
        dj.dropblock(x[None], key, 0.3, 3, spatial_dims=2), dj.dropblock(x[None], key, 0.3, 3)
    )
    # With spatial_dims=1 the same rank-3 array is a batch of 1-D maps, as without spatial_dims.
    np.testing.assert_array_equal(dj.dropblock(x, key, 0.3, 3, spatial_dims=1), dj.dropblock(x, key, 0.3, 3))


# --- a traced NaN or infinite rate, inf and NaN inputs, checkify, 2**31 elements ---------------


SMALL, SPARSE = (2, 10, 10, 3), (2, 64, 64, 8)  # the second's seed grid is drawn sparsely


@pytest.mark.parametrize(
    "normalize, noise, calibrate, shape",
    [(normalize, False, False, SMALL) for normalize in ("batch", "sample", "expected", "none")]
    + [("batch", False, True, SMALL), ("none", True, False, SMALL)]
    + [("sample", False, False, SPARSE), ("expected", False, True, SPARSE), ("batch", True, False, SPARSE)],
)
def test_a_traced_nan_or_infinite_rate_makes_the_whole_output_nan(normalize, noise, calibrate, shape):
    if shape == SPARSE:
        assert policy.seed_budget(2 * 62 * 62 * 8, None) is not None
    x = random_x(shape)
    step = jax.jit(lambda p: dj.dropblock(x, KEY, p, 3, normalize=normalize, noise=noise, calibrate=calibrate))
    # Clipped, +inf would drop everything and -inf nothing, silently: a broken schedule is loud instead.
    for rate in (jnp.nan, jnp.inf, -jnp.inf):
        assert bool(jnp.isnan(step(jnp.float32(rate))).all()), rate
    # The same program with a finite rate: no NaN anywhere.
    assert bool(jnp.isfinite(step(jnp.float32(0.2))).all())


@pytest.mark.slow
def test_inf_and_nan_inputs_stay_where_kept_and_vanish_where_dropped_in_apply_seeds():
    # Shared seeds (a size-1 channel and batch axis) and per-unit ones, every normalisation.
    x = np.array(random_x((2, 10, 10, 4)))
    x[0, 2:8, 2:8, 0] = np.inf
    x[1, 1:9, 1:9, 1] = np.nan
    x[0, 0:10:3, :, 2] = -np.inf
    for seed_shape in [(2, 8, 8, 4), (2, 8, 8, 1), (1, 8, 8, 1)]:
        seeds = np.zeros(seed_shape, bool)
        seeds[..., 3, 3, :] = True
        for normalize in ["batch", "sample", "expected", "none"]:
            out = np.asarray(dj.apply_seeds(x, seeds, 3, normalize=normalize, expected_drop=0.1))
            dropped = np.broadcast_to(dropped_mask(seeds, (10, 10), (3, 3), (1, 2), "valid"), x.shape)
            np.testing.assert_array_equal(out[dropped], 0.0)
            np.testing.assert_array_equal(np.isnan(out), np.isnan(x) & ~dropped)
            kept_inf = np.isinf(x) & ~dropped
            assert kept_inf.any() and (np.isinf(x) & dropped).any()
            np.testing.assert_array_equal(out[kept_inf], x[kept_inf])  # the same sign
            assert np.isfinite(out[np.isfinite(x)]).all()


CHECKIFY_SHAPE = (2, 32, 32, 16)  # 2 * 30 * 30 * 16 = 28800 seed positions: the sparse sampler


@pytest.mark.slow
@pytest.mark.parametrize(
    "normalize, calibrate", [("batch", False), ("sample", False), ("expected", True), ("none", False)]
)
def test_checkify_float_checks_find_no_division_by_zero_or_nan(normalize, calibrate):
    from jax.experimental import checkify

    assert policy.seed_budget(2 * 30 * 30 * 16, None) is not None  # traced: the sparse sampler
    x = random_x(CHECKIFY_SHAPE)

    def run(x, p):
        return dj.dropblock(x, KEY, p, 3, normalize=normalize, calibrate=calibrate)

    checked = jax.jit(checkify.checkify(run, errors=checkify.float_checks))
    for p in (0.0, 1.0, 0.1):
        error, out = checked(x, jnp.float32(p))
        assert error.get() is None, (p, error.get())
        if p == 1.0:
            np.testing.assert_array_equal(out, 0.0)
    if normalize == "batch":  # concrete rates: 1 drops everything, 0 is the identity
        for p in (0.0, 1.0):
            error, out = jax.jit(checkify.checkify(lambda x, p=p: run(x, p), errors=checkify.float_checks))(x)
            assert error.get() is None, (p, error.get())


@pytest.mark.parametrize(
    "shape, options",
    [
        ((2, 1024, 1024, 1024), {}),  # 2**31 units, one mask each: per-channel
        ((2, 1024, 1024, 1024), {"normalize": "sample", "noise": False}),
        ((1, 65536, 32768, 1), {"share_channels": True}),  # a shared mask of 2**31 units
        ((2, 32768, 32768, 2), {"share_channels": True, "share_batch": True, "seed_region": "full"}),
        ((2, 1024, 1024, 1024), {"noise": True}),
    ],
)
@pytest.mark.parametrize("traced", [False, True])
def test_two_to_the_31_elements_or_more_trace_without_int32_overflow(shape, options, traced):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    if traced:
        run = jax.jit(lambda x, p: dj.dropblock(x, KEY, p, 7, **options))
        lowered = run.lower(x, jax.ShapeDtypeStruct((), jnp.float32))
    else:
        run = jax.jit(lambda x: dj.dropblock(x, KEY, 0.1, 7, **options))
        lowered = run.lower(x)
    assert lowered.out_info.shape == shape
    sharing = {name: options.get(name, False) for name in ("share_channels", "share_batch")}
    region = options.get("seed_region", "valid")
    seeds = jax.eval_shape(lambda: dj.sample_seeds(KEY, shape, 0.1, 7, seed_region=region, **sharing))
    assert seeds.dtype == jnp.bool_
    normalize = options.get("normalize", "batch")
    applied = jax.eval_shape(lambda x, s: dj.apply_seeds(x, s, 7, seed_region=region, normalize=normalize), x, seeds)
    assert applied.shape == shape
