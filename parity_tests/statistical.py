"""Statistical parity: each framework's own generator, the same distributions.

For each configuration both twins draw many independent masks (fixed seeds, so a run is
repeatable) on an input ``x ~ U(0.5, 1.5)``, never zero, so that the dropped units are the
zeros of the output and the kept ones show the scale. The suite compares, per framework and
between them:

- the mean dropped fraction (z-tests against ``expected_drop_fraction``, or against
  ``drop_prob`` itself where ``calibrate=True`` promises it, and jax vs torch);
- the distribution of the per-plane dropped fraction (two-sample Kolmogorov-Smirnov);
- the per-position drop frequency against ``1 - (1 - gamma)^c(pos)`` (the largest z);
- block structure (``"valid"``: every dropped region is a union of whole blocks in the map);
- channel and batch coupling (identical masks where shared, uncorrelated ones elsewhere);
- the scale, ``out / x`` per unit, so that ``E[out] = E[x]``: with ``normalize="expected"``
  every kept unit gets ``1 / (1 - E)``; with ``"batch"`` and ``"sample"`` the kept units of
  each batch or sample share one factor whose mean over it is 1, in every draw.

Bonferroni, counted rather than kept by hand: the statistics of every configuration are
computed first, then ``judge`` divides ``SUITE_FALSE_ALARM`` by the number of tests actually
produced (one per z-score, one per KS test; a position map's largest z is corrected for its
positions within its own test), so the whole family raises a false alarm with probability at
most ``SUITE_FALSE_ALARM``, whatever the number of draws, configurations or checks. Checks of
properties that hold in every draw (whole blocks, identical shared masks, the batch and sample
scale) cannot raise false alarms and are not counted.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
from scipy import stats

import dropblock_common as dc
import dropblock_jax as dj
import dropblock_torch as dt
from dropblock_common.layout import layout
from parity_tests.checks import Check
from parity_tests.devices import Devices

SUITE_FALSE_ALARM = 1e-3
CHANNELS = 16  # per sample, when nothing is shared
INPUT_RANGE = (0.5, 1.5)  # x is uniform on it: no zeros, and a scale error shows against x's own spread
FRAMEWORKS = ("jax", "torch")
SCALE_TOLERANCE = 1e-6  # relative: float32 rounding of the scale and of x * scale stays below 3e-7


@dataclasses.dataclass(frozen=True, kw_only=True)
class StatConfig:
    """One distribution to compare: a spatial shape, a block, a rate and the options."""

    spatial: tuple[int, ...]
    block_size: int | tuple[int, ...]
    drop_prob: float
    seed_region: str = "valid"
    calibrate: bool = False
    share: str = "none"
    normalize: str = "expected"

    @property
    def name(self) -> str:
        dims = "x".join(map(str, self.spatial))
        extra = (" calibrated" if self.calibrate else "") + ("" if self.share == "none" else f" share_{self.share}")
        return (
            f"{len(self.spatial)}D {dims} k={self.block_size} p={self.drop_prob} {self.seed_region}{extra}"
            f" normalize={self.normalize}"
        )

    @property
    def block(self) -> tuple[int, ...]:
        return layout((1, 1, *self.spatial), self.block_size).block

    @property
    def gamma(self) -> float:
        return dc.seed_rate(
            self.spatial, self.drop_prob, self.block, seed_region=self.seed_region, calibrate=self.calibrate
        )

    @property
    def expected_drop(self) -> float:
        """The analytic mean dropped fraction: ``drop_prob`` itself when calibrated, as the option promises."""
        if self.calibrate:
            return self.drop_prob
        return dc.expected_drop_fraction(self.spatial, self.block, self.gamma, seed_region=self.seed_region)

    @property
    def position_probability(self) -> np.ndarray:
        """The analytic drop probability of each position, ``1 - (1 - gamma)^c(pos)``."""
        return 1.0 - (1.0 - self.gamma) ** dc.coverage_counts(self.spatial, self.block, self.seed_region)


# 1D/2D/3D; odd, even, rectangular and oversize blocks; both seed regions; calibrated or not;
# each sharing option; every normalisation that rescales.
CONFIGS = [
    StatConfig(spatial=(28, 28), block_size=7, drop_prob=0.1),  # the paper's setting
    StatConfig(spatial=(28, 28), block_size=7, drop_prob=0.1, seed_region="full"),
    StatConfig(spatial=(28, 28), block_size=7, drop_prob=0.1, seed_region="full", calibrate=True, normalize="batch"),
    StatConfig(spatial=(14, 14), block_size=4, drop_prob=0.2, calibrate=True),
    StatConfig(spatial=(14, 14), block_size=4, drop_prob=0.2, seed_region="full"),
    StatConfig(spatial=(12, 9), block_size=(5, 2), drop_prob=0.15, seed_region="full"),
    StatConfig(spatial=(12, 9), block_size=(5, 2), drop_prob=0.15, calibrate=True, normalize="sample"),
    StatConfig(spatial=(9, 11), block_size=(3, 4), drop_prob=0.2),
    StatConfig(spatial=(6, 6), block_size=9, drop_prob=0.1),
    StatConfig(spatial=(6, 6), block_size=9, drop_prob=0.1, seed_region="full", normalize="batch"),
    StatConfig(spatial=(32,), block_size=5, drop_prob=0.2),
    StatConfig(spatial=(20,), block_size=4, drop_prob=0.3, seed_region="full"),
    StatConfig(spatial=(8, 8, 8), block_size=3, drop_prob=0.1),
    StatConfig(spatial=(8, 8, 8), block_size=3, drop_prob=0.1, seed_region="full", calibrate=True),
    StatConfig(spatial=(16, 16), block_size=5, drop_prob=0.2, share="channels"),
    StatConfig(spatial=(16, 16), block_size=5, drop_prob=0.2, seed_region="full", share="batch", normalize="sample"),
]


@dataclasses.dataclass(frozen=True)
class ZTest:
    """Two-sided z-tests, one per entry of ``scores`` (``{"jax": z, ...}``).

    With ``positions > 1`` each score is the largest ``|z|`` over that many positions of a map,
    and its bound is Bonferroni-corrected for them, so that it still counts as one test.
    """

    scores: dict[str, float]
    positions: int = 1

    @property
    def count(self) -> int:
        return len(self.scores)

    def bound(self, level: float) -> float:
        return float(stats.norm.isf(level / 2 / self.positions))

    def passes(self, level: float) -> bool:
        return all(abs(z) < self.bound(level) for z in self.scores.values())  # NaN fails

    def describe(self) -> str:
        if self.positions > 1:
            return f"max |z| of {self.positions}: " + ", ".join(f"{z:.2f} ({f})" for f, z in self.scores.items())
        return "z: " + ", ".join(f"{z:+.2f} ({label})" for label, z in self.scores.items())

    def describe_bound(self, level: float) -> str:
        return f"|z| < {self.bound(level):.2f}"


@dataclasses.dataclass(frozen=True)
class KSTest:
    """A two-sample Kolmogorov-Smirnov test: one test, judged by its p-value."""

    statistic: float
    pvalue: float
    count = 1

    def passes(self, level: float) -> bool:
        return self.pvalue > level

    def describe(self) -> str:
        return f"D={self.statistic:.3f}, p={self.pvalue:.2g}"

    def describe_bound(self, level: float) -> str:
        return f"p > {level:.2g}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measurement:
    """A statistic of both twins with its test, not yet judged: the level depends on all tests run."""

    config: str
    statistic: str
    jax: float
    torch: float
    analytic: float | None
    test: ZTest | KSTest

    def judged(self, level: float) -> Check:
        """The report row, each of the test's scores held to ``level``."""
        return Check(
            kind="statistical",
            config=self.config,
            statistic=self.statistic,
            jax=self.jax,
            torch=self.torch,
            analytic=self.analytic,
            test_statistic=self.test.describe(),
            bound=self.test.describe_bound(level),
            passed=self.test.passes(level),
        )


