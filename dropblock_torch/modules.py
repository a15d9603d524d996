"""DropBlock layers for PyTorch: ``DropBlock1d``, ``DropBlock2d``, ``DropBlock3d``, ``LinearScheduler``.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890). The layers mirror ``nn.Dropout``: the
identity in eval mode, a one-line ``forward`` over ``functional.drop_block``, validation at
construction. ``drop_prob`` lives in a (non-persistent) buffer and a schedule's ``step`` in a
persistent one, so changing either never recompiles under ``torch.compile``, and a checkpoint
resumes the schedule.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dropblock_common import schedules as schedule_math
from dropblock_common import validation
from dropblock_common.options import DropBlockOptions
from dropblock_torch import bitmask, functional

# Read once: dynamo (torch 2.14) cannot trace dataclasses.fields on a class inside forward.
_OPTION_NAMES = DropBlockOptions.names()

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
        auto_step: bool = True,
    ) -> None:
        super().__init__()
        flags = dict(calibrate=calibrate, share_channels=share_channels, share_batch=share_batch, noise=noise)
        validation.check_module_options(
            block_size, seed_region, normalize, spatial_dims=self.spatial_dims, inplace=inplace, **flags
        )
        self.block_size = validation.block_size_tuple(block_size, self.spatial_dims)
        # Plain attributes, as nn.Dropout has (``layer.noise``), checked as one record.
        options = DropBlockOptions(seed_region=seed_region, normalize=normalize, **flags)
        for name, value in options.kwargs().items():
            setattr(self, name, value)
        self.inplace = validation.check_flag(inplace, "inplace")
        self.auto_step = validation.check_flag(auto_step, "auto_step")
        rate = validation.rate_or_schedule(drop_prob)
        self.schedule = rate if callable(rate) else None
        # The Python value is the truth; the float32 buffer is what forward reads (so changing the
        # rate never recompiles), rebuilt from it whenever the module is moved or materialised.
        self._drop_prob = None if self.schedule is not None else rate
        self._rate_at_forward = None  # with a schedule: the rate of the last forward, for its recomputation
        # Ordinary tensors even when built under torch.inference_mode, so that training can update them.
        with torch.inference_mode(False):
            self.register_buffer("rate", torch.tensor(self._drop_prob or 0.0), persistent=False)
            if self.schedule is not None:
                self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    @property
    def drop_prob(self) -> float:
        """The current drop probability: the value given, or a schedule's value at the current step."""
        if self.schedule is None:
            return self._drop_prob
        return float(self.schedule(self.step))

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        if self.schedule is not None:
            raise AttributeError("This DropBlock follows a schedule; build it with a float to set drop_prob.")
        self._drop_prob = validation.drop_prob_value(value)
        self._refill_rate()

    def _refill_rate(self) -> None:
        if self.schedule is None:
            # A new tensor rather than fill_: the old one may not be float32 any more.
            with torch.inference_mode(False):
                self.rate = torch.full((), self._drop_prob, dtype=torch.float32, device=self.rate.device)

    def _apply(self, fn, *args, **kwargs):
        # .to(dtype), .half(), .to_empty() (deferred init on the meta device): the rate stays the
        # float32 of the value given instead of being rounded or left uninitialised.
        from_meta = self.schedule is not None and self.step.is_meta
        if self.rate.is_meta:
            # Not in state_dict, so load_state_dict(assign=True) leaves it on the meta device, from
            # which .to(device) cannot copy: rebuilt from the float it holds, wherever the move goes.
            with torch.inference_mode(False):
                self.rate = torch.tensor(self._drop_prob or 0.0)
        module = super()._apply(fn, *args, **kwargs)
        self._refill_rate()
        if from_meta and not self.step.is_meta:
            # Only to_empty() takes a tensor off the meta device, leaving its memory as it found
            # it: the schedule starts at step 0 (a load_state_dict then restores a saved one).
            with torch.inference_mode(False):
                self.step.zero_()
        return module

    def reset_parameters(self) -> None:
        """Start the schedule over (step 0) and rewrite the rate: what deferred initialisation calls."""
        self._refill_rate()
        if self.schedule is not None:
            with torch.inference_mode(False):
                self.step = torch.zeros((), dtype=torch.int64, device=self.step.device)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Weights saved before DropBlock was added (a pretrained checkpoint) have no step: a strict
        # load still works and keeps the current one.
        if self.schedule is not None:
            state_dict.setdefault(prefix + "step", self.step.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _current_rate(self) -> float | torch.Tensor:
        # Eager, a rate known on the host goes as a float: its seed rate is worked out once per
        # configuration instead of per call. Compiled, it stays a tensor, so a new value never recompiles.
        tracing = bitmask.tracing()
        if self.schedule is None:
            return self.rate if tracing else self._drop_prob
        value = self.schedule(self.step)
        if isinstance(value, bool) or not isinstance(value, torch.Tensor | numbers.Real):
            raise TypeError(
                f"schedule must return drop_prob (a float or a 0-dim tensor), got {value!r} "
                f"from schedule={self.schedule!r}."
            )
        rate = torch.as_tensor(value, dtype=torch.float32, device=self.step.device)
        return float(rate) if not tracing and rate.device.type == "cpu" else rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bitmask.tracing() and isinstance(x, torch.fx.Proxy):
            # torch.fx symbolic tracing: one call of this layer, as for torch's own dropout
            # layers, which then trains or not as the layer's mode says when the graph runs.
            # (Not asked under dynamo, which would inspect x's attributes, .grad among them.)
            return x.tracer.create_proxy("call_module", x.tracer.path_of_module(self), (x,), {})
        if not self.training:
            functional.check_rank(x, self.spatial_dims)
            return x
        eager = not bitmask.tracing()  # compiled code never reads or writes the Python attribute
        if eager and self.schedule is not None and self._rate_at_forward is not None and functional._recomputing():
            # torch.utils.checkpoint runs forward again in the backward pass, with the random
            # state of the first run: the same rate gives the same mask, and the step stays.
            rate = self._rate_at_forward
        else:
            rate = self._current_rate()
            if eager and self.schedule is not None:
                self._rate_at_forward = rate
            if self.schedule is not None and self.auto_step:
                self.step.add_(1)
        options = {name: getattr(self, name) for name in _OPTION_NAMES}
        return functional.drop_block(
            x, rate, self.block_size, spatial_dims=self.spatial_dims, inplace=self.inplace, **options
        )

    def extra_repr(self) -> str:
        rate = f"schedule={self.schedule!r}" if self.schedule is not None else f"drop_prob={self.drop_prob:g}"
        options = DropBlockOptions.from_attributes(self).repr_fragment(defaults=True) + f", inplace={self.inplace!r}"
        step = "" if self.schedule is None or self.auto_step else ", auto_step=False"
        return f"{rate}, block_size={self.block_size}, {options}{step}"


def set_step(module: nn.Module, step: int | torch.Tensor) -> None:
    """Set the schedule step of every scheduled DropBlock layer in ``module`` (itself included).

    For schedules that follow the optimizer's step rather than the number of forward calls,
    e.g. under gradient accumulation: build the layers with ``auto_step=False`` and call
    ``set_step(model, optimizer_step)`` once per optimizer step. Layers without a schedule are
    left alone. ``step`` may be an int or a 0-dim integer tensor.

    Args:
      module: a model, or one layer.
      step: the step the schedules read from now on.

    Examples:
      >>> from dropblock_torch import schedules
      >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), DropBlock2d(schedules.ramp(0.1, 100), 3, auto_step=False))
      >>> set_step(model, 50)
      >>> round(model[1].drop_prob, 6)
      0.05
    """
    integral = isinstance(step, numbers.Integral) or (
        isinstance(step, torch.Tensor) and step.dim() == 0 and not step.is_floating_point() and not step.is_complex()
    )
    if isinstance(step, bool) or not integral or (isinstance(step, torch.Tensor) and step.dtype == torch.bool):
        raise TypeError(f"step must be an int or a 0-dim integer tensor, got {step=!r}.")
    # A CPU tensor reads back for free; another device's is not synchronised for the check.
    readable = isinstance(step, numbers.Integral) or (step.device.type == "cpu" and not bitmask.tracing())
    if readable and int(step) < 0:
        raise ValueError(f"step must be at least 0, got {step=!r}.")
    for layer in module.modules():
        if isinstance(layer, _DropBlockNd) and layer.schedule is not None:
            layer.step.copy_(torch.as_tensor(step, dtype=torch.int64, device=layer.step.device))


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
      auto_step: with a schedule, advance the step once per training forward (default); False
        leaves it to ``set_step`` (gradient accumulation: follow the optimizer's step).

    Inputs are ``(N, C, H, W)`` or one example ``(C, H, W)``, as for ``nn.Dropout2d``.

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
    ``dropblock`` 0.3.0 package. The step count is a buffer in ``state_dict``, and loading it
    restores the rate too; ``forward`` calls the wrapped layer. A layer built with a schedule
    follows its own (see ``set_step``) and is refused here.

    Args:
      dropblock: a layer with a settable ``drop_prob``: ``DropBlock1d``/``2d``/``3d`` built with
        a float, or ``dropblock_torch.compat.DropBlock2D``/``3D``.
      start_value, stop_value: drop probabilities in [0, 1].
      nr_steps: the length of the ramp, a positive integer (``5e3`` is accepted).

    Examples:
      >>> scheduler = LinearScheduler(DropBlock2d(0.0, 3), 0.0, 0.1, 5)
      >>> for _ in range(3):
      ...     scheduler.step()
      >>> round(scheduler.dropblock.drop_prob, 3)
      0.05
    """

    def __init__(self, dropblock: nn.Module, start_value: float, stop_value: float, nr_steps: float) -> None:
        super().__init__()
        if getattr(dropblock, "schedule", None) is not None:
            raise ValueError(
                "dropblock follows a schedule of its own; LinearScheduler would not change it. Build the layer "
                "with a float drop_prob, or drop the LinearScheduler and use the schedule (with set_step)."
            )
        if not hasattr(dropblock, "drop_prob"):
            raise TypeError(
                f"dropblock must be a DropBlock layer with a settable drop_prob, got {type(dropblock).__name__}."
            )
        self.dropblock = dropblock
        self.ramp = schedule_math.Linear.of(start_value, stop_value, nr_steps)
        self.start_value, self.stop_value, self.nr_steps = (
            self.ramp.start_value,
            self.ramp.stop_value,
            self.ramp.nr_steps,
        )
        self.register_buffer("i", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropblock(x)

    def step(self) -> None:
        """Advance the ramp by one step and set the layer's ``drop_prob``."""
        self._set_rate(int(self.i))
        self.i.add_(1)

    def _set_rate(self, index: int) -> None:
        # numpy float64, as numpy.linspace gives it.
        self.dropblock.drop_prob = float(self.ramp.value(np.int64(index), np))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Resume at the rate the last step() had set (the layer's rate is not in the state_dict).
        if int(self.i) > 0:
            self._set_rate(int(self.i) - 1)
