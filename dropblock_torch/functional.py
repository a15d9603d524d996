"""DropBlock for PyTorch: the twin of ``dropblock_jax.functional``, channels at dim 1.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) drops contiguous blocks of a feature map
instead of single units. ``drop_block`` does it in one call; ``sample_seeds`` and
``apply_seeds`` are its random and deterministic halves, and the same seeds give the same
mask here and in JAX. The math lives in ``dropblock_common``.

``drop_prob`` is a Python float (validated, a 0 returns ``x`` itself) or a 0-dim tensor (values
outside [0, 1] are clipped; no recompile under ``torch.compile`` when it changes). A GPU
tensor is never read back to the host; a CPU one is read for free to pick the sampler.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dropblock_common import coverage, rates, validation

BlockSize = int | Sequence[int]
Rate = float | torch.Tensor


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The shape of ``x`` (channels at dim 1), its spatial shape and the effective block."""

    shape: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    block: tuple[int, ...]

    def seed_shape(self, seed_region: str, share_channels: bool, share_batch: bool) -> tuple[int, ...]:
        batch = 1 if share_batch else self.shape[0]
        channels = 1 if share_channels else self.shape[1]
        return (batch, channels, *coverage.seed_grid_shape(self.spatial_shape, self.block, seed_region))


def _layout(shape: Sequence[int], block_size: BlockSize, name: str = "x") -> _Layout:
    shape = tuple(int(size) for size in shape)
    dims = validation.spatial_dims(shape, name=name)
    spatial_shape = shape[2:]
    block = validation.effective_block_size(spatial_shape, validation.block_size_tuple(block_size, dims))
    return _Layout(shape, spatial_shape, block)


