"""Exact parity: one numpy seed array through both ``apply_seeds`` gives the same mask, output, gradient.

The seeds are drawn once with numpy, in the torch layout ``(N, C, *grid)``, and moved to the
channels-last layout for JAX. Outputs and gradients must agree to 1 ulp of their dtype on the
CPU (in practice they are bit-identical: both twins do the same float32 operations in the same
order) and to ``GPU_ULPS`` on a GPU; masks must be identical everywhere. The JAX channels-first
path (``channel_axis=1``) is checked against its channels-last path too. Beyond masks, the seed
rate and expected drop that the twins compute for a traced rate (the float32 code of
``dropblock_common.rates`` in each framework, and the ``normalize="expected"`` scale each
twin's ``dropblock`` applies) must agree with ``dropblock_common``'s float64 values, and the
schedules with ``numpy.linspace``.
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
from dropblock_common import rates
from dropblock_common.layout import layout
from dropblock_jax import schedules as jax_schedules
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
SEED_DENSITY = 0.15  # fraction of seed positions set: overlapping blocks, and kept units left


@dataclasses.dataclass(frozen=True)
class ExactConfig:
    """One input shape, block and option set, fed the same seeds in both twins."""

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
    """Every shape x seed region x sharing x normalisation in float32; the half types on two shapes.

    Examples:
      >>> len(exact_configs(every_dtype=False))
      192
    """
    configs = [
        ExactConfig(
            shape=shape,
            block_size=block,
            label=label,
            seed_region=region,
            share=share,
            normalize=normalize,
            dtype="float32",
        )
        for (shape, block, label), region, share, normalize in itertools.product(
            SHAPES, ("valid", "full"), SHARING, dc.NORMALIZE_MODES
        )
    ]
    if every_dtype:
        configs += [
            ExactConfig(
                shape=shape,
                block_size=block,
                label=label,
                seed_region=region,
                share="none",
                normalize=normalize,
                dtype=dtype,
            )
            for (shape, block, label), region, normalize, dtype in itertools.product(
                SHAPES[2:4], ("valid", "full"), ("batch", "expected"), ("bfloat16", "float16")
            )
        ]
    return configs


@dataclasses.dataclass(frozen=True)
class ExactInputs:
    """What both twins are fed, in the torch layout ``(N, C, *spatial)``.

    Attributes:
      seeds: the boolean seed grid, size 1 on a shared axis.
      x: the input, float32, no zeros (a zero would look like a dropped unit).
      weights: the cotangent: the gradient is that of ``sum(out * weights)``.
    """

    seeds: np.ndarray
    x: np.ndarray
    weights: np.ndarray


@dataclasses.dataclass(frozen=True)
class TwinResult:
    """One twin's output and gradient, as float32 numpy arrays in the torch layout."""

    out: np.ndarray
    grad: np.ndarray


def exact_inputs(config: ExactConfig) -> ExactInputs:
    """Seeds, input and cotangent of a configuration, from a generator seeded by its name."""
    rng = np.random.default_rng(zlib.crc32(config.name.encode()))
    seed_shape = layout(config.shape, config.block_size).seed_shape(
        config.seed_region, share_channels=config.share == "channels", share_batch=config.share == "batch"
    )
    seeds = rng.random(seed_shape) < SEED_DENSITY
    x = rng.uniform(-2.0, 2.0, config.shape).astype(np.float32)
    x[np.abs(x) < 1e-3] = 1.0
    weights = rng.uniform(-1.0, 1.0, config.shape).astype(np.float32)
    return ExactInputs(seeds=seeds, x=x, weights=weights)


def _apply_options(config: ExactConfig) -> dict:
    return dict(seed_region=config.seed_region, normalize=config.normalize, expected_drop=EXPECTED_DROP)


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(jnp.asarray(value, jnp.float32))


def _channels_last(array: np.ndarray) -> jax.Array:
    return jnp.moveaxis(jnp.asarray(array), 1, -1)


def jax_result(config: ExactConfig, inputs: ExactInputs, devices: Devices) -> TwinResult:
    """``dropblock_jax.apply_seeds`` with channels last, and its gradient, moved to the torch layout."""
    jax_dtype = DTYPES[config.dtype][0]

    def loss(x, seeds, weights):
        out = dj.apply_seeds(x, seeds, config.block_size, **_apply_options(config))
        return jnp.sum(out.astype(jnp.float32) * weights), out

    with jax.default_device(devices.jax_device):
        x = _channels_last(inputs.x).astype(jax_dtype)
        (_, out), grad = jax.value_and_grad(loss, has_aux=True)(
            x, _channels_last(inputs.seeds), _channels_last(inputs.weights)
        )
    return TwinResult(out=np.moveaxis(_to_numpy(out), -1, 1), grad=np.moveaxis(_to_numpy(grad), -1, 1))


