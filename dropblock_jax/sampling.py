"""How ``dropblock`` draws its seeds: i.i.d. Bernoulli(gamma) on the seed grid.

The design (docs/design.md, step 5 of the algorithm) lets ``dropblock`` draw the seeds any
way whose distribution is i.i.d. Bernoulli(gamma). Seeds are rare, so instead of one random
number per position (``dense``) the default draws only the successes (``sparse``), by
geometric gaps; the method, its budget (``seed_budget``), the dense fallback test
(``budget_too_small``) and their thresholds are the policy both twins share, in
``dropblock_common.sampling``. Either way the seeds come out packed as bits of words along
the channel axis (``bitmask.py``), the form the block expansion works on.

Where this twin departs from the policy as the torch twin applies it: it samples sparsely on
every backend (CPU, GPU, TPU), eagerly, compiled and under ``jax.vmap`` alike, where torch
draws densely off the CPU. The rounds are a ``lax.while_loop`` and the dense fallback for a
traced rate too large for its budget a ``lax.cond`` on ``budget_too_small``, both inside the
compiled program: nothing is read back to the host, so nothing synchronises and nothing
retraces, whatever the device. A concrete rate is budgeted for its own value before tracing,
a traced one for ``TRACED_RATE_CAP``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from dropblock_common import sampling as policy
from dropblock_jax.bitmask import UNPACKED, Packing, bit_values, pack_flat


def _dense(key: jax.Array, gamma: jax.Array, size: int, packing: Packing) -> jax.Array:
    return pack_flat(jax.random.bernoulli(key, gamma, (size,)), packing)


def _sparse(key: jax.Array, gamma: jax.Array, size: int, budget: int, packing: Packing = UNPACKED) -> jax.Array:
    """Successes of a Bernoulli(gamma) sequence of ``size``, placed by geometric gaps, as flat words.

    Each round draws ``budget`` gaps past the last success so far; the sequence is memoryless,
    so rounds continue it exactly. With the budget of ``policy.seed_budget`` one round suffices
    but with negligible probability. Position ``p`` is bit ``p % bits`` of word ``p // bits``.
    """
    log_failure = jnp.log1p(-gamma)
    # A rate of 0 (or NaN) has no seeds: every gap runs past the end, with no division by zero
    # (``checkify`` stays quiet) and no NaN gap that could stall the loop.
    has_seeds = log_failure < 0
    safe_log_failure = jnp.where(has_seeds, log_failure, -1.0)
    # Sums saturate at ``size + 1`` (associative, since every term is non-negative) without
    # forming a sum above it, so int32 never overflows (``size + 1 <= 2**31 - 1``) and the last
    # position reaches ``size`` once the sequence is complete.
    saturating_sum = lambda a, b: jnp.where(a > size + 1 - b, size + 1, a + b)  # noqa: E731

    def another_round(state):
        words, last, round_key = state
        round_key, gaps_key = jax.random.split(round_key)
        uniform = jax.random.uniform(gaps_key, (budget,), jnp.float32, jnp.finfo(jnp.float32).tiny, 1.0)
        # Failures before each success, by inversion.
        gaps = jnp.where(has_seeds, jnp.minimum(jnp.floor(jnp.log(uniform) / safe_log_failure), size), size)
        gaps = gaps.astype(jnp.int32)
        # Steps between positions, the first from ``last``, each at most ``size + 1``: a first
        # gap running past the end is cut to the end.
        first = jnp.minimum(gaps[0], size - 1 - last) + last + 2
        positions = lax.associative_scan(saturating_sum, (gaps + 1).at[0].set(first)) - 1
        # Positions are distinct, so adding their bits is OR-ing them; the ones past the end
        # all land in one spare word.
        inside = jnp.minimum(positions, size)
        words = words.at[inside // packing.bits].add(bit_values(inside % packing.bits, packing))
        return words, positions[-1], round_key

    # Inside ``jax.shard_map`` with a key (or a rate) per device the rounds vary across devices,
    # so the loop's carry must from the start, or its type changes in the loop: the start is
    # offset by a zero computed from the key's and the rate's bits (which XLA folds away), so
    # that it varies as they do, whatever the version's API for device-varying types.
    rate_bits = lax.bitcast_convert_type(jnp.asarray(gamma, jnp.float32), jnp.int32)
    zero = (jax.random.key_data(key).reshape(-1)[0].astype(jnp.int32) | rate_bits) & 0
    start = (jnp.zeros(size // packing.bits + 1, packing.dtype) + zero.astype(packing.dtype), jnp.int32(-1) + zero, key)
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
      budget: from ``dropblock_common.sampling.seed_budget``; None draws one uniform per position.
        Given a budget, a rate too large for it (``budget_too_small``) is drawn densely, chosen
        at run time.

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
        words = lax.cond(
            policy.budget_too_small(gamma * size, budget, jnp),
            lambda: _dense(key, gamma, size, packing),
            lambda: _sparse(key, gamma, size, budget, packing),
        )
    return words.reshape(packing.words_shape(shape))
