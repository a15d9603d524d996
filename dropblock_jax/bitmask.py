"""Seed grids and masks with the channels packed as bits of unsigned words.

A DropBlock mask is one boolean per position, and a windowed max of booleans is a windowed OR
of their bits. So ``bits`` channels of the seed grid are packed into one unsigned word: the
sampler scatters into ``bits`` times fewer words, the block expansion (``lax.reduce_window``
with a bitwise OR, separable per spatial dim) runs over ``bits`` times fewer elements, and the
unpacking (a shift and a mask) fuses into the final multiply, so no full-size mask is written.
The result is the same mask, bit for bit.

Where the channel axis has no power-of-two factor of at least ``MIN_BITS`` (a shared channel
axis has size 1), the words are one float32 per position holding 0 or 1, expanded by a float
max: XLA's CPU ``reduce_window`` vectorises a float max about 3x faster than a bool or integer
one.

Bit ``j`` of word ``i`` is the ``i * bits + j``-th position in *packed order*: the flat order of
the words, with the bits as the fastest axis. For channels last that is the grid's own flat
order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Fewer channels per word than this are not worth the shifts: one float32 per position instead.
MIN_BITS = 4
_WORD_DTYPES = {1: jnp.float32, 4: jnp.uint8, 8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}


@dataclasses.dataclass(frozen=True)
class Packing:
    """How a boolean grid is stored as words: ``bits`` consecutive channels of ``axis`` per word."""

    axis: int
    bits: int

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(_WORD_DTYPES[self.bits])

    def words_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        words = list(shape)
        words[self.axis] //= self.bits
        return tuple(words)

    def combine(self, a: jax.Array, b: jax.Array) -> jax.Array:
        """The union of two dropped sets: OR of the bits, or max of 0/1 floats."""
        return lax.max(a, b) if self.bits == 1 else lax.bitwise_or(a, b)


def packing(shape: Sequence[int], channel_axis: int) -> Packing:
    """The widest packing of ``shape``'s channel axis into 8-, 16- or 32-bit words.

    Examples:
      >>> packing((32, 22, 22, 256), 3), packing((32, 256, 22, 22), 1)
      (Packing(axis=3, bits=32), Packing(axis=1, bits=32))
      >>> packing((8, 14, 14, 24), 3).bits, packing((8, 14, 14, 3), 3).bits, packing((8, 14, 14, 1), 3).bits
      (8, 1, 1)
    """
    channels = int(shape[channel_axis])
    bits = 32
    while channels % bits:
        bits //= 2
    return Packing(channel_axis % len(shape), bits if bits >= MIN_BITS else 1)


UNPACKED = Packing(axis=0, bits=1)


def bit_values(index: jax.Array, packing: Packing) -> jax.Array:
    """The word holding only bit ``index`` (0 <= index < bits): ``1 << index``."""
    if packing.bits == 1:
        return jnp.ones(jnp.shape(index), packing.dtype)
    return jnp.left_shift(jnp.ones((), packing.dtype), jnp.asarray(index).astype(packing.dtype))


def pack_flat(flags: jax.Array, packing: Packing) -> jax.Array:
    """Booleans in packed order (1-D, a multiple of ``bits`` long) as a 1-D array of words."""
    if packing.bits == 1:
        return flags.astype(packing.dtype)
    grouped = flags.reshape(-1, packing.bits).astype(packing.dtype)
    # The bits are distinct powers of two, so their sum is their OR.
    return jnp.sum(grouped * bit_values(jnp.arange(packing.bits), packing), axis=-1, dtype=packing.dtype)


def pack(grid: jax.Array, packing: Packing) -> jax.Array:
    """A boolean grid as words of ``packing.words_shape(grid.shape)``.

    Examples:
      >>> grid = jnp.zeros((1, 2, 8), bool).at[0, 1, 2].set(True).at[0, 1, 7].set(True)
      >>> words = pack(grid, packing(grid.shape, -1))
      >>> words.dtype, [int(w) for w in words.reshape(-1)]
      (dtype('uint8'), [0, 132])
      >>> bool((unpack(words, packing(grid.shape, -1)) == grid).all())
      True
    """
    if packing.bits == 1:
        return grid.astype(packing.dtype)
    axis, shape = packing.axis, grid.shape
    split = grid.reshape(*shape[:axis], shape[axis] // packing.bits, packing.bits, *shape[axis + 1 :])
    return pack_flat(jnp.moveaxis(split, axis + 1, -1).reshape(-1), packing).reshape(packing.words_shape(shape))


def unpack(words: jax.Array, packing: Packing) -> jax.Array:
    """The boolean grid that ``words`` hold (the inverse of ``pack``)."""
    if packing.bits == 1:
        return words > 0
    return _as_grid((words[..., None] & bit_values(jnp.arange(packing.bits), packing)) > 0, packing)


def unpack_lanes(words: jax.Array, packing: Packing, dtype: jax.typing.DTypeLike) -> jax.Array:
    """``unpack`` as integers of ``dtype``: 1 where a bit is set, else 0, from shifts rather than booleans.

    XLA's CPU backend runs a ``where`` over the booleans of ``unpack`` at 1.3-1.7x a plain product
    over ``x``, and the same selection done as integer arithmetic on these lanes (a shift, an
    AND and products on ``x``'s bits, see ``functional._where_dropped``) at about 1.05x.

    Examples:
      >>> words = pack(jnp.array([[True, False, False, True]]), Packing(axis=1, bits=4))
      >>> unpack_lanes(words, Packing(axis=1, bits=4), jnp.int32).tolist()
      [[1, 0, 0, 1]]
    """
    if packing.bits == 1:
        return words.astype(dtype)  # 0 or 1 already
    lanes = (words[..., None] >> jnp.arange(packing.bits, dtype=packing.dtype)) & 1
    return _as_grid(lanes, packing).astype(dtype)


def _as_grid(lanes: jax.Array, packing: Packing) -> jax.Array:
    """Per-bit values ``(*words.shape, bits)`` laid out as the grid: the bits back into the packed axis."""
    axis, shape = packing.axis, lanes.shape[:-1]
    grid_shape = (*shape[:axis], shape[axis] * packing.bits, *shape[axis + 1 :])
    return jnp.moveaxis(lanes, -1, axis + 1).reshape(grid_shape)


# The most positions one int32 sum may count; larger groups are counted in chunks of this size.
INT32_COUNT_LIMIT = 2**31 - 1
_CHUNK = 2**30
# The chunk counts are summed as two int32 halves: ``count = high * 2**15 + low``.
_LOW_BITS = 15


def _ones(words: jax.Array, packing: Packing) -> jax.Array:
    return (words > 0) if packing.bits == 1 else lax.population_count(words)


def count(words: jax.Array, packing: Packing, axes: tuple[int, ...] | None) -> jax.Array:
    """How many positions are set, summed over ``axes`` (None: all), as int32 with kept dims.

    For groups of fewer than 2**31 positions; ``unset_count`` counts any size.
    """
    return jnp.sum(_ones(words, packing), axis=axes, dtype=jnp.int32, keepdims=True)


def unset_count(
    words: jax.Array, packing: Packing, per_row: bool, dtype: jax.typing.DTypeLike, *, chunk: int | None = None
) -> jax.Array:
    """How many positions are not set, in the whole grid or per row (leading index), as ``dtype``.

    The result is the exact count rounded once to ``dtype``, with the kept dims of a sum over
    all axes (or all but the first). Groups of fewer than 2**31 positions are counted in one
    int32 sum; larger ones (which would overflow it) in int32 sums over chunks of at most
    ``chunk`` positions (default 2**30), whose total is carried exactly as two int32 halves,
    so a count is right below 2**46 positions and correctly rounded to float32 below 2**39.

    Args:
      words: a packed grid.
      packing: how ``words`` is packed.
      per_row: count per leading index (``normalize="sample"``) instead of over everything.
      dtype: the floating dtype of the result.
      chunk: positions per int32 sum; given, the chunked path runs whatever the size (tests).

    Examples:
      >>> grid = jnp.zeros((2, 3, 8), bool).at[0, 1, 2].set(True)
      >>> layout = packing(grid.shape, -1)
      >>> unset_count(pack(grid, layout), layout, True, jnp.float32).reshape(-1).tolist()
      [23.0, 24.0]
      >>> unset_count(pack(grid, layout), layout, False, jnp.float32, chunk=8).reshape(-1).tolist()
      [47.0]
    """
    rows = words.shape[0] if per_row else 1
    group = words.size // max(rows, 1) * packing.bits
    kept_dims = (rows, *(1,) * (words.ndim - 1)) if per_row else (1,) * words.ndim
    if chunk is None:
        if group <= INT32_COUNT_LIMIT:
            axes = tuple(range(1, words.ndim)) if per_row else None
            return (group - count(words, packing, axes)).astype(dtype)
        chunk = _CHUNK
    ones = _ones(words, packing).reshape(rows, -1)
    per_chunk = max(chunk // packing.bits, 1)
    chunks = -(-ones.shape[1] // per_chunk)
    ones = jnp.pad(ones, ((0, 0), (0, chunks * per_chunk - ones.shape[1])))
    counts = jnp.sum(ones.reshape(rows, chunks, per_chunk), axis=-1, dtype=jnp.int32)
    high = jnp.sum(counts >> _LOW_BITS, axis=-1, dtype=jnp.int32)
    low = jnp.sum(counts & (2**_LOW_BITS - 1), axis=-1, dtype=jnp.int32)
    # unset = group - (high * 2**15 + low), normalised so that 0 <= low < 2**15.
    group_high, group_low = divmod(group, 2**_LOW_BITS)
    high, low = group_high - high, group_low - low
    high, low = high + (low >> _LOW_BITS), low & (2**_LOW_BITS - 1)
    # high * 2**15 is exact in float32 below 2**39; adding low rounds once.
    unset = high.astype(dtype) * (2**_LOW_BITS) + low.astype(dtype)
    return unset.reshape(kept_dims)


def dilate(
    words: jax.Array,
    packing: Packing,
    axes: Sequence[int],
    paddings: Sequence[tuple[int, int]],
    block: Sequence[int],
) -> jax.Array:
    """A windowed OR of ``block`` along each of ``axes``, padded by ``paddings``: the block expansion.

    Examples:
      >>> seeds = jnp.zeros((1, 3, 8), bool).at[0, 1, 0].set(True)  # one seed, in channel 0
      >>> layout = packing(seeds.shape, -1)
      >>> dropped = dilate(pack(seeds, layout), layout, axes=[1], paddings=[(1, 1)], block=[2])
      >>> unpack(dropped, layout)[0, :, 0].tolist()  # valid region, k=2: a seed at j drops j, j + 1
      [False, True, True, False]
    """
    ndim = words.ndim
    zero = np.zeros((), packing.dtype)
    for axis, (low, high), size in zip(axes, paddings, block, strict=True):
        if size == 1:
            continue
        window = tuple(size if i == axis else 1 for i in range(ndim))
        padding = tuple((low, high) if i == axis else (0, 0) for i in range(ndim))
        words = lax.reduce_window(words, zero, packing.combine, window, (1,) * ndim, padding)
    return words
