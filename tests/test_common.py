"""dropblock_common: geometry, seed rate and expected dropped fraction against brute force."""

import math

import numpy as np
import pytest
from numpy_reference import coverage_counts as brute_force_counts

from dropblock_common import coverage, expected_drop_fraction, rates, schedules, seed_rate, validation

SHAPES_AND_BLOCKS = [
    ((9,), (3,)),
    ((10,), (4,)),
    ((7, 7), (3, 3)),
    ((8, 6), (4, 2)),
    ((5, 9), (5, 1)),
    ((6, 5, 4), (3, 2, 4)),
    ((4, 4), (1, 1)),
]


@pytest.mark.parametrize("seed_region", ["valid", "full"])
@pytest.mark.parametrize("spatial_shape, block", SHAPES_AND_BLOCKS)
def test_coverage_counts_match_enumeration(spatial_shape, block, seed_region):
    np.testing.assert_array_equal(
        coverage.coverage_counts(spatial_shape, block, seed_region),
        brute_force_counts(spatial_shape, block, seed_region),
    )


@pytest.mark.parametrize("seed_region", ["valid", "full"])
@pytest.mark.parametrize("spatial_shape, block", SHAPES_AND_BLOCKS)
def test_histogram_summarises_counts(spatial_shape, block, seed_region):
    counts = brute_force_counts(spatial_shape, block, seed_region)
    values, weights = coverage.coverage_histogram(spatial_shape, block, seed_region)
    distinct, frequency = np.unique(counts, return_counts=True)
    np.testing.assert_array_equal(values, distinct)
    np.testing.assert_allclose(weights, frequency / counts.size, rtol=1e-12)


def test_valid_seed_grid_covers_each_cell_at_most_prod_k_times():
    counts = coverage.coverage_counts((28, 28), (7, 7), "valid")
    assert counts.max() == 49 and counts.min() == 1
    # Each of the 22 x 22 seeds covers 49 cells.
    assert counts.sum() == 22 * 22 * 49


@pytest.mark.parametrize(
    "spatial_shape, block_size, drop_prob",
    [((28, 28), 7, 0.1), ((14, 14), 5, 0.2), ((13,), 3, 0.3), ((8, 8, 8), (3, 3, 2), 0.15), ((5, 5), 9, 0.1)],
)
def test_seed_rate_is_the_papers_equation(spatial_shape, block_size, drop_prob):
    dims = len(spatial_shape)
    block = (block_size,) * dims if isinstance(block_size, int) else block_size
    block = tuple(min(k, s) for k, s in zip(block, spatial_shape))
    expected = drop_prob * math.prod(spatial_shape) / math.prod(block)
    expected /= math.prod(s - k + 1 for s, k in zip(spatial_shape, block))
    for seed_region in ("valid", "full"):
        assert seed_rate(spatial_shape, drop_prob, block_size, seed_region=seed_region) == pytest.approx(
            min(expected, 1.0), rel=1e-12
        )


def test_seed_rate_on_the_paper_setting():
    # The paper's Eq. 1 on a 28x28 map with block 7 and keep_prob 0.9, worked by hand:
    # 0.1 / 49 * 784 / 484.
    assert seed_rate((28, 28), 0.1, 7) == pytest.approx(0.1 / 49 * 784 / 484, rel=1e-12)


@pytest.mark.parametrize("seed_region", ["valid", "full"])
@pytest.mark.parametrize("spatial_shape, block", SHAPES_AND_BLOCKS)
@pytest.mark.parametrize("gamma", [0.0, 0.003, 0.05, 0.5, 1.0])
def test_expected_drop_fraction_against_brute_force(spatial_shape, block, seed_region, gamma):
    counts = brute_force_counts(spatial_shape, block, seed_region)
    expected = np.mean(1.0 - (1.0 - gamma) ** counts)
    assert expected_drop_fraction(spatial_shape, block, gamma, seed_region=seed_region) == pytest.approx(
        expected, rel=1e-12, abs=1e-15
    )


