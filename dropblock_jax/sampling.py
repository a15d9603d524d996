"""How ``dropblock`` draws its seeds: i.i.d. Bernoulli(gamma) on the seed grid.

This is the one place that chooses the sampling method, so that a faster exact method can
replace it without touching the rest: DESIGN.md lets ``dropblock`` draw the seeds any way
whose distribution is i.i.d. Bernoulli(gamma).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax


def bernoulli_seeds(key: jax.Array, gamma: jax.Array, shape: Sequence[int]) -> jax.Array:
    """A boolean seed grid of ``shape`` whose entries are i.i.d. Bernoulli(``gamma``).

    Args:
      key: a JAX PRNG key.
      gamma: the seed rate, a (possibly traced) float32 scalar in [0, 1].
      shape: the seed grid's shape.

    Returns:
      A boolean array of ``shape``.

    Examples:
      >>> import jax.numpy as jnp
      >>> seeds = bernoulli_seeds(jax.random.key(0), jnp.float32(0.5), (2, 3))
      >>> seeds.shape, seeds.dtype
      ((2, 3), dtype('bool'))
    """
    # Drawn flat and reshaped: the same i.i.d. distribution, and with the partitionable
    # threefry (JAX's default) XLA compiles a 1-D draw about 8x faster than an N-D one.
    return jax.random.bernoulli(key, gamma, (math.prod(shape),)).reshape(tuple(shape))
