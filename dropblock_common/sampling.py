"""When to draw the seed grid sparsely, and with how many draws: the policy both twins follow.

DropBlock's seeds are i.i.d. Bernoulli(gamma) and rare (gamma is about 0.003 at the paper's
settings). Instead of one uniform per position (dense), a twin may draw only the successes
(sparse): the gaps between successive successes of a Bernoulli sequence are i.i.d. geometric,
so ``budget`` uniforms, turned into gaps by inversion and summed, place the seeds exactly. If
a budget runs short before the end of the grid, another round continues the sequence (it is
memoryless, so the result stays exact); if gamma is too large for the budget (a traced rate
above ``TRACED_RATE_CAP``), the grid is drawn densely, chosen at run time.
"""

from __future__ import annotations

import math

# Above this rate a uniform per position costs about what the sparse method does.
DENSE_ABOVE = 1 / 16
# The rate a traced gamma is budgeted for; larger traced rates fall back to dense at run time.
TRACED_RATE_CAP = 1 / 32
# Grids smaller than this are drawn densely: nothing to save, and a simpler program to compile.
SPARSE_MIN_SIZE = 1 << 14
# Positions are counted in int32 up to ``size + 1`` (JAX's sampler saturates its sums there
# without overflowing): larger grids are drawn densely.
SPARSE_MAX_SIZE = 2**31 - 2


# Eager torch writes blocks one by one while there is at most one seed per this many units:
# past it, a mask applied in one pass costs less (break-even measured at 1 in 100 to 1 in 125
# on a 2-core Xeon, blocks of 3 to 7, ResNet shapes; DropBlock at the paper's 0.1 with blocks
# of 7 has about 1 in 500).
UNITS_PER_SEED_MIN = 128


def few_enough_blocks(seeds: int, units: int) -> bool:
    """Whether eager torch writes ``seeds`` blocks one by one into ``units`` units (see ``UNITS_PER_SEED_MIN``).

    Examples:
      >>> few_enough_blocks(13_000, 32 * 256 * 28 * 28), few_enough_blocks(71_000, 32 * 256 * 28 * 28)
      (True, False)
    """
    return seeds * UNITS_PER_SEED_MIN <= units


def seed_budget(size: int, gamma: float | None) -> int | None:
    """How many gaps the sparse method draws for ``size`` positions, or None to draw densely.

    Args:
      size: the number of positions of the seed grid.
      gamma: the seed rate if it is known before tracing, None if it is traced.

    Returns:
      A static budget: the expected number of seeds at the (power-of-two rounded) rate plus
      10 standard deviations, so that it runs short with probability below 1e-20; rounding
      keeps the number of distinct compiled programs small. None for large rates, a rate of 0
      or NaN, small grids and grids of 2**31 - 1 positions or more.

    Examples:
      >>> seed_budget(4_000_000, 0.0033)
      17408
      >>> seed_budget(4_000_000, 0.2) is None, seed_budget(1000, 0.0033) is None, seed_budget(2**31, 0.0033) is None
      (True, True, True)
    """
    cap = TRACED_RATE_CAP if gamma is None else gamma
    if not 0.0 < cap <= DENSE_ABOVE or not SPARSE_MIN_SIZE <= size <= SPARSE_MAX_SIZE:
        return None
    cap = 2.0 ** math.ceil(math.log2(max(cap, 1.0 / size)))
    mean = size * cap
    return int(math.ceil((mean + 10 * math.sqrt(mean) + 64) / 1024) * 1024)


def budget_too_small(expected_seeds, budget: int, xp):
    """Whether a (traced) rate needs the dense fallback: its expected seeds + 8 sigma exceed ``budget``.

    ``expected_seeds`` is ``gamma * size``, an array of ``xp`` (``jax.numpy`` or ``torch``).

    Examples:
      >>> import numpy as np
      >>> too_small = lambda expected: bool(budget_too_small(np.float32(expected), 17408, np))
      >>> too_small(20_000.0), too_small(13_000.0)
      (True, False)
    """
    return expected_seeds + 8 * xp.sqrt(expected_seeds) + 16 > budget


def linear_seed_budget(size, positions_per_seed: int = round(1 / TRACED_RATE_CAP)):
    """A budget for a traced rate of at most ``1 / positions_per_seed`` (a power of two) that is linear in ``size``.

    Twice the expected seeds at that rate plus 1024 covers ``seed_budget``'s bound (the
    expected seeds plus 10 standard deviations plus 64) for every size, with no square root or
    rounding, so a symbolic ``size`` (``torch.compile`` with a dynamic batch) gives a symbolic
    budget without guards on its value. The rate is given by an int: under
    ``torch.compile(dynamic=True)`` a float constant may be traced as a symbol, which ``round``
    cannot take.

    Examples:
      >>> linear_seed_budget(4_000_000), seed_budget(4_000_000, None), linear_seed_budget(4_000_000, 256)
      (251024, 129024, 32274)
    """
    return size // (positions_per_seed // 2) + 1024
