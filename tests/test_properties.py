"""Hypothesis property tests of both twins over shapes, options, rates and dtypes.

The torch twin runs eagerly, so it is checked over random shapes and options. The JAX twin
compiles one program per shape, block, dtype and set of options, so it is checked over a
pinned set of those (``PINNED``: every pair of option values, dtypes and ranks occurs in
some row), while hypothesis draws the rate, the key and the values: a bounded number of
programs to compile, the same properties checked.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import dropblock_jax as dj
import dropblock_torch as dt

DTYPES = {
    "float32": (jnp.float32, torch.float32),
    "bfloat16": (jnp.bfloat16, torch.bfloat16),
    "float16": (jnp.float16, torch.float16),
}
RATES = [0.05, 0.3, 0.7, 1.0]
OPTION_NAMES = ("seed_region", "calibrate", "share_channels", "share_batch", "normalize")
OPTION_VALUES = {
    "seed_region": ["valid", "full"],
    "calibrate": [False, True],
    "share_channels": [False, True],
    "share_batch": [False, True],
    "normalize": ["batch", "sample", "expected", "none"],
}

# (shape, block, dtype, seed_region, calibrate, share_channels, share_batch, normalize): a
# pairwise covering array. Shapes: 1 to 3 spatial dims; batch and channels of 1 and more; a
# spatial size of 1; odd, even, unit and oversize (clipped) blocks.
PINNED = [
    ((2, 9, 3), (3,), "float32", "full", False, False, True, "batch"),
    ((1, 7, 8, 2), (3, 11), "bfloat16", "valid", True, True, False, "batch"),
    ((2, 4, 5, 3, 3), (3, 2, 5), "float16", "valid", False, True, False, "batch"),
    ((3, 1, 6, 3), (2, 4), "float32", "full", True, True, True, "sample"),
    ((1, 3, 3, 2, 1), (1, 2, 2), "bfloat16", "full", False, True, False, "sample"),
    ((3, 4, 1), (6,), "float16", "valid", True, False, True, "sample"),
    ((2, 4, 5, 3, 3), (3, 2, 5), "float32", "full", False, True, True, "expected"),
    ((2, 9, 3), (3,), "bfloat16", "valid", True, False, False, "expected"),
    ((1, 7, 8, 2), (3, 11), "float16", "full", True, False, True, "expected"),
    ((3, 4, 1), (6,), "float32", "valid", True, True, False, "none"),
    ((3, 1, 6, 3), (2, 4), "bfloat16", "full", False, True, True, "none"),
    ((1, 3, 3, 2, 1), (1, 2, 2), "float16", "full", True, False, False, "none"),
]


PINNED_NAMES = ("shape", "block", "dtype", *OPTION_NAMES)


def pinned_options(row):
    return dict(zip(OPTION_NAMES, row[3:]))


@st.composite
def configurations(draw):
    dims = draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(1, 9), min_size=dims, max_size=dims)))
    block = tuple(draw(st.lists(st.integers(1, 11), min_size=dims, max_size=dims)))
    shape = (draw(st.integers(1, 3)), *spatial, draw(st.integers(1, 3)))
    options = {name: draw(st.sampled_from(values)) for name, values in OPTION_VALUES.items()}
    drop_prob = draw(st.sampled_from(RATES))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    return shape, block, options, drop_prob, dtype, draw(st.integers(0, 2**31 - 1))


def run(framework, x, seed, drop_prob, block, options, dtype):
    """Both twins on the same values, in the channels-last layout, as float32 numpy arrays."""
    jax_dtype, torch_dtype = DTYPES[dtype]
    if framework == "jax":
        out = dj.dropblock(jnp.asarray(x, jax_dtype), jax.random.key(seed), drop_prob, block, **options)
        assert out.dtype == jax_dtype
        return np.asarray(out, np.float32)
    x = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).to(torch_dtype)
    out = dt.drop_block(x, drop_prob, block, generator=torch.Generator().manual_seed(seed), **options)
    assert out.dtype == torch_dtype
    return np.moveaxis(out.float().numpy(), 1, -1)


def check_output_is_finite_binary_masked_and_keeps_shape_and_dtype(framework, config):
    shape, block, options, drop_prob, dtype, seed = config
    x = np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(np.float32)
    x = np.asarray(jnp.asarray(x, DTYPES[dtype][0]), np.float32)  # values representable in dtype
    out = run(framework, x, seed, drop_prob, block, options, dtype)
    assert out.shape == x.shape
    assert np.isfinite(out).all()
    kept = out != 0
    # Every kept unit is x times a scale that is the same for the whole batch, or per
    # sample: the mask is binary and nothing but the scale touches kept units.
    ratio = np.where(kept, out / x, np.nan)
    for sample in ratio:
        values = sample[~np.isnan(sample)]
        if values.size:
            np.testing.assert_allclose(values, values[0], rtol=1e-2 if dtype != "float32" else 1e-6)
            assert values[0] >= 1.0 - 1e-2 or options["normalize"] == "none"
    if drop_prob == 1.0:
        assert not kept.any()


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(config=configurations())
def test_torch_output_is_finite_binary_masked_and_keeps_shape_and_dtype(config):
    check_output_is_finite_binary_masked_and_keeps_shape_and_dtype("torch", config)


@pytest.mark.parametrize(PINNED_NAMES, PINNED)
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(drop_prob=st.sampled_from(RATES), seed=st.integers(0, 2**31 - 1))
@example(drop_prob=1.0, seed=0)
def test_jax_output_is_finite_binary_masked_and_keeps_shape_and_dtype(
    shape, block, dtype, seed_region, calibrate, share_channels, share_batch, normalize, drop_prob, seed
):
    options = dict(zip(OPTION_NAMES, (seed_region, calibrate, share_channels, share_batch, normalize)))
    config = (shape, block, options, drop_prob, dtype, seed)
    check_output_is_finite_binary_masked_and_keeps_shape_and_dtype("jax", config)


def test_the_pinned_rows_cover_every_pair_of_option_values_dtypes_and_ranks():
    factors = {**OPTION_VALUES, "dtype": sorted(DTYPES), "rank": [3, 4, 5]}
    rows = [{**pinned_options(row), "dtype": row[2], "rank": len(row[0])} for row in PINNED]
    for a, b in itertools.combinations(factors, 2):
        pairs = {(row[a], row[b]) for row in rows}
        assert pairs == set(itertools.product(factors[a], factors[b])), (a, b)


@pytest.mark.slow
@pytest.mark.parametrize("row", [row for row in PINNED if row[2] == "float32"])
@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(drop_prob=st.sampled_from(RATES), seed=st.integers(0, 2**31 - 1))
def test_jax_one_example_with_spatial_dims_is_a_batch_of_one(row, drop_prob, seed):
    shape, block = row[:2]
    options = pinned_options(row)
    x = jnp.asarray(np.random.default_rng(seed).uniform(0.5, 1.5, shape), jnp.float32)
    key = jax.random.key(seed)
    dims = len(shape) - 2
    one = dj.dropblock(x[0], key, drop_prob, block, spatial_dims=dims, **options)
    np.testing.assert_array_equal(one, dj.dropblock(x[:1], key, drop_prob, block, **options)[0])
