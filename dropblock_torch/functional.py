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

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.autograd import forward_ad

from dropblock_common import coverage, rates, validation
from dropblock_common import layout as layouts
from dropblock_common import sampling as policy
from dropblock_torch import bitmask, sampling

BlockSize = int | Sequence[int]
Rate = float | torch.Tensor


def _layout(shape: Sequence[int], block_size: BlockSize, name: str = "x") -> layouts.Layout:
    """The layout of a batched ``shape`` ``(N, C, *spatial)``; see ``_is_batch`` for one unbatched example."""
    return layouts.layout(tuple(shape), block_size, channel_axis=1, name=name)


def _is_batch(shape: Sequence[int], spatial_dims: int | None, name: str = "x") -> bool:
    """Whether ``shape`` is a batch ``(N, C, *spatial)``; False for one example ``(C, *spatial)``."""
    return validation.input_rank(tuple(shape), spatial_dims, name=name)[1]


def check_rank(x: torch.Tensor, spatial_dims: int | None = None) -> None:
    """Raise unless ``x`` is a tensor of a batch ``(N, C, *spatial)`` or, with ``spatial_dims``, one example.

    Examples:
      >>> check_rank(torch.ones(3, 8, 8), spatial_dims=2)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    validation.input_rank(tuple(x.shape), spatial_dims)


def _check_floating(x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got x.dtype={x.dtype}. Cast it first, e.g. x.float().")
    if x.dtype.itemsize < 2:
        raise TypeError(
            f"x must be float16, bfloat16, float32 or float64, got x.dtype={x.dtype}: DropBlock rescales in float32 "
            "and writes x's dtype, which 8-bit floats cannot hold. Cast it first, e.g. x.bfloat16()."
        )


def _concrete_drop_prob(drop_prob: Rate) -> float | None:
    """``drop_prob`` as a validated float if it is a number, None if it is a tensor."""
    if isinstance(drop_prob, torch.Tensor):
        if drop_prob.dim() != 0:
            raise ValueError(
                f"drop_prob must be a float or a 0-dim tensor, got a tensor of shape {tuple(drop_prob.shape)}."
            )
        if drop_prob.dtype == torch.bool or drop_prob.is_complex():
            raise TypeError(f"drop_prob must be a real number in [0, 1], got a tensor of dtype {drop_prob.dtype}.")
        return None
    if not isinstance(drop_prob, numbers.Real) and np.ndim(drop_prob) != 0:
        raise ValueError(f"drop_prob must be a float or a 0-dim tensor, got an array of shape {np.shape(drop_prob)}.")
    return validation.drop_prob_value(drop_prob)


def _rate_argument(drop_prob: Rate) -> tuple[float | None, Rate]:
    """``(the validated float or None, the rate to compute with)``.

    Under ``torch.compile`` a Python float may be traced as a symbol (so that a changing rate does
    not recompile): it is range-checked by comparisons, which become guards, and used as a
    tensor; a concrete zero still returns ``x`` itself.
    """
    if bitmask.tracing() and isinstance(drop_prob, float):
        if not 0.0 <= drop_prob <= 1.0:  # NaN fails too
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob=}.")
        if drop_prob == 0.0:
            return 0.0, drop_prob
        return None, torch.scalar_tensor(drop_prob, dtype=torch.float32)
    return _concrete_drop_prob(drop_prob), drop_prob


def _torch_asarray(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


# Static numbers (numpy inside) worked out once per call site, outside torch.compile's trace.
@torch.compiler.assume_constant_result
def _concrete_rates(
    drop_prob: float, spatial_shape: tuple[int, ...], block: tuple[int, ...], seed_region: str, calibrate: bool
) -> tuple[float, float]:
    return rates.float32_rates(spatial_shape, block, drop_prob, seed_region, calibrate)


_rate_table = torch.compiler.assume_constant_result(rates.rate_table)


def _rates(drop_prob: Rate, concrete: float | None, layout: layouts.Layout, seed_region: str, calibrate: bool, device):
    """(gamma, expected dropped fraction): Python floats for a number, float32 tensors for a tensor."""
    if concrete is not None:
        return _concrete_rates(concrete, layout.spatial_shape, layout.block, seed_region, calibrate)
    # The rate is a hyperparameter: no gradient flows into it.
    drop_prob = drop_prob.detach().to(device=device, dtype=torch.float32)
    table = _rate_table(layout.spatial_shape, layout.block, seed_region)
    gamma = rates.seed_rate_array(drop_prob, table, calibrate, torch, _torch_asarray)
    return gamma, rates.expected_drop_fraction_array(gamma, table, torch, _torch_asarray)


dilate = bitmask.dilate


def _dropped_words(seeds: torch.Tensor, layout: layouts.Layout, seed_region: str) -> torch.Tensor:
    return bitmask.dilate(seeds, layout.block, layout.block_paddings(seed_region))


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _channels_last_format(x: torch.Tensor) -> torch.memory_format | None:
    """The channels-last memory format ``x`` is in, or None."""
    memory_format = _CHANNELS_LAST.get(x.dim())
    if memory_format is not None and not x.is_contiguous() and x.is_contiguous(memory_format=memory_format):
        return memory_format
    return None


def _in_format(out: torch.Tensor, memory_format: torch.memory_format | None) -> torch.Tensor:
    return out if memory_format is None else out.contiguous(memory_format=memory_format)


def _like_x(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out`` in the memory format of ``x`` (channels_last stays channels_last)."""
    return _in_format(out, _channels_last_format(x))