def _check_floating(x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got x.dtype={x.dtype}. Cast it first, e.g. x.float().")


def _concrete_drop_prob(drop_prob: Rate) -> float | None:
    """``drop_prob`` as a validated float if it is a number, None if it is a tensor."""
    if isinstance(drop_prob, torch.Tensor):
        if drop_prob.dim() != 0:
            raise ValueError(
                f"drop_prob must be a float or a 0-dim tensor, got a tensor of shape {tuple(drop_prob.shape)}."
            )
        return None
    if not isinstance(drop_prob, numbers.Real) and np.ndim(drop_prob) != 0:
        raise ValueError(f"drop_prob must be a float or a 0-dim tensor, got an array of shape {np.shape(drop_prob)}.")
    return validation.drop_prob_value(drop_prob)


def _torch_asarray(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


# Static numbers (numpy inside) worked out once per call site, outside torch.compile's trace.
@torch.compiler.assume_constant_result
def _concrete_rates(
    drop_prob: float, spatial_shape: tuple[int, ...], block: tuple[int, ...], seed_region: str, calibrate: bool
) -> tuple[float, float]:
    return rates.float32_rates(spatial_shape, block, drop_prob, seed_region, calibrate)


_rate_table = torch.compiler.assume_constant_result(rates.rate_table)


def _rates(drop_prob: Rate, concrete: float | None, layout: _Layout, seed_region: str, calibrate: bool, device):
    """(gamma, expected dropped fraction): Python floats for a number, float32 tensors for a tensor."""
    if concrete is not None:
        return _concrete_rates(concrete, layout.spatial_shape, layout.block, seed_region, calibrate)
    # The rate is a hyperparameter: no gradient flows into it.
    drop_prob = drop_prob.detach().to(device=device, dtype=torch.float32)
    table = _rate_table(layout.spatial_shape, layout.block, seed_region)
    gamma = rates.seed_rate_array(drop_prob, table, calibrate, torch, _torch_asarray)
    return gamma, rates.expected_drop_fraction_array(gamma, table, torch, _torch_asarray)


def _window_any(padded: torch.Tensor, dim: int, window: int) -> torch.Tensor:
    """``out[i] = any(padded[i : i + window])`` along ``dim``, in O(log window) ORs."""
    covered, width = padded, 1
    while 2 * width <= window:  # ``covered`` spans ``width`` cells; double it
        length = covered.shape[dim] - width
        covered = covered.narrow(dim, 0, length) | covered.narrow(dim, width, length)
        width *= 2
    if width < window:  # two overlapping spans of ``width`` make ``window``
        rest = window - width
        length = covered.shape[dim] - rest
        covered = covered.narrow(dim, 0, length) | covered.narrow(dim, rest, length)
    return covered


def dilate(seeds: torch.Tensor, blocks: Sequence[int], paddings: Sequence[tuple[int, int]]) -> torch.Tensor:
    """True wherever some seed's block lies: pad the seed grid, then a running OR per spatial dim.

    Args:
      seeds: a boolean seed grid ``(N, C, *grid)``.
      blocks: the effective block size per spatial dim.
      paddings: ``(low, high)`` zero padding per spatial dim (``coverage.block_padding``).

    Returns:
      A boolean tensor ``(N, C, *spatial)``.
    """
    dropped = seeds
    # A box is separable: one running OR per spatial dim is exact and costs log k, not k^d.
    for offset, (block, (low, high)) in enumerate(zip(blocks, paddings, strict=True)):
        if block == 1:
            continue
        dim = 2 + offset
        pad = [0, 0] * (dropped.dim() - 1 - dim) + [low, high]
        dropped = _window_any(F.pad(dropped, pad), dim, block)
    return dropped


def _dropped_mask(seeds: torch.Tensor, layout: _Layout, seed_region: str) -> torch.Tensor:
    paddings = [coverage.block_padding(block, seed_region) for block in layout.block]
    return dilate(seeds, layout.block, paddings)


def _like_x(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out`` in the memory format of ``x`` (channels_last stays channels_last)."""
    for memory_format in (torch.channels_last, torch.channels_last_3d):
        try:
            wanted = x.is_contiguous(memory_format=memory_format) and not x.is_contiguous()
        except RuntimeError:  # the format does not apply to this rank
            continue
        if wanted:
            return out.contiguous(memory_format=memory_format)
    return out


def _normalized(x: torch.Tensor, dropped: torch.Tensor, normalize: str, expected_drop: Rate | None, inplace: bool):
    """``x`` with the ``dropped`` units zeroed and the rest scaled as ``normalize`` says, in >= float32.

    Two forms, as in the JAX twin. A shared mask forms the factor ``keep * scale`` at its own
    (small) resolution and multiplies ``x`` once. A mask per unit scales ``x`` and zeroes the
    dropped units in place (``where(keep, x * scale, 0)``), so no full-size factor or float copy
    of the mask is allocated.
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    per_unit = dropped.shape == x.shape
    if normalize == "none":
        if per_unit:
            return x.masked_fill_(dropped, 0) if inplace else _like_x(x.masked_fill(dropped, 0), x)
        keep = (~dropped).to(x.dtype)
        return x.mul_(keep) if inplace else _like_x(x * keep, x)
    if normalize == "expected":
        scale = rates.expected_rescale_array(torch.as_tensor(expected_drop, dtype=compute, device=x.device), torch)
    else:
        # count_nonzero: several times faster than a sum over a bool tensor on the CPU.
        if normalize == "batch":
            lost, total = torch.count_nonzero(dropped).reshape((1,) * dropped.dim()), dropped.numel()
        else:
            dims = tuple(range(1, dropped.dim()))
            lost, total = torch.count_nonzero(dropped, dim=dims).reshape(-1, *(1,) * len(dims)), dropped[0].numel()
        kept = (total - lost).to(compute)
        scale = torch.where(kept > 0, torch.tensor(total, dtype=compute, device=x.device) / kept, 0.0)
    if per_unit:
        if inplace and x.dtype == compute:
            return x.mul_(scale).masked_fill_(dropped, 0)
        out = (x.to(compute) * scale).masked_fill_(dropped, 0).to(x.dtype)
        return x.copy_(out) if inplace else _like_x(out, x)
    factor = (~dropped).to(compute) * scale
    if inplace and x.dtype == factor.dtype:
        return x.mul_(factor)
    out = (x.to(factor.dtype) * factor).to(x.dtype)
    return x.copy_(out) if inplace else _like_x(out, x)


def _apply(x, seeds, layout, seed_region, normalize, noise, generator, expected_drop, inplace):
    dropped = _dropped_mask(seeds, layout, seed_region)
    if noise:
        compute = torch.promote_types(x.dtype, torch.float32)
        values = torch.randn(x.shape, generator=generator, device=x.device, dtype=compute).to(x.dtype)
        out = torch.where(dropped, values, x)
        return x.copy_(out) if inplace else _like_x(out, x)
    return _normalized(x, dropped, normalize, expected_drop, inplace)


# Sparse sampling, as in dropblock_jax.sampling: below this rate draw only the successes.
DENSE_ABOVE = 1 / 16
SPARSE_MIN_SIZE = 1 << 14


def seed_budget(size: int, gamma: float) -> int | None:
    """Gaps drawn per round by the sparse sampler (the expected seeds plus 10 standard deviations), or None."""
    if gamma > DENSE_ABOVE or gamma <= 0.0 or size < SPARSE_MIN_SIZE:
        return None
    mean = size * gamma
    return int(mean + 10 * math.sqrt(mean) + 64)


def _sparse_seeds(gamma: float, size: int, budget: int, device, generator) -> torch.Tensor:
    """Successes of a Bernoulli(gamma) sequence of ``size``, placed by geometric gaps.

    Each round draws ``budget`` gaps past the last success so far; the sequence is memoryless,
    so further rounds (rarely needed) continue it exactly.
    """
    seeds = torch.zeros(size + 1, dtype=torch.bool, device=device)
    log_failure, last = math.log1p(-gamma), -1
    while last < size:
        uniform = torch.rand(budget, generator=generator, device=device, dtype=torch.float64)
        # Failures before each success, by inversion (log(0) = -inf gives a gap past the end).
        gaps = torch.floor(torch.log(uniform) / log_failure).clamp_(max=size + 1).to(torch.int64)
        positions = torch.cumsum(gaps + 1, 0) + last
        seeds[positions.clamp_(max=size)] = True
        last = int(positions[-1])
    return seeds[:size]


def bernoulli_seeds(gamma: Rate, shape: Sequence[int], device: torch.device, generator: torch.Generator | None):
    """A boolean seed grid of ``shape``, i.i.d. Bernoulli(``gamma``), drawn on ``device``.

    The one place that chooses the sampling method, as ``dropblock_jax.sampling`` is. Seeds are
    rare, so on the CPU, outside ``torch.compile``, only the successes are drawn (geometric
    gaps: exact); elsewhere, or for large rates, one uniform per position.
    """
    size = math.prod(shape)
    on_cpu = torch.device(device if device is not None else "cpu").type == "cpu"
    if on_cpu and not torch.compiler.is_compiling():
        rate = float(gamma)  # a CPU tensor reads back for free
        budget = seed_budget(size, rate)
        if budget is not None:
            return _sparse_seeds(rate, size, budget, device, generator).reshape(tuple(shape))
    uniform = torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    return uniform < gamma


def sample_seeds(
    shape: Sequence[int],
    drop_prob: Rate,
    block_size: BlockSize,
    *,
    seed_region: str = "valid",
    calibrate: bool = False,
    share_channels: bool = False,
    share_batch: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw DropBlock's seed grid: i.i.d. Bernoulli(gamma) booleans, gamma from ``seed_rate``.

    Args:
      shape: the shape of ``x``, ``(N, C, *spatial)`` with 1 to 3 spatial dims.
      drop_prob: the target fraction of dropped units, a float in [0, 1] or a 0-dim tensor.
      block_size: an int or one int per spatial dim; clipped to the map.
      seed_region: ``"valid"`` (blocks inside the map) or ``"full"`` (seeds everywhere).
      calibrate: make the expected dropped fraction exactly ``drop_prob``.
      share_channels: one seed grid per sample (size-1 channel dim).
      share_batch: one seed grid for the batch (size-1 batch dim).
      generator: the ``torch.Generator`` to draw from (the counterpart of a JAX key).
      device: where to draw; default the generator's device, else the CPU.

    Returns:
      A boolean tensor ``(N or 1, C or 1, *grid)``, ``grid`` being ``S - k + 1`` (valid) or
      ``S`` (full) per spatial dim.

    Examples:
      >>> seeds = sample_seeds((2, 8, 28, 28), 0.1, 7, generator=torch.Generator().manual_seed(0))
      >>> tuple(seeds.shape), seeds.dtype
      ((2, 8, 22, 22), torch.bool)
    """
    layout = _layout(shape, block_size, name="shape")
    validation.check_options(seed_region)
    concrete = _concrete_drop_prob(drop_prob)
    device = torch.device(device) if device is not None else generator.device if generator is not None else None
    seed_shape = layout.seed_shape(seed_region, share_channels, share_batch)
    if concrete == 0.0:
        return torch.zeros(seed_shape, dtype=torch.bool, device=device)
    gamma, _ = _rates(drop_prob, concrete, layout, seed_region, calibrate, device)
    return bernoulli_seeds(gamma, seed_shape, device, generator)


def apply_seeds(
    x: torch.Tensor,
    seeds: torch.Tensor,
    block_size: BlockSize,
    *,
    seed_region: str = "valid",
    normalize: str = "batch",
    noise: bool = False,
    generator: torch.Generator | None = None,
    expected_drop: Rate | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Drop the blocks that ``seeds`` start and rescale: the deterministic half of DropBlock.

    The same seeds give bit-identical masks here and in ``dropblock_jax.apply_seeds``.

    Args:
      x: a floating tensor ``(N, C, *spatial)``.
      seeds: a seed grid as ``sample_seeds`` returns (nonzero means a seed); a size-1 batch or
        channel dim shares the mask.
      block_size: an int or one int per spatial dim; clipped to the map.
      seed_region: ``"valid"`` or ``"full"``, as the seeds were drawn.
      normalize: ``"batch"``, ``"sample"``, ``"expected"`` or ``"none"``, computed in at
        least float32; everything dropped gives zeros.
      noise: dropped units receive standard normal noise from ``generator``, no rescale.
      generator: the generator for the noise.
      expected_drop: the expected dropped fraction; needed by ``normalize="expected"``.
      inplace: write the result into ``x``.

    Returns:
      A tensor of ``x``'s shape, dtype and memory format.

    Examples:
      >>> x = torch.ones(1, 1, 4, 4)
      >>> seeds = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
      >>> seeds[0, 0, 1, 1] = True
      >>> apply_seeds(x, seeds, 2, normalize="none")[0, 0]
      tensor([[1., 1., 1., 1.],
              [1., 0., 0., 1.],
              [1., 0., 0., 1.],
              [1., 1., 1., 1.]])
    """
    _check_floating(x)
    layout = _layout(x.shape, block_size)
    validation.check_options(seed_region, normalize)
    seeds = torch.as_tensor(seeds, device=x.device)
    full_grid = layout.seed_shape(seed_region, share_channels=False, share_batch=False)
    validation.check_seed_shape(
        seeds.shape, full_grid, 1, x_shape=x.shape, block_size=block_size, seed_region=seed_region
    )
    if normalize == "expected" and expected_drop is None and not noise:
        raise ValueError("normalize='expected' needs expected_drop=..., e.g. from expected_drop_fraction.")
    return _apply(x, seeds.bool(), layout, seed_region, normalize, noise, generator, expected_drop, inplace)


def drop_block(
    x: torch.Tensor,
    drop_prob: Rate,
    block_size: BlockSize,
    *,
    training: bool = True,
    seed_region: str = "valid",
    calibrate: bool = False,
    share_channels: bool = False,
    share_batch: bool = False,
    normalize: str = "batch",
    noise: bool = False,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DropBlock: zero random contiguous blocks of a feature map and rescale the rest.

    Args:
      x: a floating tensor ``(N, C, *spatial)`` with 1 to 3 spatial dims, any device,
        ``channels_last`` allowed.
      drop_prob: the target fraction of dropped units: a float in [0, 1] (a 0 returns ``x``)
        or a 0-dim tensor (clipped to [0, 1]; a GPU tensor is never read back to the host).
      block_size: an int or one int per spatial dim; clipped to the map.
      training: if False, return ``x``.
      seed_region: ``"valid"`` (the paper: blocks inside the map) or ``"full"`` (timm).
      calibrate: solve gamma so that the expected dropped fraction equals ``drop_prob``.
      share_channels: one mask per sample shared by its channels.
      share_batch: one mask for the whole batch.
      normalize: ``"batch"``, ``"sample"``, ``"expected"`` or ``"none"`` (see ``apply_seeds``).
      noise: dropped units receive standard normal noise instead of zero, no rescale.
      inplace: write the result into ``x``.
      generator: a ``torch.Generator`` on ``x.device``; default the global one.

    Returns:
      A tensor of ``x``'s shape, dtype and memory format. ``drop_prob=1`` gives zeros.

    Raises:
      ValueError, TypeError: for a bad argument, naming it and its value.

    Examples:
      >>> x = torch.ones(8, 16, 28, 28)
      >>> y = drop_block(x, 0.1, 7, generator=torch.Generator().manual_seed(0))
      >>> tuple(y.shape), y.dtype
      ((8, 16, 28, 28), torch.float32)
      >>> bool(0.05 < (y == 0).float().mean() < 0.15)
      True
    """
    _check_floating(x)
    layout = _layout(x.shape, block_size)
    validation.check_options(seed_region, normalize)
    concrete = _concrete_drop_prob(drop_prob)
    if not training or concrete == 0.0 or x.numel() == 0:
        return x
    gamma, expected = _rates(drop_prob, concrete, layout, seed_region, calibrate, x.device)
    seeds = bernoulli_seeds(gamma, layout.seed_shape(seed_region, share_channels, share_batch), x.device, generator)
    return _apply(x, seeds, layout, seed_region, normalize, noise, generator, expected, inplace)
