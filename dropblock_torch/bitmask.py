"""Seed grids and masks with the channels packed as bits of bytes: the twin of ``dropblock_jax.bitmask``.

A DropBlock mask is one boolean per position, and a windowed OR of booleans is a windowed OR
of their bits. So where the channel count is a multiple of 8, 8 channels of the seed grid are
packed into one ``uint8``: the sampler scatters into 8 times fewer bytes, the block expansion
runs over 8 times fewer elements and the dropped count is a popcount. Where the mask zeroes
``x`` it is unpacked once, into booleans (under ``torch.compile`` the unpacking fuses into
that pass); eagerly on the CPU, seeds drawn one by one are written as blocks instead
(``coordinates`` gives their place), and the words only count. Bytes rather than wider
words because an unpacked mask of bytes is a bool tensor with no conversion, where wider
words would first unpack into a full-size tensor of their width. Compiled code, whose
unpacking is fused, widens the bytes into int32 words of 32 channels (``widen``) where the
channel count is a multiple of 32, and expands, counts and unpacks those; it keeps the
words for the backward pass, which unpacks them again inside its own pass over the gradient.

Other channel counts (a shared channel axis has size 1) stay one bool per position; compiled
code expands such a grid in int32 lanes of 0 or 1 instead, where it is smaller than ``x``
(``dilate_lanes``), which ``unpack`` compares with 0.

Bit ``j`` of byte ``i`` is position ``8 * i + j`` in *packed order*: the flat order of the
bytes ``(N, C // 8, *grid)``, with the bits as the fastest axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

BITS = 8
WORD_BITS = 32  # compiled code's words: 4 bytes in one int32


def tracing() -> bool:
    """Under ``torch.compile`` or ``torch.export``: no reading tensors back, no data-dependent loops."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


