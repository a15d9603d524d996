"""How ``dropblock`` draws its seeds: i.i.d. Bernoulli(gamma) on the seed grid.

This is the one place that chooses the sampling method; DESIGN.md lets ``dropblock`` draw the
seeds any way whose distribution is i.i.d. Bernoulli(gamma). Seeds are rare (gamma is about
0.003 at the paper's settings), so instead of one random number per position (``dense``) the
default draws only the successes (``sparse``): the gaps between successive successes of a
Bernoulli sequence are i.i.d. geometric, so ``budget`` uniforms, turned into gaps by inversion
and summed, place the seeds exactly. If the budget runs short before the end of the grid,
another round continues the sequence (it is memoryless, so the result stays exact); if gamma is
too large for the budget, the whole grid is drawn densely. Both choices are made at run time,
so a traced ``drop_prob`` never retraces. Either way the seeds come out packed as bits of words
along the channel axis (``bitmask.py``), the form the block expansion works on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from dropblock_jax.bitmask import UNPACKED, Packing, bit_values, pack_flat

# Above this rate a uniform per position costs about what the sparse method does.
DENSE_ABOVE = 1 / 16
# The rate a traced gamma is budgeted for; larger traced rates fall back to dense at run time.
TRACED_RATE_CAP = 1 / 32
# Grids smaller than this are drawn densely: nothing to save, and a simpler program to compile.
SPARSE_MIN_SIZE = 1 << 14
# The sparse method counts positions in int32 up to ``size + 1``: larger grids are drawn densely.
SPARSE_MAX_SIZE = 2**31 - 2


def seed_budget(size: int, gamma: float | None) -> int | None:
    """How many gaps the sparse method draws for ``size`` positions, or None to draw densely.

    Args:
      size: the number of positions of the seed grid.
      gamma: the seed rate if it is known before tracing, None if it is traced.

    Returns:
      A static budget: the expected number of seeds at the (power-of-two rounded) rate plus
      10 standard deviations, so that it runs short with probability below 1e-20; rounding
      keeps the number of distinct compiled programs small. None for large rates, for small
      grids and for grids of 2**31 - 1 positions or more (int32 positions would overflow).

    Examples:
      >>> seed_budget(4_000_000, 0.0033)
      17408
      >>> seed_budget(4_000_000, 0.2) is None, seed_budget(1000, 0.0033) is None, seed_budget(2**31, 0.0033) is None
      (True, True, True)
    """
    cap = TRACED_RATE_CAP if gamma is None else gamma
    if cap > DENSE_ABOVE or not SPARSE_MIN_SIZE <= size <= SPARSE_MAX_SIZE:
        return None
    cap = 2.0 ** math.ceil(math.log2(max(cap, 1.0 / size)))
    mean = size * cap
    return int(math.ceil((mean + 10 * math.sqrt(mean) + 64) / 1024) * 1024)


def _dense(key: jax.Array, gamma: jax.Array, size: int, packing: Packing) -> jax.Array:
    return pack_flat(jax.random.bernoulli(key, gamma, (size,)), packing)


def _sparse(key: jax.Array, gamma: jax.Array, size: int, budget: int, packing: Packing = UNPACKED) -> jax.Array:
    """Successes of a Bernoulli(gamma) sequence of ``size``, placed by geometric gaps, as flat words.

    Each round draws ``budget`` gaps past the last success so far; the sequence is memoryless,
    so rounds continue it exactly. With the budget of ``seed_budget`` one round suffices but
    with negligible probability. Position ``p`` is bit ``p % bits`` of word ``p // bits``.
    """
    log_failure = jnp.log1p(-gamma)
    # A rate of 0 (or NaN) has no seeds: every gap runs past the end, with no division by zero
    # (``checkify`` stays quiet) and no NaN gap that could stall the loop.
    has_seeds = log_failure < 0
    safe_log_failure = jnp.where(has_seeds, log_failure, -1.0)
    # Sums saturate past the end (associative, since every term is non-negative), so int32 never
    # overflows and the last position reaches ``size`` once the sequence is complete.
    saturating_sum = lambda a, b: jnp.minimum(a + b, size + 1)  # noqa: E731

    def another_round(state):
        words, last, round_key = state
        round_key, gaps_key = jax.random.split(round_key)
        uniform = jax.random.uniform(gaps_key, (budget,), jnp.float32, jnp.finfo(jnp.float32).tiny, 1.0)
        # Failures before each success, by inversion.
        gaps = jnp.where(has_seeds, jnp.minimum(jnp.floor(jnp.log(uniform) / safe_log_failure), size), size)
        gaps = gaps.astype(jnp.int32)
        positions = lax.associative_scan(saturating_sum, gaps.at[0].add(last + 1) + 1) - 1
        # Positions are distinct, so adding their bits is OR-ing them; the ones past the end
        # all land in one spare word.
        inside = jnp.minimum(positions, size)
        words = words.at[inside // packing.bits].add(bit_values(inside % packing.bits, packing))
        return words, positions[-1], round_key

    start = (jnp.zeros(size // packing.bits + 1, packing.dtype), jnp.int32(-1), key)
    words, _, _ = lax.while_loop(lambda state: state[1] < size, another_round, start)
    return words[:-1]


def bernoulli_words(
    key: jax.Array, gamma: jax.Array, shape: Sequence[int], packing: Packing, budget: int | None = None
) -> jax.Array:
    """A seed grid of ``shape`` with i.i.d. Bernoulli(``gamma``) entries, packed as ``packing`` says.

    Args:
      key: a JAX PRNG key.
      gamma: the seed rate, a (possibly traced) float32 scalar in [0, 1].
      shape: the seed grid's shape.
      packing: how the grid is stored (``bitmask.packing``); positions are drawn in packed order.
      budget: from ``seed_budget``; None draws one uniform per position.

    Returns:
      Words of ``packing.words_shape(shape)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from dropblock_jax.bitmask import packing
      >>> shape = (4, 64, 64, 32)
      >>> words = bernoulli_words(jax.random.key(0), jnp.float32(0.01), shape, packing(shape, -1), budget=16384)
      >>> words.shape, words.dtype
      ((4, 64, 64, 1), dtype('uint32'))
    """
    size = math.prod(shape)
    # Drawn flat and reshaped: with the partitionable threefry (JAX's default) XLA compiles a
    # 1-D draw about 8x faster than an N-D one.
    if budget is None:
        words = _dense(key, gamma, size, packing)
    else:
        expected = gamma * size
        too_many = expected + 8 * jnp.sqrt(expected) + 16 > budget
        words = lax.cond(
            too_many, lambda: _dense(key, gamma, size, packing), lambda: _sparse(key, gamma, size, budget, packing)
        )
    return words.reshape(packing.words_shape(shape))