def _scale(words: torch.Tensor, packing: bitmask.Packing, normalize: str, expected_drop, compute: torch.dtype):
    """The factor of the kept units: a scalar or one per sample, in ``compute``; None for ``"none"``."""
    if normalize == "none":
        return None
    if normalize == "expected":
        expected_drop = torch.as_tensor(expected_drop, dtype=compute, device=words.device)
        return rates.expected_rescale_array(expected_drop, torch)
    per_sample = normalize == "sample"
    lost = bitmask.count(words, packing, per_row=per_sample)
    total = (words[0].numel() if per_sample else words.numel()) * packing.bits
    if not per_sample and _plain_eager_cpu(lost):
        # The count reads back for free: the scale from numpy, where the tensor formula below
        # takes a handful of small operations. The same division in the same dtype, so the same bits.
        return _kept_scale_numpy(lost, total, compute)
    if bitmask.tracing() and not torch.compiler.is_exporting() and lost.device.type == "cpu":
        return _kept_scale_op(lost, total, compute)
    kept = (total - lost).to(compute)
    total = torch.full((), total, dtype=compute, device=words.device)
    # The denominator is never 0, so no division by zero is ever evaluated.
    return torch.where(kept > 0, total / kept.clamp(min=1), 0.0)


def _kept_scale_numpy(lost: torch.Tensor, total: int, compute: torch.dtype) -> torch.Tensor:
    """``total / (total - lost)`` in ``compute`` (0 where nothing is kept), divided in numpy: ``_scale``'s formula."""
    as_numpy = _NUMPY_FLOATS[compute]
    kept = total - lost.numpy()
    scale = np.where(kept > 0, as_numpy(total) / np.maximum(kept, 1).astype(as_numpy), as_numpy(0))
    return torch.from_numpy(scale.astype(as_numpy, copy=False)).reshape(lost.shape)


@torch.library.custom_op("dropblock_torch::kept_scale", mutates_args=())
def _kept_scale_op(lost: torch.Tensor, total: int, compute: torch.dtype) -> torch.Tensor:
    """``_kept_scale_numpy`` as an op opaque to ``torch.compile``, for compiled code on the CPU.

    Inductor's C++ backend runs the nodes between two opaque calls as one kernel, which takes
    all their buffers at once: with the scale computed inline, the seeds' words and the block
    expansion's intermediate were alive beside the output (27.4 MB of peak memory forward on
    (32, 256, 28, 28), against compiled dropout's 24.5). The count ends a kernel here, so they
    are freed before the pass over ``x`` allocates the output.
    """
    return _kept_scale_numpy(lost, total, compute)


@_kept_scale_op.register_fake
def _(lost: torch.Tensor, total: int, compute: torch.dtype) -> torch.Tensor:
    return lost.new_empty(lost.shape, dtype=compute)


@_kept_scale_op.register_vmap
def _(info, in_dims, lost: torch.Tensor, total: int, compute: torch.dtype):
    return _kept_scale_op(lost, total, compute), in_dims[0]  # elementwise in the counts


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}
_SAME_WIDTH_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16}
_SAME_WIDTH_INT[torch.bfloat16] = torch.int16


class _ZeroBits(torch.autograd.Function):
    """``_kept_bits`` (``where(dropped, +0, x)`` on the bits), and its gradient, the same map.

    Used eagerly for a mask shared by the channels: a product of ``x``'s integer view with a
    broadcast mask (the mask's size, not ``x``'s) is one vectorised pass, where a ``where`` on
    a broadcast boolean mask is slower on the CPU. (Compiled code uses ``masked_fill``:
    inductor's C++ backend scalarises bit casts.)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        return _kept_bits(x, dropped, inplace=False)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (dropped,) = ctx.saved_tensors
        return _kept_bits(grad, dropped, inplace=False), None

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_) -> torch.Tensor:
        (dropped,) = ctx.saved_tensors
        return _kept_bits(x_tangent, dropped, inplace=False)


def _needs_grad(x: torch.Tensor) -> bool:
    """Whether autograd's reverse mode records an operation on ``x``."""
    return torch.is_grad_enabled() and x.requires_grad


