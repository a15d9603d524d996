"""Hypothesis property tests of dropblock_jax over random shapes and options."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dropblock_jax as dj


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
    dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]))
    return shape, block, options, drop_prob, dtype, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(configurations())
def test_output_is_finite_binary_masked_and_keeps_shape_and_dtype(config):
    shape, block, options, drop_prob, dtype, seed = config
    x = jax.random.uniform(jax.random.key(seed), shape, jnp.float32, 0.5, 1.5).astype(dtype)
    out = dj.dropblock(x, jax.random.key(seed + 1), drop_prob, block, **options)
    assert out.shape == x.shape and out.dtype == x.dtype
    out, x = np.asarray(out, np.float32), np.asarray(x, np.float32)
    assert np.isfinite(out).all()
    kept = out != 0
    # Every kept unit is x times a scale that is the same for the whole batch, or per
    # sample: the mask is binary and nothing but the scale touches kept units.
    ratio = np.where(kept, out / x, np.nan)
    for sample in ratio:
        values = sample[~np.isnan(sample)]
        if values.size:
            np.testing.assert_allclose(values, values[0], rtol=1e-2 if dtype != jnp.float32 else 1e-6)
            assert values[0] >= 1.0 - 1e-2 or options["normalize"] == "none"
    if drop_prob == 1.0:
        assert not kept.any()