def jax_channels_first_output(config: ExactConfig, inputs: ExactInputs, devices: Devices) -> np.ndarray:
    """``dropblock_jax.apply_seeds`` with ``channel_axis=1``, on the torch layout as it is."""
    with jax.default_device(devices.jax_device):
        x = jnp.asarray(inputs.x).astype(DTYPES[config.dtype][0])
        out = dj.apply_seeds(x, inputs.seeds, config.block_size, channel_axis=1, **_apply_options(config))
    return _to_numpy(out)


def torch_result(config: ExactConfig, inputs: ExactInputs, devices: Devices) -> TwinResult:
    """``dropblock_torch.apply_seeds`` and its gradient."""
    x = torch.tensor(inputs.x, device=devices.torch_device).to(DTYPES[config.dtype][1]).requires_grad_()
    seeds = torch.tensor(inputs.seeds, device=devices.torch_device)
    out = dt.apply_seeds(x, seeds, config.block_size, **_apply_options(config))
    (out.float() * torch.tensor(inputs.weights, device=devices.torch_device)).sum().backward()
    return TwinResult(out=_to_numpy(out), grad=_to_numpy(x.grad))


def ulps(a: np.ndarray, b: np.ndarray, mantissa_bits: int) -> float:
    """The largest difference between ``a`` and ``b`` in units in the last place of their dtype.

    Zeros of opposite sign count as infinitely far apart: the twins do the same operations, so
    even the sign of a dropped unit's zero must agree.

    Examples:
      >>> ulps(np.array([1.0, 0.0]), np.array([1.0 + 2.0**-23, 0.0]), 23)
      1.0
      >>> ulps(np.array([0.0]), np.array([-0.0]), 23)
      inf
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    if np.any((a == 0) & (b == 0) & (np.signbit(a) != np.signbit(b))):
        return float("inf")
    magnitude = np.maximum(np.abs(a), np.abs(b))
    spacing = np.where(magnitude > 0, 2.0 ** (np.floor(np.log2(np.maximum(magnitude, 1e-300))) - mantissa_bits), 1.0)
    return float(np.max(np.abs(a - b) / spacing, initial=0.0))


# On a GPU, XLA divides float32 with PTX's ``div.full`` (within 2 ulp) where torch's CUDA kernels
# round the quotient correctly, so a counted scale (``normalize="batch"`` or ``"sample"``:
# numel / kept) may differ by 2 ulp, and the product with ``x`` by one more rounding.
GPU_ULPS = 3


def exact_checks(
    config: ExactConfig, jax_twin: TwinResult, torch_twin: TwinResult, jax_first: np.ndarray, max_ulps: int = 1
) -> list[Check]:
    """The verdicts on one configuration: masks equal, outputs and gradients within ``max_ulps``, layouts equal."""
    mantissa = DTYPES[config.dtype][2]
    mismatched = int(np.sum((jax_twin.out == 0) != (torch_twin.out == 0)))
    out_ulps, grad_ulps = ulps(jax_twin.out, torch_twin.out, mantissa), ulps(jax_twin.grad, torch_twin.grad, mantissa)
    layout_ulps = ulps(jax_first, jax_twin.out, mantissa)
    row = dict(kind="exact", config=config.name)
    return [
        Check(
            **row,
            statistic="dropped fraction of the mask (test: units whose mask differs)",
            jax=float(np.mean(jax_twin.out == 0)),
            torch=float(np.mean(torch_twin.out == 0)),
            test_statistic=mismatched,
            bound="== 0",
            passed=mismatched == 0,
        ),
        Check(
            **row,
            statistic="output, jax vs torch (max ulps)",
            test_statistic=out_ulps,
            bound=f"<= {max_ulps}",
            passed=out_ulps <= max_ulps,
        ),
        Check(
            **row,
            statistic="gradient, jax vs torch (max ulps)",
            test_statistic=grad_ulps,
            bound=f"<= {max_ulps}",
            passed=grad_ulps <= max_ulps,
        ),
        Check(
            **row,
            statistic="jax output, channel_axis=1 vs -1 (max ulps)",
            test_statistic=layout_ulps,
            bound="== 0",
            passed=layout_ulps == 0,
        ),
    ]


def run_exact(config: ExactConfig, devices: Devices) -> list[Check]:
    """Compare mask, output and gradient of both ``apply_seeds`` on one configuration.

    Examples:
      >>> from parity_tests import devices
      >>> checks = run_exact(exact_configs()[0], devices.resolve("cpu"))
      >>> [check.passed for check in checks]
      [True, True, True, True]
    """
    inputs = exact_inputs(config)
    counted_scale = config.normalize in ("batch", "sample")
    return exact_checks(
        config,
        jax_result(config, inputs, devices),
        torch_result(config, inputs, devices),
        jax_channels_first_output(config, inputs, devices),
        max_ulps=GPU_ULPS if devices.kind == "gpu" and counted_scale else 1,
    )


@dataclasses.dataclass(frozen=True)
class RateCase:
    """A map, block, rate and options whose seed rate and expected drop are compared with the spec."""

    spatial: tuple[int, ...]
    block_size: int | tuple[int, ...]
    drop_prob: float
    seed_region: str
    calibrate: bool
    # Also through each twin's dropblock (its normalize="expected" scale): seconds of JAX compiling
    # per case, so on one case of each formula (the paper's, the calibrated solve).
    through_dropblock: bool = False

    @property
    def name(self) -> str:
        dims = "x".join(map(str, self.spatial))
        calibrated = " calibrated" if self.calibrate else ""
        return f"{len(self.spatial)}D {dims} k={self.block_size} p={self.drop_prob} {self.seed_region}{calibrated}"


RATE_CASES = [
    RateCase(
        spatial=(28, 28), block_size=7, drop_prob=0.1, seed_region="valid", calibrate=False, through_dropblock=True
    ),
    RateCase(spatial=(28, 28), block_size=7, drop_prob=0.1, seed_region="full", calibrate=True),
    RateCase(spatial=(14, 14), block_size=4, drop_prob=0.3, seed_region="valid", calibrate=True),
    RateCase(spatial=(12, 9), block_size=(5, 2), drop_prob=0.15, seed_region="full", calibrate=False),
    RateCase(spatial=(32,), block_size=5, drop_prob=0.2, seed_region="valid", calibrate=True, through_dropblock=True),
    RateCase(spatial=(8, 8, 8), block_size=3, drop_prob=0.05, seed_region="full", calibrate=True),
    RateCase(spatial=(6, 6), block_size=9, drop_prob=0.5, seed_region="valid", calibrate=True),
]
RATE_TOLERANCE = 1e-5  # relative; float32 arithmetic (and a float32 Newton solve) against float64
RATE_CHANNELS = 16  # per sample in the scale check: enough planes that some are kept


def spec_rates(case: RateCase) -> tuple[float, float]:
    """gamma and the expected dropped fraction from ``dropblock_common``'s float functions (float64)."""
    gamma = dc.seed_rate(
        case.spatial, case.drop_prob, case.block_size, seed_region=case.seed_region, calibrate=case.calibrate
    )
    return gamma, dc.expected_drop_fraction(case.spatial, case.block_size, gamma, seed_region=case.seed_region)