def _differentiated(x: torch.Tensor) -> bool:
    """Whether an operation on ``x`` may be differentiated, in reverse mode, forward mode or a ``torch.func`` transform.

    Only where none may are the custom functions' forwards called as they are and ``x``'s bits
    multiplied (``_kept_bits``): neither has a derivative of its own.
    """
    # A transform first: under torch.func.vmap, unpack_dual has no batching rule.
    return _needs_grad(x) or _transformed() or forward_ad.unpack_dual(x).tangent is not None


def _zeroed(x: torch.Tensor, dropped: torch.Tensor, compute: torch.dtype, inplace: bool) -> torch.Tensor:
    """``x`` in ``compute`` with +0 written where ``dropped`` (broadcast over shared dims), into ``x`` if it may."""
    if bitmask.tracing():
        # Fused with the unpacking of the mask into one pass over ``x`` (``bitmask.unpack``).
        # masked_fill, not where: its output (and its gradient) follow the memory format of
        # ``x`` (and of the incoming gradient), which inductor makes channels-last in conv
        # models; where's would follow the mask and transpose every unit.
        return x.to(compute).masked_fill(dropped, 0.0)
    # ATen's CPU where and masked_fill_ are not vectorised (3.5x and 5.6x a product on a 2-core
    # AMD EPYC); a product of the bits with the kept flags is, where nothing differentiates it.
    differentiated = _differentiated(x)
    by_bits = x.device.type == "cpu" and not differentiated
    if inplace and x.dtype == compute:
        return _kept_bits(x, dropped, inplace=True) if by_bits else x.masked_fill_(dropped, 0)
    # For a mask shared by the channels (small), the product of the bits is one vectorised pass
    # on every device.
    if dropped.numel() * 2 <= x.numel():
        zeroed = _ZeroBits.apply(x, dropped) if differentiated else _kept_bits(x, dropped, inplace=False)
        return zeroed.to(compute)
    if by_bits:  # a conversion to ``compute`` is a copy of ours to write into
        return _kept_bits(x.to(compute), dropped, inplace=x.dtype != compute)
    return torch.where(dropped, 0.0, x.to(compute))