@dataclasses.dataclass(frozen=True)
class FigureData:
    """What the figures show of one configuration.

    Attributes:
      config: the configuration's name.
      fractions: per framework, the dropped fraction of each independent plane.
      frequency: per framework, the drop frequency of each position, ``spatial``-shaped.
      analytic_frequency: ``1 - (1 - gamma)^c(pos)``.
      expected: the analytic mean dropped fraction.
    """

    config: str
    fractions: dict[str, np.ndarray]
    frequency: dict[str, np.ndarray]
    analytic_frequency: np.ndarray
    expected: float


@dataclasses.dataclass(frozen=True)
class ConfigResult:
    """One configuration's measurements (to be judged), property checks (already judged) and figure data."""

    items: list[Measurement | Check]
    figure: FigureData


@dataclasses.dataclass(frozen=True)
class Draws:
    """The input and each twin's output, ``(batch, channels, *spatial)``, float32."""

    x: np.ndarray
    out: dict[str, np.ndarray]


def draw_shape(config: StatConfig, draws: int) -> tuple[int, int]:
    """``(batch, channels)`` holding ``draws`` independent masks: a shared axis holds few entries, enough to see it.

    Examples:
      >>> draw_shape(StatConfig(spatial=(8,), block_size=3, drop_prob=0.1, share="batch"), 1024)
      (2, 1024)
    """
    return {
        "none": (math.ceil(draws / CHANNELS), CHANNELS),
        "channels": (draws, 4),
        "batch": (2, draws),
    }[config.share]