@pytest.mark.parametrize("seed_region", ["valid", "full"])
@pytest.mark.parametrize("spatial_shape, block", SHAPES_AND_BLOCKS)
@pytest.mark.parametrize("drop_prob", [0.0, 0.01, 0.1, 0.5, 0.9, 1.0])
def test_calibrated_rate_hits_drop_prob(spatial_shape, block, seed_region, drop_prob):
    gamma = seed_rate(spatial_shape, drop_prob, block, seed_region=seed_region, calibrate=True)
    achieved = expected_drop_fraction(spatial_shape, block, gamma, seed_region=seed_region)
    assert achieved == pytest.approx(drop_prob, abs=1e-12)


def _reference_kept_exponent(drop_prob: float, table: rates.RateTable, steps: int = 200) -> float:
    """``s = -log(1 - gamma)`` of the calibrated rate, by ``steps`` bisection steps on s (float64).

    Compares the dropped fraction with ``drop_prob`` for small rates and the kept fraction with
    ``1 - drop_prob`` for large ones, so that each comparison keeps its relative precision.
    """
    counts, weights = np.asarray(table.counts, np.float64), np.asarray(table.weights, np.float64)
    low, high = 0.0, 1.0
    while (weights * np.exp(-counts * high)).sum() > 1 - drop_prob:
        high *= 2
    for _ in range(steps):
        middle = (low + high) / 2
        if drop_prob <= 0.5:
            short = (weights * -np.expm1(-counts * middle)).sum() < drop_prob
        else:
            short = (weights * np.exp(-counts * middle)).sum() > 1 - drop_prob
        low, high = (middle, high) if short else (low, middle)
    return (low + high) / 2


RATE_GRID = np.concatenate([np.logspace(-20, -0.3, 25), 1 - np.logspace(-0.5, -7, 12)])


