"""DropBlock as pure JAX functions with explicit keys.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) drops contiguous blocks of a feature map
instead of single units. ``dropblock`` does it in one call; ``sample_seeds`` and
``apply_seeds`` split it into its random and its deterministic half (the parity suite feeds
the same seeds to both twins). The math (seed rate, expected dropped fraction, geometry)
lives in ``dropblock_common``; this module translates it into ``jax.numpy`` and ``lax``.

Static arguments (shapes, ``block_size``, options) are validated eagerly in Python;
``drop_prob`` may be a traced scalar, so a schedule never retraces a jitted step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dropblock_common import coverage, rates, validation
from dropblock_jax import bitmask, sampling

BlockSize = int | Sequence[int]


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where the batch, channel and spatial axes of ``x`` are, and the effective block."""

    shape: tuple[int, ...]
    channel_axis: int
    spatial_axes: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    block: tuple[int, ...]

    def seed_shape(self, seed_region: str, share_channels: bool, share_batch: bool) -> tuple[int, ...]:
        shape = list(self.shape)
        if share_batch:
            shape[0] = 1
        if share_channels:
            shape[self.channel_axis] = 1
        grid = coverage.seed_grid_shape(self.spatial_shape, self.block, seed_region)
        for axis, size in zip(self.spatial_axes, grid, strict=True):
            shape[axis] = size
        return tuple(shape)


def _layout(shape: Sequence[int], channel_axis: int, block_size: BlockSize, name: str = "x") -> _Layout:
    shape = tuple(int(size) for size in shape)
    dims = validation.spatial_dims(shape, name=name)
    channel = validation.channel_axis_index(channel_axis, len(shape))
    axes = validation.spatial_axes(len(shape), channel)
    spatial_shape = tuple(shape[axis] for axis in axes)
    block = validation.effective_block_size(spatial_shape, validation.block_size_tuple(block_size, dims))
    return _Layout(shape, channel, axes, spatial_shape, block)


def _check_floating(x: jax.Array) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"x must be a floating-point array, got x.dtype={x.dtype}. Cast it first, e.g. x.astype(jnp.float32)."
        )


def _check_key(key: object, name: str = "key") -> None:
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return
    if dtype == np.uint32 and shape is not None and len(shape) == 1:  # a raw jax.random.PRNGKey
        return
    hint = " For a batch of keys, map over them with jax.vmap." if shape else ""
    raise TypeError(
        f"{name} must be one JAX PRNG key, e.g. jax.random.key(0), got {name}={key!r}"
        f" (dtype={dtype}, shape={shape}).{hint}"
    )


def _concrete_drop_prob(drop_prob: jax.typing.ArrayLike) -> float | None:
    """``drop_prob`` as a validated float if it is concrete, None if it is traced."""
    if np.ndim(drop_prob) != 0:
        raise ValueError(f"drop_prob must be a scalar, got an array of shape {np.shape(drop_prob)}.")
    if isinstance(drop_prob, jax.core.Tracer):
        return None
    return validation.drop_prob_value(drop_prob)


def concrete_zero(drop_prob: object) -> bool:
    """Whether ``drop_prob`` is a concrete zero: then DropBlock is the identity and needs no key."""
    if isinstance(drop_prob, jax.core.Tracer) or np.ndim(drop_prob) != 0:
        return False
    try:
        return float(drop_prob) == 0.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _jnp_asarray(values: np.ndarray, like: jax.Array) -> jax.Array:
    return jnp.asarray(values, dtype=like.dtype)


def _concrete_rates(
    drop_prob: float, layout: _Layout, seed_region: str, calibrate: bool
) -> tuple[np.ndarray, np.ndarray]:
    """gamma and the expected dropped fraction, worked out in float64, as float32 scalars."""
    gamma, expected = rates.float32_rates(layout.spatial_shape, layout.block, drop_prob, seed_region, calibrate)
    return np.float32(gamma), np.float32(expected)


def _traced_rates(
    drop_prob: jax.Array, layout: _Layout, seed_region: str, calibrate: bool
) -> tuple[jax.Array, jax.Array]:
    """gamma and the expected dropped fraction of a traced ``drop_prob``, in float32."""
    # The rate is a hyperparameter: no gradient flows into it.
    drop_prob = lax.stop_gradient(jnp.asarray(drop_prob, jnp.float32))
    table = rates.rate_table(layout.spatial_shape, layout.block, seed_region)
    gamma = rates.seed_rate_array(drop_prob, table, calibrate, jnp, _jnp_asarray)
    return gamma, rates.expected_drop_fraction_array(gamma, table, jnp, _jnp_asarray)


