"""DropBlock's seed rate (gamma) and expected dropped fraction, written once for every framework.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) draws i.i.d. Bernoulli(gamma) seeds and
drops a block around each. The paper's Eq. 1, generalised to 1 to 3 spatial dimensions and
rectangular blocks, sets ``gamma = drop_prob * prod(S) / prod(k) / prod(S - k + 1)``, clipped
to [0, 1]. In ``"valid"`` mode that gamma drops a little less than ``drop_prob``, because
blocks overlap (28x28, block 7, 0.1: 0.094). In ``"full"`` mode the same gamma seeds all ``S``
positions instead of ``S - k + 1`` per dim, so it drops *more*, and far more as the block nears
the map size (0.1 at block 7 drops 0.133 of a 28x28 map, 0.209 of 14x14, 0.93 of 7x7).
``calibrate=True`` instead solves ``mean_pos[1 - (1 - gamma)^c(pos)] = drop_prob`` for gamma,
``c(pos)`` being the coverage count of ``coverage.py``: the expected dropped fraction is then
exactly ``drop_prob`` in both modes.

The ``*_array`` functions take an array namespace ``xp`` (``numpy``, ``jax.numpy`` or
``torch``) and use nothing but arithmetic, ``xp.where``, ``xp.clip``, ``xp.exp``, ``xp.expm1``,
``xp.log`` and ``xp.log1p``, so the same code runs on concrete numbers and on traced or compiled ones:
``drop_prob`` stays traceable in both twins. The float functions are the public API.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from dropblock_common import coverage, validation

# Newton steps of the calibrated solve, a fixed number so that it traces to straight-line code.
# From gamma = 0, random 1-D to 3-D maps and blocks reached float64 precision within 9 steps
# (float32 within 8) at rates from 1e-30 to 1 - 1e-15; the slowest maps tried, blocks of half a
# huge map ("valid", a 1-D map of 2**20 or 4096x4096) at rates near 1, took 11 in float64.
# tests/test_common.py checks random maps and the 1-D one.
NEWTON_STEPS = 12

AsArray = Callable[[np.ndarray, Any], Any]


def _numpy_asarray(values: np.ndarray, like: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.asarray(like).dtype)


def uncalibrated_rate_factor(spatial_shape: Sequence[int], block_size: Sequence[int]) -> float:
    """``prod(S) / prod(k) / prod(S - k + 1)``: the paper's gamma per unit of ``drop_prob``.

    The same factor serves both seed regions, as in the paper and in timm.

    Examples:
      >>> round(uncalibrated_rate_factor((28, 28), (7, 7)), 6)
      0.033058
    """
    return (
        math.prod(spatial_shape)
        / math.prod(block_size)
        / math.prod([size - block + 1 for size, block in zip(spatial_shape, block_size, strict=True)])
    )


class RateTable(NamedTuple):
    """The static numbers the traced formulas need, for one spatial shape, block and seed region.

    Attributes:
      factor: ``uncalibrated_rate_factor``: gamma per unit of ``drop_prob`` (the paper's Eq. 1).
      counts: the distinct coverage counts ``c(pos)`` (``coverage.coverage_histogram``).
      weights: the fraction of positions with each count.
    """

    factor: float
    counts: tuple[int, ...]
    weights: tuple[float, ...]


# Tables already worked out: an eager call (torch, or JAX outside jit) needs one per call, and
# building it costs about 100 us of numpy, a third of a small layer's whole DropBlock. A plain
# dict, not functools.lru_cache: torch.compile warns about tracing through the latter.
_RATE_TABLES: dict[tuple[tuple[int, ...], tuple[int, ...], str], RateTable] = {}
_REMEMBERED_MAX = 4096


def _remembered(cache: dict, key: tuple, work_out: Callable[[], Any]) -> Any:
    """``cache[key]``, worked out by ``work_out()`` the first time (a full cache starts over)."""
    value = cache.get(key)
    if value is None:
        value = work_out()
        if len(cache) >= _REMEMBERED_MAX:
            cache.clear()
        cache[key] = value
    return value


def rate_table(spatial_shape: Sequence[int], block_size: Sequence[int], seed_region: str) -> RateTable:
    """The ``RateTable`` of a map, for effective block sizes (worked out once per argument set).

    Plain Python numbers, so that a tracer (``jax.jit``, ``torch.compile``) can treat it as a
    constant worked out before tracing.

    Examples:
      >>> table = rate_table((4,), (2,), "valid")
      >>> table.counts, table.weights
      ((1, 2), (0.5, 0.5))
    """
    shape = tuple(int(size) for size in spatial_shape)
    block = tuple(int(size) for size in block_size)

    def work_out() -> RateTable:
        counts, weights = coverage.coverage_histogram(shape, block, seed_region)
        factor = uncalibrated_rate_factor(shape, block)
        return RateTable(float(factor), tuple(counts.tolist()), tuple(weights.tolist()))

    return _remembered(_RATE_TABLES, (shape, block, seed_region), work_out)


def dropped_fraction_array(gamma: Any, counts: Any, weights: Any, xp: Any) -> Any:
    """``sum(weights * (1 - (1 - gamma)^counts))``, accurate for small gamma.

    Args:
      gamma: seed rate, a scalar of namespace ``xp``.
      counts, weights: the coverage histogram as arrays of namespace ``xp``.
      xp: the array namespace.

    Returns:
      The expected dropped fraction, a scalar of namespace ``xp``.
    """
    return (weights * -xp.expm1(counts * xp.log1p(-gamma))).sum()


def _histogram(table: RateTable, like: Any, asarray: AsArray) -> tuple[Any, Any]:
    return asarray(np.asarray(table.counts), like), asarray(np.asarray(table.weights), like)


def seed_rate_array(
    drop_prob: Any, table: RateTable, calibrate: bool, xp: Any, asarray: AsArray = _numpy_asarray
) -> Any:
    """Seed rate gamma for a (possibly traced) scalar ``drop_prob`` of namespace ``xp``.

    Args:
      drop_prob: a scalar array; values outside [0, 1] are clipped.
      table: the map's ``rate_table``.
      calibrate: solve for gamma so that the expected dropped fraction is ``drop_prob``.
      xp: the array namespace of ``drop_prob``.
      asarray: ``asarray(numpy_array, like)`` puts a numpy array in ``like``'s namespace,
        dtype and device.

    Returns:
      gamma, a scalar array of ``drop_prob``'s dtype, in [0, 1]; exactly 1 where
      ``drop_prob >= 1`` (so that everything is dropped) and 0 where ``drop_prob <= 0``.
    """
    drop_prob = xp.clip(drop_prob, 0.0, 1.0)
    if calibrate:
        gamma = _calibrated_rate(drop_prob, *_histogram(table, drop_prob, asarray), xp)
    else:
        gamma = xp.clip(drop_prob * table.factor, 0.0, 1.0)
    return xp.where(drop_prob >= 1, 1.0, gamma)


def _calibrated_rate(drop_prob: Any, counts: Any, weights: Any, xp: Any) -> Any:
    """The gamma whose expected dropped fraction is ``drop_prob`` (in [0, 1); 1 is answered by the caller).

    Newton's method on ``s = -log(1 - gamma)``, solving ``log kept(s) = log(1 - drop_prob)`` with
    ``kept(s) = sum(weights * exp(-counts * s))``, the expected kept fraction. ``log kept`` is a
    log-sum-exp of lines in ``s``, so it is convex and decreasing: from ``s = 0`` every Newton step
    lands at or below the root (never past it) and the steps converge quadratically near it. Few
    steps suffice, and each traces to a handful of operations (a bisection needs 60 to reach the
    same precision for small rates).
    """
    # drop_prob = 1 would need s = inf; any rate below 1 keeps every step finite.
    target = xp.log1p(-xp.where(drop_prob >= 1, 0.5, drop_prob))
    s = drop_prob * 0
    for _ in range(NEWTON_STEPS):
        exponent = -counts * s  # log((1 - gamma)^count)
        kept_terms = weights * xp.exp(exponent)
        kept = kept_terms.sum()
        dropped = (weights * -xp.expm1(exponent)).sum()  # 1 - kept, accurate for small rates
        # log1p for small rates, log for large ones: each where it keeps its relative precision.
        log_kept = xp.where(dropped < 0.5, xp.log1p(-xp.clip(dropped, 0.0, 0.5)), xp.log(kept))
        s = s + (log_kept - target) * kept / (counts * kept_terms).sum()
    return -xp.expm1(-s)


def expected_drop_fraction_array(gamma: Any, table: RateTable, xp: Any, asarray: AsArray = _numpy_asarray) -> Any:
    """Expected dropped fraction for a (possibly traced) scalar gamma of namespace ``xp``."""
    return dropped_fraction_array(gamma, *_histogram(table, gamma, asarray), xp)


def nonfinite_guard_array(drop_prob: Any, xp: Any) -> Any:
    """0 for a finite rate, NaN for a NaN or infinite one: what a traced rate adds to the output.

    A traced or tensor rate cannot raise, and a broken schedule must not pass unseen (an
    infinite rate clipped to 1 would silently drop everything, a NaN one silently nothing). The
    twins add this to the scale and write it (not 0) where units are dropped, so that such a
    rate turns the whole output NaN, in every mode; for a finite rate it adds +0 and writes +0.
    A ``where``, not ``drop_prob * 0``: compilers fold a product by zero away (inductor does).
    """
    return xp.where(xp.isfinite(drop_prob), xp.zeros_like(drop_prob), float("nan"))


def expected_rescale_array(expected_drop: Any, xp: Any) -> Any:
    """``1 / (1 - expected_drop)``, 0 when everything is expected to drop (never inf), NaN for NaN.

    No division by zero is ever evaluated, so ``checkify``'s float checks stay quiet.
    """
    kept = 1 - expected_drop
    everything = kept <= 0  # False for NaN, which then propagates
    return xp.where(everything, 0.0, 1 / xp.where(everything, 1, kept))


def _effective(
    spatial_shape: Sequence[int], block_size: int | Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = validation.spatial_shape_tuple(spatial_shape)
    return shape, validation.effective_block_size(shape, validation.block_size_tuple(block_size, len(shape)))


def seed_rate(
    spatial_shape: Sequence[int],
    drop_prob: float,
    block_size: int | Sequence[int],
    *,
    seed_region: str = "valid",
    calibrate: bool = False,
) -> float:
    """The Bernoulli rate gamma of DropBlock's seeds.

    Args:
      spatial_shape: the feature map's spatial shape, e.g. ``(H, W)``.
      drop_prob: the target fraction of dropped units, in [0, 1].
      block_size: an int or one int per spatial dimension; clipped to the map's size.
      seed_region: ``"valid"`` (seeds where the whole block fits, the paper) or ``"full"``
        (seeds everywhere, blocks clipped at the border, timm).
      calibrate: if True, gamma makes the expected dropped fraction exactly ``drop_prob``;
        otherwise it is the paper's Eq. 1, generalised.

    Returns:
      gamma in [0, 1].

    Raises:
      ValueError: for a bad ``spatial_shape``, ``block_size``, ``drop_prob`` or ``seed_region``.

    Examples:
      >>> round(seed_rate((28, 28), 0.1, 7), 6)
      0.003306
      >>> gamma = seed_rate((28, 28), 0.1, 7, calibrate=True)
      >>> round(expected_drop_fraction((28, 28), 7, gamma), 12)
      0.1
    """
    shape, block = _effective(spatial_shape, block_size)
    drop_prob = validation.drop_prob_value(drop_prob)
    validation.check_choice(seed_region, "seed_region", validation.SEED_REGIONS)
    return float(seed_rate_array(np.float64(drop_prob), rate_table(shape, block, seed_region), bool(calibrate), np))


def expected_drop_fraction(
    spatial_shape: Sequence[int],
    block_size: int | Sequence[int],
    gamma: float,
    *,
    seed_region: str = "valid",
) -> float:
    """The expected fraction of units that DropBlock drops at seed rate ``gamma``.

    ``mean over positions of 1 - (1 - gamma)^c(pos)``, ``c(pos)`` being the number of seed
    positions whose block covers ``pos``. The same for every sharing option.

    Args:
      spatial_shape: the feature map's spatial shape.
      block_size: an int or one int per spatial dimension; clipped to the map's size.
      gamma: the seed rate, in [0, 1].
      seed_region: ``"valid"`` or ``"full"``.

    Returns:
      The expected dropped fraction, in [0, 1].

    Raises:
      ValueError: for a bad argument, naming it.

    Examples:
      >>> round(expected_drop_fraction((28, 28), 7, seed_rate((28, 28), 0.1, 7)), 4)
      0.0939
    """
    shape, block = _effective(spatial_shape, block_size)
    validation.check_choice(seed_region, "seed_region", validation.SEED_REGIONS)
    try:
        if validation.is_boolean(gamma) or isinstance(gamma, str | bytes):
            raise TypeError
        gamma = float(gamma)
    except (TypeError, ValueError):
        raise TypeError(f"gamma must be a real number in [0, 1], got {gamma=!r}.") from None
    if not 0.0 <= gamma <= 1.0:  # NaN fails too
        raise ValueError(f"gamma must be in [0, 1], got {gamma=!r}.")
    with np.errstate(divide="ignore"):
        return float(expected_drop_fraction_array(np.float64(gamma), rate_table(shape, block, seed_region), np))


_FLOAT32_RATES: dict[tuple[tuple[int, ...], tuple[int, ...], float, str, bool], tuple[float, float]] = {}


def float32_rates(
    spatial_shape: tuple[int, ...], block: tuple[int, ...], drop_prob: float, seed_region: str, calibrate: bool
) -> tuple[float, float]:
    """gamma and the expected dropped fraction of a concrete ``drop_prob``, for both twins.

    Worked out in float64, rounded to float32 (the twins compute in float32, so both use the
    same numbers), remembered per argument set: eager calls with a fixed rate pay for them once.
    ``block`` must already be the effective block; ``drop_prob`` and ``seed_region`` are checked.

    Examples:
      >>> gamma, expected = float32_rates((28, 28), (7, 7), 0.1, "valid", False)
      >>> gamma == float(np.float32(seed_rate((28, 28), 0.1, 7)))
      True
    """

    def work_out() -> tuple[float, float]:
        gamma = seed_rate(spatial_shape, drop_prob, block, seed_region=seed_region, calibrate=calibrate)
        expected = expected_drop_fraction(spatial_shape, block, gamma, seed_region=seed_region)
        return float(np.float32(gamma)), float(np.float32(expected))

    return _remembered(_FLOAT32_RATES, (spatial_shape, block, drop_prob, seed_region, calibrate), work_out)