@pytest.mark.parametrize("seed_region", ["valid", "full"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_calibrated_rate_converges_on_random_maps_for_tiny_and_near_one_rates(seed_region, dtype, rtol):
    # The solve runs a fixed number of Newton steps: enough on any map, checked on 40 random
    # 1-D to 3-D maps and blocks, and on rates from 1e-20 to 1 - 1e-7 (in float32 too, as traced).
    rng = np.random.default_rng(7)
    for _ in range(40):
        dims = int(rng.integers(1, 4))
        shape = tuple(int(size) for size in rng.integers(1, {1: 2000, 2: 300, 3: 60}[dims], size=dims))
        block = tuple(int(rng.integers(1, size + 1)) for size in shape)
        table = rates.rate_table(shape, block, seed_region)
        for drop_prob in RATE_GRID.astype(dtype):
            exponent = _reference_kept_exponent(float(drop_prob), table)
            gamma = rates.seed_rate_array(drop_prob, table, True, np)
            assert gamma.dtype == dtype
            assert float(gamma) == pytest.approx(-math.expm1(-exponent), rel=rtol), (shape, block, drop_prob)
            if drop_prob > 0.5 and dtype == np.float64:
                # 1 - gamma (what is kept) too, through s; a float32 gamma near 1 holds too few of its digits
                assert -math.log1p(-float(gamma)) == pytest.approx(exponent, rel=10 * rtol), (shape, block, drop_prob)


def test_calibrated_rate_converges_on_one_of_the_slowest_maps():
    # A block of half a 1-D map of 2**20 at rates near 1: the most Newton steps of any map tried
    # (11 in float64; a map of 2**16 takes 9).
    table = rates.rate_table((2**20,), (2**19,), "valid")
    for drop_prob in (0.999, 1 - 1e-6, 1 - 1e-7):
        exponent = _reference_kept_exponent(drop_prob, table, steps=100)
        gamma = float(rates.seed_rate_array(np.float64(drop_prob), table, True, np))
        assert gamma == pytest.approx(-math.expm1(-exponent), rel=1e-12), drop_prob
        assert -math.log1p(-gamma) == pytest.approx(exponent, rel=1e-12), drop_prob


def test_uncalibrated_rate_drops_less_than_asked_and_calibration_fixes_it():
    gamma = seed_rate((28, 28), 0.1, 7)
    assert expected_drop_fraction((28, 28), 7, gamma) < 0.095
    assert seed_rate((28, 28), 0.1, 7, calibrate=True) > gamma


def test_drop_prob_one_means_every_seed():
    assert seed_rate((28, 28), 1.0, 7) == 1.0
    assert seed_rate((28, 28), 1.0, 7, seed_region="full", calibrate=True) == 1.0
    assert seed_rate((28, 28), 0.0, 7, calibrate=True) == 0.0


def test_block_padding_reproduces_block_slices():
    # After padding by (low, high), output p of a stride-1 max over `block` cells sees padded
    # cells [p, p + block), i.e. seeds [p - low, p - low + block): check every seed's cover
    # against the reference slice.
    from numpy_reference import block_slice

    for seed_region in ("valid", "full"):
        for size, block in [(9, 3), (10, 4), (6, 6), (5, 1)]:
            low, _ = coverage.block_padding(block, seed_region)
            for seed in range(coverage.seed_grid_size(size, block, seed_region)):
                covered = [p for p in range(size) if p <= seed + low < p + block]
                ref = block_slice(seed, block, size, seed_region)
                assert covered == list(range(ref.start, ref.stop))
                # block_start: where the block starts before clipping, clipped as the reference is.
                start = seed + coverage.block_start(block, seed_region)
                assert range(max(start, 0), min(start + block, size)) == range(ref.start, ref.stop)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: seed_rate((28, 28), -0.1, 7), r"drop_prob=-0\.1"),
        (lambda: seed_rate((28, 28), 1.5, 7), r"drop_prob=1\.5"),
        (lambda: seed_rate((28, 28), float("nan"), 7), r"drop_prob=nan"),
        (lambda: seed_rate((28, 28), "a lot", 7), r"drop_prob='a lot'"),
        (lambda: seed_rate((28, 28), 0.1, 0), r"block_size=0"),
        (lambda: seed_rate((28, 28), 0.1, -3), r"block_size=-3"),
        (lambda: seed_rate((28, 28), 0.1, 2.5), r"block_size=2\.5"),
        (lambda: seed_rate((28, 28), 0.1, (3, 3, 3)), r"2 ints.*block_size=\(3, 3, 3\)"),
        (lambda: seed_rate((28, 0), 0.1, 3), r"spatial_shape=\(28, 0\)"),
        (lambda: seed_rate((28, 28), 0.1, 3, seed_region="same"), r"seed_region='same'"),
        (lambda: expected_drop_fraction((28, 28), 3, 1.2), r"gamma=1\.2"),
        (lambda: expected_drop_fraction((28, 28), 3, True), r"gamma=True"),
        (lambda: expected_drop_fraction((28, 28), 3, np.bool_(False)), r"gamma="),
        (lambda: seed_rate((28, 28), True, 3), r"drop_prob=True"),
        (lambda: seed_rate((28, 28), np.bool_(True), 3), r"drop_prob=np\.True_"),
        (lambda: seed_rate((28, 28), np.array(True), 3), r"drop_prob=array\(True\)"),
        (lambda: seed_rate((28, 28), "0.1", 3), r"drop_prob='0\.1'"),
        (lambda: seed_rate((28, 28), 0.1, 3, seed_region=None), r"seed_region=None"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_channel_axis_must_be_second_or_last():
    assert validation.channel_axis_index(-1, 5) == 4
    with pytest.raises(ValueError, match=r"channel_axis=2"):
        validation.channel_axis_index(2, 4)
    with pytest.raises(ValueError, match=r"channel_axis=0"):
        validation.channel_axis_index(0, 4)


def test_seed_rate_array_is_the_float_api_in_numpy():
    for calibrate in (False, True):
        array = rates.seed_rate_array(np.float64(0.2), rates.rate_table((10, 12), (3, 4), "full"), calibrate, np)
        assert float(array) == seed_rate((10, 12), 0.2, (3, 4), seed_region="full", calibrate=calibrate)


def test_remembered_rates_are_the_ones_worked_out_afresh():
    from dropblock_common import rates

    first = rates.rate_table((28, 28), (7, 7), "full")
    assert rates.rate_table([28, 28], [7, 7], "full") is first  # remembered, whatever the sequence type
    rates._RATE_TABLES.clear()
    assert rates.rate_table((28, 28), (7, 7), "full") == first
    gamma, expected = rates.float32_rates((14, 14), (4, 4), 0.2, "valid", True)
    assert rates.float32_rates((14, 14), (4, 4), 0.2, "valid", True) == (gamma, expected)
    assert expected == float(np.float32(0.2))  # calibrated: the expected drop is drop_prob
    assert gamma == float(np.float32(rates.seed_rate((14, 14), 0.2, 4, calibrate=True)))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: validation.check_options("valid", None), ValueError, r"normalize=None"),
        (lambda: validation.check_options("valid", "batch", calibrate="False"), TypeError, r"calibrate='False'"),
        (lambda: validation.check_options("valid", "batch", noise=0), TypeError, r"noise=0"),
        (lambda: validation.check_flag(np.array([True]), "share_batch"), TypeError, r"share_batch="),
        (lambda: validation.expected_drop_value(1.0), ValueError, r"expected_drop must be in \[0, 1\)"),
        (lambda: validation.expected_drop_value(2.0), ValueError, r"expected_drop=2\.0"),
        (lambda: validation.expected_drop_value("0.1"), TypeError, r"expected_drop='0\.1'"),
        (lambda: validation.input_rank((8, 8), 2), ValueError, r"x must have 4 dimensions.*or 3.*spatial_dims=2"),
        (lambda: validation.input_rank((8, 8, 8), 4), ValueError, r"spatial_dims=4"),
        (lambda: validation.input_rank((8, 8, 8), True), ValueError, r"spatial_dims=True"),
        (lambda: validation.input_rank((8, 8)), ValueError, r"x\.ndim=2.*spatial_dims"),
    ],
)
def test_bad_options_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_flags_accept_python_and_numpy_bools_only():
    assert validation.check_flag(np.bool_(True), "calibrate") is True
    assert validation.check_flag(False, "calibrate") is False