def _dropped_words(words: jax.Array, packing: bitmask.Packing, layout: _Layout, seed_region: str) -> jax.Array:
    """Dilate the (packed) seed grid by the block: set wherever some seed's block lies."""
    paddings = [coverage.block_padding(block, seed_region) for block in layout.block]
    return bitmask.dilate(words, packing, layout.spatial_axes, paddings, layout.block)


def _normalized(
    x: jax.Array,
    dropped: jax.Array,
    packing: bitmask.Packing,
    normalize: str,
    expected_drop: jax.typing.ArrayLike | None,
) -> jax.Array:
    """``x`` with the dropped units zeroed and the rest scaled as ``normalize`` says, in >= float32.

    ``dropped`` holds the dilated mask as packed words; the kept count is their popcount. Two
    forms, as in the torch twin (the same operations, so the same bits, signed zeros included):
    a shared mask forms the factor ``keep * scale`` at its own (small) resolution and multiplies
    ``x`` once; a mask per unit gives ``where(keep, x * scale, 0)``. XLA fuses the unpacking
    into that one pass, so no full-size mask is written.
    """
    compute = jnp.promote_types(x.dtype, jnp.float32)
    keep = ~bitmask.unpack(dropped, packing)
    per_unit = keep.shape == x.shape
    if normalize == "none":
        return jnp.where(keep, x, 0) if per_unit else x * keep.astype(x.dtype)
    if normalize == "expected":
        scale = rates.expected_rescale_array(jnp.asarray(expected_drop, compute), jnp)
    else:
        axes = None if normalize == "batch" else tuple(range(1, keep.ndim))
        total = keep.size // (1 if normalize == "batch" else keep.shape[0])
        kept = total - bitmask.count(dropped, packing, axes)
        scale = jnp.where(kept > 0, jnp.asarray(total, compute) / kept.astype(compute), 0)
    if per_unit:
        return jnp.where(keep, x.astype(compute) * scale, 0).astype(x.dtype)
    return (x.astype(compute) * (keep.astype(compute) * scale)).astype(x.dtype)


def _expand_and_apply(
    x: jax.Array,
    words: jax.Array,
    packing: bitmask.Packing,
    layout: _Layout,
    seed_region: str,
    normalize: str,
    noise_key: jax.Array | None,
    expected_drop: jax.typing.ArrayLike | None,
) -> jax.Array:
    """Expand the packed seeds into blocks and apply them to ``x``."""
    dropped = _dropped_words(words, packing, layout, seed_region)
    if noise_key is not None:
        keep = ~bitmask.unpack(dropped, packing)
        noise = jax.random.normal(noise_key, (x.size,), jnp.promote_types(x.dtype, jnp.float32)).reshape(x.shape)
        return jnp.where(keep, x, noise.astype(x.dtype))  # flat draw: see sampling.bernoulli_words
    return _normalized(x, dropped, packing, normalize, expected_drop)


# Jitted inside, so that eager calls compile once per configuration instead of dispatching
# every small op; under a user's jit these inline.
@functools.partial(jax.jit, static_argnames=("layout", "seed_region", "normalize"))
def _apply(
    x: jax.Array,
    seeds: jax.Array,
    layout: _Layout,
    seed_region: str,
    normalize: str,
    noise_key: jax.Array | None,
    expected_drop: jax.typing.ArrayLike | None,
) -> jax.Array:
    packing = bitmask.packing(seeds.shape, layout.channel_axis)
    words = bitmask.pack(seeds, packing)
    return _expand_and_apply(x, words, packing, layout, seed_region, normalize, noise_key, expected_drop)


