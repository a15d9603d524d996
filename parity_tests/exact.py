"""Exact parity: one numpy seed array through both ``apply_seeds`` gives the same mask, output, gradient.

The seeds are drawn once with numpy, in the torch layout ``(N, C, *grid)``, and moved to the
channels-last layout for JAX. Outputs and gradients must agree to 1 ulp of their dtype (in
practice they are bit-identical: both twins do the same float32 operations in the same
order); masks must be identical. The JAX channels-first path (``channel_axis=1``) is checked
against its channels-last path too. Beyond masks, the traced seed rate and expected drop
(float32 code in each framework) must agree with ``dropblock_common``'s float64 values, and
the schedules with ``numpy.linspace``.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import torch

import dropblock_common as dc
import dropblock_jax as dj
import dropblock_torch as dt
from dropblock_common import validation
from dropblock_jax import functional as jax_functional
from dropblock_jax import schedules as jax_schedules
from dropblock_torch import functional as torch_functional
from dropblock_torch import schedules as torch_schedules
from parity_tests.checks import Check
from parity_tests.devices import Devices

# (shape in the torch layout, block_size, label): 1D/2D/3D, odd, even, rectangular, oversize;
# 32 channels run JAX's bit-packed path (dropblock_jax.bitmask; tests/test_bitmask.py checks
# its 1D, 3D and 4- to 16-bit words against the numpy reference).
SHAPES = [
    ((2, 3, 17), 5, "1D odd"),
    ((2, 2, 12), 4, "1D even"),
    ((2, 3, 14, 14), 7, "2D odd"),
    ((2, 2, 12, 12), 4, "2D even"),
    ((2, 2, 10, 9), (4, 3), "2D rectangular"),
    ((2, 2, 6, 6), 9, "2D oversize"),
    ((1, 2, 8, 7, 6), (3, 2, 4), "3D"),
    ((2, 32, 12, 11), 3, "2D 32 channels (packed)"),
]
SHARING = ("none", "channels", "batch")
DTYPES = {
    "float32": (jnp.float32, torch.float32, 23),
    "bfloat16": (jnp.bfloat16, torch.bfloat16, 7),
    "float16": (jnp.float16, torch.float16, 10),
}
EXPECTED_DROP = 0.2  # the value handed to normalize="expected"


@dataclasses.dataclass(frozen=True)
class ExactConfig:
    shape: tuple[int, ...]
    block_size: int | tuple[int, ...]
    label: str
    seed_region: str
    share: str
    normalize: str
    dtype: str

    @property
    def name(self) -> str:
        options = f"{self.seed_region} share={self.share} {self.normalize} {self.dtype}"
        return f"{self.label} {self.shape} k={self.block_size} {options}"


def exact_configs(every_dtype: bool = True) -> list[ExactConfig]:
    """Every shape x seed region x sharing x normalisation in float32; the half types on two shapes."""
    configs = [
        ExactConfig(shape, block, label, region, share, normalize, "float32")
        for (shape, block, label), region, share, normalize in itertools.product(
            SHAPES, ("valid", "full"), SHARING, dc.NORMALIZE_MODES
        )
    ]
    if every_dtype:
        configs += [
            ExactConfig(shape, block, label, region, "none", normalize, dtype)
            for (shape, block, label), region, normalize, dtype in itertools.product(
                SHAPES[2:4], ("valid", "full"), ("batch", "expected"), ("bfloat16", "float16")
            )
        ]
    return configs


def _seed_grid(config: ExactConfig, rng: np.random.Generator) -> np.ndarray:
    spatial = config.shape[2:]
    block = validation.effective_block_size(spatial, validation.block_size_tuple(config.block_size, len(spatial)))
    grid = list(dc.seed_grid_shape(spatial, block, config.seed_region))
    batch = 1 if config.share == "batch" else config.shape[0]
    channels = 1 if config.share == "channels" else config.shape[1]
    return rng.random((batch, channels, *grid)) < 0.15


def _ulps(a: np.ndarray, b: np.ndarray, mantissa_bits: int) -> float:
    """The largest difference between ``a`` and ``b`` in units in the last place of their dtype.

    Zeros of opposite sign count as infinitely far apart: the twins do the same operations, so
    even the sign of a dropped unit's zero must agree.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    if np.any((a == 0) & (b == 0) & (np.signbit(a) != np.signbit(b))):
        return float("inf")
    magnitude = np.maximum(np.abs(a), np.abs(b))
    spacing = np.where(magnitude > 0, 2.0 ** (np.floor(np.log2(np.maximum(magnitude, 1e-300))) - mantissa_bits), 1.0)
    return float(np.max(np.abs(a - b) / spacing, initial=0.0))


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(jnp.asarray(value, jnp.float32))