@pytest.mark.parametrize(
    "shape, spatial_dims, expected",
    [
        ((8, 28, 28, 3), None, (2, True)),
        ((28, 28, 3), 2, (2, False)),
        ((8, 28, 28, 3), 2, (2, True)),
        ((8, 16, 3), None, (1, True)),
        ((16, 3), 1, (1, False)),
        ((4, 4, 4, 3), 3, (3, False)),
    ],
)
def test_input_rank_tells_a_batch_from_one_example(shape, spatial_dims, expected):
    assert validation.input_rank(shape, spatial_dims) == expected


@pytest.mark.parametrize("spatial, block", [((28, 28), 7), ((14, 14), 7), ((7, 7), 7), ((28, 28), 3), ((7, 7), 3)])
def test_eq1_drops_less_in_valid_mode_and_more_in_full_mode(spatial, block):
    # Brute force over every seed position: the expected dropped fraction of the paper's gamma.
    from numpy_reference import block_slice

    for seed_region, compare in (("valid", np.less_equal), ("full", np.greater)):
        gamma = seed_rate(spatial, 0.1, block, seed_region=seed_region)
        counts = np.zeros(spatial)
        grid = [coverage.seed_grid_size(size, block, seed_region) for size in spatial]
        for i in range(grid[0]):
            for j in range(grid[1]):
                counts[
                    block_slice(i, block, spatial[0], seed_region), block_slice(j, block, spatial[1], seed_region)
                ] += 1
        dropped = np.mean(1 - (1 - gamma) ** counts)
        assert compare(dropped, 0.1 + 1e-12)
    calibrated = seed_rate(spatial, 0.1, block, seed_region="full", calibrate=True)
    assert expected_drop_fraction(spatial, block, calibrated, seed_region="full") == pytest.approx(0.1, abs=1e-12)


def test_full_mode_over_drops_as_the_docs_say():
    stated = {(28, 7): 0.133, (14, 7): 0.209, (7, 7): 0.93}  # dropblock_common/rates.py, the README
    for (size, block), value in stated.items():
        gamma = seed_rate((size, size), 0.1, block, seed_region="full")
        assert round(expected_drop_fraction((size, size), block, gamma, seed_region="full"), 3) == value


