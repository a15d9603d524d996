"""A deliberately naive numpy DropBlock, independent of the packages under test.

It marks every seed's block with explicit slices, straight from the definitions in
docs/design.md ("The algorithm": the seed grid, block expansion and normalisation), so tests
can check the fast implementations against it.
"""

from __future__ import annotations

import itertools

import numpy as np


def block_slice(seed: int, block: int, size: int, seed_region: str) -> slice:
    """The cells a seed at ``seed`` drops along one dimension."""
    start = seed if seed_region == "valid" else seed - block // 2
    return slice(max(start, 0), min(start + block, size))


def dropped_mask(seeds: np.ndarray, spatial_shape, block, spatial_axes, seed_region: str) -> np.ndarray:
    """True wherever a seed's block lies; ``seeds`` has the seed grid's shape."""
    shape = list(seeds.shape)
    for axis, size in zip(spatial_axes, spatial_shape):
        shape[axis] = size
    dropped = np.zeros(shape, bool)
    for index in np.argwhere(seeds):
        where = [slice(i, i + 1) for i in index]
        for axis, size, k in zip(spatial_axes, spatial_shape, block):
            where[axis] = block_slice(index[axis], k, size, seed_region)
        dropped[tuple(where)] = True
    return dropped


def coverage_counts(spatial_shape, block, seed_region: str) -> np.ndarray:
    """How many seed positions' blocks cover each cell, by enumerating the seed positions."""
    grid = [size - k + 1 if seed_region == "valid" else size for size, k in zip(spatial_shape, block)]
    counts = np.zeros(spatial_shape, np.int64)
    for seed in itertools.product(*map(range, grid)):
        counts[tuple(block_slice(j, k, size, seed_region) for j, k, size in zip(seed, block, spatial_shape))] += 1
    return counts


def normalized(x: np.ndarray, keep: np.ndarray, normalize: str, expected_drop: float | None = None) -> np.ndarray:
    """``x * keep`` rescaled as docs/design.md says (The algorithm, step 7: normalisation), in float64."""
    keep = np.broadcast_to(keep, x.shape) if normalize != "batch" else keep
    x64 = x.astype(np.float64)
    if normalize == "none":
        scale = 1.0
    elif normalize == "expected":
        scale = 1.0 / (1.0 - expected_drop) if expected_drop < 1 else 0.0
    elif normalize == "batch":
        scale = keep.size / keep.sum() if keep.sum() else 0.0
    else:
        axes = tuple(range(1, keep.ndim))
        kept = keep.sum(axis=axes, keepdims=True)
        scale = np.where(kept > 0, keep[0].size / np.maximum(kept, 1), 0.0)
    return np.where(keep, x64 * scale, 0.0)