def run_exact(config: ExactConfig, devices: Devices) -> list[Check]:
    """Compare mask, output and gradient of both ``apply_seeds`` on one configuration."""
    rng = np.random.default_rng(zlib.crc32(config.name.encode()))
    seeds = _seed_grid(config, rng)
    x = rng.uniform(-2.0, 2.0, config.shape).astype(np.float32)
    x[np.abs(x) < 1e-3] = 1.0  # a zero input would look like a dropped unit
    weights = rng.uniform(-1.0, 1.0, config.shape).astype(np.float32)
    jax_dtype, torch_dtype, mantissa = DTYPES[config.dtype]
    options = dict(seed_region=config.seed_region, normalize=config.normalize, expected_drop=EXPECTED_DROP)

    def jax_loss(x_last, seeds_last, weights_last):
        out = dj.apply_seeds(x_last, seeds_last, config.block_size, **options)
        return jnp.sum(out.astype(jnp.float32) * weights_last), out

    with jax.default_device(devices.jax_device):
        last = lambda a: jnp.moveaxis(jnp.asarray(a), 1, -1)  # noqa: E731
        x_last = last(x).astype(jax_dtype)
        (_, jax_out), jax_grad = jax.value_and_grad(jax_loss, has_aux=True)(x_last, last(seeds), last(weights))
        jax_first = dj.apply_seeds(
            jnp.asarray(x).astype(jax_dtype), seeds, config.block_size, channel_axis=1, **options
        )
        jax_out, jax_grad = (np.moveaxis(_to_numpy(a), -1, 1) for a in (jax_out, jax_grad))
        jax_first = _to_numpy(jax_first)

    x_torch = torch.tensor(x, device=devices.torch_device).to(torch_dtype).requires_grad_()
    seeds_torch = torch.tensor(seeds, device=devices.torch_device)
    torch_out = dt.apply_seeds(x_torch, seeds_torch, config.block_size, **options)
    (torch_out.float() * torch.tensor(weights, device=devices.torch_device)).sum().backward()
    torch_out, torch_grad = _to_numpy(torch_out), _to_numpy(x_torch.grad)

    mismatched = int(np.sum((jax_out == 0) != (torch_out == 0)))
    out_ulps, grad_ulps = _ulps(jax_out, torch_out, mantissa), _ulps(jax_grad, torch_grad, mantissa)
    layout_ulps = _ulps(jax_first, jax_out, mantissa)
    dropped = float(np.mean(torch_out == 0))
    return [
        Check(
            "exact",
            config.name,
            "mask (units that differ)",
            dropped,
            dropped,
            None,
            mismatched,
            "== 0",
            mismatched == 0,
        ),
        Check(
            "exact",
            config.name,
            "output (max ulps)",
            float(np.abs(jax_out).max()),
            float(np.abs(torch_out).max()),
            None,
            out_ulps,
            "<= 1",
            out_ulps <= 1,
        ),
        Check(
            "exact",
            config.name,
            "gradient (max ulps)",
            float(np.abs(jax_grad).max()),
            float(np.abs(torch_grad).max()),
            None,
            grad_ulps,
            "<= 1",
            grad_ulps <= 1,
        ),
        Check(
            "exact",
            config.name,
            "jax channel_axis=1 vs -1 (max ulps)",
            layout_ulps,
            None,
            None,
            layout_ulps,
            "== 0",
            layout_ulps == 0,
        ),
    ]


RATE_CASES = [
    ((28, 28), 7, 0.1, "valid", False),
    ((28, 28), 7, 0.1, "full", True),
    ((14, 14), 4, 0.3, "valid", True),
    ((12, 9), (5, 2), 0.15, "full", False),
    ((32,), 5, 0.2, "valid", True),
    ((8, 8, 8), 3, 0.05, "full", True),
    ((6, 6), 9, 0.5, "valid", True),
]


def run_rates(devices: Devices) -> list[Check]:
    """The traced (float32) seed rate and expected drop of each twin against the float64 spec."""
    checks = []
    for spatial, block_size, drop_prob, region, calibrate in RATE_CASES:
        gamma = dc.seed_rate(spatial, drop_prob, block_size, seed_region=region, calibrate=calibrate)
        expected = dc.expected_drop_fraction(spatial, block_size, gamma, seed_region=region)
        shape_last, shape_first = (1, *spatial, 1), (1, 1, *spatial)
        jax_layout = jax_functional._layout(shape_last, -1, block_size)
        with jax.default_device(devices.jax_device):
            jax_rates = jax.jit(jax_functional._traced_rates, static_argnums=(1, 2, 3))
            traced = jax_rates(jnp.float32(drop_prob), jax_layout, region, calibrate)
            jax_gamma, jax_expected = (float(v) for v in traced)
        torch_layout = torch_functional._layout(shape_first, block_size)
        rate = torch.tensor(drop_prob, device=devices.torch_device)
        torch_gamma, torch_expected = (
            float(v) for v in torch_functional._rates(rate, None, torch_layout, region, calibrate, devices.torch_device)
        )
        name = f"{len(spatial)}D {'x'.join(map(str, spatial))} k={block_size} p={drop_prob} {region}" + (
            " calibrated" if calibrate else ""
        )
        for statistic, truth, ours in (
            ("seed rate (traced, float32)", gamma, (jax_gamma, torch_gamma)),
            ("expected drop (traced, float32)", expected, (jax_expected, torch_expected)),
        ):
            error = max(abs(v - truth) / truth for v in ours)
            checks.append(
                Check("exact", name, statistic, ours[0], ours[1], truth, error, "rel. error < 1e-5", error < 1e-5)
            )
    return checks


def run_schedules() -> list[Check]:
    """Both twins' schedules against ``numpy.linspace``, step by step."""
    checks = []
    for start, stop, steps in ((0.0, 0.1, 5), (0.05, 0.3, 1000), (0.25, 0.0, 7), (0.1, 0.1, 1)):
        reference = np.linspace(start, stop, steps)
        ts = np.arange(steps + 5)
        expected = reference[np.minimum(ts, steps - 1)]
        jax_values = np.asarray(jax.vmap(jax_schedules.linear(start, stop, steps))(jnp.asarray(ts)))
        torch_values = torch_schedules.linear(start, stop, steps)(torch.as_tensor(ts)).numpy()
        error = float(max(np.abs(jax_values - expected).max(), np.abs(torch_values - expected).max()))
        name = f"linear({start}, {stop}, {steps})"
        checks.append(
            Check(
                "exact",
                name,
                "schedule vs linspace (max abs error)",
                float(jax_values[-1]),
                float(torch_values[-1]),
                float(expected[-1]),
                error,
                "< 1e-7",
                error < 1e-7,
            )
        )
    return checks