def _kept_bits(x: torch.Tensor, dropped: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``where(dropped, +0, x)`` as ``x``'s bits (integers) times the kept flags (1 or 0): the same bits, vectorised."""
    bits, kept = x.view(_SAME_WIDTH_INT[x.dtype]), ~dropped
    if inplace:
        bits.mul_(kept)
        return x
    return (bits * kept).view(x.dtype)


class _ZeroedScaled(torch.autograd.Function):
    """``where(dropped, 0, x) * scale``, ``dropped`` the mask ``words`` hold; its backward is the same map.

    Eagerly, autograd's own chain (a ``where``, then a product) allocates a full-size tensor for
    each of its two backward steps; this allocates one, so a training step holds no more than
    with dropout. Each result takes the memory format of its input: the output that of ``x``,
    the gradient that of ``x`` (autograd's chain, and torch.compile's tracing of this function,
    which hands it a contiguous gradient, would return a contiguous gradient for a
    channels-last ``x``, and inductor would then transpose it unit by unit). At dropped units
    the gradient is ``0 * scale``: 0, since a scale is finite whenever anything is dropped.

    The words are what is saved for the backward pass: eagerly the unpacked mask
    (``bitmask.UNPACKED``); under ``torch.compile`` the packed words (a bit per unit), or a
    shared mask's int32 lanes (``bitmask.dilate_lanes``), which each pass unpacks inside its pass
    over ``x`` or the gradient, so that the traced graph's partitioner has no boolean mask to
    keep (``bitmask.unpack_by_lane_masks``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: torch.Tensor, words: torch.Tensor, packing: bitmask.Packing, scale: torch.Tensor | None
    ) -> torch.Tensor:
        return _zeroed_scaled(x, bitmask.unpack(words, packing), scale, _channels_last_format(x))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, words, ctx.packing, scale = inputs
        ctx.save_for_backward(words, scale)
        ctx.save_for_forward(words, scale)
        ctx.memory_format = _channels_last_format(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        words, scale = ctx.saved_tensors
        dropped = bitmask.unpack_by_lane_masks(words, ctx.packing, grad.shape)
        return _zeroed_scaled(grad, dropped, scale, ctx.memory_format), None, None, None


class _ZeroedScaledWithTangent(_ZeroedScaled):
    """``_ZeroedScaled`` for eager code, with forward-mode AD: the tangent goes through the same map.

    Kept apart because dynamo (torch 2.13, 2.14) handles a function with a ``jvp`` differently
    and warns of a non-leaf ``x``'s ``.grad`` while tracing it; compiled code has no forward mode.
    """

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_) -> torch.Tensor:
        words, scale = ctx.saved_tensors
        return _zeroed_scaled(x_tangent, bitmask.unpack(words, ctx.packing), scale, ctx.memory_format)


def _zeroed_scaled(x, dropped, scale: torch.Tensor | None, memory_format: torch.memory_format | None):
    """``where(dropped, 0, x) * scale`` in ``x``'s dtype, laid out in ``memory_format`` (None: as it comes)."""
    compute = x.dtype if scale is None else scale.dtype
    out = _zeroed(x, dropped, compute, inplace=False)
    return _in_format((out if scale is None else out.mul_(scale)).to(x.dtype), memory_format)


def _normalized(x: torch.Tensor, dropped: torch.Tensor, scale: torch.Tensor | None, inplace: bool) -> torch.Tensor:
    """``where(dropped, 0, x * scale)`` in >= float32: the zeros written, then the product by ``scale``.

    The same values as the JAX twin's ``where`` (so the same bits, signed zeros included: a
    written zero times a finite scale stays +0). Dropped units are written as zeros, not
    multiplied by 0: an inf or NaN in ``x`` stays where it is kept and becomes 0 where it is
    dropped, whatever is shared; a NaN scale (a NaN or infinite rate) makes everything NaN. No full-size
    factor or float copy of the mask is allocated; eagerly the zeros are written on the bits
    (``_zeroed``), then the product is taken in place.
    """
    if not inplace:
        if not _differentiated(x):  # the same function, without autograd's bookkeeping
            return _zeroed_scaled(x, dropped, scale, _channels_last_format(x))
        return _ZeroedScaledWithTangent.apply(x, dropped, bitmask.UNPACKED, scale)
    compute = x.dtype if scale is None else scale.dtype
    out = _zeroed(x, dropped, compute, inplace)
    if scale is not None:
        out = out.mul_(scale)
    if out is x:
        return x
    return x.copy_(out.to(x.dtype))


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x`` is contiguous or channels-last: a flat strided view of it sees every unit once."""
    return x.is_contiguous() or _channels_last_format(x) is not None


class _Blocks(NamedTuple):
    """The blocks of a mask per unit, by their seeds: what ``_normalized_blocks`` writes."""

    seeds: Sequence[torch.Tensor]  # the seeds' coordinates (n, c, *grid), one tensor per dim
    layout: layouts.Layout
    seed_region: str


class _BlockWrites(NamedTuple):
    """Where a tensor's blocks lie, for ``index_fill_`` (``_block_writes``)."""

    windows: torch.Tensor  # a strided view with a block at every offset, overlapping
    corners: torch.Tensor  # the offsets of the blocks inside the map
    clipped_units: torch.Tensor | None  # every unit of the blocks the border clips, if any


def _block_writes(out: torch.Tensor, blocks: _Blocks) -> _BlockWrites:
    """Where each block lies in ``out`` (dense): a block inside the map is one offset into the windows.

    A block that the border clips (seed_region "full") is given unit by unit: a cell past the
    border is clamped onto the border cell, which the block covers anyway.
    """
    strides, seeds = out.stride(), blocks.seeds
    spatial = list(zip(blocks.layout.spatial_shape, blocks.layout.block, strides[2:], strict=True))
    offsets = [coverage.block_start(block, blocks.seed_region) for block in blocks.layout.block]
    starts = [seed + offset for seed, offset in zip(seeds[2:], offsets, strict=True)]
    plane = seeds[0] * strides[0] + seeds[1] * strides[1]
    corners = plane + sum(start * stride for start, stride in zip(starts, strides[2:], strict=True))
    span = sum((block - 1) * stride for _, block, stride in spatial)
    windows = out.as_strided(
        (out.numel() - span, *(block for _, block, _ in spatial)), (1, *(stride for _, _, stride in spatial))
    )
    if blocks.seed_region == "valid":
        return _BlockWrites(windows, corners, None)
    inside = torch.ones_like(corners, dtype=torch.bool)
    for start, (size, block, _) in zip(starts, spatial, strict=True):
        inside &= (start >= 0) & (start <= size - block)
    if bool(inside.all()):
        return _BlockWrites(windows, corners, None)
    clipped, rank = ~inside, len(spatial)
    units = plane[clipped].reshape(-1, *(1,) * rank)
    for dim, (start, (size, block, stride)) in enumerate(zip(starts, spatial, strict=True)):
        cells = torch.arange(block).reshape(block, *(1,) * (rank - 1 - dim))
        units = units + (start[clipped].reshape(-1, *(1,) * rank) + cells).clamp_(0, size - 1) * stride
    return _BlockWrites(windows, corners[inside], units.flatten())


def _zero_blocks_(out: torch.Tensor, blocks: _Blocks) -> torch.Tensor:
    """Write +0 over the blocks in ``out`` (dense), in place."""
    writes = _block_writes(out, blocks)
    writes.windows.index_fill_(0, writes.corners, 0)
    if writes.clipped_units is not None:
        out.as_strided((out.numel(),), (1,)).index_fill_(0, writes.clipped_units, 0)
    return out


def _scaled_blocks_zeroed(x: torch.Tensor, scale: torch.Tensor | None, blocks: _Blocks, strides=None) -> torch.Tensor:
    """``x * scale`` in ``x``'s dtype with +0 over the blocks, laid out with ``strides`` if given."""
    compute = x.dtype if scale is None else scale.dtype
    out = x.clone() if scale is None else (x.to(compute) * scale).to(x.dtype)
    if strides is not None and out.stride() != strides:
        out = torch.empty_strided(out.shape, strides, dtype=out.dtype, device=out.device).copy_(out)
    return _zero_blocks_(out, blocks)


class _BlocksZeroedScaled(torch.autograd.Function):
    """``_scaled_blocks_zeroed``, whose backward is itself applied to the gradient.

    The gradient is ``grad * scale`` with +0 over the blocks, laid out as the output (so as
    ``x``); no mask is saved. The map is linear and its own adjoint, so the backward calls this
    function again: a second derivative (``create_graph=True``) goes through it too, rather
    than through autograd's record of writes into overlapping views.
    """

    @staticmethod
    def forward(x: torch.Tensor, scale: torch.Tensor | None, blocks: _Blocks, strides) -> torch.Tensor:
        return _scaled_blocks_zeroed(x, scale, blocks, strides)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, scale, blocks, _ = inputs
        ctx.save_for_backward(scale)
        ctx.save_for_forward(scale)
        ctx.blocks, ctx.strides = blocks, output.stride()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return _BlocksZeroedScaled.apply(grad, scale, ctx.blocks, ctx.strides), None, None, None

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_) -> torch.Tensor:
        (scale,) = ctx.saved_tensors
        return _scaled_blocks_zeroed(x_tangent, scale, ctx.blocks, ctx.strides)