@pytest.mark.parametrize("numbers", [schedules.Linear.of(0.0, 0.2, 11), schedules.Ramp.of(0.2, 10)])
def test_schedule_numbers_pickle_compare_and_saturate(numbers):
    import pickle

    assert pickle.loads(pickle.dumps(numbers)) == numbers
    assert float(numbers.value(np.int64(10**6), np)) == pytest.approx(0.2)
    assert float(numbers.value(np.int64(-5), np)) == 0.0
    assert schedules.bounded_step(10**12, numbers.last_step) == numbers.last_step


def test_the_authors_ramp():
    ramp = schedules.Ramp.of(0.1, 100)
    assert float(ramp.value(np.int64(50), np)) == 0.05
    assert float(schedules.Ramp.of(0.1, 1).value(np.int64(1), np)) == 0.1
    assert float(schedules.Ramp.of(0.1, 1).value(np.int64(0), np)) == 0.0
    with pytest.raises(ValueError, match=r"total_steps=0"):
        schedules.Ramp.of(0.1, 0)
    with pytest.raises(TypeError, match=r"drop_prob=True"):
        schedules.Ramp.of(True, 10)


def test_options_record_holds_the_functionals_keyword_options():
    import inspect

    import dropblock_jax as dj
    import dropblock_torch as dt
    from dropblock_common.options import DropBlockOptions

    names = DropBlockOptions.names()
    assert names == ("seed_region", "calibrate", "share_channels", "share_batch", "normalize", "noise")
    for functional in (dj.dropblock, dt.drop_block):
        parameters = inspect.signature(functional).parameters
        defaults = {name: parameters[name].default for name in names}
        assert defaults == DropBlockOptions().kwargs(), functional


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"seed_region": "same"}, ValueError, r"seed_region='same'"),
        ({"normalize": None}, ValueError, r"normalize=None"),
        ({"calibrate": "False"}, TypeError, r"calibrate='False'"),
        ({"share_channels": 1}, TypeError, r"share_channels=1"),
        ({"share_batch": None}, TypeError, r"share_batch=None"),
        ({"noise": np.float32(1)}, TypeError, r"noise="),
    ],
)
def test_options_record_refuses_bad_options_naming_them(options, error, match):
    from dropblock_common.options import DropBlockOptions

    with pytest.raises(error, match=match):
        DropBlockOptions(**options)


def test_options_record_is_frozen_hashable_picklable_and_keeps_python_bools():
    import dataclasses
    import pickle
    import types

    from dropblock_common.options import DropBlockOptions

    options = DropBlockOptions(seed_region="full", calibrate=np.bool_(True), normalize="sample")
    assert type(options.calibrate) is bool and options.calibrate
    assert options == DropBlockOptions(seed_region="full", calibrate=True, normalize="sample")
    assert hash(options) == hash(DropBlockOptions(seed_region="full", calibrate=True, normalize="sample"))
    assert pickle.loads(pickle.dumps(options)) == options
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.noise = True  # type: ignore[misc]
    assert options.repr_fragment() == "seed_region='full', calibrate=True, normalize='sample'"
    assert options.repr_fragment(defaults=True) == (
        "seed_region='full', calibrate=True, share_channels=False, share_batch=False, normalize='sample', noise=False"
    )
    # A holder without share_batch (the Equinox layer) gets the default; a bad attribute is refused.
    holder = types.SimpleNamespace(seed_region="full", share_channels=True, normalize="none", noise=True)
    assert DropBlockOptions.from_attributes(holder).kwargs() == {
        "seed_region": "full",
        "calibrate": False,
        "share_channels": True,
        "share_batch": False,
        "normalize": "none",
        "noise": True,
    }
    holder.noise = "yes"
    with pytest.raises(TypeError, match=r"noise='yes'"):
        DropBlockOptions.from_attributes(holder)


def test_shape_tuple_accepts_int_sequences_and_names_the_argument():
    assert validation.shape_tuple([np.int64(2), 3], "shape") == (2, 3)
    assert all(type(size) is int for size in validation.shape_tuple((np.int64(2), 3), "shape"))
    with pytest.raises(TypeError, match=r"shape=5"):
        validation.shape_tuple(5, "shape")
    for bad in [(2, -1), (2, 3.0), (True, 2)]:
        with pytest.raises(ValueError, match=r"shape must be a shape of non-negative ints"):
            validation.shape_tuple(bad, "shape")
