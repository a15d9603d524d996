"""A drop-in replacement for timm 1.0.x's DropBlock: change one import.

``from dropblock_torch.compat.timm import drop_block_2d, DropBlock2d`` gives timm's API and
semantics (``timm.layers.drop``, 1.0.23 and later; DropBlock, Ghiasi, Lin, Le, 2018,
arXiv:1810.12890, as timm implements it): seeds on the whole map at the rate
``gamma_scale * drop_prob * H * W / (kh * kw) / ((H - kh + 1) * (W - kw + 1))`` (the block
``kh x kw`` clipped to the map), a block centred on each seed (for an even block one more cell
before the seed than after), one mask per sample shared by its channels unless
``couple_channels=False``, and ``x * keep * numel / (kept + 1e-7)`` unless
``scale_by_keep=False``; ``with_noise`` puts standard normal noise (shared like the mask)
where units are dropped, without rescaling. On the CPU, under the same ``torch.manual_seed``,
outputs are bit-identical to timm 1.0.31's in float32 and float64, signed zeros and NaNs
included: the product is timm's, so a dropped unit is ``x * 0`` (``-0.0`` for a negative unit,
NaN for an inf or NaN one, as in timm and in torch's dropout; ``dropblock_torch.DropBlock2d``
writes zeros there instead). The kept units are counted exactly here; timm sums its float mask
in float32, exact below 2**24 kept units and within a few units above, which can move its
scale by an ulp.

Fixed where timm misbehaves:

- float16 and bfloat16 inputs are rescaled in float32 and rounded once (timm rounds the scale
  to the input's dtype first: in bfloat16 every kept unit is scaled up to 0.4% off); in
  float16, with everything dropped or fewer than 1 unit in 65504 kept, the scale stays finite:
  zeros where dropped and ``x * scale`` rounded once where kept (timm: NaN everywhere, its scale
  overflows float16 to inf);
- bad arguments raise a ``ValueError`` or ``TypeError`` naming them (timm: a ``drop_prob``
  above 1 runs, 1.5 dropping 86% of a 28x28 map; a 3D input fails to unpack; a
  ``block_size`` of 0 divides by zero), and a seed rate above 1 (``gamma_scale`` > 1)
  saturates at 1 instead of failing inside ``bernoulli_``;
- ``drop_block_2d`` at ``drop_prob=0`` returns ``x`` and draws nothing, as ``DropBlock2d``
  does (timm draws a mask and returns a copy);
- ``drop_block_2d`` is a leaf under ``torch.fx`` tracing, so a model with ``DropBlock2d``, or
  calling ``dropblock_torch.compat.timm.drop_block_2d``, traces in training mode too (a name
  imported into another module is wrapped there with ``torch.fx.wrap("drop_block_2d")``, as
  for any function).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from dropblock_common import coverage, validation
from dropblock_torch import bitmask, functional
from dropblock_torch.compat import _masking

# Keyword arguments timm removed in 1.0.23 and still accepts silently.
DEPRECATED_KWARGS = frozenset({"batchwise", "fast"})


def drop_block_2d(
    x: torch.Tensor,
    drop_prob: float = 0.1,
    block_size: int = 7,
    gamma_scale: float = 1.0,
    with_noise: bool = False,
    inplace: bool = False,
    couple_channels: bool = True,
    scale_by_keep: bool = True,
) -> torch.Tensor:
    """DropBlock as timm's ``drop_block_2d``: zero blocks centred on random seeds, rescale the rest.

    Args:
      x: a floating tensor ``(N, C, H, W)``.
      drop_prob: the fraction of units to drop, in [0, 1] (a float or a 0-dim tensor).
      block_size: the side of the square block, clipped to the map per dim.
      gamma_scale: a factor >= 0 on the seed rate.
      with_noise: dropped units receive standard normal noise instead of 0, no rescale.
      inplace: write the result into ``x``.
      couple_channels: one mask per sample shared by its channels; False: one per channel.
      scale_by_keep: scale the kept units by ``numel / kept``.

    Returns:
      A tensor of ``x``'s shape and dtype (``x`` itself if ``inplace`` or ``drop_prob == 0``).

    Raises:
      ValueError, TypeError: for a bad argument, naming it.

    Examples:
      >>> _ = torch.manual_seed(0)
      >>> y = drop_block_2d(torch.ones(2, 4, 14, 14), drop_prob=0.2, block_size=3)
      >>> tuple(y.shape), bool((y[:, 0] == y[:, 1]).all())
      ((2, 4, 14, 14), True)
    """
    _masking.check_input(x, "x", {4: "(N, C, H, W)"})
    validation.drop_prob_value(drop_prob)
    block_size = _masking.check_block_size(block_size)
    _masking.check_nonnegative(gamma_scale, "gamma_scale")
    flags = dict(with_noise=with_noise, inplace=inplace, couple_channels=couple_channels, scale_by_keep=scale_by_keep)
    for name, value in flags.items():
        validation.check_flag(value, name)
    if not drop_prob:
        return x
    batch, channels, height, width = x.shape
    kh, kw = min(block_size, height), min(block_size, width)
    # timm's expression and order, with the caller's own values: the same float, the same seeds.
    gamma = (
        float(gamma_scale * drop_prob * height * width) / float(kh * kw) / float((height - kh + 1) * (width - kw + 1))
    )
    seed_shape = (batch, 1 if couple_channels else channels, height, width)
    seeds = _masking.seeds_like(x, seed_shape, min(gamma, 1.0))
    paddings = (coverage.block_padding(kh, "full"), coverage.block_padding(kw, "full"))
    dropped = functional.dilate(seeds, (kh, kw), paddings)
    if with_noise:
        # timm's arithmetic, in x's dtype: x * keep + noise * dropped.
        noise = torch.empty(seed_shape, dtype=x.dtype, device=x.device).normal_().mul_(dropped)
        keep = torch.logical_not(dropped).to(x.dtype)
        return x.mul_(keep).add_(noise) if inplace else x * keep + noise
    scale = _scale(dropped) if scale_by_keep else None
    return _masking.apply_mask(x, dropped, scale, inplace)


def _scale(dropped: torch.Tensor) -> float | torch.Tensor:
    """timm's factor of the kept units, computed in float32 as timm computes it.

    On the CPU, outside ``torch.compile``, a float computed on the host from the count (three
    float32 operations, not four small tensor ops); elsewhere a 0-dim float32 tensor, without
    reading the count back.
    """
    total = dropped.numel()
    if dropped.device.type == "cpu" and not bitmask.tracing():
        kept = np.float32(total - int(torch.count_nonzero(dropped)))
        # timm's float32 arithmetic: kept + 1e-7 (a no-op once 2 units are kept), then
        # numel / it as torch evaluates it, the reciprocal times numel.
        return float(np.float32(1.0) / (kept + np.float32(1e-7)) * np.float32(total))
    kept = (total - torch.count_nonzero(dropped)).to(torch.float32)
    return total / kept.add(1e-7)


torch.fx.wrap("drop_block_2d")


class DropBlock2d(nn.Module):
    """DropBlock as timm's ``DropBlock2d``: ``drop_block_2d`` in training mode, the identity in eval.

    Args:
      drop_prob, block_size, gamma_scale, with_noise, inplace, couple_channels, scale_by_keep:
        as in ``drop_block_2d``; checked here and at every call.
      **kwargs: ``batchwise`` and ``fast`` (removed in timm 1.0.23) are accepted and ignored;
        anything else is ignored with a ``UserWarning`` that names it, as in timm.

    Examples:
      >>> DropBlock2d(drop_prob=0.1, block_size=5, batchwise=True)
      DropBlock2d(drop_prob=0.1, block_size=5, gamma_scale=1.0, with_noise=False, inplace=False, couple_channels=True, scale_by_keep=True)
    """  # noqa: E501

    def __init__(
        self,
        drop_prob: float = 0.1,
        block_size: int = 7,
        gamma_scale: float = 1.0,
        with_noise: bool = False,
        inplace: bool = False,
        couple_channels: bool = True,
        scale_by_keep: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__()
        validation.drop_prob_value(drop_prob)
        _masking.check_block_size(block_size)
        _masking.check_nonnegative(gamma_scale, "gamma_scale")
        flags = dict(
            with_noise=with_noise, inplace=inplace, couple_channels=couple_channels, scale_by_keep=scale_by_keep
        )
        for name, value in flags.items():
            validation.check_flag(value, name)
        self.drop_prob = drop_prob
        self.gamma_scale = gamma_scale
        self.block_size = block_size
        self.with_noise = with_noise
        self.inplace = inplace
        self.couple_channels = couple_channels
        self.scale_by_keep = scale_by_keep
        for name in kwargs:
            if name not in DEPRECATED_KWARGS:
                warnings.warn(f"DropBlock2d() got unexpected keyword argument '{name}'", UserWarning, stacklevel=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.drop_prob:
            return x
        return drop_block_2d(
            x,
            drop_prob=self.drop_prob,
            block_size=self.block_size,
            gamma_scale=self.gamma_scale,
            with_noise=self.with_noise,
            inplace=self.inplace,
            couple_channels=self.couple_channels,
            scale_by_keep=self.scale_by_keep,
        )

    def extra_repr(self) -> str:
        return (
            f"drop_prob={self.drop_prob}, block_size={self.block_size}, gamma_scale={self.gamma_scale}, "
            f"with_noise={self.with_noise}, inplace={self.inplace}, couple_channels={self.couple_channels}, "
            f"scale_by_keep={self.scale_by_keep}"
        )
