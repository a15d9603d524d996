"""DropBlock layers for PyTorch: ``DropBlock1d``, ``DropBlock2d``, ``DropBlock3d``, ``LinearScheduler``.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890). The layers mirror ``nn.Dropout``: the
identity in eval mode, a one-line ``forward`` over ``functional.drop_block``, validation at
construction. ``drop_prob`` lives in a (non-persistent) buffer and a schedule's ``step`` in a
persistent one, so changing either never recompiles under ``torch.compile``, and a checkpoint
resumes the schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from dropblock_common import schedules as schedule_math
from dropblock_common import validation
from dropblock_torch import functional

Schedule = Callable[[torch.Tensor], torch.Tensor | float]


class _DropBlockNd(nn.Module):
    spatial_dims: int

    def __init__(
        self,
        drop_prob: float | Schedule,
        block_size: int | Sequence[int],
        *,
        seed_region: str = "valid",
        calibrate: bool = False,
        share_channels: bool = False,
        share_batch: bool = False,
        normalize: str = "batch",
        noise: bool = False,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        validation.check_module_options(block_size, seed_region, normalize)
        self.block_size = validation.block_size_tuple(block_size, self.spatial_dims)
        self.options = dict(
            seed_region=seed_region,
            calibrate=calibrate,
            share_channels=share_channels,
            share_batch=share_batch,
            normalize=normalize,
            noise=noise,
            inplace=inplace,
        )
        rate = validation.rate_or_schedule(drop_prob)
        self.schedule = rate if callable(rate) else None
        self.register_buffer("rate", torch.tensor(0.0 if self.schedule else rate), persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64), persistent=self.schedule is not None)

    @property
    def drop_prob(self) -> float:
        """The current drop probability (a schedule's value at the current step)."""
        return float(self._current_rate())

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        if self.schedule is not None:
            raise AttributeError("This DropBlock follows a schedule; build it with a float to set drop_prob.")
        self.rate.fill_(validation.drop_prob_value(value))

    def _current_rate(self) -> torch.Tensor:
        if self.schedule is None:
            return self.rate
        return torch.as_tensor(self.schedule(self.step), dtype=torch.float32, device=self.step.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"{type(self).__name__} expects (N, C) and {self.spatial_dims} spatial dims, "
                f"got x.dim()={x.dim()} with shape {tuple(x.shape)}."
            )
        if not self.training:
            return x
        rate = self._current_rate()
        self.step.add_(1)
        return functional.drop_block(x, rate, self.block_size, **self.options)

    def extra_repr(self) -> str:
        rate = "schedule" if self.schedule is not None else f"drop_prob={self.drop_prob:g}"
        options = ", ".join(f"{name}={value!r}" for name, value in self.options.items())
        return f"{rate}, block_size={self.block_size}, {options}"


class DropBlock1d(_DropBlockNd):
    """DropBlock over ``(N, C, L)``; see ``DropBlock2d``."""

    spatial_dims = 1


class DropBlock2d(_DropBlockNd):
    """DropBlock over ``(N, C, H, W)``: drops random blocks in training, the identity in eval.

    Args:
      drop_prob: the fraction of units to drop, in [0, 1], or a schedule ``step -> drop_prob``
        (``dropblock_torch.schedules``); the step is a buffer in ``state_dict`` that advances
        once per training forward.
      block_size: an int or one int per spatial dim.
      seed_region, calibrate, share_channels, share_batch, normalize, noise, inplace: as in
        ``dropblock_torch.drop_block``.

    Examples:
      >>> from dropblock_torch import schedules
      >>> layer = DropBlock2d(schedules.ramp(0.1, 1000), 3)
      >>> tuple(layer(torch.ones(2, 4, 8, 8)).shape), int(layer.step)
      ((2, 4, 8, 8), 1)
      >>> _ = layer.eval()
      >>> bool((layer(torch.ones(2, 4, 8, 8)) == 1).all())
      True
    """

    spatial_dims = 2


class DropBlock3d(_DropBlockNd):
    """DropBlock over ``(N, C, D, H, W)``; see ``DropBlock2d``."""

    spatial_dims = 3


class LinearScheduler(nn.Module):
    """Ramp a DropBlock layer's ``drop_prob`` linearly, one ``step()`` at a time (the old API).

    After ``t + 1`` calls of ``step()``, ``drop_prob`` is
    ``numpy.linspace(start_value, stop_value, nr_steps)[min(t, nr_steps - 1)]``, as in the
    ``dropblock`` 0.3.0 package. The step count is a buffer in ``state_dict``; ``forward``
    calls the wrapped layer.

    Args:
      dropblock: a ``DropBlock1d``/``2d``/``3d`` built with a float ``drop_prob``.
      start_value, stop_value: drop probabilities in [0, 1].
      nr_steps: the length of the ramp, a positive integer (``5e3`` is accepted).

    Examples:
      >>> scheduler = LinearScheduler(DropBlock2d(0.0, 3), 0.0, 0.1, 5)
      >>> for _ in range(3):
      ...     scheduler.step()
      >>> round(scheduler.dropblock.drop_prob, 3)
      0.05
    """

    def __init__(self, dropblock: _DropBlockNd, start_value: float, stop_value: float, nr_steps: float) -> None:
        super().__init__()
        self.dropblock = dropblock
        self.start_value, self.stop_value, self.nr_steps = schedule_math.linear_arguments(
            start_value, stop_value, nr_steps
        )
        self.register_buffer("i", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropblock(x)

    def step(self) -> None:
        """Advance the ramp by one step and set the layer's ``drop_prob``."""
        value = schedule_math.linear_value(self.i, self.start_value, self.stop_value, self.nr_steps, torch)
        self.dropblock.rate.copy_(value)
        self.i.add_(1)
