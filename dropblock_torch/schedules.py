"""``drop_prob`` schedules for PyTorch: ``step -> drop_prob``, the same values as ``dropblock_jax.schedules``.

The paper (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) ramps ``drop_prob`` linearly from 0 over
training. A schedule takes the step as a tensor (or an int) and returns a float32 tensor on
the step's device, so a compiled model never recompiles as the step advances. The schedules
are small picklable objects: a model holding one pickles, deep-copies and ``torch.save``s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dropblock_common import schedules

Schedule = Callable[[torch.Tensor | int], torch.Tensor]


class _Schedule(schedules.Schedule):
    """A schedule of ``dropblock_common.schedules`` evaluated in torch (float64, rounded to float32)."""

    def __call__(self, step: torch.Tensor | int) -> torch.Tensor:
        step = torch.as_tensor(schedules.bounded_step(step, self.numbers.last_step))
        # float64 where the device has it, so that linear equals numpy.linspace rounded to float32.
        wide = torch.float32 if step.device.type == "mps" else torch.float64
        return self.numbers.value(step.to(wide), torch).to(torch.float32)


def linear(start_value: float, stop_value: float, nr_steps: int) -> Schedule:
    """``numpy.linspace(start_value, stop_value, nr_steps)[min(step, nr_steps - 1)]`` at ``step``.

    Args:
      start_value: ``drop_prob`` at step 0, in [0, 1].
      stop_value: ``drop_prob`` from step ``nr_steps - 1`` on, in [0, 1].
      nr_steps: the number of steps of the ramp, a positive integer.

    Returns:
      A schedule ``step -> drop_prob`` (a float32 0-dim tensor: ``numpy.linspace``'s value
      rounded to float32).

    Raises:
      ValueError: for a value outside [0, 1] or a bad ``nr_steps``, naming it.

    Examples:
      >>> schedule = linear(0.0, 0.1, 5)
      >>> [round(float(schedule(t)), 3) for t in (0, 2, 4, 100)]
      [0.0, 0.05, 0.1, 0.1]
    """
    return _Schedule(schedules.Linear.of(start_value, stop_value, nr_steps))


def ramp(drop_prob: float, total_steps: int) -> Schedule:
    """The authors' schedule: ``drop_prob * min(step, total_steps) / total_steps``.

    0 at step 0, rising linearly to ``drop_prob`` at step ``total_steps``, then constant (the
    authors' TensorFlow code scales ``drop_prob`` by ``current_step / train_steps``).

    Args:
      drop_prob: the final ``drop_prob``, in [0, 1].
      total_steps: the length of the ramp in steps, a positive integer.

    Returns:
      A schedule ``step -> drop_prob`` (a float32 0-dim tensor).

    Raises:
      ValueError: for a bad ``drop_prob`` or ``total_steps``, naming it.

    Examples:
      >>> schedule = ramp(0.1, 100)
      >>> [round(float(schedule(t)), 3) for t in (0, 50, 100, 10**12)]
      [0.0, 0.05, 0.1, 0.1]
    """
    return _Schedule(schedules.Ramp.of(drop_prob, total_steps))