@dataclasses.dataclass(frozen=True)
class Packing:
    """How a boolean grid ``(N, C, *grid)`` is stored: ``bits`` channels per element (8 in a byte, or 1 bool).

    Under ``torch.compile`` a grid of one channel per element may hold other dtypes than bool:
    the sampler's bytes, and ``dilate_lanes``' int32 lanes of 0 or 1 (``unpack`` compares them with 0).
    """

    bits: int

    @property
    def dtype(self) -> torch.dtype:
        return {1: torch.bool, BITS: torch.uint8, WORD_BITS: torch.int32}[self.bits]

    def words_shape(self, shape: Sequence) -> tuple:
        return (shape[0], shape[1] // self.bits, *shape[2:])


PACKED, UNPACKED, WORDS = Packing(BITS), Packing(1), Packing(WORD_BITS)


def packing(channels) -> Packing:
    """Bytes of 8 channels where ``channels`` is a multiple of 8, else one bool per position.

    Examples:
      >>> packing(256), packing(3), packing(1)
      (Packing(bits=8), Packing(bits=1), Packing(bits=1))
    """
    return PACKED if channels % BITS == 0 else UNPACKED


def _shifts(device: torch.device, ndim: int, count: int = BITS, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """``0..count-1`` as ``dtype``, shaped to broadcast along axis 2 (the bit axis) of ``ndim`` dims."""
    return torch.arange(count, dtype=dtype, device=device).reshape(count, *(1,) * (ndim - 3))


def pack_flat(flags: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Booleans in packed order (last axis a multiple of ``bits``) as bytes, 8 times shorter."""
    if packing.bits == 1:
        return flags
    grouped = flags.reshape(*flags.shape[:-1], -1, BITS).to(torch.uint8)
    # The bits are distinct powers of two, so their sum is their OR.
    return (grouped << torch.arange(BITS, dtype=torch.uint8, device=flags.device)).sum(-1, dtype=torch.uint8)


def pack(grid: torch.Tensor, packing: Packing) -> torch.Tensor:
    """A boolean grid ``(N, C, *grid)`` as ``packing.words_shape(grid.shape)`` (the inverse of ``unpack``).

    Examples:
      >>> grid = torch.zeros(1, 8, 2, dtype=torch.bool)
      >>> grid[0, 2, 1] = grid[0, 7, 1] = True
      >>> pack(grid, PACKED).tolist()
      [[[0, 132]]]
      >>> bool(torch.equal(unpack(pack(grid, PACKED), PACKED), grid))
      True
    """
    if packing.bits == 1:
        return grid.bool()
    n, c, *rest = grid.shape
    grouped = grid.reshape(n, c // BITS, BITS, *rest).to(torch.uint8)
    return (grouped << _shifts(grid.device, grouped.dim())).sum(2, dtype=torch.uint8)


def unpack(words: torch.Tensor, packing: Packing) -> torch.Tensor:
    """The boolean grid ``(N, C, *grid)`` that ``words`` hold (int32 lanes: where they are not 0)."""
    if packing.bits == 1:
        return words if words.dtype == torch.bool else words != 0
    if packing.bits == WORD_BITS or tracing():
        return _unpack_lanes(words, packing)
    bits = words.unsqueeze(2) >> _shifts(words.device, words.dim() + 1)
    flags = bits.bitwise_and_(1).view(torch.bool)  # 0 or 1 in a byte is a bool: no second pass
    return flags.flatten(1, 2)


def unpack_by_lane_masks(words: torch.Tensor, packing: Packing, shape: Sequence[int]) -> torch.Tensor:
    """``unpack``, written with other operations: each lane tested by an AND with its own bit.

    For the backward pass of compiled code, which unpacks the saved words a second time.
    Written as ``unpack`` is (a shift, then an AND with 1), the two unpackings would be merged
    into one node of the traced graph, which its partitioner may then keep for the backward
    pass as a full-size boolean mask (a byte per unit, which inductor writes lane by lane on
    the CPU) instead of the words (a bit per unit); in a compiled ResNet it did. Int32 lanes of
    a shared mask (``dilate_lanes``) are broadcast to ``shape`` (the gradient's) before their
    test: tested at their own size, the partitioner would keep that smaller boolean mask
    rather than the lanes, and inductor reads a boolean mask lane by lane too (a compiled
    shared-channel backward pass took 0.7 ms longer for it at (32, 256, 28, 28)).

    Examples:
      >>> words = torch.tensor([[[5], [128]]], dtype=torch.uint8)
      >>> torch.equal(unpack_by_lane_masks(words, PACKED, (1, 16, 1)), unpack(words, PACKED))
      True
    """
    if packing.bits == 1:
        # > 0 rather than unpack's != 0, for the same reason as the lane masks: one merged
        # test would be one node, which the partitioner could keep as a boolean mask.
        return words if words.dtype == torch.bool else words.expand(shape) > 0
    return _unpack_lanes(words, packing, by_lane_masks=True)


def _unpack_lanes(words: torch.Tensor, packing: Packing, by_lane_masks: bool = False) -> torch.Tensor:
    """``unpack`` in int32 lanes, bytes widened into words of 32 channels where they can be.

    For inductor, which fuses it into the pass that reads the mask: its C++ backend vectorises
    a condition built from int32 at the speed of a plain product, one built from bytes at a
    fraction of it (it widens byte masks lane by lane).
    """
    wide, wide_packing = widen(words, packing)  # words already wide, or bytes that do not widen, as they are
    lanes = _shifts(words.device, words.dim() + 1, wide_packing.bits, torch.int32)
    wide = wide.to(torch.int32).unsqueeze(2)
    flags = wide & (1 << lanes) if by_lane_masks else (wide >> lanes) & 1
    return (flags != 0).flatten(1, 2)


def widen(words: torch.Tensor, packing: Packing) -> tuple[torch.Tensor, Packing]:
    """Bytes of 8 channels as int32 words of 32 (``WORDS``) where 4 bytes make a word; else as they are.

    Channel ``c`` is bit ``c % 32`` of word ``c // 32``: a kernel that runs along the channels
    (``x`` channels-last, as inductor lays out a conv model's activations) then reads one word
    per vector of channels, where ``c // 8`` (a byte per 8 channels) is not constant over a
    vector and costs a load per unit. A kernel along the last spatial dim reads either form
    contiguously. Compiled code expands, counts and unpacks these words.

    Examples:
      >>> words, packing = widen(torch.tensor([[[1], [0], [2], [128]]], dtype=torch.uint8), PACKED)
      >>> words.flatten().tolist(), packing
      ([-2147352575], Packing(bits=32))
      >>> unpack(words, packing).flatten().nonzero().flatten().tolist()
      [0, 17, 31]
    """
    if packing.bits != BITS or words.shape[1] % (WORD_BITS // BITS) != 0:
        return words, packing
    byte_shifts = BITS * _shifts(words.device, words.dim() + 1, WORD_BITS // BITS, torch.int32)
    # Distinct bits, so the sum is their OR; the top byte may set the sign bit, which the
    # shifts of ``unpack`` drag along and its & 1 clears (an AND with bit 31 tests it).
    grouped = words.to(torch.int32).unflatten(1, (-1, WORD_BITS // BITS))
    return (grouped << byte_shifts).sum(2, dtype=torch.int32), WORDS


def positions(words: torch.Tensor, packing: Packing) -> torch.Tensor:
    """The set positions of ``words`` in packed order, increasing (int64): the inverse of a scatter.

    Searches the words for nonzero ones (8 times fewer than the positions), then their bits.

    Examples:
      >>> positions(torch.tensor([[0, 5], [128, 0]], dtype=torch.uint8), PACKED).tolist()
      [8, 10, 23]
    """
    flat = words.reshape(-1)
    if packing.bits == 1:
        return flat.nonzero().squeeze(1)
    set_words = flat.nonzero().squeeze(1)
    bits = (flat[set_words].unsqueeze(1) >> torch.arange(BITS, dtype=flat.dtype, device=flat.device)) & 1
    word, bit = bits.nonzero().unbind(1)
    return set_words[word] * BITS + bit


def coordinates(positions: torch.Tensor, packing: Packing, words_shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The coordinates ``(n, c, *grid)`` in the boolean grid of the bits at ``positions`` (packed order, int64).

    Examples:
      >>> n, c, j = coordinates(torch.tensor([3, 10]), PACKED, (1, 2, 1))  # grid (1, 16, 1)
      >>> c.tolist(), j.tolist()
      ([3, 10], [0, 0])
    """
    # Divisions by each dim's size, innermost first (torch.unravel_index checks and converts
    # in Python, several times slower on the few thousand seeds of a layer).
    rest = positions if packing.bits == 1 else positions // BITS
    coords = []
    for size in reversed(words_shape[1:]):
        coords.append(rest % size)
        rest = rest // size
    n, group, *grid = [rest, *reversed(coords)]
    channel = group if packing.bits == 1 else group * BITS + positions % BITS
    return (n, channel, *grid)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """The number of set bits of each byte, as uint8 (SWAR: three shift-and-add steps).

    Examples:
      >>> popcount(torch.tensor([0, 1, 7, 128, 255], dtype=torch.uint8)).tolist()
      [0, 1, 3, 1, 8]
    """
    pairs = words - ((words >> 1) & 0x55)
    nibbles = (pairs & 0x33) + ((pairs >> 2) & 0x33)
    return (nibbles + (nibbles >> 4)) & 0x0F


_M1, _M2, _M4 = (int.from_bytes(bytes([byte] * 8), "little", signed=True) for byte in (0x55, 0x33, 0x0F))


def _byte_counts_wide(words: torch.Tensor) -> torch.Tensor:
    """``popcount`` of each byte, computed 8 bytes at a time on an int64 view (contiguous, a multiple of 8 long)."""
    wide = words.reshape(-1).view(torch.int64)
    # Arithmetic shifts drag the sign bit along; every mask clears it again.
    pairs = wide - ((wide >> 1) & _M1)
    nibbles = (pairs & _M2) + ((pairs >> 2) & _M2)
    return ((nibbles + (nibbles >> 4)) & _M4).view(torch.uint8).view(words.shape)


def _popcount_words(words: torch.Tensor) -> torch.Tensor:
    """The number of set bits of each int32 word (``popcount`` on 32 bits, then the bytes' sum)."""
    # Arithmetic shifts drag the sign bit along; every mask clears it again.
    pairs = words - ((words >> 1) & 0x55555555)
    nibbles = (pairs & 0x33333333) + ((pairs >> 2) & 0x33333333)
    per_byte = (nibbles + (nibbles >> 4)) & 0x0F0F0F0F
    halves = per_byte + (per_byte >> 8)
    return (halves + (halves >> 16)) & 0x3F


def count(words: torch.Tensor, packing: Packing, per_row: bool) -> torch.Tensor:
    """How many positions are set, in all of ``words`` or per row (leading index), as int64 with kept dims.

    Examples:
      >>> words = torch.tensor([[255, 1, 0, 3, 8, 0, 0, 0], [0] * 7 + [128]], dtype=torch.uint8)
      >>> count(words, PACKED, per_row=True).flatten().tolist(), count(words, PACKED, per_row=False).item()
      ([12, 1], 13)
    """
    dims = tuple(range(1, words.dim())) if per_row else tuple(range(words.dim()))
    shape = (-1, *(1,) * (words.dim() - 1)) if per_row else (1,) * words.dim()
    if packing.bits == 1:
        # count_nonzero: several times faster than a sum over a bool tensor on the CPU.
        return torch.count_nonzero(words, dim=dims).reshape(shape)
    if packing.bits == WORD_BITS:
        return _popcount_words(words).sum(dims, dtype=torch.int64).reshape(shape)
    row = words[0].numel() if per_row else words.numel()
    if not tracing() and words.is_contiguous() and row % 8 == 0:
        counts = _byte_counts_wide(words)
    else:
        counts = popcount(words)
    return counts.sum(dims, dtype=torch.int64).reshape(shape)


def _window_or(padded: torch.Tensor, dim: int, window: int) -> torch.Tensor:
    """``out[i] = OR(padded[i : i + window])`` along ``dim`` in O(log window) ORs of bytes."""
    covered, width = padded, 1
    while 2 * width <= window:  # ``covered`` spans ``width`` cells; double it
        length = covered.shape[dim] - width
        covered = torch.bitwise_or(covered.narrow(dim, 0, length), covered.narrow(dim, width, length))
        width *= 2
    if width < window:  # two overlapping spans of ``width`` make ``window``
        rest = window - width
        length = covered.shape[dim] - rest
        covered = torch.bitwise_or(covered.narrow(dim, 0, length), covered.narrow(dim, rest, length))
    return covered


def _padded(words: torch.Tensor, paddings: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``words`` zero-padded by ``(low, high)`` per spatial dim (``F.pad`` takes the last dim first)."""
    return F.pad(words, [side for pair in reversed(paddings) for side in pair])


def _dilate_words(words: torch.Tensor, blocks: Sequence[int], paddings: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The block expansion for inductor: pad, then per spatial dim the OR of ``block`` shifted views.

    Each dim's pass reads its input ``block`` times, so inductor writes that input once rather
    than recomputing it for every read (as it would every stage of ``_window_or``'s doubling
    inside the next), and fuses the pad (and the widening of bytes into words) into the first.
    """
    covered = _padded(words, paddings)
    for offset, block in enumerate(blocks):
        dim = 2 + offset
        length = covered.shape[dim] - block + 1
        covered = functools.reduce(torch.bitwise_or, (covered.narrow(dim, shift, length) for shift in range(block)))
    return covered


def _dilate_bytes(words: torch.Tensor, blocks: Sequence[int], paddings: Sequence[int]) -> torch.Tensor:
    """The block expansion of bytes ``(N, C', *grid)``: pad, then a windowed OR per spatial dim."""
    for offset, block in enumerate(blocks):
        if block == 1:
            continue
        dim = 2 + offset
        low, high = paddings[2 * offset], paddings[2 * offset + 1]
        pad = [0, 0] * (words.dim() - 1 - dim) + [low, high]
        words = _window_or(F.pad(words, pad), dim, block)
    return words.contiguous()


@torch.library.custom_op("dropblock_torch::dilate", mutates_args=())
def _dilate_op(words: torch.Tensor, blocks: Sequence[int], paddings: Sequence[int]) -> torch.Tensor:
    return _dilate_bytes(words, blocks, paddings)


@_dilate_op.register_fake
def _(words: torch.Tensor, blocks: Sequence[int], paddings: Sequence[int]) -> torch.Tensor:
    spatial = [
        size + paddings[2 * i] + paddings[2 * i + 1] - block + 1
        for i, (size, block) in enumerate(zip(words.shape[2:], blocks, strict=True))
    ]
    return words.new_empty((*words.shape[:2], *spatial))


def _dilate_vmap(info, in_dims, words, blocks, paddings):
    # One op over the vmapped and the batch dims together: merge them, dilate, split again.
    batch_dim = in_dims[0]
    if batch_dim is None:
        return _dilate_op(words, blocks, paddings), None
    moved = words.movedim(batch_dim, 0)
    merged = moved.reshape(-1, *moved.shape[2:])
    out = _dilate_op(merged, blocks, paddings)
    return out.reshape(moved.shape[0], moved.shape[1], *out.shape[1:]), 0


_dilate_op.register_vmap(_dilate_vmap)


def dilate_lanes(flags: torch.Tensor, blocks: Sequence[int], paddings: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``dilate`` of a bool grid for inductor, as int32 lanes of 0 or 1: a windowed max per spatial dim.

    For compiled code and a bool grid smaller than ``x`` (shared by the channels, or by the batch
    where the channels do not pack into bytes):
    inductor writes each dim's max (a reduction) once, where it would recompute plain ORs of
    shifted views inside the pass over ``x`` for every unit, and the pass then compares int32
    lanes with 0 as it reads them (``unpack``), which its C++ backend vectorises, where it
    widens a bool mask lane by lane. Under ``torch.compile`` this took 0.2 to 0.7 ms less per
    call than ``dilate``'s opaque op on a 2-core CPU.

    Args:
      flags: a seed grid ``(N, C, *grid)`` of bools.
      blocks: the effective block size per spatial dim.
      paddings: ``(low, high)`` zero padding per spatial dim (``coverage.block_padding``).

    Returns:
      An int32 tensor ``(N, C, *spatial)``: 1 wherever some seed's block lies, else 0.

    Examples:
      >>> seeds = torch.zeros(1, 1, 3, dtype=torch.bool)
      >>> seeds[0, 0, 1] = True
      >>> dilate_lanes(seeds, [2], [(1, 1)])[0, 0].tolist()  # as dilate, in 0 and 1
      [0, 1, 1, 0]
    """
    covered = _padded(flags.to(torch.int32), paddings)
    for offset, block in enumerate(blocks):
        if block > 1:
            covered = covered.unfold(2 + offset, block, 1).amax(-1)
    return covered


def dilate(words: torch.Tensor, blocks: Sequence[int], paddings: Sequence[tuple[int, int]]) -> torch.Tensor:
    """True (a set bit) wherever some seed's block lies: a windowed OR per spatial dim.

    Compiled code's int32 words (``widen``) are expanded by plain ops that inductor fuses into
    two passes (``_dilate_words``). Bools and bytes are expanded eagerly in O(log k) ORs, and
    under ``torch.compile`` as one opaque op (``dropblock_torch::dilate``), so that inductor
    neither inlines those stages into each other (which would recompute every stage for every
    output) nor the expansion into the pass over ``x`` (measured 2 to 4 times slower than the
    op for them, where for int32 words the two passes took 0.62 ms and the op 1.0 ms cold).

    Args:
      words: a seed grid ``(N, C', *grid)`` of bools, packed bytes or int32 words.
      blocks: the effective block size per spatial dim.
      paddings: ``(low, high)`` zero padding per spatial dim (``coverage.block_padding``).

    Returns:
      A tensor of ``words``' dtype, ``(N, C', *spatial)``.

    Examples:
      >>> seeds = torch.zeros(1, 1, 3, dtype=torch.bool)
      >>> seeds[0, 0, 1] = True
      >>> dilate(seeds, [2], [(1, 1)])[0, 0].tolist()  # valid region, k=2: a seed at j drops j, j + 1
      [False, True, True, False]
    """
    if all(block == 1 for block in blocks):
        return words
    if words.dtype == torch.int32:  # compiled code's words (``widen``)
        return _dilate_words(words, blocks, paddings)
    flat_paddings = [side for pair in paddings for side in pair]
    if tracing():
        # Conversions and a comparison, not bool views: inductor before torch 2.13 cannot lower
        # a view of bools as bytes, and its C++ backend vectorises a condition built from bytes
        # or bools poorly, from int32 well (see ``unpack``). All fuse into their neighbours.
        dilated = _dilate_op(words.to(torch.uint8), list(blocks), flat_paddings)
        return dilated.to(torch.int32) != 0 if words.dtype == torch.bool else dilated
    as_bytes = words.view(torch.uint8) if words.dtype == torch.bool else words
    dilated = _dilate_bytes(as_bytes, blocks, flat_paddings)
    return dilated.view(torch.bool) if words.dtype == torch.bool else dilated