def sample_seeds(
    key: jax.Array,
    shape: Sequence[int],
    drop_prob: jax.typing.ArrayLike,
    block_size: BlockSize,
    *,
    channel_axis: int = -1,
    seed_region: str = "valid",
    calibrate: bool = False,
    share_channels: bool = False,
    share_batch: bool = False,
) -> jax.Array:
    """Draw DropBlock's seed grid: i.i.d. Bernoulli(gamma) booleans, gamma from ``seed_rate``.

    Args:
      key: a JAX PRNG key.
      shape: the shape of the input ``x``, ``(N, *spatial, C)`` (or ``(N, C, *spatial)`` with
        ``channel_axis=1``).
      drop_prob: the target fraction of dropped units in [0, 1]; may be traced.
      block_size: an int or one int per spatial dimension (static); clipped to the map.
      channel_axis: ``-1`` (channels last) or ``1`` (channels first).
      seed_region: ``"valid"`` (blocks inside the map) or ``"full"`` (seeds everywhere).
      calibrate: make the expected dropped fraction exactly ``drop_prob``.
      share_channels: one seed grid per sample, shared by its channels (size-1 channel axis).
      share_batch: one seed grid shared by the batch (size-1 batch axis).

    Returns:
      A boolean array with ``x``'s rank: the batch and channel axes of ``shape`` (or 1 where
      shared), and ``S - k + 1`` (valid) or ``S`` (full) positions per spatial axis.

    Raises:
      ValueError, TypeError: for a bad argument, naming it.

    Examples:
      >>> seeds = sample_seeds(jax.random.key(0), (2, 28, 28, 8), 0.1, 7)
      >>> seeds.shape, seeds.dtype
      ((2, 22, 22, 8), dtype('bool'))
    """
    layout = _layout(shape, channel_axis, block_size, name="shape")
    _check_key(key)
    validation.check_options(seed_region)
    concrete = _concrete_drop_prob(drop_prob)
    seed_shape = layout.seed_shape(seed_region, share_channels, share_batch)
    if concrete == 0.0:
        return jnp.zeros(seed_shape, bool)
    if concrete is None:
        gamma, _ = _traced_rates(drop_prob, layout, seed_region, calibrate)
    else:
        gamma, _ = _concrete_rates(concrete, layout, seed_region, calibrate)
    budget = sampling.seed_budget(math.prod(seed_shape), None if concrete is None else float(gamma))
    return _sample_seeds(key, gamma, seed_shape, layout.channel_axis, budget)


@functools.partial(jax.jit, static_argnums=range(2, 5))
def _sample_seeds(
    key: jax.Array, gamma: jax.typing.ArrayLike, seed_shape: tuple[int, ...], channel_axis: int, budget: int | None
) -> jax.Array:
    # Packed as dropblock packs them, so that the same key gives the same seeds.
    packing = bitmask.packing(seed_shape, channel_axis)
    return bitmask.unpack(sampling.bernoulli_words(key, gamma, seed_shape, packing, budget), packing)


