"""How the timm and torchvision drop-ins check their input and write a block mask into it.

Both peers draw a float seed grid, dilate it with ``max_pool``, and multiply ``x`` by a float
keep mask. The drop-ins draw the same seeds (so the same bits), dilate them as booleans
(``functional.dilate``), and write zeros where units are dropped instead of multiplying by 0
(``inf * 0`` and ``nan * 0`` are NaN): dropped units come out 0 whatever ``x`` holds. A mask
per unit is written into ``x * scale`` directly. A mask shared by the channels is cheaper as a
product by ``keep`` (the scale where kept, 0 where dropped: the mask's size, not ``x``'s), so
there the zeros are written only when the product holds a NaN: after a check on the CPU,
always elsewhere (where reading the check back would synchronise, and under
``torch.compile``, which fuses the write into the product).
"""

from __future__ import annotations

import numbers

import torch

from dropblock_common import validation


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


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def apply_mask(x: torch.Tensor, dropped: torch.Tensor, scale: torch.Tensor | None, inplace: bool) -> torch.Tensor:
    """``x * scale`` where kept, exact zeros where ``dropped``, in ``x``'s dtype (into ``x`` if ``inplace``).

    Args:
      x: the input.
      dropped: the boolean mask, of ``x``'s shape or broadcastable to it.
      scale: a 0-dim tensor, of ``x``'s dtype or float32 for a float16/bfloat16 ``x`` (then the
        product is rounded once); None for no rescaling.
      inplace: write the result into ``x``.

    Returns:
      ``x`` itself if ``inplace``, else a new tensor in ``x``'s memory format.
    """
    compute = x.dtype if scale is None else scale.dtype
    if dropped.shape == x.shape:
        # A mask per unit: a product by the scalar, then the zeros written (no factor tensor).
        if compute == x.dtype:
            if inplace:
                out = x if scale is None else x.mul_(scale)
            else:
                out = x.clone() if scale is None else x * scale
            return out.masked_fill_(dropped, 0)
        out = (x.to(compute) * scale).masked_fill_(dropped, 0)
        return x.copy_(out) if inplace else out.to(x.dtype)
    # A mask shared by channels: one product by a factor of the mask's size, the zeros only
    # written where ``x`` held an inf or NaN (writing them through the broadcast mask costs
    # more than the product itself on the CPU).
    keep = torch.logical_not(dropped).to(compute) if scale is None else torch.where(dropped, 0.0, scale)
    same_dtype = compute == x.dtype
    out = x.mul_(keep) if inplace and same_dtype else x * keep
    if x.device.type != "cpu" or _tracing():
        out = out.masked_fill_(dropped, 0)
    else:
        with torch.no_grad():
            # NaN propagates through a sum: a NaN-free sum means no dropped unit was inf or NaN.
            unsafe = bool(torch.isnan(out.sum()))
        if unsafe:
            out = out.masked_fill_(dropped, 0)
    if same_dtype:
        return out
    return x.copy_(out) if inplace else out.to(x.dtype)
