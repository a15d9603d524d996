"""The torch twin's packed masks and its sampler against plain numpy, eager, compiled and vmapped."""

import functools
import math

import numpy as np
import numpy_reference
import pytest
import torch
import torch._dynamo

from dropblock_common import coverage
from dropblock_torch import bitmask, sampling


def random_grid(shape, rate, seed):
    return torch.from_numpy(np.random.default_rng(seed).random(shape) < rate)


@pytest.mark.parametrize("shape", [(2, 8, 5), (3, 16, 4, 7), (1, 24, 3, 4, 5), (2, 3, 6, 6), (2, 1, 9, 9)])
def test_pack_then_unpack_is_the_identity(shape):
    grid = random_grid(shape, 0.3, 0)
    packing = bitmask.packing(shape[1])
    words = bitmask.pack(grid, packing)
    assert words.shape == packing.words_shape(shape)
    assert torch.equal(bitmask.unpack(words, packing), grid)
    assert torch.equal(bitmask.unpack_by_lane_masks(words, packing, grid.shape), grid)  # compiled backward's


@pytest.mark.parametrize("shape", [(2, 8, 5), (3, 16, 4, 7), (1, 24, 3, 4, 5), (2, 3, 6, 6), (2, 1, 9, 9)])
def test_positions_and_coordinates_are_the_set_positions(shape):
    grid = random_grid(shape, 0.3, 2)
    packing = bitmask.packing(shape[1])
    words = bitmask.pack(grid, packing)
    # Positions in packed order: bit j of word i is position bits * i + j.
    bits = (words.reshape(-1, 1).to(torch.int64) >> torch.arange(packing.bits)) & 1 if packing.bits > 1 else words
    positions = bits.reshape(-1).nonzero().squeeze(1)
    assert torch.equal(bitmask.positions(words, packing), positions)
    coordinates = torch.stack(bitmask.coordinates(positions, packing, words.shape), 1)
    expected = grid.nonzero()
    assert torch.equal(sorted_rows(coordinates), sorted_rows(expected))


def sorted_rows(rows: torch.Tensor) -> torch.Tensor:
    return rows[np.lexsort(rows.numpy().T[::-1])]


@pytest.mark.parametrize("shape", [(2, 8, 5), (3, 16, 4, 7), (2, 8, 3, 3), (1, 64, 2, 4), (2, 32, 3, 3)])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("rate", [0.4, 1.0])
def test_count_is_the_number_of_set_positions(shape, per_row, rate):
    # (2, 8, 3, 3) has rows of 9 bytes: the byte-wise path; the others count 8 bytes at a time.
    grid = random_grid(shape, rate, 1)
    counted = bitmask.count(bitmask.pack(grid, bitmask.PACKED), bitmask.PACKED, per_row)
    expected = grid.reshape(shape[0], -1).sum(1) if per_row else grid.sum()
    np.testing.assert_array_equal(counted.flatten().numpy(), np.atleast_1d(expected.numpy()))
    if shape[1] % 32 == 0:  # int32 words of 32 channels, the top bit (channel 31) the sign
        words, packing = bitmask.widen(bitmask.pack(grid, bitmask.PACKED), bitmask.PACKED)
        assert packing == bitmask.WORDS
        np.testing.assert_array_equal(
            bitmask.count(words, packing, per_row).flatten().numpy(), np.atleast_1d(expected.numpy())
        )