def apply_seeds(
    x: jax.typing.ArrayLike,
    seeds: jax.typing.ArrayLike,
    block_size: BlockSize,
    *,
    channel_axis: int = -1,
    seed_region: str = "valid",
    normalize: str = "batch",
    noise_key: jax.Array | None = None,
    expected_drop: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Drop the blocks that ``seeds`` start and rescale: the deterministic half of DropBlock.

    The same seeds give bit-identical masks here and in ``dropblock_torch.apply_seeds``.

    Args:
      x: a floating array ``(N, *spatial, C)`` (or ``(N, C, *spatial)`` with ``channel_axis=1``).
      seeds: a seed grid as ``sample_seeds`` returns (nonzero means a seed); a size-1 batch
        or channel axis shares the mask.
      block_size: an int or one int per spatial dimension (static); clipped to the map.
      channel_axis: ``-1`` or ``1``.
      seed_region: ``"valid"`` or ``"full"``, as the seeds were drawn.
      normalize: ``"batch"`` (kept units scaled by ``numel / kept`` over the whole mask),
        ``"sample"`` (the same per sample), ``"expected"`` (by ``1 / (1 - expected_drop)``)
        or ``"none"``. Computed in at least float32; everything dropped gives zeros.
      noise_key: if given, dropped units receive standard normal noise from this key
        instead of zero, and nothing is rescaled.
      expected_drop: the expected dropped fraction; needed by ``normalize="expected"``.

    Returns:
      An array of ``x``'s shape and dtype.

    Raises:
      ValueError, TypeError: for a bad argument, naming it.

    Examples:
      >>> x = jnp.ones((1, 4, 4, 1))
      >>> seeds = jnp.zeros((1, 3, 3, 1), bool).at[0, 1, 1, 0].set(True)
      >>> apply_seeds(x, seeds, 2, normalize="none")[0, :, :, 0]
      Array([[1., 1., 1., 1.],
             [1., 0., 0., 1.],
             [1., 0., 0., 1.],
             [1., 1., 1., 1.]], dtype=float32)
    """
    x = jnp.asarray(x)
    layout = _layout(x.shape, channel_axis, block_size)
    _check_floating(x)
    validation.check_options(seed_region, normalize)
    seeds = jnp.asarray(seeds)
    full_grid = layout.seed_shape(seed_region, share_channels=False, share_batch=False)
    validation.check_seed_shape(
        seeds.shape, full_grid, layout.channel_axis, x_shape=x.shape, block_size=block_size, seed_region=seed_region
    )
    if normalize == "expected" and expected_drop is None and noise_key is None:
        raise ValueError("normalize='expected' needs expected_drop=..., e.g. from expected_drop_fraction.")
    if noise_key is not None:
        _check_key(noise_key, "noise_key")
    return _apply(x, seeds.astype(bool), layout, seed_region, normalize, noise_key, expected_drop)


def dropblock(
    x: jax.typing.ArrayLike,
    key: jax.Array,
    drop_prob: jax.typing.ArrayLike,
    block_size: BlockSize,
    *,
    channel_axis: int = -1,
    seed_region: str = "valid",
    calibrate: bool = False,
    share_channels: bool = False,
    share_batch: bool = False,
    normalize: str = "batch",
    noise: bool = False,
) -> jax.Array:
    """DropBlock: zero random contiguous blocks of a feature map and rescale the rest.

    Seeds are i.i.d. Bernoulli(gamma) on the seed grid (``sample_seeds``), each drops a block
    of ``block_size`` (``apply_seeds``). ``drop_prob`` is the target fraction of dropped units;
    gamma follows the paper's Eq. 1, or is solved exactly with ``calibrate=True``.

    Args:
      x: a floating array ``(N, *spatial, C)`` with 1 to 3 spatial dims (the Flax layout), or
        ``(N, C, *spatial)`` with ``channel_axis=1``.
      key: a JAX PRNG key.
      drop_prob: in [0, 1]; a Python float or a scalar array that may be traced (changing it
        does not retrace; traced values outside [0, 1] are clipped). A concrete 0 returns
        ``x`` itself and uses no randomness.
      block_size: an int or one int per spatial dimension (static); clipped to the map.
      channel_axis: ``-1`` or ``1``.
      seed_region: ``"valid"`` (the paper: every block lies inside the map) or ``"full"``
        (timm: seeds everywhere, blocks clipped at the border).
      calibrate: solve gamma so that the expected dropped fraction equals ``drop_prob``.
      share_channels: one mask per sample shared by its channels (default: one per channel).
      share_batch: one mask shared by the whole batch.
      normalize: ``"batch"``, ``"sample"``, ``"expected"`` or ``"none"`` (see ``apply_seeds``).
      noise: dropped units receive standard normal noise instead of zero, no rescale.

    Returns:
      An array of ``x``'s shape and dtype. ``drop_prob=1`` gives zeros (or pure noise).

    Raises:
      ValueError, TypeError: for a bad argument, naming it and its value.

    Examples:
      >>> x = jnp.ones((8, 28, 28, 16))
      >>> y = dropblock(x, jax.random.key(0), 0.1, 7)
      >>> y.shape, y.dtype
      ((8, 28, 28, 16), dtype('float32'))
      >>> bool(0.05 < float((y == 0).mean()) < 0.15)
      True
      >>> step = jax.jit(dropblock, static_argnames=("block_size",))
      >>> step(x, jax.random.key(1), 0.2, block_size=7).shape
      (8, 28, 28, 16)
    """
    x = jnp.asarray(x)
    layout = _layout(x.shape, channel_axis, block_size)
    _check_floating(x)
    _check_key(key)
    validation.check_options(seed_region, normalize)
    concrete = _concrete_drop_prob(drop_prob)
    if concrete == 0.0 or x.size == 0:
        return x
    rate = None if concrete is None else _concrete_rates(concrete, layout, seed_region, calibrate)
    seed_shape = layout.seed_shape(seed_region, share_channels, share_batch)
    budget = sampling.seed_budget(math.prod(seed_shape), None if rate is None else float(rate[0]))
    return _dropblock(x, key, drop_prob, rate, layout, seed_region, calibrate, seed_shape, budget, normalize, noise)


@functools.partial(jax.jit, static_argnums=range(4, 11))
def _dropblock(
    x: jax.Array,
    key: jax.Array,
    drop_prob: jax.typing.ArrayLike,
    rate: tuple[np.ndarray, np.ndarray] | None,
    layout: _Layout,
    seed_region: str,
    calibrate: bool,
    seed_shape: tuple[int, ...],
    budget: int | None,
    normalize: str,
    noise: bool,
) -> jax.Array:
    """``dropblock`` after validation; ``rate`` is (gamma, expected drop) when ``drop_prob`` is concrete."""
    seed_key, noise_key = jax.random.split(key) if noise else (key, None)
    gamma, expected = _traced_rates(drop_prob, layout, seed_region, calibrate) if rate is None else rate
    packing = bitmask.packing(seed_shape, layout.channel_axis)
    words = sampling.bernoulli_words(seed_key, gamma, seed_shape, packing, budget)
    return _expand_and_apply(x, words, packing, layout, seed_region, normalize, noise_key, expected)