def config_seed(config: StatConfig, seed: int) -> int:
    """A seed of the configuration's own: one key everywhere would correlate the configurations."""
    return seed + zlib.crc32(config.name.encode()) % 2**31


def draw(config: StatConfig, draws: int, devices: Devices, seed: int = 0) -> Draws:
    """Each twin's output on one input ``x`` (from numpy), ``draws`` independent masks, fixed seeds."""
    seed = config_seed(config, seed)
    x = np.random.default_rng(seed).uniform(*INPUT_RANGE, (*draw_shape(config, draws), *config.spatial))
    x = x.astype(np.float32)
    options = dict(
        seed_region=config.seed_region,
        calibrate=config.calibrate,
        share_channels=config.share == "channels",
        share_batch=config.share == "batch",
        normalize=config.normalize,
    )
    with jax.default_device(devices.jax_device):
        x_last = jnp.asarray(np.moveaxis(x, 1, -1))
        jax_out = dj.dropblock(x_last, jax.random.key(seed), config.drop_prob, config.block_size, **options)
        jax_out = np.moveaxis(np.asarray(jax_out), -1, 1)
    generator = torch.Generator(device=devices.torch_device).manual_seed(seed)
    x_torch = torch.from_numpy(x).to(devices.torch_device)
    torch_out = dt.drop_block(x_torch, config.drop_prob, config.block_size, generator=generator, **options)
    return Draws(x=x, out={"jax": jax_out, "torch": torch_out.cpu().numpy()})


def independent_planes(array: np.ndarray, share: str) -> np.ndarray:
    """The planes ``(planes, *spatial)`` of a draw whose masks are independent: shared copies counted once.

    Examples:
      >>> independent_planes(np.zeros((2, 5, 7)), "batch").shape
      (5, 7)
    """
    if share == "channels":
        array = array[:, :1]
    elif share == "batch":
        array = array[:1]
    return array.reshape(-1, *array.shape[2:])


def per_plane_mean(planes: np.ndarray) -> np.ndarray:
    """The mean of each plane of ``(planes, *spatial)``, in float64."""
    return planes.reshape(planes.shape[0], -1).mean(axis=1, dtype=np.float64)


def z_of_mean(sample: np.ndarray, expected: float) -> float:
    """The z-score of ``sample``'s mean against ``expected``, with the sample's own standard error.

    Examples:
      >>> z_of_mean(np.array([1.0, 2.0, 3.0]), 2.0)
      0.0
    """
    return float((sample.mean() - expected) / (sample.std(ddof=1) / math.sqrt(sample.size)))