@pytest.mark.parametrize("shape", [(2, 32, 5), (3, 64, 4, 7), (1, 96, 3, 4, 5)])
def test_widened_words_hold_the_same_grid(shape):
    grid = random_grid(shape, 0.3, 4)
    words, packing = bitmask.widen(bitmask.pack(grid, bitmask.PACKED), bitmask.PACKED)
    assert packing == bitmask.WORDS and words.dtype == torch.int32
    assert words.shape == (shape[0], shape[1] // 32, *shape[2:])
    # Channel c is bit c % 32 of word c // 32.
    bits = (words.unsqueeze(2) >> torch.arange(32).reshape(32, *(1,) * (len(shape) - 2))) & 1
    assert torch.equal(bits.flatten(1, 2).bool(), grid)
    assert torch.equal(bitmask.unpack(words, packing), grid)
    assert torch.equal(bitmask.unpack_by_lane_masks(words, packing, grid.shape), grid)
    # Compiled code unpacks bytes through the same words, forward and backward.
    by_lane_masks = functools.partial(bitmask.unpack_by_lane_masks, shape=grid.shape)
    for unpack in (bitmask.unpack, by_lane_masks):
        unpacked = torch.compile(lambda w, unpack=unpack: unpack(w, bitmask.PACKED), fullgraph=True, dynamic=False)
        assert torch.equal(unpacked(bitmask.pack(grid, bitmask.PACKED)), grid)


@pytest.mark.parametrize("shape", [(2, 8, 5), (2, 24, 3), (2, 3, 4), (2, 1, 4)])
def test_widen_leaves_other_channel_counts_as_they_are(shape):
    packing = bitmask.packing(shape[1])
    words = bitmask.pack(random_grid(shape, 0.3, 5), packing)
    widened, widened_packing = bitmask.widen(words, packing)
    assert widened is words and widened_packing == packing


SHAPES_AND_BLOCKS = [
    ((2, 8, 12, 11), (3, 4)),
    ((1, 16, 9), (5,)),
    ((1, 8, 5, 6, 7), (2, 3, 4)),
    ((2, 1, 10, 10), (7, 7)),
    # Compiled code's int32 words (multiples of 32 channels), expanded by plain ops.
    ((2, 32, 12, 11), (3, 4)),
    ((1, 64, 9), (5,)),
    ((1, 32, 5, 6, 7), (2, 3, 4)),
    ((2, 32, 8, 8), (7, 7)),
]


@pytest.mark.parametrize("seed_region", ["valid", "full"])
@pytest.mark.parametrize("shape, block", SHAPES_AND_BLOCKS)
def test_dilate_matches_the_numpy_reference(shape, block, seed_region):
    spatial = shape[2:]
    grid = coverage.seed_grid_shape(spatial, block, seed_region)
    seeds = random_grid((*shape[:2], *grid), 0.05, 2)
    paddings = [coverage.block_padding(k, seed_region) for k in block]
    axes = tuple(range(2, len(shape)))
    expected = numpy_reference.dropped_mask(seeds.numpy(), spatial, block, axes, seed_region)
    packing = bitmask.packing(shape[1])

    def dropped(seeds):
        words, word_packing = bitmask.widen(bitmask.pack(seeds, packing), packing)  # int32 words for 32 channels
        return bitmask.unpack(bitmask.dilate(words, block, paddings), word_packing)

    np.testing.assert_array_equal(dropped(seeds).numpy(), expected)
    # Spatial sizes static, as the twin specialises them (the seed rate depends on them); one
    # compiled program per case, more than Dynamo keeps for one function.
    with torch._dynamo.config.patch(recompile_limit=64):
        compiled = torch.compile(dropped, fullgraph=True, dynamic=False)
        np.testing.assert_array_equal(compiled(seeds).numpy(), expected)


@pytest.mark.parametrize("seed_region", ["valid", "full"])
@pytest.mark.parametrize(
    "shape, block",
    [((3, 1, 40), (4,)), ((2, 1, 9, 11), (3, 4)), ((2, 1, 10, 10), (7, 7)), ((1, 1, 5, 6, 7), (2, 3, 4))],
)
def test_dilate_lanes_matches_the_numpy_reference(shape, block, seed_region):
    # Compiled code's expansion of a mask shared by the channels: int32 lanes of 0 or 1.
    spatial = shape[2:]
    seeds = random_grid((*shape[:2], *coverage.seed_grid_shape(spatial, block, seed_region)), 0.05, 4)
    paddings = [coverage.block_padding(k, seed_region) for k in block]
    expected = numpy_reference.dropped_mask(seeds.numpy(), spatial, block, tuple(range(2, len(shape))), seed_region)
    lanes = bitmask.dilate_lanes(seeds, block, paddings)
    assert lanes.dtype == torch.int32 and set(lanes.unique().tolist()) <= {0, 1}
    np.testing.assert_array_equal(bitmask.unpack(lanes, bitmask.UNPACKED).numpy(), expected)
    with torch._dynamo.config.patch(recompile_limit=64):
        compiled = torch.compile(
            lambda s: bitmask.unpack(bitmask.dilate_lanes(s, block, paddings), bitmask.UNPACKED),
            fullgraph=True,
            dynamic=False,
        )
        np.testing.assert_array_equal(compiled(seeds).numpy(), expected)


def test_the_dilate_op_vmaps_over_examples():
    seeds = random_grid((3, 8, 6, 6), 0.1, 3)
    words = bitmask.pack(seeds, bitmask.PACKED)[:, None]  # (3, 1, 1, 6, 6): a batch of one per example
    paddings = [(2, 2), (2, 2)]
    vmapped = torch.vmap(lambda w: torch.ops.dropblock_torch.dilate(w, [3, 3], [2, 2, 2, 2]))(words)
    one_by_one = torch.stack([bitmask.dilate(w, (3, 3), paddings) for w in words])
    assert torch.equal(vmapped, one_by_one)


def frequencies(draw, shape, repeats):
    total = torch.zeros(shape)
    for _ in range(repeats):
        total += draw().float()
    return total / repeats


@pytest.mark.slow
@pytest.mark.parametrize("gamma", [0.004, 0.05, 0.5])
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("packing", [bitmask.PACKED, bitmask.UNPACKED], ids=["packed", "unpacked"])
def test_seeds_are_bernoulli_at_every_rate_eager_and_compiled(gamma, compiled, packing):
    # 0.004 is drawn sparsely in one round, 0.05 in two (compiled: the second round), 0.5 densely
    # (compiled: two rounds then the dense tail). Every position is Bernoulli(gamma): the mean over
    # positions and the mean of the last tenth (where a short round would leave its mark) are
    # within 5 standard errors (a false alarm about once in 3.5 million runs per check).
    shape, repeats = (4, 64, 24, 24), 20
    torch.manual_seed(0)

    def draw(rate):
        return bitmask.unpack(sampling.bernoulli_seeds(rate, shape, packing, None, None)[0], packing)

    run = torch.compile(draw, fullgraph=True) if compiled else draw
    rate = torch.tensor(gamma) if compiled else gamma
    frequency = frequencies(lambda: run(rate), shape, repeats).flatten()
    size = frequency.numel()
    for part in (frequency, frequency[-size // 10 :]):
        error = math.sqrt(gamma * (1 - gamma) / (part.numel() * repeats))
        assert abs(float(part.mean()) - gamma) < 5 * error, (float(part.mean()), gamma)


def test_a_traced_rate_of_zero_or_nan_draws_no_seed():
    run = torch.compile(
        lambda rate: sampling.bernoulli_seeds(rate, (2, 64, 40, 40), bitmask.PACKED, None, None)[0], fullgraph=True
    )
    for rate in (0.0, float("nan")):
        assert not run(torch.tensor(rate)).any()
