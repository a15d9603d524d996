"""How the timm and torchvision drop-ins check their input and write a block mask into it.

Both peers draw a float seed grid, dilate it with ``max_pool``, and multiply ``x`` by a float
keep mask. The drop-ins draw the same seeds (so the same bits), dilate them as booleans
(``functional.dilate``), and multiply as the peers do: a dropped unit is ``x * 0`` (``-0.0``
for a negative unit; NaN for an inf or NaN, as in the peers and in ``torch.nn.functional.dropout``),
a kept one ``x * scale``, to the bit. A mask shared by the channels holds the scale (the
mask's size, one product over ``x``); a mask per unit is a 0/1 factor, then the scale.
"""

from __future__ import annotations

import numbers

import torch

from dropblock_common import validation
from dropblock_torch import bitmask


def check_input(x: object, name: str, ranks: dict[int, str]) -> None:
    """Raise unless ``x`` is a 16-, 32- or 64-bit floating tensor of one of ``ranks`` (rank -> layout).

    Examples:
      >>> check_input(torch.ones(2, 3, 8, 8), "x", {4: "(N, C, H, W)"})
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point() or x.dtype.itemsize < 2:
        raise TypeError(
            f"{name} must be a float16, bfloat16, float32 or float64 tensor, got {name}.dtype={x.dtype}. "
            f"Cast it first, e.g. {name}.float()."
        )
    if x.dim() not in ranks:
        layouts = " or ".join(f"{rank} dimensions {layout}" for rank, layout in ranks.items())
        raise ValueError(f"{name} must have {layouts}, got {name}.dim()={x.dim()} with shape {tuple(x.shape)}.")


def check_block_size(block_size: object) -> int:
    """``block_size`` as a positive int (the side of the square or cubic block).

    Examples:
      >>> check_block_size(7)
      7
    """
    if isinstance(block_size, tuple | list):
        raise TypeError(f"block_size must be an int (the side of the block), got {block_size=!r}.")
    return validation.block_size_tuple(block_size, 1)[0]


def check_nonnegative(value: object, name: str) -> float:
    """``value`` as a float if it is a finite real number >= 0 (``gamma_scale``, ``eps``).

    Examples:
      >>> check_nonnegative(1e-6, "eps")
      1e-06
    """
    if validation.is_boolean(value) or not isinstance(value, numbers.Real | torch.Tensor):
        raise TypeError(f"{name} must be a real number >= 0, got {name}={value!r}.")
    number = float(value)
    if not 0.0 <= number < float("inf"):  # NaN fails too
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={number!r}.")
    return number


def seeds_like(x: torch.Tensor, shape: tuple[int, ...], gamma: float | torch.Tensor) -> torch.Tensor:
    """Bernoulli(``gamma``) seeds of ``shape``, drawn as the peers draw them, as booleans.

    The peers fill a tensor of ``x``'s dtype with ``bernoulli_``. On the CPU, ``bernoulli_`` with
    a float rate draws the same integers whatever the dtype it fills and casts them, so filling
    a boolean tensor gives the same seeds and leaves the generator in the same state, without a
    float buffer of the mask's size (the tests against both peers check it, and that every
    dtype draws alike). Elsewhere, and for a tensor rate, the peers' own call is made.
    """
    if x.device.type == "cpu" and not isinstance(gamma, torch.Tensor):
        return torch.empty(shape, dtype=torch.bool).bernoulli_(gamma)
    return torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(gamma) != 0


def apply_mask(
    x: torch.Tensor, dropped: torch.Tensor, scale: float | torch.Tensor | None, inplace: bool
) -> torch.Tensor:
    """``x * keep * scale``, ``keep`` 0 where ``dropped`` and 1 elsewhere, as the peers compute it.

    Args:
      x: the input.
      dropped: the boolean mask, of ``x``'s shape or broadcastable to it.
      scale: the peer's factor of the kept units (a float, or a 0-dim float32 or float64
        tensor); None for no rescaling. With a scale the product is computed in float32, or
        float64 for a float64 ``x`` (float16 and bfloat16 are rounded once, at the end);
        without, in ``x``'s dtype.
      inplace: write the result into ``x``.

    Returns:
      ``x`` itself if ``inplace``, else a new tensor of ``x``'s dtype in its memory format.

    Examples:
      >>> apply_mask(torch.tensor([[-1.0, 2.0]]), torch.tensor([[True, False]]), 2.0, False)
      tensor([[-0., 4.]])
    """
    compute = x.dtype if scale is None else torch.promote_types(x.dtype, torch.float32)
    if dropped.shape == x.shape:
        if torch.is_grad_enabled() and x.requires_grad:
            function = _PerUnitProduct if bitmask.tracing() else _PerUnitProductWithTangent
            out = function.apply(x, dropped, scale, compute)
            return x.copy_(out) if inplace else out
        out = _per_unit_product(x, dropped, scale, compute, inplace and compute == x.dtype)
    else:
        # A mask shared by the channels: the scale folded into the small mask, one product.
        keep = torch.logical_not(dropped, out=dropped.new_empty(dropped.shape, dtype=compute))
        if scale is not None:
            keep = keep.mul_(scale)  # the peers' keep_mask.mul_(scale): 0 * scale where dropped
        out = x.mul_(keep) if inplace and compute == x.dtype else x * keep
    if out is x:
        return x
    return x.copy_(out) if inplace else out.to(x.dtype)


def _per_unit_product(x, dropped, scale, compute: torch.dtype, into_x: bool) -> torch.Tensor:
    """``x * keep * scale`` for a mask of ``x``'s shape, in ``compute``: ``x`` itself if ``into_x``.

    A 0/1 factor in ``x``'s memory format, times ``x`` in place, then the scale: a kept unit is
    ``x * 1 * scale``, the peers' ``x * scale``; a dropped one ``x * 0 * scale``, their ``x * 0``.
    The factor's buffer becomes the output (into ``x``: a temporary).
    """
    keep = torch.logical_not(dropped, out=torch.empty_like(x, dtype=compute))
    out = x.mul_(keep) if into_x else keep.mul_(x)
    return out if scale is None else out.mul_(scale)


class _PerUnitProduct(torch.autograd.Function):
    """``_per_unit_product`` whose backward is the same product of the gradient.

    Autograd's own chain would save a full-size float copy of the 0/1 factor for the backward
    pass; this saves the boolean mask (a byte per unit, a quarter of that) and rebuilds the
    factor. The gradient is ``grad * 1 * scale`` where kept and ``grad * 0 * scale`` where
    dropped, the peers' ``grad * scale`` and ``grad * 0``.
    """

    @staticmethod
    def forward(x, dropped, scale, compute):
        return _per_unit_product(x, dropped, scale, compute, into_x=False).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, dropped, scale, compute = inputs
        # A tensor scale (on a GPU, or traced) is saved as a tensor; a float is kept as it is.
        saved = dropped, scale if isinstance(scale, torch.Tensor) else None
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.number, ctx.compute = (None if isinstance(scale, torch.Tensor) else scale), compute

    @staticmethod
    def backward(ctx, grad):
        return _PerUnitProduct._same_product(ctx, grad), None, None, None

    @staticmethod
    def _same_product(ctx, tensor):
        """The forward's map applied to a gradient or a tangent: the map is linear and its own adjoint."""
        dropped, scale = ctx.saved_tensors
        scale = ctx.number if scale is None else scale
        return _per_unit_product(tensor, dropped, scale, ctx.compute, into_x=False).to(tensor.dtype)


class _PerUnitProductWithTangent(_PerUnitProduct):
    """``_PerUnitProduct`` for eager code, with forward-mode AD.

    Kept apart as ``functional._ZeroedScaledWithTangent`` is: dynamo traces a function with a
    ``jvp`` differently, and compiled code has no forward mode.
    """

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return _PerUnitProduct._same_product(ctx, x_tangent)
