"""optax-style ``drop_prob`` schedules: ``step -> drop_prob``, jit-safe.

The paper (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) ramps ``drop_prob`` linearly from 0 over
training. A schedule here is any callable ``step -> drop_prob``, so every optax schedule
(``optax.linear_schedule``, ``optax.join_schedules``, ...) works as one too. The two given here
are small picklable objects: a model that holds one pickles and deep-copies.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dropblock_common import schedules

Schedule = Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]


class _Schedule(schedules.Schedule):
    """A schedule of ``dropblock_common.schedules`` evaluated in ``jax.numpy`` (float32)."""

    def __call__(self, step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(schedules.bounded_step(step, self.numbers.last_step))
        return jnp.asarray(self.numbers.value(step, jnp), jnp.float32)


def linear(start_value: float, stop_value: float, nr_steps: int) -> Schedule:
    """``numpy.linspace(start_value, stop_value, nr_steps)[min(step, nr_steps - 1)]`` at ``step``.

    The values the ``dropblock`` 0.3.0 package's ``LinearScheduler`` gives after
    ``step + 1`` calls of its ``step()``. Worked out in float32 (JAX's default), so a value
    may be 1 float32 ulp from ``numpy.linspace``'s float64 one rounded to float32.

    Args:
      start_value: ``drop_prob`` at step 0, in [0, 1].
      stop_value: ``drop_prob`` from step ``nr_steps - 1`` on, in [0, 1].
      nr_steps: the number of steps of the ramp, a positive integer.

    Returns:
      A jit-safe schedule ``step -> drop_prob`` (a float32 scalar).

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
      A jit-safe schedule ``step -> drop_prob`` (a float32 scalar).

    Raises:
      ValueError: for a bad ``drop_prob`` or ``total_steps``, naming it.

    Examples:
      >>> schedule = ramp(0.1, 100)
      >>> [round(float(schedule(t)), 3) for t in (0, 50, 100, 10**12)]
      [0.0, 0.05, 0.1, 0.1]
    """
    return _Schedule(schedules.Ramp.of(drop_prob, total_steps))


# A layer's step is an int32 variable; schedules are constant past their end, so larger steps clip.
_INT32_MAX = 2**31 - 1


def step_value(step: object) -> jax.Array:
    """``step`` as the int32 scalar a layer's step variable holds (``set_step`` of NNX and Linen).

    Integers (Python or numpy) are clipped to [0, 2**31 - 1]: past a schedule's end its value
    no longer changes, so a clipped step reads the same ``drop_prob``.

    Raises:
      TypeError: for anything but one integer (None, a string, a float, a bool, an array
        of more than one element), naming ``step`` and its value.

    Examples:
      >>> import numpy as np
      >>> int(step_value(5)), int(step_value(10**12)), step_value(np.int64(3)).dtype
      (5, 2147483647, dtype('int32'))
    """
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        return jnp.asarray(min(max(int(step), 0), _INT32_MAX), jnp.int32)
    # Anything without an integer dtype (None, a string, a float, a list) is refused here, not by
    # jnp.asarray in its own words.
    dtype = getattr(step, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer) or jnp.ndim(step) != 0:
        raise TypeError(f"step must be one integer, got step={step!r}.")
    return jnp.asarray(step).astype(jnp.int32)