def mean_against_analytic(config: StatConfig, fractions: dict[str, np.ndarray]) -> Measurement:
    """Each twin's mean dropped fraction against the analytic value (``drop_prob`` when calibrated)."""
    return Measurement(
        config=config.name,
        statistic="mean dropped fraction (z vs analytic)",
        jax=fractions["jax"].mean(),
        torch=fractions["torch"].mean(),
        analytic=config.expected_drop,
        test=ZTest({f: z_of_mean(fractions[f], config.expected_drop) for f in FRAMEWORKS}),
    )


def mean_jax_against_torch(config: StatConfig, fractions: dict[str, np.ndarray]) -> Measurement:
    """The twins' mean dropped fractions against each other (Welch's z)."""
    a, b = fractions["jax"], fractions["torch"]
    z = float((a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))
    return Measurement(
        config=config.name,
        statistic="mean dropped fraction (z jax vs torch)",
        jax=a.mean(),
        torch=b.mean(),
        analytic=config.expected_drop,
        test=ZTest({"jax - torch": z}),
    )


def fraction_distributions(config: StatConfig, fractions: dict[str, np.ndarray]) -> Measurement:
    """The distributions of the per-plane dropped fraction against each other (two-sample KS)."""
    ks = stats.ks_2samp(fractions["jax"], fractions["torch"])
    return Measurement(
        config=config.name,
        statistic="median per-plane dropped fraction (KS jax vs torch)",
        jax=float(np.median(fractions["jax"])),
        torch=float(np.median(fractions["torch"])),
        analytic=None,
        test=KSTest(float(ks.statistic), float(ks.pvalue)),
    )


def position_z(frequency: np.ndarray, probability: np.ndarray, planes: int) -> np.ndarray:
    """Per position, the z-score of the drop frequency over ``planes`` masks against its probability.

    A position certain to be dropped (or kept) has z 0 if the frequency agrees, inf if not.
    """
    spread = np.sqrt(probability * (1 - probability) / planes)
    difference = frequency - probability
    return np.divide(difference, spread, out=np.where(difference == 0, 0.0, np.inf), where=spread > 0)


def position_frequencies(config: StatConfig, dropped: dict[str, np.ndarray]) -> Measurement:
    """Each twin's per-position drop frequency against ``1 - (1 - gamma)^c(pos)``: the worst position."""
    probability = config.position_probability
    frequency = {f: dropped[f].mean(axis=0) for f in FRAMEWORKS}
    worst = {f: float(np.abs(position_z(frequency[f], probability, dropped[f].shape[0])).max()) for f in FRAMEWORKS}
    return Measurement(
        config=config.name,
        statistic="mean of the per-position drop frequency (max |z| over positions vs analytic)",
        jax=float(frequency["jax"].mean()),
        torch=float(frequency["torch"].mean()),
        analytic=float(probability.mean()),
        test=ZTest(worst, positions=probability.size),
    )


def whole_blocks(dropped: np.ndarray, block: tuple[int, ...]) -> bool:
    """Whether every dropped region of each plane ``(planes, *spatial)`` is a union of whole blocks in the map.

    Examples:
      >>> whole_blocks(np.array([[0, 1, 1, 1, 0]], bool), (2,)), whole_blocks(np.array([[0, 1, 0, 0, 0]], bool), (2,))
      (True, False)
    """
    grid = dc.seed_grid_shape(dropped.shape[1:], block, "valid")
    windows = [(slice(None), *(slice(o, o + g) for o, g in zip(offset, grid))) for offset in np.ndindex(*block)]
    fits = np.ones((dropped.shape[0], *grid), bool)  # where a whole dropped block starts
    for window in windows:
        fits &= dropped[window]
    covered = np.zeros_like(dropped)
    for window in windows:
        covered[window] |= fits
    return bool(np.array_equal(covered, dropped))


