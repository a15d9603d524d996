"""Arithmetic of ``drop_prob`` schedules, shared by the JAX and torch twins.

The paper (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) ramps ``drop_prob`` linearly from 0 over
training. ``linear(start, stop, n)`` at step ``t`` (0 is the first training call) equals
``numpy.linspace(start, stop, n)[min(t, n - 1)]``: the values the ``dropblock`` 0.3.0
package's ``LinearScheduler`` gives after ``t + 1`` calls of ``step()``. ``ramp(p, T)`` is the
authors' own (their TensorFlow code scales by ``current_step / train_steps``):
``p * min(t, T) / T``.

``Linear`` and ``Ramp`` hold a schedule's validated numbers; each twin wraps one in a small
callable of its framework. They are plain frozen dataclasses at module level, so a model that
holds a schedule pickles, deep-copies and ``torch.save``s.
"""

from __future__ import annotations

import dataclasses
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


def ramp_value(step: Any, drop_prob: float, total_steps: int, xp: Any) -> Any:
    """``drop_prob * min(step, total_steps) / total_steps``, the authors' ramp; negative steps count as 0.

    Examples:
      >>> import numpy as np
      >>> float(ramp_value(np.int64(50), 0.1, 100, np))
      0.05
    """
    # One multiplication by a constant: XLA turns a division by a constant into a multiplication
    # by its reciprocal under jit, and then eager and jitted values would differ in the last bit.
    return xp.clip(step, 0, total_steps) * (drop_prob / total_steps)


@dataclasses.dataclass(frozen=True)
class Linear:
    """The numbers of ``linear(start_value, stop_value, nr_steps)``, validated.

    Examples:
      >>> import numpy as np
      >>> float(Linear.of(0.0, 0.1, 5).value(np.int64(2), np))
      0.05
    """

    start_value: float
    stop_value: float
    nr_steps: int

    @classmethod
    def of(cls, start_value: float, stop_value: float, nr_steps: float) -> Linear:
        return cls(*linear_arguments(start_value, stop_value, nr_steps))

    @property
    def last_step(self) -> int:
        """The step from which the value stays constant."""
        return self.nr_steps - 1

    def value(self, step: Any, xp: Any) -> Any:
        return linear_value(step, self.start_value, self.stop_value, self.nr_steps, xp)


@dataclasses.dataclass(frozen=True)
class Ramp:
    """The numbers of ``ramp(drop_prob, total_steps)``, validated.

    Examples:
      >>> import numpy as np
      >>> float(Ramp.of(0.1, 1).value(np.int64(1), np))
      0.1
    """

    drop_prob: float
    total_steps: int

    @classmethod
    def of(cls, drop_prob: float, total_steps: float) -> Ramp:
        return cls(validation.drop_prob_value(drop_prob), step_count(total_steps, "total_steps"))

    @property
    def last_step(self) -> int:
        """The step from which the value stays constant."""
        return self.total_steps

    def value(self, step: Any, xp: Any) -> Any:
        return ramp_value(step, self.drop_prob, self.total_steps, xp)


def bounded_step(step: Any, last_step: int) -> Any:
    """A Python int ``step`` clipped to ``[0, last_step]`` (the value is constant outside), else ``step``.

    So that ``schedule(10**12)`` does not overflow a 32-bit integer on the way in.

    Examples:
      >>> bounded_step(10**12, 99), bounded_step(-3, 99)
      (99, 0)
    """
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        return min(max(int(step), 0), last_step)
    return step


class Schedule:
    """A ``Linear`` or ``Ramp`` as a callable ``step -> drop_prob``; each twin adds ``__call__``.

    Equal schedules compare equal and hash alike, and the repr says which schedule it is.
    """

    def __init__(self, numbers: Linear | Ramp) -> None:
        self.numbers = numbers

    def __call__(self, step: Any) -> Any:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.numbers == self.numbers  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.numbers))

    def __repr__(self) -> str:
        numbers = self.numbers
        fields = ", ".join(f"{field.name}={getattr(numbers, field.name)!r}" for field in dataclasses.fields(numbers))
        return f"{type(self.numbers).__name__.lower()}({fields})"
