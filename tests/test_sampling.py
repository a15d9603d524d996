"""The sparse (geometric-gap) samplers of both twins draw i.i.d. Bernoulli(gamma) seeds.

Tolerances are z-scores of 5 (false alarm below 6e-7 per comparison) with fixed keys.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dropblock_common import sampling as policy
from dropblock_jax import bitmask, sampling

SIZE = 1 << 15
PACKED = bitmask.Packing(axis=0, bits=32)


def sparse_seeds(key, gamma, size, budget, packing=bitmask.UNPACKED):
    return bitmask.unpack(sampling._sparse(key, jnp.float32(gamma), size, budget, packing), packing)


@pytest.mark.parametrize(
    "gamma, budget, packing",
    [
        (0.003, 1024, bitmask.UNPACKED),
        (0.01, 8192, bitmask.UNPACKED),
        (0.02, 128, bitmask.UNPACKED),
        (0.003, 1024, PACKED),
        (0.02, 128, PACKED),
        (0.01, 256, bitmask.Packing(axis=0, bits=8)),
    ],
)
@pytest.mark.slow
def test_sparse_counts_and_positions_are_bernoulli(gamma, budget, packing):
    # budget 128 at gamma 0.02 needs about 5 rounds per draw: rounds must continue exactly,
    # also when they add bits to words that earlier rounds set.
    draws = 400
    draw = jax.jit(jax.vmap(lambda key: sparse_seeds(key, gamma, SIZE, budget, packing)))
    seeds = np.asarray(draw(jax.random.split(jax.random.key(0), draws)))
    counts = seeds.sum(axis=1)
    z = (counts.mean() - SIZE * gamma) / np.sqrt(SIZE * gamma * (1 - gamma) / draws)
    assert abs(z) < 5, f"mean count {counts.mean()} vs {SIZE * gamma} (z={z:.2f})"
    # Variance of a binomial count: a chi-square test on the sample variance.
    chi2 = (draws - 1) * counts.var(ddof=1) / (SIZE * gamma * (1 - gamma))
    assert stats.chi2.sf(chi2, draws - 1) > 1e-6 and stats.chi2.cdf(chi2, draws - 1) > 1e-6
    # Uniform over positions: seeds per eighth of the grid (the start and the end included).
    per_part = seeds.reshape(draws, 8, -1).sum(axis=(0, 2))
    assert stats.chisquare(per_part).pvalue > 1e-6
    # Independent neighbours: P(seed at i and i + 1) = gamma^2.
    both = (seeds[:, :-1] & seeds[:, 1:]).mean()
    assert abs(both - gamma**2) < 5 * np.sqrt(gamma**2 / (draws * (SIZE - 1)))


@pytest.mark.slow
def test_sparse_runs_to_the_end_of_the_largest_grid_it_is_given():
    # Positions near 2**31 must not overflow int32: the loop would never end, or bits would land
    # in wrapped words. A small budget forces several rounds, each continuing from the last.
    size, gamma, budget = policy.SPARSE_MAX_SIZE - 30, 2e-6, 1024
    words = jax.jit(lambda key: sampling._sparse(key, jnp.float32(gamma), size, budget, PACKED))(jax.random.key(3))
    per_half = [int(jax.lax.population_count(half).sum()) for half in jnp.split(words[: size // 64 * 2], 2)]
    expected = size * gamma / 2  # about 2150 seeds per half; z-scores of 5 below
    for count in per_half:
        assert abs(count - expected) < 5 * np.sqrt(expected), per_half


@pytest.mark.slow
def test_sparse_edge_rates():
    key = jax.random.key(1)
    for packing in (bitmask.UNPACKED, PACKED):
        assert not sparse_seeds(key, 0.0, SIZE, 1024, packing).any()
        assert sparse_seeds(key, 1.0, 4096, 1024, packing).all()


def test_a_nan_or_zero_rate_draws_no_seeds_and_ends():
    # A NaN gap would stall the rounds or scatter out of place; 0 must not divide by zero.
    from jax.experimental import checkify

    budget = policy.seed_budget(SIZE, None)
    draw = jax.jit(
        checkify.checkify(
            lambda gamma: sampling.bernoulli_words(jax.random.key(3), gamma, (SIZE,), PACKED, budget),
            errors=checkify.float_checks,
        )
    )
    for gamma in (0.0, float("nan")):
        error, words = draw(jnp.float32(gamma))
        assert not np.asarray(words).any()
        if gamma == 0.0:
            assert error.get() is None, error.get()


def test_grids_of_2_31_positions_or_more_are_drawn_densely():
    # The sparse sampler's positions are int32: it must never see a grid they cannot index.
    assert policy.seed_budget(policy.SPARSE_MAX_SIZE, 0.001) is not None
    for size in (policy.SPARSE_MAX_SIZE + 1, 2**31, 2**40):
        assert policy.seed_budget(size, 0.001) is None and policy.seed_budget(size, None) is None


@pytest.mark.slow
def test_large_traced_rates_fall_back_to_dense_at_run_time():
    budget = policy.seed_budget(SIZE, None)
    draw = jax.jit(lambda gamma: sampling.bernoulli_words(jax.random.key(2), gamma, (SIZE,), bitmask.UNPACKED, budget))
    for gamma in (0.001, 0.02, 0.5):
        fraction = float(draw(jnp.float32(gamma)).mean())
        assert abs(fraction - gamma) < 5 * np.sqrt(gamma * (1 - gamma) / SIZE)


def test_budgets_are_few_and_cover_the_rate():
    budgets = {policy.seed_budget(4_000_000, g) for g in np.linspace(0.0025, 0.0039, 20)}
    assert len(budgets) == 1
    budget = budgets.pop()
    mean = 4_000_000 * 0.0039
    assert budget > mean + 10 * np.sqrt(mean)
    assert policy.seed_budget(4_000_000, 0.1) is None and policy.seed_budget(100, 0.001) is None


@pytest.mark.slow
@pytest.mark.parametrize("gamma, budget", [(0.003, 1024), (0.02, 128)])
def test_torch_sparse_counts_and_positions_are_bernoulli(gamma, budget):
    import torch

    from dropblock_torch import sampling as torch_sampling

    def torch_sparse_seeds(generator):
        # Draws past the end come back as SIZE (the scatter's spare slot).
        seeds = np.zeros(SIZE + 1, bool)
        seeds[torch_sampling.sparse_positions(gamma, SIZE, budget, "cpu", generator).numpy()] = True
        return seeds[:SIZE]

    draws = 400
    generator = torch.Generator().manual_seed(0)
    seeds = np.stack([torch_sparse_seeds(generator) for _ in range(draws)])
    counts = seeds.sum(axis=1)
    z = (counts.mean() - SIZE * gamma) / np.sqrt(SIZE * gamma * (1 - gamma) / draws)
    assert abs(z) < 5, f"mean count {counts.mean()} vs {SIZE * gamma} (z={z:.2f})"
    chi2 = (draws - 1) * counts.var(ddof=1) / (SIZE * gamma * (1 - gamma))
    assert stats.chi2.sf(chi2, draws - 1) > 1e-6 and stats.chi2.cdf(chi2, draws - 1) > 1e-6
    assert stats.chisquare(seeds.reshape(draws, 8, -1).sum(axis=(0, 2))).pvalue > 1e-6
    both = (seeds[:, :-1] & seeds[:, 1:]).mean()
    assert abs(both - gamma**2) < 5 * np.sqrt(gamma**2 / (draws * (SIZE - 1)))