def whole_blocks_check(config: StatConfig, dropped: dict[str, np.ndarray]) -> Check:
    """``"valid"``: every dropped region of every mask is a union of whole blocks, in each twin."""
    whole = {f: whole_blocks(dropped[f], config.block) for f in FRAMEWORKS}
    return Check(
        kind="statistical",
        config=config.name,
        statistic="dropped regions are whole blocks",
        jax=whole["jax"],
        torch=whole["torch"],
        analytic=True,
        test_statistic="-",
        bound="every plane",
        passed=all(whole.values()),
    )


def shared_masks_check(config: StatConfig, out: dict[str, np.ndarray]) -> Check:
    """Shared masks (across channels or the batch) are identical in every draw, in each twin."""
    axis = 1 if config.share == "channels" else 0
    same = {}
    for framework in FRAMEWORKS:
        dropped = out[framework] == 0
        same[framework] = bool((dropped == dropped.take([0], axis=axis)).all())
    return Check(
        kind="statistical",
        config=config.name,
        statistic=f"masks identical across {config.share}",
        jax=same["jax"],
        torch=same["torch"],
        analytic=True,
        test_statistic="-",
        bound="every draw",
        passed=all(same.values()),
    )


def channel_correlation(config: StatConfig, out: dict[str, np.ndarray]) -> Measurement:
    """Independent masks are uncorrelated: dropped fractions of disjoint channel pairs, Fisher's z."""
    r, z = {}, {}
    for framework in FRAMEWORKS:
        # Pairs (0, 1), (2, 3), ...: disjoint, so each is an independent sample of the correlation.
        fractions = (out[framework] == 0).reshape(*out[framework].shape[:2], -1).mean(axis=2)
        even, odd = fractions[:, 0::2].ravel(), fractions[:, 1::2].ravel()
        r[framework] = float(np.corrcoef(even, odd)[0, 1])
        z[framework] = float(np.arctanh(r[framework]) * math.sqrt(even.size - 3))
    return Measurement(
        config=config.name,
        statistic="correlation of channel pairs' dropped fractions (Fisher z vs 0)",
        jax=r["jax"],
        torch=r["torch"],
        analytic=0.0,
        test=ZTest(z),
    )


def coupling(config: StatConfig, out: dict[str, np.ndarray]) -> Measurement | Check:
    """Shared masks are identical; independent ones are uncorrelated."""
    return channel_correlation(config, out) if config.share == "none" else shared_masks_check(config, out)


def unit_factors(draws: Draws) -> dict[str, np.ndarray]:
    """Per twin, the factor each unit was multiplied by, ``out / x`` in float64: 0 where dropped, else the scale."""
    x = draws.x.astype(np.float64)
    return {f: draws.out[f].astype(np.float64) / x for f in FRAMEWORKS}


def normalisation_groups(config: StatConfig, factors: np.ndarray) -> np.ndarray:
    """``factors`` as ``(groups, units)``: one group per rescaled unit of ``normalize``.

    ``"batch"``: the whole draw; ``"sample"``: each sample; ``"expected"``: each plane.
    """
    groups = {"batch": 1, "sample": factors.shape[0], "expected": factors.shape[0] * factors.shape[1]}
    return factors.reshape(groups[config.normalize], -1)


def scale_error(factors: np.ndarray, scale: float | None = None) -> float:
    """The worst relative error of the factors of kept units over groups ``(groups, units)``.

    With ``scale`` (``"expected"``: ``1 / (1 - E)``) each kept factor is compared with it. Without
    (``"batch"``, ``"sample"``), the kept units of a group share one factor and the mean factor
    over the group is 1: the larger of ``|mean - 1|`` and the kept factors' relative spread. A
    group with nothing kept is all zeros, as the contract says, and has no error.

    Examples:
      >>> scale_error(np.array([[0.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
      0.0
      >>> scale_error(np.array([[0.0, 1.5, 2.0, 0.0]]))
      0.25
      >>> scale_error(np.array([[0.0, 1.25, 1.25, 1.25]]), scale=1.25)
      0.0
    """
    errors = []
    for group in factors:
        kept = group[group != 0]
        if not kept.size:
            continue
        if scale is not None:
            errors.append(np.abs(kept / scale - 1).max())
        else:
            errors += [abs(group.mean() - 1), (kept.max() - kept.min()) / kept.max()]
    return float(max(errors, default=0.0))


