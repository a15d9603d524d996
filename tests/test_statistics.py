"""Both twins against the analytic values of dropblock_common, with stated tolerances.

Every test uses fixed keys, so it is repeatable. Tolerances are z-scores: a bound of 5
standard errors has a false-alarm probability below 6e-7 per comparison; the per-position
maps use a Bonferroni bound of 5.5 (below 4e-8 each, below 1e-4 over a whole map).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import dropblock_common as dc
import dropblock_jax as dj
import dropblock_torch as dt

# (spatial shape, block size, drop_prob): 1D/2D/3D, odd, even, rectangular and oversize blocks.
CONFIGS = [
    ((32,), 5, 0.2),
    ((28, 28), 7, 0.1),
    ((14, 14), 4, 0.2),
    ((12, 9), (5, 2), 0.15),
    ((6, 6), 9, 0.1),
    ((8, 8, 8), 3, 0.1),
]
PLANES = 4096  # independent masks per configuration: batch * channels


def dropped_planes(framework, spatial, block_size, drop_prob, seed_region, calibrate, key=0):
    """PLANES independent (sample, channel) masks of one framework, as booleans (PLANES, *spatial)."""
    channels = 64
    options = dict(seed_region=seed_region, calibrate=calibrate)
    if framework == "jax":
        x = jnp.ones((PLANES // channels, *spatial, channels))
        out = dj.dropblock(x, jax.random.key(key), drop_prob, block_size, **options)
        dropped = np.moveaxis(np.asarray(out) == 0, -1, 1)
    else:
        x = torch.ones(PLANES // channels, channels, *spatial)
        generator = torch.Generator().manual_seed(key)
        dropped = (dt.drop_block(x, drop_prob, block_size, generator=generator, **options) == 0).numpy()
    return dropped.reshape(PLANES, *spatial)


FRAMEWORKS = pytest.mark.parametrize("framework", ["jax", "torch"])


def assert_mean_matches(per_plane_fraction, expected, z_bound=5.0):
    mean = per_plane_fraction.mean()
    standard_error = per_plane_fraction.std(ddof=1) / np.sqrt(per_plane_fraction.size)
    z = (mean - expected) / standard_error
    assert abs(z) < z_bound, f"dropped fraction {mean:.5f} vs expected {expected:.5f} (z={z:.2f})"


@FRAMEWORKS
@pytest.mark.parametrize("spatial, block_size, drop_prob", CONFIGS)
@pytest.mark.parametrize("seed_region", ["valid", "full"])
def test_dropped_fraction_matches_expected(framework, spatial, block_size, drop_prob, seed_region):
    dropped = dropped_planes(framework, spatial, block_size, drop_prob, seed_region, calibrate=False)
    gamma = dc.seed_rate(spatial, drop_prob, block_size, seed_region=seed_region)
    expected = dc.expected_drop_fraction(spatial, block_size, gamma, seed_region=seed_region)
    assert_mean_matches(dropped.reshape(PLANES, -1).mean(axis=1), expected)


@FRAMEWORKS
@pytest.mark.parametrize("spatial, block_size, drop_prob", CONFIGS[1:4])
@pytest.mark.parametrize("seed_region", ["valid", "full"])
def test_calibrated_rate_drops_drop_prob(framework, spatial, block_size, drop_prob, seed_region):
    dropped = dropped_planes(framework, spatial, block_size, drop_prob, seed_region, calibrate=True, key=1)
    assert_mean_matches(dropped.reshape(PLANES, -1).mean(axis=1), drop_prob)


@pytest.mark.parametrize(
    "spatial, block_size, drop_prob", [((16, 16), 5, 0.2), ((20,), 4, 0.3), ((9, 11), (3, 4), 0.2)]
)
@pytest.mark.parametrize("seed_region", ["valid", "full"])
@FRAMEWORKS
def test_per_position_frequency_matches_coverage(framework, spatial, block_size, drop_prob, seed_region):
    dropped = dropped_planes(framework, spatial, block_size, drop_prob, seed_region, calibrate=False, key=2)
    block = (block_size,) * len(spatial) if isinstance(block_size, int) else block_size
    gamma = dc.seed_rate(spatial, drop_prob, block, seed_region=seed_region)
    probability = 1.0 - (1.0 - gamma) ** dc.coverage_counts(spatial, block, seed_region)
    frequency = dropped.mean(axis=0)
    z = (frequency - probability) / np.sqrt(probability * (1 - probability) / PLANES)
    assert np.abs(z).max() < 5.5, f"worst position z={np.abs(z).max():.2f}"


@pytest.mark.parametrize("normalize", ["batch", "expected"])
def test_normalisation_keeps_the_mean_scale(normalize):
    # E[out] / E[x] is 1 in expectation; with 4096 planes its spread is far below 1%.
    x = np.asarray(jax.random.uniform(jax.random.key(0), (64, 28, 28, 64), minval=0.5, maxval=1.5))
    out = dj.dropblock(x, jax.random.key(1), 0.1, 7, normalize=normalize)
    assert float(out.mean() / x.mean()) == pytest.approx(1.0, abs=0.01)
    x = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    out = dt.drop_block(x, 0.1, 7, normalize=normalize, generator=torch.Generator().manual_seed(1))
    assert float(out.mean() / x.mean()) == pytest.approx(1.0, abs=0.01)
