"""A drop-in replacement for ``torchvision.ops``' DropBlock: change one import.

``from dropblock_torch.compat.torchvision import drop_block2d, drop_block3d, DropBlock2d,
DropBlock3d`` gives torchvision's API and semantics (``torchvision/ops/drop_block.py``, 0.29;
DropBlock, Ghiasi, Lin, Le, 2018, arXiv:1810.12890, as torchvision implements it): a square
(cubic) block of side ``min(block_size, *spatial)``, seeds on the valid grid (every block
inside the map) at the paper's rate ``p * prod(S) / (k**d * prod(S - k + 1))``, an independent
mask per sample and channel, and ``x * keep * numel / (eps + kept)``. On the CPU, under the same
``torch.manual_seed``, outputs are bit-identical to torchvision 0.29's in float32 and
float64, signed zeros and NaNs included: the product is torchvision's, so a dropped unit is
``x * 0`` (``-0.0`` for a negative unit, NaN for an inf or NaN one, as in torchvision and in
torch's dropout; ``dropblock_torch.DropBlock2d`` writes zeros there instead).
The kept units are counted exactly here; torchvision sums its float mask in float32, exact
below 2**24 kept units and within a few units above, which can move its scale by an ulp.
``drop_block2d`` and ``drop_block3d`` are leaves under ``torch.fx`` tracing, as there (called
through the modules or as attributes of this module; a name imported elsewhere is wrapped
there with ``torch.fx.wrap``, as torchvision's are).

Fixed where torchvision misbehaves:

- float16: the kept units are counted in float32, not float16, whose sum overflows to inf
  above 65504 and zeroes the whole output; float16 and bfloat16 are rescaled in float32 and
  rounded once (torchvision rounds the count and then the scale to bfloat16: every kept unit
  scaled up to 0.8% off); everything dropped gives zeros (torchvision in float16: NaN);
- ``eps=0`` with everything dropped gives zeros (torchvision: NaN, 0 / 0);
- an even block works (blocks inside the map, as for odd ones); torchvision refuses it, also
  when an odd ``block_size`` is clipped to an even map (``block_size=7`` on a 6x6 map);
- bad arguments raise a ``ValueError`` or ``TypeError`` naming them (torchvision: a NaN ``p``
  fails inside ``bernoulli_`` and a negative ``block_size`` inside ``F.pad``; a NaN ``eps``
  silently makes the whole output NaN, a negative one silently scales it up).
"""

from __future__ import annotations

import torch
from torch import nn

from dropblock_common import coverage, validation
from dropblock_torch import functional
from dropblock_torch.compat import _masking

