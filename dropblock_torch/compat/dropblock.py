"""A drop-in replacement for the ``dropblock`` 0.3.0 package: change one import.

``from dropblock_torch.compat import DropBlock2D, DropBlock3D, LinearScheduler`` gives the
0.3.0 API and semantics (DropBlock, Ghiasi, Lin, Le, 2018, arXiv:1810.12890, as that package
implements it): one mask per sample shared by all channels, seeds on the whole map with
``gamma = drop_prob / block_size**d``, blocks around each seed (for an even block one more
cell after the seed than before), and ``x * mask * numel / kept``. On the CPU, under the same
``torch.manual_seed``, outputs are bit-identical to 0.3.0's in float32 and float64. The
overridable hooks ``_compute_gamma(x)`` and ``_compute_block_mask(mask)`` are called from
``forward`` as in 0.3.0.

Fixed where 0.3.0 is broken: everything dropped gives zeros (0.3.0: NaN); float16 and
bfloat16 inputs give outputs of the same dtype (0.3.0: float32); the mask is drawn on
``x.device`` (0.3.0: on the CPU, then copied); ``LinearScheduler`` accepts a float
``nr_steps`` such as ``5e3`` (0.3.0: TypeError) and keeps its step count ``i`` (an int, as
in 0.3.0) in ``state_dict`` (0.3.0: lost on resume; checkpoints without it still load). The
product is 0.3.0's, so a dropped unit is ``x * 0`` (``-0.0`` for a negative unit, NaN for an
inf or NaN one, as in 0.3.0 and in torch's dropout; ``dropblock_torch.DropBlock2d`` writes
zeros there instead).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch import nn

from dropblock_common import schedules as schedule_math
from dropblock_common import validation
from dropblock_torch import functional


class DropBlock2D(nn.Module):
    """Randomly zeroes 2D spatial blocks of ``(N, C, H, W)``, as ``dropblock.DropBlock2D`` 0.3.0.

    Args:
      drop_prob: the probability of a unit to be dropped (a seed rate of
        ``drop_prob / block_size**2``, as in 0.3.0).
      block_size: the side of the square block.

    Examples:
      >>> _ = torch.manual_seed(0)
      >>> layer = DropBlock2D(drop_prob=0.1, block_size=3)
      >>> tuple(layer(torch.ones(2, 4, 8, 8)).shape)
      (2, 4, 8, 8)
    """

    spatial_dims = 2

    def __init__(self, drop_prob: float, block_size: int) -> None:
        super().__init__()
        # 0.3.0 accepts anything here and then drops nothing (NaN, negative) or too much (1.5).
        validation.drop_prob_value(drop_prob)
        validation.block_size_tuple(block_size, 1)
        if not isinstance(block_size, numbers.Integral):
            raise TypeError(f"block_size must be an int (the side of the square block), got {block_size=!r}.")
        self.drop_prob = drop_prob
        self.block_size = int(block_size)  # a numpy integer too, as 0.3.0 takes it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"{type(self).__name__} expects an input with {self.spatial_dims + 2} dimensions "
                f"(batch, channels, {self.spatial_dims} spatial), got x.dim()={x.dim()}."
            )
        if not self.training or self.drop_prob == 0.0:
            return x
        # Checked at every call too: a scheduler or the user may have set it since (0.3.0 then
        # runs with NaN, dropping nothing, or with 1.5).
        validation.drop_prob_value(self.drop_prob)
        gamma = self._compute_gamma(x)
        # One uniform per (sample, position) from the global generator, as 0.3.0 draws them.
        mask = (torch.rand(x.shape[0], *x.shape[2:], device=x.device) < gamma).float()
        block_mask = self._compute_block_mask(mask)
        # 0.3.0's product by its float32 mask (float16/bfloat16 computed in float32, as there).
        out = x * block_mask[:, None]
        kept = block_mask.sum()
        # 0.3.0's order of operations, so that float32/float64 results are bit-identical;
        # the where turns its 0/0 (everything dropped) into 0.
        out = out * block_mask.numel() / torch.where(kept > 0, kept, torch.ones_like(kept))
        return out.to(x.dtype)

    def _compute_block_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Seeds ``(N, *spatial)`` (float 0/1) to the keep mask ``(N, *spatial)`` (float 0/1)."""
        block = self.block_size
        # A seed covers k // 2 cells before it and k - 1 - k // 2 after: the window over the
        # seeds padded (k // 2, k - 1 - k // 2) sees exactly the seeds whose blocks cover a cell.
        padding = (block // 2, block - 1 - block // 2)
        dropped = functional.dilate(mask[:, None].bool(), (block,) * self.spatial_dims, (padding,) * self.spatial_dims)
        return 1 - dropped[:, 0].float()

    def _compute_gamma(self, x: torch.Tensor) -> float:
        return self.drop_prob / (self.block_size**self.spatial_dims)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


class DropBlock3D(DropBlock2D):
    """Randomly zeroes 3D spatial blocks of ``(N, C, D, H, W)``, as ``dropblock.DropBlock3D`` 0.3.0.

    Examples:
      >>> _ = torch.manual_seed(0)
      >>> tuple(DropBlock3D(0.1, 3)(torch.ones(1, 2, 6, 6, 6)).shape)
      (1, 2, 6, 6, 6)
    """

    spatial_dims = 3


class LinearScheduler(nn.Module):
    """Ramps ``dropblock.drop_prob`` over ``numpy.linspace(start_value, stop_value, nr_steps)``.

    Each ``step()`` sets the next value (then keeps the last); ``forward`` calls the wrapped
    layer. The step count ``i`` is a plain int, as in 0.3.0 (``scheduler.i = 3`` works), and is
    saved in ``state_dict`` (0.3.0 loses it on resume; its checkpoints still load).

    Examples:
      >>> scheduler = LinearScheduler(DropBlock2D(0.0, 3), start_value=0.0, stop_value=0.1, nr_steps=5e3)
      >>> scheduler.step()
      >>> scheduler.step()
      >>> float(scheduler.dropblock.drop_prob) == float(np.linspace(0.0, 0.1, 5000)[1]), scheduler.i
      (True, 2)
    """

    def __init__(self, dropblock: nn.Module, start_value: float, stop_value: float, nr_steps: float) -> None:
        super().__init__()
        self.dropblock = dropblock
        start, stop, steps = schedule_math.linear_arguments(start_value, stop_value, nr_steps)
        self.drop_values = np.linspace(start=start, stop=stop, num=steps)
        self.i = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropblock(x)

    def step(self) -> None:
        """Set the next ``drop_prob`` of the ramp (the last one once the ramp is over)."""
        if self.i < len(self.drop_values):
            # A Python float, the same number as 0.3.0's numpy float64: torch.compile traces a
            # numpy scalar attribute as a tensor, on whose value forward cannot branch.
            self.dropblock.drop_prob = float(self.drop_values[self.i])
        self.i += 1

    def get_extra_state(self) -> dict[str, int]:
        return {"i": int(self.i)}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.i = int(state["i"])
        # Resume at the rate the last step() had set.
        if self.i > 0:
            self.dropblock.drop_prob = float(self.drop_values[min(self.i, len(self.drop_values)) - 1])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Earlier checkpoints of this class kept ``i`` as a tensor; dropblock 0.3.0's have no step
        # count at all (then the current one is kept).
        legacy = state_dict.pop(prefix + "i", None)
        default = {"i": int(legacy)} if legacy is not None else self.get_extra_state()
        state_dict.setdefault(prefix + "_extra_state", default)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
