"""Statistical parity: each framework's own generator, the same distributions.

For each configuration both twins draw many independent masks (fixed seeds, so a run is
repeatable) on ``x = 1`` with ``normalize="expected"``, so that the dropped units are the
zeros and the kept ones show the scale. The suite compares, per framework and between them:

- the mean dropped fraction (z-tests against ``expected_drop_fraction``, and jax vs torch);
- the distribution of the per-plane dropped fraction (two-sample Kolmogorov-Smirnov);
- the per-position drop frequency against ``1 - (1 - gamma)^c(pos)`` (the largest z);
- block structure (``"valid"``: every dropped region is a union of whole blocks in the map);
- channel and batch coupling (identical masks where shared, uncorrelated ones elsewhere);
- the scale: ``E[out] / E[x]`` against 1.

Every test gets the same share of ``SUITE_FALSE_ALARM`` (Bonferroni over all tests of all
configurations, and over positions within a map), so the whole suite raises a false alarm
with probability at most 1e-3, whatever the number of draws.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import torch
from scipy import stats

import dropblock_common as dc
import dropblock_jax as dj
import dropblock_torch as dt
from dropblock_common import validation
from parity_tests.checks import Check
from parity_tests.devices import Devices

SUITE_FALSE_ALARM = 1e-3
CHANNELS = 16  # per sample, when nothing is shared


@dataclasses.dataclass(frozen=True)
class StatConfig:
    """One distribution to compare: a spatial shape, a block, a rate and the options."""

    spatial: tuple[int, ...]
    block_size: int | tuple[int, ...]
    drop_prob: float
    seed_region: str = "valid"
    calibrate: bool = False
    share: str = "none"

    @property
    def name(self) -> str:
        dims = "x".join(map(str, self.spatial))
        extra = (" calibrated" if self.calibrate else "") + ("" if self.share == "none" else f" share_{self.share}")
        return f"{len(self.spatial)}D {dims} k={self.block_size} p={self.drop_prob} {self.seed_region}{extra}"

    @property
    def block(self) -> tuple[int, ...]:
        return validation.effective_block_size(
            self.spatial, validation.block_size_tuple(self.block_size, len(self.spatial))
        )

    @property
    def gamma(self) -> float:
        return dc.seed_rate(
            self.spatial, self.drop_prob, self.block, seed_region=self.seed_region, calibrate=self.calibrate
        )

    @property
    def expected_drop(self) -> float:
        return dc.expected_drop_fraction(self.spatial, self.block, self.gamma, seed_region=self.seed_region)


CONFIGS = [
    StatConfig((28, 28), 7, 0.1),  # the paper's setting
    StatConfig((28, 28), 7, 0.1, "full"),
    StatConfig((14, 14), 4, 0.2, calibrate=True),
    StatConfig((12, 9), (5, 2), 0.15, "full"),
    StatConfig((32,), 5, 0.2),
    StatConfig((8, 8, 8), 3, 0.1, "full", calibrate=True),
    StatConfig((16, 16), 5, 0.2, share="channels"),
    StatConfig((16, 16), 5, 0.2, "full", share="batch"),
]

# Statistical tests per configuration: mean vs analytic (2), mean jax vs torch (1), KS (1),
# position maps (2), coupling (2), scale (2).
TESTS_PER_CONFIG = 10
ALPHA = SUITE_FALSE_ALARM / (TESTS_PER_CONFIG * len(CONFIGS))
Z_BOUND = float(stats.norm.isf(ALPHA / 2))


def draw_masks(config: StatConfig, draws: int, devices: Devices, seed: int) -> dict[str, np.ndarray]:
    """Outputs ``(batch, channels, *spatial)`` of each twin on ``x = 1``, holding ``draws`` independent masks.

    Shared axes hold few entries (enough to see the sharing), the other axis the draws.
    """
    batch, channels = {
        "none": (math.ceil(draws / CHANNELS), CHANNELS),
        "channels": (draws, 4),
        "batch": (2, draws),
    }[config.share]
    options = dict(
        seed_region=config.seed_region,
        calibrate=config.calibrate,
        share_channels=config.share == "channels",
        share_batch=config.share == "batch",
        normalize="expected",
    )
    with jax.default_device(devices.jax_device):
        x = jnp.ones((batch, *config.spatial, channels))
        jax_out = dj.dropblock(x, jax.random.key(seed), config.drop_prob, config.block_size, **options)
        jax_out = np.moveaxis(np.asarray(jax_out), -1, 1)
    x = torch.ones(batch, channels, *config.spatial, device=devices.torch_device)
    generator = torch.Generator(device=devices.torch_device).manual_seed(seed)
    torch_out = dt.drop_block(x, config.drop_prob, config.block_size, generator=generator, **options).cpu().numpy()
    return {"jax": jax_out, "torch": torch_out}


def _independent_planes(out: np.ndarray, share: str) -> np.ndarray:
    """The independent masks of a draw, ``(planes, *spatial)``: shared copies are counted once."""
    if share == "channels":
        out = out[:, :1]
    elif share == "batch":
        out = out[:1]
    return out.reshape(-1, *out.shape[2:])


def _z_mean(sample: np.ndarray, expected: float) -> float:
    return float((sample.mean() - expected) / (sample.std(ddof=1) / math.sqrt(sample.size)))


def _whole_blocks(dropped: np.ndarray, block: tuple[int, ...]) -> bool:
    """Whether every dropped region of each plane ``(planes, *spatial)`` is a union of whole blocks."""
    spatial = dropped.shape[1:]
    grid = [s - k + 1 for s, k in zip(spatial, block)]
    fits = np.ones((dropped.shape[0], *grid), bool)
    for offset in np.ndindex(*block):
        fits &= dropped[(slice(None), *(slice(o, o + g) for o, g in zip(offset, grid)))]
    covered = np.zeros_like(dropped)
    for offset in np.ndindex(*block):
        covered[(slice(None), *(slice(o, o + g) for o, g in zip(offset, grid)))] |= fits
    return bool(np.array_equal(covered, dropped))


def run_statistical(config: StatConfig, draws: int, devices: Devices, seed: int = 0) -> tuple[list[Check], dict]:
    """All statistical checks of one configuration, and the data the figures need."""
    # A seed of its own per configuration: the same key everywhere would correlate the configurations.
    outputs = draw_masks(config, draws, devices, seed + zlib.crc32(config.name.encode()) % 2**31)
    gamma, expected = config.gamma, config.expected_drop
    probability = 1.0 - (1.0 - gamma) ** dc.coverage_counts(config.spatial, config.block, config.seed_region)
    name, checks = config.name, []
    figure = {"config": name, "analytic_map": probability, "expected": expected}

    planes, fractions, maps, ratios = {}, {}, {}, {}
    for framework, out in outputs.items():
        independent = _independent_planes(out, config.share)
        planes[framework] = independent == 0
        # The kept units show the scale: E[out] / E[x] is 1 in expectation for "expected".
        ratios[framework] = independent.reshape(independent.shape[0], -1).mean(axis=1)
        fractions[framework] = planes[framework].reshape(planes[framework].shape[0], -1).mean(axis=1)
        maps[framework] = planes[framework].mean(axis=0)
    figure.update(fractions=fractions, maps=maps)
    bound = f"|z| < {Z_BOUND:.2f}"

    z = {f: _z_mean(fractions[f], expected) for f in outputs}
    ok = all(abs(v) < Z_BOUND for v in z.values())
    checks.append(
        Check(
            "statistical",
            name,
            "mean dropped fraction",
            fractions["jax"].mean(),
            fractions["torch"].mean(),
            expected,
            f"z={z['jax']:+.2f} / {z['torch']:+.2f}",
            bound,
            ok,
        )
    )
    a, b = fractions["jax"], fractions["torch"]
    z_two = float((a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))
    checks.append(
        Check(
            "statistical",
            name,
            "mean dropped fraction, jax vs torch",
            a.mean(),
            b.mean(),
            expected,
            f"z={z_two:+.2f}",
            bound,
            abs(z_two) < Z_BOUND,
        )
    )
    ks = stats.ks_2samp(a, b)
    checks.append(
        Check(
            "statistical",
            name,
            "per-plane dropped fraction (KS)",
            float(np.median(a)),
            float(np.median(b)),
            None,
            f"D={ks.statistic:.3f} p={ks.pvalue:.2g}",
            f"p > {ALPHA:.1e}",
            ks.pvalue > ALPHA,
        )
    )

    position_bound = float(stats.norm.isf(ALPHA / 2 / probability.size))
    worst = {}
    for framework in outputs:
        n = planes[framework].shape[0]
        worst[framework] = float(
            np.max(np.abs(maps[framework] - probability) / np.sqrt(probability * (1 - probability) / n))
        )
    checks.append(
        Check(
            "statistical",
            name,
            "per-position drop frequency (max |z|)",
            float(maps["jax"].mean()),
            float(maps["torch"].mean()),
            float(probability.mean()),
            f"{worst['jax']:.2f} / {worst['torch']:.2f}",
            f"< {position_bound:.2f}",
            max(worst.values()) < position_bound,
        )
    )

    if config.seed_region == "valid":
        whole = {f: _whole_blocks(planes[f], config.block) for f in outputs}
        checks.append(
            Check(
                "statistical",
                name,
                "dropped regions are whole blocks",
                whole["jax"],
                whole["torch"],
                True,
                "-",
                "all planes",
                all(whole.values()),
            )
        )

    checks.append(_coupling(name, config, outputs))

    z_scale = {f: _z_mean(r, 1.0) for f, r in ratios.items()}
    checks.append(
        Check(
            "statistical",
            name,
            "E[out] / E[x] (normalize='expected')",
            ratios["jax"].mean(),
            ratios["torch"].mean(),
            1.0,
            f"z={z_scale['jax']:+.2f} / {z_scale['torch']:+.2f}",
            bound,
            all(abs(v) < Z_BOUND for v in z_scale.values()),
        )
    )
    return checks, figure


def _coupling(name: str, config: StatConfig, outputs: dict[str, np.ndarray]) -> Check:
    """Shared masks are identical; independent ones are uncorrelated (Fisher z over channel pairs)."""
    values, verdicts, statistic = {}, [], []
    for framework, out in outputs.items():
        dropped = out == 0
        if config.share == "channels":
            same = bool((dropped == dropped[:, :1]).all())
            values[framework], verdicts = same, verdicts + [same]
            continue
        if config.share == "batch":
            same = bool((dropped == dropped[:1]).all())
            values[framework], verdicts = same, verdicts + [same]
            continue
        # Per-plane fractions of disjoint channel pairs (0, 1), (2, 3), ...: independent masks
        # have no correlation, and disjoint pairs are independent samples of it.
        fractions = dropped.reshape(*dropped.shape[:2], -1).mean(axis=2)
        r = np.corrcoef(fractions[:, 0::2].ravel(), fractions[:, 1::2].ravel())[0, 1]
        pairs = fractions[:, 0::2].size
        z = float(np.arctanh(r) * math.sqrt(pairs - 3))
        values[framework] = float(r)
        statistic.append(f"z={z:+.2f}")
        verdicts.append(abs(z) < Z_BOUND)
    if config.share == "none":
        return Check(
            "statistical",
            name,
            "channel correlation (independent masks)",
            values["jax"],
            values["torch"],
            0.0,
            " / ".join(statistic),
            f"|z| < {Z_BOUND:.2f}",
            all(verdicts),
        )
    return Check(
        "statistical",
        name,
        f"masks identical across {config.share}",
        values["jax"],
        values["torch"],
        True,
        "-",
        "all draws",
        all(verdicts),
    )