def _normalized_blocks(x, scale, blocks: _Blocks, inplace: bool) -> torch.Tensor:
    """``_normalized`` for a mask per unit whose seeds' coordinates are known (eager, CPU).

    One pass over ``x`` (the product by the scale), then +0 written over each block, where a
    mask of ``x``'s size would be unpacked and read by a ``where`` (a scalar loop on the CPU).
    The same bits: a kept unit is ``x * scale``, a dropped one +0 whatever ``x`` holds there.
    A mask shared by the channels or the batch keeps the product of bits (``_kept_bits``): its
    blocks span strided channels, which ``index_fill_`` writes more slowly than that pass.
    """
    if inplace:
        if scale is not None:
            x.mul_(scale)
        return _zero_blocks_(x, blocks)
    if _needs_grad(x):
        return _BlocksZeroedScaled.apply(x, scale, blocks, None)
    return _scaled_blocks_zeroed(x, scale, blocks)


def _apply(
    x, words, packing, layout, seed_region, normalize, noise, generator, expected_drop, inplace, guard=None, seeds=None
):
    """Expand the seed ``words`` into blocks and apply them to ``x``.

    ``guard`` is ``rates.nonfinite_guard_array`` of a tensor rate (0, or NaN for a NaN or
    infinite rate, which then turns the whole output NaN rather than silently dropping nothing
    or everything), None for a number.
    ``seeds`` gives the seeds one by one where they are known (eagerly, on the CPU): their
    count and a callable that lists their coordinates ``(n, c, *grid)``. For a mask per unit
    with few enough seeds the blocks are then written over the product by the scale
    (``_normalized_blocks``), and the words are only dilated to count what is dropped.
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    per_unit = (words.shape[0], words.shape[1] * packing.bits) == tuple(x.shape[:2])
    if seeds is not None and per_unit and _writes_blocks(x, compute, noise, inplace, guard):
        count, coordinates = seeds
        if policy.few_enough_blocks(count, x.numel()):
            counted = _dropped_words(words, layout, seed_region) if normalize in ("batch", "sample") else words
            scale = _scale(counted, packing, normalize, expected_drop, compute)
            return _normalized_blocks(x, scale, _Blocks(coordinates(), layout, seed_region), inplace)
    tracing = bitmask.tracing()
    if tracing:
        words, packing = bitmask.widen(words, packing)
    if tracing and packing.bits == 1 and not per_unit:
        # A bool grid smaller than ``x`` (shared by the channels, or by the batch of a channel
        # count that does not pack): expanded in int32 lanes, which the pass over ``x``
        # compares with 0 as it reads them (``bitmask.unpack``).
        words = bitmask.dilate_lanes(words, layout.block, layout.block_paddings(seed_region))
    else:
        words = _dropped_words(words, layout, seed_region)
    if noise:
        values = sampling._uniform(x.shape, generator, x.device, compute, normal=True)
        kept = x
        if guard is not None:  # a non-finite rate: NaN where kept and where noise is written
            kept, values = (x.to(compute) * (1 + guard)).to(x.dtype), values + guard
        out = torch.where(bitmask.unpack(words, packing), values.to(x.dtype), kept)
        return x.copy_(out) if inplace else _like_x(out, x)
    scale = _scale(words, packing, normalize, expected_drop, compute)
    if guard is not None:
        scale = 1 + guard if scale is None else scale + guard
    if tracing and not inplace:
        return _ZeroedScaled.apply(x, words, packing, scale)
    return _normalized(x, bitmask.unpack(words, packing), scale, inplace)


# Private torch APIs that tell whether a torch.func transform or a dispatch mode (make_fx, fake
# tensors) is active; under a torch without them the blocks are never written eagerly.
_FUNCTORCH_LEVEL = getattr(torch._C._functorch, "maybe_current_level", None)
_DISPATCH_MODE = getattr(getattr(torch.utils, "_python_dispatch", None), "_get_current_dispatch_mode", None)


# Private torch API: the autograd graph task running now, -1 outside a backward pass. Under a
# torch without it, a forward is never taken for a checkpoint's recomputation.
_GRAPH_TASK_ID = getattr(torch._C, "_current_graph_task_id", None)


def _recomputing() -> bool:
    """Whether this forward runs inside a backward pass: activation checkpointing recomputing it."""
    return _GRAPH_TASK_ID is not None and _GRAPH_TASK_ID() != -1


def _check_generator(generator: object) -> None:
    """Refuse what is not a generator, and a generator's draw that activation checkpointing replays.

    The replay would not draw the same mask as the forward did.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator=!r}.")
    if generator is not None and not bitmask.tracing() and _recomputing():
        raise RuntimeError(
            "DropBlock draws from generator=... inside a backward pass, where activation checkpointing "
            "(torch.utils.checkpoint) runs the forward again: it restores only the global random state, "
            "so this generator would draw another mask than the forward did (wrong gradients). Inside "
            "checkpointed functions (and backward hooks), draw from the global generator (leave "
            "generator=None; torch.manual_seed seeds it), or keep DropBlock outside them."
        )


