"""Arithmetic of ``drop_prob`` schedules, shared by the JAX and torch twins.

The paper (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) ramps ``drop_prob`` linearly from 0 over
training. ``linear(start, stop, n)`` at step ``t`` (0 is the first training call) equals
``numpy.linspace(start, stop, n)[min(t, n - 1)]``: the values the ``dropblock`` 0.3.0
package's ``LinearScheduler`` gives after ``t + 1`` calls of ``step()``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from dropblock_common import validation


def linear_arguments(start_value: float, stop_value: float, nr_steps: float) -> tuple[float, float, int]:
    """Validated ``(start_value, stop_value, nr_steps)`` of a linear schedule.

    ``nr_steps`` may be a float with an integral value (``5.0``), as ``numpy.linspace``
    allows; the ``dropblock`` 0.3.0 package breaks on one, this does not.

    Raises:
      ValueError: for a value outside [0, 1], or ``nr_steps`` that is not a positive integer.

    Examples:
      >>> linear_arguments(0.0, 0.1, 5e3)
      (0.0, 0.1, 5000)
    """
    try:
        start, stop = validation.drop_prob_value(start_value), validation.drop_prob_value(stop_value)
    except (TypeError, ValueError):
        raise ValueError(
            f"start_value and stop_value are drop probabilities in [0, 1], got {start_value=!r}, {stop_value=!r}."
        ) from None
    return start, stop, step_count(nr_steps, "nr_steps")


def step_count(value: float, name: str) -> int:
    """``value`` as a positive int; a float with an integral value (``5e3``) is accepted.

    Raises:
      ValueError: naming ``name`` and the value.

    Examples:
      >>> step_count(5e3, "total_steps")
      5000
    """
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()
    )
    if isinstance(value, bool) or not integral or value < 1:
        raise ValueError(f"{name} must be a positive integer (a number of steps), got {name}={value!r}.")
    return int(value)


def linear_value(step: Any, start_value: float, stop_value: float, nr_steps: int, xp: Any) -> Any:
    """``numpy.linspace(start_value, stop_value, nr_steps)[min(step, nr_steps - 1)]``.

    Args:
      step: an integer array of namespace ``xp`` (may be traced); negative steps count as 0.
      start_value, stop_value, nr_steps: validated by ``linear_arguments``.
      xp: the array namespace (``numpy``, ``jax.numpy`` or ``torch``).

    Returns:
      The schedule's value, a floating array of namespace ``xp``.

    Examples:
      >>> import numpy as np
      >>> float(linear_value(np.int64(2), 0.0, 0.1, 5, np))
      0.05
    """
    if nr_steps == 1:
        return step * 0 + start_value
    last = nr_steps - 1
    # linspace's own arithmetic, t * delta + start, with its exact endpoint at the last step.
    delta = (stop_value - start_value) / last
    t = xp.clip(step, 0, last)
    return xp.where(t >= last, stop_value, t * delta + start_value)