_LAYOUTS = {2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _drop_block(
    input: torch.Tensor, p: float, block_size: int, inplace: bool, eps: float, training: bool, dims: int
) -> torch.Tensor:
    validation.drop_prob_value(p, "p")
    _masking.check_input(input, "input", {dims + 2: _LAYOUTS[dims]})
    block_size = _masking.check_block_size(block_size)
    _masking.check_nonnegative(eps, "eps")
    validation.check_flag(inplace, "inplace")
    validation.check_flag(training, "training")
    if not training or p == 0.0:
        return input
    batch, channels, *spatial = input.shape
    block = min(block_size, *spatial)
    # torchvision's expression and order, with the caller's own p: the same gamma, the same seeds.
    numerator, seed_positions = p, 1
    for size in spatial:
        numerator, seed_positions = numerator * size, seed_positions * (size - block + 1)
    gamma = numerator / (block**dims * seed_positions)
    seed_shape = (batch, channels, *coverage.seed_grid_shape(spatial, (block,) * dims, "valid"))
    seeds = _masking.seeds_like(input, seed_shape, gamma)
    dropped = functional.dilate(seeds, (block,) * dims, (coverage.block_padding(block, "valid"),) * dims)
    # torchvision's arithmetic (eps + a sum, then numel / it) in float64 for float64, else float32.
    compute = torch.float64 if input.dtype == torch.float64 else torch.float32
    kept = (dropped.numel() - torch.count_nonzero(dropped)).to(compute)
    # With eps = 0 and everything dropped, 0 instead of numel / 0 (whose product with 0 is NaN).
    scale = torch.where(kept > 0, dropped.numel() / (eps + kept), 0.0)
    return _masking.apply_mask(input, dropped, scale, inplace)


def drop_block2d(
    input: torch.Tensor, p: float, block_size: int, inplace: bool = False, eps: float = 1e-06, training: bool = True
) -> torch.Tensor:
    """DropBlock as ``torchvision.ops.drop_block2d``: zero random square blocks, rescale the rest.

    Args:
      input: a floating tensor ``(N, C, H, W)``.
      p: the fraction of units to drop, in [0, 1].
      block_size: the side of the square block, clipped to the smaller side of the map.
      inplace: write the result into ``input``.
      eps: added to the kept count before dividing, >= 0.
      training: if False, return ``input``.

    Returns:
      A tensor of ``input``'s shape and dtype (``input`` itself if ``inplace``, not training
      or ``p == 0``).

    Raises:
      ValueError, TypeError: for a bad argument, naming it.

    Examples:
      >>> _ = torch.manual_seed(0)
      >>> y = drop_block2d(torch.ones(2, 4, 14, 14), p=0.2, block_size=3)
      >>> tuple(y.shape), y.dtype
      ((2, 4, 14, 14), torch.float32)
    """
    return _drop_block(input, p, block_size, inplace, eps, training, dims=2)


def drop_block3d(
    input: torch.Tensor, p: float, block_size: int, inplace: bool = False, eps: float = 1e-06, training: bool = True
) -> torch.Tensor:
    """DropBlock as ``torchvision.ops.drop_block3d``: zero random cubic blocks, rescale the rest.

    Args:
      input: a floating tensor ``(N, C, D, H, W)``.
      p, block_size, inplace, eps, training: as in ``drop_block2d``.

    Returns:
      A tensor of ``input``'s shape and dtype.

    Raises:
      ValueError, TypeError: for a bad argument, naming it.

    Examples:
      >>> _ = torch.manual_seed(0)
      >>> tuple(drop_block3d(torch.ones(1, 2, 6, 6, 6), p=0.2, block_size=3).shape)
      (1, 2, 6, 6, 6)
    """
    return _drop_block(input, p, block_size, inplace, eps, training, dims=3)


torch.fx.wrap("drop_block2d")
torch.fx.wrap("drop_block3d")


class DropBlock2d(nn.Module):
    """DropBlock as ``torchvision.ops.DropBlock2d``: ``drop_block2d`` in training mode, the identity in eval.

    Args:
      p, block_size, inplace, eps: as in ``drop_block2d``; checked here and at every call.

    Examples:
      >>> DropBlock2d(p=0.1, block_size=7)
      DropBlock2d(p=0.1, block_size=7, inplace=False)
    """

    def __init__(self, p: float, block_size: int, inplace: bool = False, eps: float = 1e-06) -> None:
        super().__init__()
        validation.drop_prob_value(p, "p")
        _masking.check_block_size(block_size)
        validation.check_flag(inplace, "inplace")
        _masking.check_nonnegative(eps, "eps")
        self.p = p
        self.block_size = block_size
        self.inplace = inplace
        self.eps = eps

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return drop_block2d(input, self.p, self.block_size, self.inplace, self.eps, self.training)

    def extra_repr(self) -> str:
        # torchvision's repr, eps left out as there.
        return f"p={self.p}, block_size={self.block_size}, inplace={self.inplace}"


class DropBlock3d(DropBlock2d):
    """DropBlock as ``torchvision.ops.DropBlock3d``: ``drop_block3d`` in training mode, the identity in eval.

    Examples:
      >>> DropBlock3d(p=0.1, block_size=3)
      DropBlock3d(p=0.1, block_size=3, inplace=False)
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return drop_block3d(input, self.p, self.block_size, self.inplace, self.eps, self.training)