def _transformed() -> bool:
    """Whether a ``torch.func`` transform is active (assumed so under a torch that cannot tell)."""
    return _FUNCTORCH_LEVEL is None or _FUNCTORCH_LEVEL() is not None


def _plain_eager_cpu(x: torch.Tensor) -> bool:
    """Whether ``x`` is a plain CPU tensor computed eagerly: no tracing, transform or dispatch mode.

    The seeds' coordinates are read (``nonzero``) and ``x`` is written through strided views
    only then: ``torch.compile``, ``make_fx`` and fake tensors have no host values, and
    ``torch.func``'s batched tensors support neither.
    """
    return (
        type(x) in (torch.Tensor, torch.nn.Parameter)
        and x.device.type == "cpu"
        and not bitmask.tracing()
        and not _transformed()
        and _DISPATCH_MODE is not None
        and _DISPATCH_MODE() is None
    )


def _writes_blocks(x: torch.Tensor, compute: torch.dtype, noise: bool, inplace: bool, guard) -> bool:
    """Whether ``_normalized_blocks`` serves this call (the seeds' coordinates being known)."""
    if noise or guard is not None or x.numel() == 0 or not _plain_eager_cpu(x):
        return False
    if not inplace:
        return True
    return x.dtype == compute and _dense(x) and not _needs_grad(x)


