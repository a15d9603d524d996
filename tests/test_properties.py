"""Hypothesis property tests of both twins over random shapes and options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dropblock_jax as dj
import dropblock_torch as dt

DTYPES = {
    "float32": (jnp.float32, torch.float32),
    "bfloat16": (jnp.bfloat16, torch.bfloat16),
    "float16": (jnp.float16, torch.float16),
}


@st.composite
def configurations(draw):
    dims = draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(1, 9), min_size=dims, max_size=dims)))
    block = tuple(draw(st.lists(st.integers(1, 11), min_size=dims, max_size=dims)))
    shape = (draw(st.integers(1, 3)), *spatial, draw(st.integers(1, 3)))
    options = {
        "seed_region": draw(st.sampled_from(["valid", "full"])),
        "calibrate": draw(st.booleans()),
        "share_channels": draw(st.booleans()),
        "share_batch": draw(st.booleans()),
        "normalize": draw(st.sampled_from(["batch", "sample", "expected", "none"])),
    }
    drop_prob = draw(st.sampled_from([0.05, 0.3, 0.7, 1.0]))
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


@pytest.mark.parametrize("framework", ["jax", "torch"])
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(config=configurations())
def test_output_is_finite_binary_masked_and_keeps_shape_and_dtype(framework, config):
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


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(config=configurations())
def test_jax_one_example_with_spatial_dims_is_a_batch_of_one(config):
    shape, block, options, drop_prob, _, seed = config
    x = jnp.asarray(np.random.default_rng(seed).uniform(0.5, 1.5, shape), jnp.float32)
    key = jax.random.key(seed)
    dims = len(shape) - 2
    one = dj.dropblock(x[0], key, drop_prob, block, spatial_dims=dims, **options)
    np.testing.assert_array_equal(one, dj.dropblock(x[:1], key, drop_prob, block, **options)[0])
