"""How ``drop_block`` draws its seeds: i.i.d. Bernoulli(gamma), the twin of ``dropblock_jax.sampling``.

The policy (when to draw only the successes, with how many draws) is ``dropblock_common.sampling``.
Seeds are rare, so the successes are placed by geometric gaps instead of one uniform per
position. Where the torch twin differs from the JAX one, and why:

- Eager, on the CPU: rounds of ``budget`` gaps until the grid is complete, in Python (reading
  the last position back is free on the CPU), so there is no fallback to pay for.
- Under ``torch.compile`` or ``torch.export`` on the CPU: a round budgeted for the usual rates,
  then, only if the grid is not complete (``torch.cond``), a round budgeted for
  ``TRACED_RATE_CAP``, then a dense draw past the last success. Budgets are linear in the grid
  size (``linear_seed_budget``: symbolic with a dynamic batch, without guards on its value),
  and the sequence is memoryless, so every path is exact: what JAX's ``while_loop`` and
  ``cond`` do, with a fixed number of rounds.
- On other devices: one uniform per position. Reading a GPU value back would synchronise, and a
  GPU draws a uniform per position at its memory bandwidth anyway.
- One unbatched example (``torch.func.vmap`` over examples): one uniform per position, since
  vmap cannot run a loop whose length depends on the draw.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from dropblock_common import sampling as policy
from dropblock_torch import bitmask
from dropblock_torch.bitmask import Packing


def _uniform(shape: Sequence, generator, device, dtype=torch.float32, normal: bool = False) -> torch.Tensor:
    """``torch.rand`` (or ``randn``) of ``shape``; no ``generator`` argument when there is none.

    ``torch.rand(shape, generator=None)`` takes another overload that refuses symbolic sizes
    under ``torch.compile`` (a smaller last batch would crash).
    """
    draw = torch.randn if normal else torch.rand
    if generator is None:
        return draw(tuple(shape), device=device, dtype=dtype)
    return draw(tuple(shape), generator=generator, device=device, dtype=dtype)


def sparse_positions(gamma: float, size: int, budget: int, device, generator) -> torch.Tensor:
    """The successes of a Bernoulli(gamma) sequence of ``size`` positions, in increasing order (int64).

    Each round draws ``budget`` gaps past the last success so far; the sequence is memoryless,
    so further rounds (rarely needed) continue it exactly. Draws past the end come out as
    ``size`` (a spare slot for the scatter), so no boolean indexing is needed.

    Examples:
      >>> positions = sparse_positions(0.01, 100_000, 2048, "cpu", torch.Generator().manual_seed(0))
      >>> inside = positions[positions < 100_000]
      >>> bool(800 < inside.numel() < 1200), bool((inside.diff() > 0).all()), int(positions.max())
      (True, True, 100000)
    """
    log_failure, last, rounds = math.log1p(-gamma), -1, []
    while last < size - 1:
        uniform = _uniform((budget,), generator, device, torch.float64)
        # Failures before each success, by inversion (log(0) = -inf gives a gap past the end).
        gaps = torch.floor(torch.log(uniform) / log_failure).clamp_(max=size).to(torch.int64)
        positions = torch.cumsum(gaps + 1, 0) + last
        last = int(positions[-1])
        rounds.append(positions)
    positions = rounds[0] if len(rounds) == 1 else torch.cat(rounds)
    return positions.clamp_(max=size)


def _scatter(positions: torch.Tensor, words_numel, packing: Packing, device, dtype=None) -> torch.Tensor:
    """Flat words with the bits at ``positions`` set; positions >= ``words_numel * bits`` land in a spare word.

    ``dtype`` overrides ``packing.dtype``: compiled code stores an unpacked grid's flags as bytes
    of 0 and 1, which inductor writes in vector lanes, where it writes bools lane by lane.
    """
    words = torch.zeros(words_numel + 1, dtype=packing.dtype if dtype is None else dtype, device=device)
    if packing.bits == 1:
        return words.index_put_((positions,), torch.ones((), dtype=words.dtype, device=device))
    bits = torch.ones((), dtype=torch.uint8, device=device) << (positions & (packing.bits - 1)).to(torch.uint8)
    # Positions are distinct, so adding their bits is OR-ing them.
    return words.index_put_((positions // packing.bits,), bits, accumulate=True)


def _dense_words(gamma, size, packing: Packing, device, generator) -> torch.Tensor:
    return bitmask.pack_flat(_uniform((size,), generator, device) < gamma, packing)


# The first traced round is budgeted for the rates DropBlock mostly runs at (gamma is about 1/300
# at the paper's drop_prob 0.1 and block 7); a second round covers up to TRACED_RATE_CAP.
FIRST_ROUND_POSITIONS_PER_SEED = 256


def _traced_round(gamma: torch.Tensor, size, budget, last, device) -> torch.Tensor:
    """Positions (int64, increasing) of the next ``budget`` successes after ``last``; past the end is ``size``."""
    log_failure = torch.log1p(-gamma)
    # A rate of 0 (or NaN) has no seeds: every gap runs past the end, with no division by zero.
    has_seeds = log_failure < 0
    safe_log_failure = torch.where(has_seeds, log_failure, -1.0)
    uniform = _uniform((budget,), None, device).clamp_(min=torch.finfo(torch.float32).tiny)
    gaps = torch.where(has_seeds, torch.floor(torch.log(uniform) / safe_log_failure).clamp(max=size), size)
    return (torch.cumsum(gaps.to(torch.int64) + 1, 0) + last).clamp(max=size)


def _traced_sparse_words(gamma: torch.Tensor, batch, per_example: int, packing: Packing, device) -> torch.Tensor:
    """Rounds of gaps (a small one, then one budgeted for ``TRACED_RATE_CAP``), then a dense tail if still short.

    Each step past the first runs only if the grid is not complete yet (``torch.cond``), and
    returns the words of the seeds after the previous step's last one, which are OR-ed into its
    words outside the ``torch.cond``. So the common case (the first round completes the grid)
    hands ``torch.cond`` nothing but scalars and an empty tensor: inductor keeps a branch's
    operands alive to the end of the graph on one of the two branches (which one depends on
    the torch version), and the first round's words would then share the peak with the output.
    Words are ``(batch, per_example // bits)`` bytes, even unpacked: inductor (torch 2.13)
    mishandles a bool operand of ``torch.cond``, and binds a symbolic batch only from a
    dimension that is exactly that symbol (a flat grid of ``batch * per_example`` fails to
    compile), hence the empty ``(batch, 0)`` operand.
    """
    size = batch * per_example

    def words_at(positions: torch.Tensor, rows) -> torch.Tensor:
        words = _scatter(positions, rows * (per_example // packing.bits), packing, device, torch.uint8)[:-1]
        return words.reshape(rows, per_example // packing.bits)

    def as_is(words: torch.Tensor, last: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return words.clone()

    def dense_tail(words: torch.Tensor, last: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        rows = words.shape[0]
        after = torch.arange(rows * per_example, device=device) > last
        fresh = bitmask.pack_flat((_uniform((rows * per_example,), None, device) < gamma) & after, packing)
        return words | fresh.to(torch.uint8).reshape(words.shape)

    def none_after(rows: torch.Tensor, last: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return torch.zeros(rows.shape[0], per_example // packing.bits, dtype=torch.uint8, device=device)

    def after(rows: torch.Tensor, last: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        grid_size = rows.shape[0] * per_example
        positions = _traced_round(gamma, grid_size, policy.linear_seed_budget(grid_size), last, device)
        words = words_at(positions, rows.shape[0])
        return torch.cond(positions[-1] < grid_size - 1, dense_tail, as_is, (words, positions[-1].clone(), gamma))

    first_budget = policy.linear_seed_budget(size, FIRST_ROUND_POSITIONS_PER_SEED)
    positions = _traced_round(gamma, size, first_budget, torch.tensor(-1, device=device), device)
    # The last position as a buffer of its own (a sum over one element): a view would keep all positions alive.
    last, rows = positions[-1:].sum(), torch.empty(batch, 0, dtype=torch.uint8, device=device)
    words = words_at(positions, batch) | torch.cond(last < size - 1, after, none_after, (rows, last, gamma))
    return words if packing.bits > 1 else words != 0


def bernoulli_seeds(
    gamma: float | torch.Tensor,
    shape: Sequence,
    packing: Packing,
    device: torch.device | None,
    generator: torch.Generator | None,
    allow_sparse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A seed grid ``(N, C, *grid)`` of i.i.d. Bernoulli(``gamma``) as ``packing`` words, and its seeds' positions.

    The one place that chooses the sampling method (see the module docstring); the twin of
    ``dropblock_jax.sampling.bernoulli_words``, which returns the words alone.

    Args:
      gamma: the seed rate, a float or a 0-dim float32 tensor.
      shape: the seed grid's shape.
      packing: how the grid is stored (``bitmask.packing``).
      device: where to draw; None is the CPU.
      generator: the ``torch.Generator`` to draw from, None for the global one.
      allow_sparse: False draws one uniform per position (one example under ``torch.func.vmap``).

    Returns:
      Words of ``packing.words_shape(shape)``, and the seeds' positions in packed order (int64,
      increasing) where they were drawn one by one (eagerly on the CPU), else None.

    Examples:
      >>> generator = torch.Generator().manual_seed(0)
      >>> words, positions = bernoulli_seeds(0.003, (4, 64, 22, 22), bitmask.PACKED, None, generator)
      >>> tuple(words.shape), words.dtype
      ((4, 8, 22, 22), torch.uint8)
      >>> int(bitmask.count(words, bitmask.PACKED, per_row=False)) == positions.numel()
      True
    """
    shape = tuple(shape)
    words_shape = packing.words_shape(shape)
    size = math.prod(shape)
    on_cpu = torch.device(device if device is not None else "cpu").type == "cpu"
    tracing = bitmask.tracing()
    if allow_sparse and on_cpu and tracing and generator is None:
        # A symbolic size (a dynamic batch) is never compared: a guard on it would restrict the
        # batch sizes a graph serves, which torch.export refuses. Positions are int64: no maximum.
        if not isinstance(size, int) or size >= policy.SPARSE_MIN_SIZE:
            gamma = torch.as_tensor(gamma, dtype=torch.float32, device=device)
            # All but the batch static (the channel count is specialised: it rarely changes).
            per_example = operator.index(shape[1]) * math.prod(shape[2:])
            return _traced_sparse_words(gamma, shape[0], per_example, packing, device).reshape(words_shape), None
    elif allow_sparse and on_cpu and not tracing:
        rate = float(gamma)  # a CPU tensor reads back for free
        budget = policy.seed_budget(size, rate)
        if budget is not None:
            positions = sparse_positions(rate, size, budget, device, generator)
            words = _scatter(positions, size // packing.bits, packing, device)[:-1].reshape(words_shape)
            return words, positions[: int(torch.searchsorted(positions, size))]
    return _dense_words(gamma, size, packing, device, generator).reshape(words_shape), None
