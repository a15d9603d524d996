"""Geometry of DropBlock's seed grid: where seeds live, what each one drops, how often.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) drops a block of ``k_i`` cells per
spatial dimension around every seed. This module holds the geometry shared by both twins:

- ``seed_region="valid"`` (the paper's Algorithm 1): seeds on ``S - k + 1`` positions per
  dimension; a seed at ``j`` drops ``[j, j + k)``, so every block lies inside the map.
- ``seed_region="full"`` (timm's choice): seeds on all ``S`` positions; a seed at ``j`` drops
  ``[j - k // 2, j - k // 2 + k)`` clipped to the map.

All sizes here are effective block sizes (``min(block_size, S)``, see
``validation.effective_block_size``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def seed_grid_size(size: int, block: int, seed_region: str) -> int:
    """Number of seed positions along one dimension of length ``size``.

    Examples:
      >>> seed_grid_size(28, 7, "valid"), seed_grid_size(28, 7, "full")
      (22, 28)
    """
    return size - block + 1 if seed_region == "valid" else size


def seed_grid_shape(spatial_shape: Sequence[int], block_size: Sequence[int], seed_region: str) -> tuple[int, ...]:
    """The spatial shape of the seed grid.

    Examples:
      >>> seed_grid_shape((28, 14), (7, 3), "valid")
      (22, 12)
    """
    return tuple(
        seed_grid_size(size, block, seed_region) for size, block in zip(spatial_shape, block_size, strict=True)
    )


def block_start(block: int, seed_region: str) -> int:
    """Where a seed's block starts along one dimension, relative to the seed (before clipping).

    Examples:
      >>> block_start(7, "valid"), block_start(7, "full"), block_start(4, "full")
      (0, -3, -2)
    """
    # Output cell i is the OR of the padded grid's cells i .. i + block - 1, the seeds
    # i - low .. i - low + block - 1: a seed at j covers cells j + low - (block - 1) .. j + low.
    low, _ = block_padding(block, seed_region)
    return low - (block - 1)


def block_padding(block: int, seed_region: str) -> tuple[int, int]:
    """Zero padding (low, high) of the seed grid before a stride-1 max over ``block`` cells.

    Padding the seed grid this way and taking a running maximum over ``block`` cells gives,
    at every position of the map, whether some seed's block covers it: exactly the dilation
    described in the module docstring.

    Examples:
      >>> block_padding(7, "valid"), block_padding(4, "full")
      ((6, 6), (1, 2))
    """
    if seed_region == "valid":
        return block - 1, block - 1
    return block - 1 - block // 2, block // 2


def coverage_counts_1d(size: int, block: int, seed_region: str) -> np.ndarray:
    """For each position along one dimension, how many seed positions' blocks cover it.

    Examples:
      >>> coverage_counts_1d(5, 3, "valid")
      array([1, 2, 3, 2, 1])
      >>> coverage_counts_1d(5, 3, "full")
      array([2, 3, 3, 3, 2])
    """
    low, high = block_padding(block, seed_region)
    positions = np.arange(size)
    # Seeds at [p - low, p + block - 1 - low] cover p; clip that range to the seed grid.
    first = np.maximum(positions - low, 0)
    last = np.minimum(positions + block - 1 - low, seed_grid_size(size, block, seed_region) - 1)
    return last - first + 1


def coverage_counts(spatial_shape: Sequence[int], block_size: Sequence[int], seed_region: str) -> np.ndarray:
    """``c(pos)``: how many seed positions' blocks cover each position of the map.

    Blocks are boxes, so the count is the product of the per-dimension counts.

    Returns:
      An int64 array of shape ``spatial_shape``.

    Examples:
      >>> coverage_counts((3, 4), (2, 2), "valid")
      array([[1, 2, 2, 1],
             [2, 4, 4, 2],
             [1, 2, 2, 1]])
    """
    counts = np.ones((), dtype=np.int64)
    for size, block in zip(spatial_shape, block_size, strict=True):
        counts = np.multiply.outer(counts, coverage_counts_1d(size, block, seed_region))
    return counts


def coverage_histogram(
    spatial_shape: Sequence[int], block_size: Sequence[int], seed_region: str
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``c(pos)`` and the fraction of positions that have each.

    This small, static table is all that the expected dropped fraction depends on, so
    traced code can evaluate it in a few vector operations.

    Returns:
      ``(counts, weights)``: int64 and float64 arrays of the same length, ``weights``
      summing to 1.

    Examples:
      >>> counts, weights = coverage_histogram((4,), (2,), "valid")
      >>> counts.tolist(), weights.tolist()
      ([1, 2], [0.5, 0.5])
    """
    counts, weights = np.ones(1, dtype=np.int64), np.ones(1)
    for size, block in zip(spatial_shape, block_size, strict=True):
        values, frequency = np.unique(coverage_counts_1d(size, block, seed_region), return_counts=True)
        counts = np.multiply.outer(counts, values).ravel()
        weights = np.multiply.outer(weights, frequency / size).ravel()
    distinct, inverse = np.unique(counts, return_inverse=True)
    return distinct, np.bincount(inverse, weights=weights)
