"""``drop_prob`` schedules for PyTorch: ``step -> drop_prob``, the same values as ``dropblock_jax.schedules``.

The paper (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) ramps ``drop_prob`` linearly from 0 over
training. A schedule takes the step as a tensor (or an int) and returns a float32 tensor on
the step's device, so a compiled model never recompiles as the step advances.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dropblock_common import schedules, validation

Schedule = Callable[[torch.Tensor | int], torch.Tensor]


def linear(start_value: float, stop_value: float, nr_steps: int) -> Schedule:
    """``numpy.linspace(start_value, stop_value, nr_steps)[min(step, nr_steps - 1)]`` at ``step``.

    Args:
      start_value: ``drop_prob`` at step 0, in [0, 1].
      stop_value: ``drop_prob`` from step ``nr_steps - 1`` on, in [0, 1].
      nr_steps: the number of steps of the ramp, a positive integer.

    Returns:
      A schedule ``step -> drop_prob`` (a float32 0-dim tensor).

    Raises:
      ValueError: for a value outside [0, 1] or a bad ``nr_steps``, naming it.

    Examples:
      >>> schedule = linear(0.0, 0.1, 5)
      >>> [round(float(schedule(t)), 3) for t in (0, 2, 4, 100)]
      [0.0, 0.05, 0.1, 0.1]
    """
    start, stop, steps = schedules.linear_arguments(start_value, stop_value, nr_steps)

    def schedule(step: torch.Tensor | int) -> torch.Tensor:
        value = schedules.linear_value(torch.as_tensor(step), start, stop, steps, torch)
        return torch.as_tensor(value, dtype=torch.float32)

    return schedule


def ramp(drop_prob: float, total_steps: int) -> Schedule:
    """The paper's schedule: 0 at step 0, rising linearly to ``drop_prob``, then constant.

    ``linear(0.0, drop_prob, total_steps)``: ``drop_prob`` is reached at step
    ``total_steps - 1`` and kept from there on.

    Examples:
      >>> schedule = ramp(0.1, 11)
      >>> [round(float(schedule(t)), 3) for t in (0, 5, 10, 50)]
      [0.0, 0.05, 0.1, 0.1]
    """
    drop_prob = validation.drop_prob_value(drop_prob)
    return linear(0.0, drop_prob, schedules.step_count(total_steps, "total_steps"))