def _rate_table(case: RateCase) -> rates.RateTable:
    spec = layout((1, 1, *case.spatial), case.block_size)
    return rates.rate_table(spec.spatial_shape, spec.block, case.seed_region)


def _jnp_asarray(values: np.ndarray, like: jax.Array) -> jax.Array:
    return jnp.asarray(values, dtype=like.dtype)


def _torch_asarray(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


def jax_traced_rates(case: RateCase, devices: Devices) -> tuple[float, float]:
    """gamma and expected drop from the spec's array functions in ``jax.numpy``, the rate traced under ``jit``."""
    table = _rate_table(case)

    @jax.jit
    def traced(drop_prob):
        gamma = rates.seed_rate_array(drop_prob, table, case.calibrate, jnp, _jnp_asarray)
        return gamma, rates.expected_drop_fraction_array(gamma, table, jnp, _jnp_asarray)

    with jax.default_device(devices.jax_device):
        return tuple(float(value) for value in traced(jnp.float32(case.drop_prob)))


def torch_tensor_rates(case: RateCase, devices: Devices) -> tuple[float, float]:
    """gamma and expected drop from the spec's array functions in ``torch``, a float32 tensor on the device."""
    table = _rate_table(case)
    drop_prob = torch.tensor(case.drop_prob, dtype=torch.float32, device=devices.torch_device)
    gamma = rates.seed_rate_array(drop_prob, table, case.calibrate, torch, _torch_asarray)
    expected = rates.expected_drop_fraction_array(gamma, table, torch, _torch_asarray)
    return float(gamma), float(expected)


def _kept_value(out: np.ndarray) -> float:
    """The value of the kept units of a DropBlock output on ones (all equal: the scale); NaN if none is kept."""
    kept = out[out != 0]
    return float(kept.max()) if kept.size else float("nan")


def _rate_options(case: RateCase) -> dict:
    return dict(seed_region=case.seed_region, calibrate=case.calibrate, normalize="expected")


def jax_expected_scale(case: RateCase, devices: Devices) -> float:
    """The scale ``dropblock_jax.dropblock`` gives kept units with ``normalize="expected"``, the rate traced."""

    @jax.jit
    def dropblock(drop_prob):
        x = jnp.ones((2, *case.spatial, RATE_CHANNELS))
        return dj.dropblock(x, jax.random.key(0), drop_prob, case.block_size, **_rate_options(case))

    with jax.default_device(devices.jax_device):
        return _kept_value(np.asarray(dropblock(jnp.float32(case.drop_prob))))


def torch_expected_scale(case: RateCase, devices: Devices) -> float:
    """The scale ``dropblock_torch.drop_block`` gives kept units with ``normalize="expected"``, the rate a tensor."""
    x = torch.ones(2, RATE_CHANNELS, *case.spatial, device=devices.torch_device)
    drop_prob = torch.tensor(case.drop_prob, device=devices.torch_device)
    generator = torch.Generator(device=devices.torch_device).manual_seed(0)
    out = dt.drop_block(x, drop_prob, case.block_size, generator=generator, **_rate_options(case))
    return _kept_value(out.cpu().numpy())


def _relative_error_check(case: RateCase, statistic: str, jax_value: float, torch_value: float, truth: float) -> Check:
    error = max(abs(value - truth) / truth for value in (jax_value, torch_value))  # NaN fails the bound
    return Check(
        kind="exact",
        config=case.name,
        statistic=statistic,
        jax=jax_value,
        torch=torch_value,
        analytic=truth,
        test_statistic=error,
        bound=f"rel. error < {RATE_TOLERANCE:g}",
        passed=bool(error < RATE_TOLERANCE),
    )


def rate_checks(case: RateCase, devices: Devices) -> list[Check]:
    """Seed rate and expected drop (and, for some cases, the ``"expected"`` scale) of both twins vs the spec."""
    gamma, expected = spec_rates(case)
    (jax_gamma, jax_expected), (torch_gamma, torch_expected) = (
        jax_traced_rates(case, devices),
        torch_tensor_rates(case, devices),
    )
    checks = [
        _relative_error_check(
            case, "seed rate, traced float32 (test: rel. error vs the float64 spec)", jax_gamma, torch_gamma, gamma
        ),
        _relative_error_check(
            case,
            "expected drop, traced float32 (test: rel. error vs the float64 spec)",
            jax_expected,
            torch_expected,
            expected,
        ),
    ]
    if case.through_dropblock:
        scales = jax_expected_scale(case, devices), torch_expected_scale(case, devices)
        checks.append(
            _relative_error_check(
                case,
                "dropblock's normalize='expected' scale, traced rate (test: rel. error vs 1 / (1 - E))",
                *scales,
                1 / (1 - expected),
            )
        )
    return checks


def run_rates(devices: Devices) -> list[Check]:
    """The traced (float32) seed rate, expected drop and scale of each twin against the float64 spec.

    Examples:
      >>> from parity_tests import devices
      >>> case = RateCase(spatial=(16,), block_size=3, drop_prob=0.2, seed_region="valid", calibrate=True)
      >>> [check.passed for check in rate_checks(case, devices.resolve("cpu"))]
      [True, True]
    """
    return [check for case in RATE_CASES for check in rate_checks(case, devices)]


SCHEDULE_CASES = ((0.0, 0.1, 5), (0.05, 0.3, 1000), (0.25, 0.0, 7), (0.1, 0.1, 1))
SCHEDULE_TOLERANCE = 1e-7  # absolute: the schedules compute in float32, the values are at most 0.3


def schedule_check(start: float, stop: float, steps: int) -> Check:
    """Both twins' ``linear(start, stop, steps)`` against ``numpy.linspace``, at every step and 5 beyond.

    Examples:
      >>> schedule_check(0.0, 0.1, 5).passed
      True
    """
    ts = np.arange(steps + 5)
    expected = np.linspace(start, stop, steps)[np.minimum(ts, steps - 1)]
    jax_values = np.asarray(jax.vmap(jax_schedules.linear(start, stop, steps))(jnp.asarray(ts)))
    torch_values = torch_schedules.linear(start, stop, steps)(torch.as_tensor(ts)).numpy()
    error = float(max(np.abs(jax_values - expected).max(), np.abs(torch_values - expected).max()))
    return Check(
        kind="exact",
        config=f"linear({start}, {stop}, {steps})",
        statistic="value at the last step (test: max abs error vs linspace, every step)",
        jax=float(jax_values[-1]),
        torch=float(torch_values[-1]),
        analytic=float(expected[-1]),
        test_statistic=error,
        bound=f"< {SCHEDULE_TOLERANCE:g}",
        passed=error < SCHEDULE_TOLERANCE,
    )


def run_schedules() -> list[Check]:
    """Both twins' schedules against ``numpy.linspace``, step by step, for each of ``SCHEDULE_CASES``."""
    return [schedule_check(*case) for case in SCHEDULE_CASES]
