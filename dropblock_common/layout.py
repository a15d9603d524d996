"""Where the batch, channel and spatial axes of an input are, its effective block and its seed grid.

Both twins and the parity suite describe an input by one ``Layout``: JAX with the channels
last (or second), torch with the channels second. Sizes of the batch and channel axes are
kept as given (symbolic under ``torch.compile`` with dynamic shapes); spatial sizes are
Python ints, since the seed rate depends on them.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence

from dropblock_common import coverage, validation


@dataclasses.dataclass(frozen=True)
class Layout:
    """The shape of a batched input, the index of its channel axis and the effective block.

    Attributes:
      shape: the batched shape, ``(N, *spatial, C)`` or ``(N, C, *spatial)``.
      channel_axis: the non-negative index of the channel axis (1 or ``len(shape) - 1``).
      spatial_axes: the indices of the spatial axes, in order.
      spatial_shape: the spatial sizes, Python ints.
      block: the block size per spatial axis, clipped to the map.
    """

    shape: tuple
    channel_axis: int
    spatial_axes: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    block: tuple[int, ...]

    def seed_shape(self, seed_region: str, share_channels: bool = False, share_batch: bool = False) -> tuple:
        """The shape of the seed grid: ``shape`` with the spatial sizes of the grid, shared axes of size 1.

        Examples:
          >>> layout((8, 28, 28, 32), 7, channel_axis=-1).seed_shape("valid", share_channels=True)
          (8, 22, 22, 1)
        """
        shape = list(self.shape)
        if share_batch:
            shape[0] = 1
        if share_channels:
            shape[self.channel_axis] = 1
        grid = coverage.seed_grid_shape(self.spatial_shape, self.block, seed_region)
        for axis, size in zip(self.spatial_axes, grid, strict=True):
            shape[axis] = size
        return tuple(shape)

    def block_paddings(self, seed_region: str) -> list[tuple[int, int]]:
        """``(low, high)`` padding of the seed grid per spatial axis that centres each block on its seed."""
        return [coverage.block_padding(block, seed_region) for block in self.block]


def layout(shape: Sequence, block_size: int | Sequence[int], *, channel_axis: int = 1, name: str = "x") -> Layout:
    """The ``Layout`` of a batched ``shape``: ``(N, C, *spatial)`` by default, ``channel_axis=-1`` for channels last.

    Args:
      shape: the batched shape, with 1 to 3 spatial axes.
      block_size: an int or one int per spatial axis.
      channel_axis: ``1`` (channels first, torch's layout) or ``-1`` (channels last, Flax's).
      name: the argument's name, for error messages.

    Returns:
      A ``Layout``.

    Raises:
      ValueError: for a shape of the wrong rank, a bad block size or channel axis.

    Examples:
      >>> layout((8, 32, 5, 28), 7)
      Layout(shape=(8, 32, 5, 28), channel_axis=1, spatial_axes=(2, 3), spatial_shape=(5, 28), block=(5, 7))
    """
    shape = tuple(shape)
    dims = validation.spatial_dims(shape, name=name)
    channel = validation.channel_axis_index(channel_axis, len(shape))
    axes = validation.spatial_axes(len(shape), channel)
    # operator.index, not int: under torch.compile it specialises a symbolic size to its value
    # (a guard, so another map size recompiles) where int() would leave it symbolic.
    spatial_shape = tuple(operator.index(shape[axis]) for axis in axes)
    block = validation.effective_block_size(spatial_shape, validation.block_size_tuple(block_size, dims))
    return Layout(shape, channel, axes, spatial_shape, block)