def scale_check(config: StatConfig, draws: Draws) -> Check:
    """``E[out] = E[x]``: every kept unit gets the scale ``normalize`` defines, in every draw.

    ``"batch"`` and ``"sample"``: one factor per batch or sample, of mean 1 over it, so that
    ``E[out] = E[x]`` holds draw by draw. ``"expected"``: the factor ``1 / (1 - E)``, ``E`` the
    analytic expected drop, so that ``E[out] = E[x]`` holds in expectation given the mean
    dropped fraction, which the z-tests check. Exact but for float32 rounding: no statistics.
    """
    factors = unit_factors(draws)
    scale = 1 / (1 - config.expected_drop) if config.normalize == "expected" else None
    error = max(scale_error(normalisation_groups(config, factors[f]), scale) for f in FRAMEWORKS)
    ratio = {f: float(draws.out[f].sum(dtype=np.float64) / draws.x.sum(dtype=np.float64)) for f in FRAMEWORKS}
    per = "1 / (1 - E)" if scale is not None else f"one factor of mean 1 per {config.normalize}"
    return Check(
        kind="statistical",
        config=config.name,
        statistic=f"E[out] / E[x], normalize='{config.normalize}' (test: worst rel. error of out / x vs {per})",
        jax=ratio["jax"],
        torch=ratio["torch"],
        analytic=1.0,
        test_statistic=error,
        bound=f"< {SCALE_TOLERANCE:g}",
        passed=error < SCALE_TOLERANCE,
    )


def analyse(config: StatConfig, draws: Draws) -> ConfigResult:
    """Every statistic of one configuration's draws, unjudged, and the data its figures need."""
    dropped = {f: independent_planes(draws.out[f], config.share) == 0 for f in FRAMEWORKS}
    fractions = {f: per_plane_mean(dropped[f]) for f in FRAMEWORKS}
    items = [
        mean_against_analytic(config, fractions),
        mean_jax_against_torch(config, fractions),
        fraction_distributions(config, fractions),
        position_frequencies(config, dropped),
    ]
    if config.seed_region == "valid":
        items.append(whole_blocks_check(config, dropped))
    items += [coupling(config, draws.out), scale_check(config, draws)]
    figure = FigureData(
        config=config.name,
        fractions=fractions,
        frequency={f: dropped[f].mean(axis=0) for f in FRAMEWORKS},
        analytic_frequency=config.position_probability,
        expected=config.expected_drop,
    )
    return ConfigResult(items=items, figure=figure)


def measure(config: StatConfig, draws: int, devices: Devices, seed: int = 0) -> ConfigResult:
    """Draw ``draws`` masks per twin for one configuration and compute its statistics (not yet judged)."""
    return analyse(config, draw(config, draws, devices, seed))


def number_of_tests(results: Sequence[ConfigResult]) -> int:
    """The number of statistical tests in ``results``: the Bonferroni divisor."""
    return sum(item.test.count for result in results for item in result.items if isinstance(item, Measurement))


def per_test_level(results: Sequence[ConfigResult], family: float = SUITE_FALSE_ALARM) -> float:
    """The false-alarm rate of each test, so that all of them together stay at ``family`` (Bonferroni)."""
    return family / max(number_of_tests(results), 1)


def judge(results: Sequence[ConfigResult], family: float = SUITE_FALSE_ALARM) -> list[Check]:
    """The report rows of all configurations, every test held to ``per_test_level(results, family)``.

    Examples:
      >>> from parity_tests import devices
      >>> config = StatConfig(spatial=(16,), block_size=3, drop_prob=0.2)
      >>> results = [measure(config, 256, devices.resolve("cpu"))]
      >>> number_of_tests(results), all(check.passed for check in judge(results))
      (8, True)
    """
    level = per_test_level(results, family)
    return [
        item.judged(level) if isinstance(item, Measurement) else item for result in results for item in result.items
    ]