def _seed_words(gamma, layout, seed_region, *, share_channels, share_batch, device, generator, allow_sparse=True):
    """The seed grid as words, their packing, and the seeds' positions in packed order or None."""
    seed_shape = layout.seed_shape(seed_region, share_channels, share_batch)
    packing = bitmask.packing(seed_shape[1])
    words, positions = sampling.bernoulli_seeds(gamma, seed_shape, packing, device, generator, allow_sparse)
    return words, packing, positions


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
    spatial_dims: int | None = None,
) -> torch.Tensor:
    """Draw DropBlock's seed grid: i.i.d. Bernoulli(gamma) booleans, gamma from ``seed_rate``.

    Args:
      shape: the shape of ``x``, ``(N, C, *spatial)`` with 1 to 3 spatial dims, or
        ``(C, *spatial)`` for one example with ``spatial_dims``.
      drop_prob: the target fraction of dropped units, a float in [0, 1] or a 0-dim tensor.
      block_size: an int or one int per spatial dim; clipped to the map.
      seed_region: ``"valid"`` (blocks inside the map) or ``"full"`` (seeds everywhere).
      calibrate: make the expected dropped fraction exactly ``drop_prob``.
      share_channels: one seed grid per sample (size-1 channel dim).
      share_batch: one seed grid for the batch (size-1 batch dim).
      generator: the ``torch.Generator`` to draw from (the counterpart of a JAX key).
      device: where to draw; default the generator's device, else the CPU.
      spatial_dims: the number of spatial dims; with it a ``shape`` of rank
        ``spatial_dims + 1`` is one unbatched example (default: ``len(shape) - 2``).

    Returns:
      A boolean tensor ``(N or 1, C or 1, *grid)`` (no batch dim for one example), ``grid``
      being ``S - k + 1`` (valid) or ``S`` (full) per spatial dim.

    Examples:
      >>> seeds = sample_seeds((2, 8, 28, 28), 0.1, 7, generator=torch.Generator().manual_seed(0))
      >>> tuple(seeds.shape), seeds.dtype
      ((2, 8, 22, 22), torch.bool)
    """
    if isinstance(shape, torch.Tensor):
        raise TypeError(
            f"shape must be a sequence of ints such as x.shape, got a tensor of shape {tuple(shape.shape)}."
        )
    shape = tuple(shape)
    batched = _is_batch(shape, spatial_dims, name="shape")
    layout = _layout(shape if batched else (1, *shape), block_size, name="shape")
    validation.check_options(seed_region, calibrate=calibrate, share_channels=share_channels, share_batch=share_batch)
    concrete = _concrete_drop_prob(drop_prob)
    _check_generator(generator)
    device = torch.device(device) if device is not None else generator.device if generator is not None else None
    if concrete == 0.0:
        seed_shape = layout.seed_shape(seed_region, share_channels, share_batch)
        seeds = torch.zeros(seed_shape, dtype=torch.bool, device=device)
    else:
        gamma, _ = _rates(drop_prob, concrete, layout, seed_region, calibrate, device)
        flags = dict(share_channels=share_channels, share_batch=share_batch)
        words, packing, _ = _seed_words(
            gamma, layout, seed_region, **flags, device=device, generator=generator, allow_sparse=batched
        )
        seeds = bitmask.unpack(words, packing)
    return seeds if batched else seeds[0]


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
    spatial_dims: int | None = None,
) -> torch.Tensor:
    """Drop the blocks that ``seeds`` start and rescale: the deterministic half of DropBlock.

    The same seeds give bit-identical masks here and in ``dropblock_jax.apply_seeds``.

    Args:
      x: a floating tensor ``(N, C, *spatial)``, or ``(C, *spatial)`` with ``spatial_dims``.
      seeds: a seed grid as ``sample_seeds`` returns (nonzero means a seed); a size-1 batch or
        channel dim shares the mask.
      block_size: an int or one int per spatial dim; clipped to the map.
      seed_region: ``"valid"`` or ``"full"``, as the seeds were drawn.
      normalize: ``"batch"``, ``"sample"``, ``"expected"`` or ``"none"``, computed in at
        least float32; everything dropped gives zeros.
      noise: dropped units receive standard normal noise from ``generator``, no rescale.
      generator: the generator for the noise.
      expected_drop: the expected dropped fraction, in [0, 1); needed by ``normalize="expected"``.
      inplace: write the result into ``x``.
      spatial_dims: the number of spatial dims; with it an ``x`` of rank ``spatial_dims + 1``
        is one unbatched example (default: ``x.dim() - 2``).

    Returns:
      A tensor of ``x``'s shape, dtype and memory format.

    Raises:
      ValueError, TypeError: for a bad argument, naming it and its value.

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
    if not _is_batch(x.shape, spatial_dims):
        seeds = torch.as_tensor(seeds, device=x.device)
        options = dict(seed_region=seed_region, normalize=normalize, noise=noise, generator=generator)
        out = apply_seeds(x[None], seeds[None], block_size, **options, expected_drop=expected_drop, inplace=inplace)
        return out[0]
    layout = _layout(x.shape, block_size)
    validation.check_options(seed_region, normalize, noise=noise, inplace=inplace)
    if expected_drop is not None and not isinstance(expected_drop, torch.Tensor):
        validation.expected_drop_value(expected_drop)
    elif expected_drop is not None and expected_drop.numel() == 1 and _plain_eager_cpu(expected_drop):
        validation.expected_drop_value(float(expected_drop))  # a CPU tensor reads back for free
    seeds = torch.as_tensor(seeds, device=x.device)
    full_grid = layout.seed_shape(seed_region, share_channels=False, share_batch=False)
    validation.check_seed_shape(
        seeds.shape, full_grid, 1, x_shape=x.shape, block_size=block_size, seed_region=seed_region
    )
    if noise:
        _check_generator(generator)
    if normalize == "expected" and expected_drop is None and not noise:
        raise ValueError("normalize='expected' needs expected_drop=..., e.g. from expected_drop_fraction.")
    packing = bitmask.packing(seeds.shape[1])
    words = bitmask.pack(seeds.bool(), packing)
    # Eagerly on the CPU the blocks may be written from the seeds' coordinates (see ``_apply``),
    # found in the packed words (a search of the seed grid itself costs more than the mask):
    # counted first, so that dense seeds (which go through the mask) are never listed.
    known = None
    if tuple(seeds.shape[:2]) == tuple(x.shape[:2]) and not noise and _plain_eager_cpu(x):
        count = int(bitmask.count(words, packing, per_row=False))
        known = count, lambda: bitmask.coordinates(bitmask.positions(words, packing), packing, words.shape)
    options = dict(inplace=inplace, seeds=known)
    return _apply(x, words, packing, layout, seed_region, normalize, noise, generator, expected_drop, **options)


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
    spatial_dims: int | None = None,
) -> torch.Tensor:
    """DropBlock: zero random contiguous blocks of a feature map and rescale the rest.

    Args:
      x: a floating tensor ``(N, C, *spatial)`` with 1 to 3 spatial dims, any device,
        ``channels_last`` allowed; or one example ``(C, *spatial)`` with ``spatial_dims``.
      drop_prob: the target fraction of dropped units: a float in [0, 1] (a 0 returns ``x``)
        or a 0-dim tensor (clipped to [0, 1]; NaN or an infinity gives an all-NaN output; a GPU
        tensor is never read back to the host).
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
      spatial_dims: the number of spatial dims (default ``x.dim() - 2``); with it an ``x`` of
        rank ``spatial_dims + 1`` is one unbatched example (``torch.func.vmap`` over examples,
        with ``randomness="different"``), never a batch of a lower dimension.

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
    batched = _is_batch(x.shape, spatial_dims)
    layout = _layout(x.shape if batched else (1, *x.shape), block_size)
    flags = dict(calibrate=calibrate, share_channels=share_channels, share_batch=share_batch, noise=noise)
    validation.check_options(seed_region, normalize, training=training, inplace=inplace, **flags)
    concrete, drop_prob = _rate_argument(drop_prob)
    if not training or concrete == 0.0:
        return x
    _check_generator(generator)
    gamma, expected = _rates(drop_prob, concrete, layout, seed_region, calibrate, x.device)
    sharing = dict(share_channels=share_channels, share_batch=share_batch)
    words, packing, positions = _seed_words(
        gamma, layout, seed_region, **sharing, device=x.device, generator=generator, allow_sparse=batched
    )
    guard = None
    if concrete is None:
        guard = rates.nonfinite_guard_array(drop_prob.detach().to(device=x.device, dtype=expected.dtype), torch)
    batch = x if batched else x[None]
    seeds = None
    if positions is not None:
        seeds = positions.numel(), lambda: bitmask.coordinates(positions, packing, words.shape)
    options = dict(guard=guard, seeds=seeds)
    out = _apply(batch, words, packing, layout, seed_region, normalize, noise, generator, expected, inplace, **options)
    return out if batched else out[0]
