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

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dropblock_common import layout as layouts
from dropblock_common import rates, validation
from dropblock_common import sampling as policy
from dropblock_common.options import DropBlockOptions
from dropblock_jax import bitmask, sampling

BlockSize = int | Sequence[int]


class ConcreteRates(NamedTuple):
    """The seed rate and the expected dropped fraction of a concrete ``drop_prob``, as float32 scalars.

    Worked out in float64 before tracing (``rates.float32_rates``) and passed to the compiled
    program as arguments (a pytree of two scalars): a new concrete rate recompiles only when it
    moves the sparse sampler's static budget to another power-of-two bucket of gamma (or to the
    dense draw), so a ramp of ``drop_prob`` compiles a few programs, not one per value.
    Where ``dropblock`` takes a rate as this record, a traced rate is None instead: then both
    values are worked out in float32 inside the program.

    Attributes:
      gamma: the probability of a seed at each position of the seed grid.
      expected_drop: the expected dropped fraction at that gamma (``normalize="expected"``).
    """

    gamma: np.float32
    expected_drop: np.float32


def _batched_shape(shape: Sequence[int], spatial_dims: int | None, name: str) -> tuple[tuple[int, ...], bool]:
    """The shape as a batch (one unbatched example gets a batch axis of 1), and whether it was one."""
    shape = validation.shape_tuple(shape, name)
    _, batched = validation.input_rank(shape, spatial_dims, name=name)
    return (shape if batched else (1, *shape)), batched


def _check_floating(x: jax.Array) -> None:
    # 8-bit (and smaller) floats have no implicit promotion to float32, the dtype DropBlock computes in.
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype.itemsize < 2:
        raise TypeError(
            f"x must be a float16, bfloat16, float32 or float64 array, got x.dtype={x.dtype}. "
            "Cast it first, e.g. x.astype(jnp.float32)."
        )


@functools.cache
def _raw_key_shape(implementation: str) -> tuple[int, ...]:
    """The shape of a raw key (``jax.random.PRNGKey``) of the default PRNG ``implementation``: (2,) for threefry."""
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape


def is_key(key: object) -> bool:
    """Whether ``key`` is one JAX PRNG key: a typed key array of shape (), or a raw uint32 one.

    Examples:
      >>> is_key(jax.random.key(0)), is_key(jax.random.PRNGKey(0)), is_key(np.zeros(7, np.uint32))
      (True, True, False)
    """
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return True
    # A raw jax.random.PRNGKey: uint32 words, as many as the default implementation's key has.
    return dtype == np.uint32 and shape == _raw_key_shape(jax.config.jax_default_prng_impl)


def _check_key(key: object, name: str = "key") -> None:
    if is_key(key):
        return
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    hint = " For a batch of keys, map over them with jax.vmap." if shape else ""
    raise TypeError(
        f"{name} must be one JAX PRNG key, e.g. jax.random.key(0), got {name}={key!r}"
        f" (dtype={dtype}, shape={shape}).{hint}"
    )


def _check_real_scalar(value: object, name: str) -> None:
    """A rate must be a real scalar: a bool array, even a traced one, is refused by its dtype."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real number in [0, 1], got {name} of dtype {dtype}: {value!r}.")
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(value)}: {name}={value!r}.")


def check_concrete(value: object, name: str, instead: str) -> None:
    """Refuse a traced ``value`` where only one known before tracing will do.

    Args:
      value: the argument.
      name: its name, for the message.
      instead: what to do with a traced value, for the message.

    Raises:
      TypeError: for a traced ``value``, naming it and saying what to do instead.

    Examples:
      >>> check_concrete(0.1, "drop_prob", "")
      >>> jax.jit(lambda p: check_concrete(p, "drop_prob", "Pass it at call time."))(0.1)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      TypeError: drop_prob must be concrete (a number known before tracing), got ...
    """
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{name} must be concrete (a number known before tracing), got the traced {name}={value!r}, "
            f"e.g. an argument of a jitted function. {instead}"
        )


def concrete_drop_prob(drop_prob: jax.typing.ArrayLike) -> float | None:
    """``drop_prob`` as a validated float if it is concrete, None if it is traced.

    Raises:
      TypeError: for a string or a bool (a bool array too, even a traced one), naming drop_prob.
      ValueError: for a concrete value outside [0, 1] or NaN, or an array that is not a scalar.
    """
    _check_real_scalar(drop_prob, "drop_prob")
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


def scheduled_rate(schedule: Callable, step: jax.typing.ArrayLike) -> jax.Array:
    """``schedule(step)`` worked out as a compiled program, as it is under ``jit``.

    XLA rewrites some arithmetic (a division by a constant becomes a multiplication by its
    reciprocal), so a schedule evaluated op by op can differ in the last bit from the same
    schedule inside a jitted train step; compiled either way, the layers' eager and jitted
    runs see the same rate. A schedule that cannot be hashed is called as it is.

    Examples:
      >>> from dropblock_jax import schedules
      >>> round(float(scheduled_rate(schedules.ramp(0.1, 100), 50)), 6)
      0.05
    """
    try:
        hash(schedule)
    except TypeError:
        return schedule(step)
    return _compiled_schedule(schedule, step)


@functools.partial(jax.jit, static_argnames="schedule")
def _compiled_schedule(schedule: Callable, step: jax.typing.ArrayLike) -> jax.Array:
    return schedule(step)


_TRACED_RATE_INSTEAD = (
    "The rate is worked out in Python (float64) before tracing; under jit, pass the traced drop_prob "
    "to dropblock or sample_seeds (or a layer's call), which work the rate out inside the program."
)


@functools.wraps(rates.seed_rate)
def seed_rate(spatial_shape, drop_prob, *args, **kwargs) -> float:
    # ``dropblock_common.rates.seed_rate``, refusing a traced rate with what to do instead.
    check_concrete(drop_prob, "drop_prob", _TRACED_RATE_INSTEAD)
    return rates.seed_rate(spatial_shape, drop_prob, *args, **kwargs)


@functools.wraps(rates.expected_drop_fraction)
def expected_drop_fraction(spatial_shape, block_size, gamma, *args, **kwargs) -> float:
    # ``dropblock_common.rates.expected_drop_fraction``, refusing a traced rate likewise.
    check_concrete(gamma, "gamma", _TRACED_RATE_INSTEAD)
    return rates.expected_drop_fraction(spatial_shape, block_size, gamma, *args, **kwargs)


def _jnp_asarray(values: np.ndarray, like: jax.Array) -> jax.Array:
    return jnp.asarray(values, dtype=like.dtype)


def _concrete_rates(drop_prob: float, layout: layouts.Layout, seed_region: str, calibrate: bool) -> ConcreteRates:
    """gamma and the expected dropped fraction, worked out in float64, as float32 scalars."""
    gamma, expected = rates.float32_rates(layout.spatial_shape, layout.block, drop_prob, seed_region, calibrate)
    return ConcreteRates(np.float32(gamma), np.float32(expected))


def _traced_rates(
    drop_prob: jax.Array, layout: layouts.Layout, seed_region: str, calibrate: bool
) -> tuple[jax.Array, jax.Array]:
    """gamma and the expected dropped fraction of a traced ``drop_prob``, in float32."""
    # The rate is a hyperparameter: no gradient flows into it.
    drop_prob = lax.stop_gradient(jnp.asarray(drop_prob, jnp.float32))
    table = rates.rate_table(layout.spatial_shape, layout.block, seed_region)
    gamma = rates.seed_rate_array(drop_prob, table, calibrate, jnp, _jnp_asarray)
    return gamma, rates.expected_drop_fraction_array(gamma, table, jnp, _jnp_asarray)


def _nan_guard(drop_prob: jax.typing.ArrayLike, dtype: jax.typing.DTypeLike) -> jax.Array:
    """0, or NaN for a NaN or infinite traced rate (``rates.nonfinite_guard_array``), as ``dtype``.

    A traced rate cannot raise, so a non-finite one turns the whole output into NaN: loud, it
    shows in the loss at once, where a silently clipped rate would not.
    """
    return rates.nonfinite_guard_array(lax.stop_gradient(jnp.asarray(drop_prob, jnp.float32)), jnp).astype(dtype)


def _dropped_words(words: jax.Array, packing: bitmask.Packing, layout: layouts.Layout, seed_region: str) -> jax.Array:
    """Dilate the (packed) seed grid by the block: set wherever some seed's block lies."""
    return bitmask.dilate(words, packing, layout.spatial_axes, layout.block_paddings(seed_region), layout.block)


def _normalized(
    x: jax.Array,
    dropped: jax.Array,
    packing: bitmask.Packing,
    normalize: str,
    expected_drop: jax.typing.ArrayLike | None,
    guard: jax.Array | None,
) -> jax.Array:
    """``where(keep, x * scale, 0)``, the scale as ``normalize`` says, computed in >= float32.

    ``dropped`` holds the dilated mask as packed words (shared masks have a size-1 batch or
    channel axis and broadcast); the kept count is their popcount. The same operations as in
    the torch twin, so the same bits. Selecting instead of multiplying by the mask keeps an
    inf or NaN of ``x`` where it is kept and gives 0 where it is dropped. XLA fuses the
    unpacking into that one pass, so no full-size mask is written. ``guard`` is
    ``_nan_guard`` of a traced rate, None for a concrete one (then ``"none"`` multiplies nothing):
    added to the scale and written where dropped, it is +0 for a finite rate, NaN otherwise.
    """
    compute = jnp.promote_types(x.dtype, jnp.float32)
    lanes = bitmask.unpack_lanes(dropped, packing, _SAME_WIDTH_INT[x.dtype.itemsize])
    if normalize == "none":
        if guard is None:
            return _where_dropped(lanes, x, None)
        scale = 1 + guard
    elif normalize == "expected":
        scale = rates.expected_rescale_array(jnp.asarray(expected_drop, compute), jnp)
    else:
        per_row = normalize == "sample"
        total = lanes.size // lanes.shape[0] if per_row else lanes.size
        kept = bitmask.unset_count(dropped, packing, per_row, compute)
        # No division by zero is evaluated (checkify's float checks stay quiet).
        any_kept = kept > 0
        scale = jnp.where(any_kept, jnp.asarray(total, compute) / jnp.where(any_kept, kept, 1), 0)
    if guard is not None and normalize != "none":
        scale = scale + guard
    values = (x.astype(compute) * scale).astype(x.dtype)
    return _where_dropped(lanes, values, None if guard is None else guard.astype(x.dtype))


_SAME_WIDTH_INT = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


@jax.custom_jvp
def _where_dropped(dropped: jax.Array, values: jax.Array, dropped_value: jax.Array | None) -> jax.Array:
    """``where(dropped, dropped_value, values)``, ``dropped`` 0/1 integers (broadcast), ``dropped_value`` +0 if None.

    Computed on the bits, as integers: ``values`` times 1 - dropped, plus ``dropped_value``
    times dropped. The same bits as ``where`` (a kept value keeps its bits, a NaN's payload
    included; a dropped one gets exactly ``dropped_value``'s), which XLA's CPU backend runs as
    one vectorised pass at about 1.05x a plain product, where its ``select`` on an unpacked
    mask takes 1.3-1.7x. Differentiable as ``where`` is (``_where_dropped_jvp``).
    """
    integer = _SAME_WIDTH_INT[values.dtype.itemsize]
    dropped = dropped.astype(integer)
    bits = lax.bitcast_convert_type(values, integer) * (1 - dropped)
    if dropped_value is not None:
        bits = bits + lax.bitcast_convert_type(dropped_value, integer) * dropped
    return lax.bitcast_convert_type(bits, values.dtype)


@_where_dropped.defjvp
def _where_dropped_jvp(primals, tangents):
    # The tangent as a plain where: linear, so reverse mode transposes it (bit casts do not transpose).
    dropped, values, dropped_value = primals
    _, values_dot, dropped_value_dot = tangents
    fill = jnp.zeros((), values_dot.dtype) if dropped_value is None else dropped_value_dot
    return _where_dropped(dropped, values, dropped_value), jnp.where(dropped != 0, fill, values_dot)


def _expand_and_apply(
    x: jax.Array,
    words: jax.Array,
    packing: bitmask.Packing,
    layout: layouts.Layout,
    seed_region: str,
    normalize: str,
    noise_key: jax.Array | None,
    expected_drop: jax.typing.ArrayLike | None,
    guard: jax.Array | None = None,
) -> jax.Array:
    """Expand the packed seeds into blocks and apply them to ``x``."""
    dropped = _dropped_words(words, packing, layout, seed_region)
    if noise_key is not None:
        keep = ~bitmask.unpack(dropped, packing)
        compute = jnp.promote_types(x.dtype, jnp.float32)
        noise = jax.random.normal(noise_key, (x.size,), compute).reshape(x.shape)  # flat: see sampling
        if guard is not None:  # a non-finite traced rate: NaN where kept and where noise is written
            x, noise = (x.astype(compute) * (1 + guard)).astype(x.dtype), noise + guard
        return jnp.where(keep, x, noise.astype(x.dtype))
    return _normalized(x, dropped, packing, normalize, expected_drop, guard)


# Jitted inside, so that eager calls compile once per configuration instead of dispatching
# every small op; under a user's jit these inline. ``batched=False`` is one example: it gets
# a batch axis of 1 inside, and loses it on the way out.
@functools.partial(jax.jit, static_argnames=("layout", "batched", "seed_region", "normalize"))
def _apply(
    x: jax.Array,
    seeds: jax.Array,
    layout: layouts.Layout,
    batched: bool,
    seed_region: str,
    normalize: str,
    noise_key: jax.Array | None,
    expected_drop: jax.typing.ArrayLike | None,
) -> jax.Array:
    if not batched:
        x, seeds = x[None], seeds[None]
    packing = bitmask.packing(seeds.shape, layout.channel_axis)
    words = bitmask.pack(seeds, packing)
    out = _expand_and_apply(x, words, packing, layout, seed_region, normalize, noise_key, expected_drop)
    return out if batched else out[0]


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
    spatial_dims: int | None = None,
) -> jax.Array:
    """Draw DropBlock's seed grid: i.i.d. Bernoulli(gamma) booleans, gamma from ``seed_rate``.

    Args:
      key: a JAX PRNG key.
      shape: the shape of the input ``x``, ``(N, *spatial, C)`` (or ``(N, C, *spatial)`` with
        ``channel_axis=1``), or of one example ``(*spatial, C)`` given ``spatial_dims``.
      drop_prob: the target fraction of dropped units in [0, 1]; may be traced.
      block_size: an int or one int per spatial dimension (static); clipped to the map.
      channel_axis: ``-1`` (channels last) or ``1`` (channels first, ``(C, *spatial)`` for one
        example).
      seed_region: ``"valid"`` (blocks inside the map) or ``"full"`` (seeds everywhere).
      calibrate: make the expected dropped fraction exactly ``drop_prob``.
      share_channels: one seed grid per sample, shared by its channels (size-1 channel axis).
      share_batch: one seed grid shared by the batch (size-1 batch axis).
      spatial_dims: the number of spatial dimensions; given it, a ``shape`` of rank
        ``spatial_dims + 1`` is one unbatched example. None: ``len(shape) - 2``.

    Returns:
      A boolean array with ``shape``'s rank: the batch and channel axes of ``shape`` (or 1 where
      shared), and ``S - k + 1`` (valid) or ``S`` (full) positions per spatial axis.

    Raises:
      ValueError, TypeError: for a bad argument, naming it.

    Examples:
      >>> seeds = sample_seeds(jax.random.key(0), (2, 28, 28, 8), 0.1, 7)
      >>> seeds.shape, seeds.dtype
      ((2, 22, 22, 8), dtype('bool'))
      >>> sample_seeds(jax.random.key(0), (28, 28, 8), 0.1, 7, spatial_dims=2).shape
      (22, 22, 8)
    """
    batched_shape, batched = _batched_shape(shape, spatial_dims, "shape")
    layout = layouts.layout(batched_shape, block_size, channel_axis=channel_axis, name="shape")
    if min(layout.spatial_shape) < 1:
        raise ValueError(f"shape must have spatial sizes of at least 1, got shape={tuple(shape)!r}.")
    _check_key(key)
    validation.check_options(seed_region, calibrate=calibrate, share_channels=share_channels, share_batch=share_batch)
    concrete = concrete_drop_prob(drop_prob)
    seed_shape = layout.seed_shape(seed_region, share_channels, share_batch)
    if concrete == 0.0:
        return jnp.zeros(seed_shape if batched else seed_shape[1:], bool)
    if concrete is None:
        gamma, _ = _traced_rates(drop_prob, layout, seed_region, calibrate)
    else:
        gamma, _ = _concrete_rates(concrete, layout, seed_region, calibrate)
    budget = policy.seed_budget(math.prod(seed_shape), None if concrete is None else float(gamma))
    seeds = _sample_seeds(key, gamma, seed_shape, layout.channel_axis, budget)
    return seeds if batched else seeds[0]


@functools.partial(jax.jit, static_argnames=("seed_shape", "channel_axis", "budget"))
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
    spatial_dims: int | None = None,
) -> jax.Array:
    """Drop the blocks that ``seeds`` start and rescale: the deterministic half of DropBlock.

    The same seeds give bit-identical masks here and in ``dropblock_torch.apply_seeds``.

    Args:
      x: a floating array ``(N, *spatial, C)`` (or ``(N, C, *spatial)`` with ``channel_axis=1``),
        or one example ``(*spatial, C)`` given ``spatial_dims``.
      seeds: a seed grid as ``sample_seeds`` returns (nonzero means a seed), of ``x``'s rank; a
        size-1 batch or channel axis shares the mask.
      block_size: an int or one int per spatial dimension (static); clipped to the map.
      channel_axis: ``-1`` or ``1``.
      seed_region: ``"valid"`` or ``"full"``, as the seeds were drawn.
      normalize: ``"batch"`` (kept units scaled by ``numel / kept`` over the whole mask),
        ``"sample"`` (the same per sample), ``"expected"`` (by ``1 / (1 - expected_drop)``)
        or ``"none"``. Computed in at least float32; everything dropped gives zeros. Kept
        units of ``x`` that are inf or NaN stay so; dropped ones become 0.
      noise_key: if given, dropped units receive standard normal noise from this key
        instead of zero, and nothing is rescaled.
      expected_drop: the expected dropped fraction, in [0, 1); needed by ``normalize="expected"``.
      spatial_dims: the number of spatial dimensions; given it, an ``x`` of rank
        ``spatial_dims + 1`` is one unbatched example. None: ``x.ndim - 2``.

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
    shape, batched = _batched_shape(x.shape, spatial_dims, "x")
    layout = layouts.layout(shape, block_size, channel_axis=channel_axis)
    _check_floating(x)
    validation.check_options(seed_region, normalize)
    seeds = jnp.asarray(seeds)
    if seeds.ndim != x.ndim:
        raise ValueError(f"seeds must have the rank of x ({x.ndim}), got seeds.shape={seeds.shape}.")
    full_grid = layout.seed_shape(seed_region, share_channels=False, share_batch=False)
    validation.check_seed_shape(
        seeds.shape if batched else (1, *seeds.shape),
        full_grid,
        layout.channel_axis,
        x_shape=shape,
        block_size=block_size,
        seed_region=seed_region,
    )
    if expected_drop is not None:
        _check_real_scalar(expected_drop, "expected_drop")
        if not isinstance(expected_drop, jax.core.Tracer):
            expected_drop = validation.expected_drop_value(expected_drop)
    if normalize == "expected" and expected_drop is None and noise_key is None:
        raise ValueError("normalize='expected' needs expected_drop=..., e.g. from expected_drop_fraction.")
    if noise_key is not None:
        _check_key(noise_key, "noise_key")
    if x.size == 0:
        return x
    return _apply(x, seeds.astype(bool), layout, batched, seed_region, normalize, noise_key, expected_drop)


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
    spatial_dims: int | None = None,
) -> jax.Array:
    """DropBlock: zero random contiguous blocks of a feature map and rescale the rest.

    Seeds are i.i.d. Bernoulli(gamma) on the seed grid (``sample_seeds``), each drops a block
    of ``block_size`` (``apply_seeds``). ``drop_prob`` is the target fraction of dropped units;
    gamma follows the paper's Eq. 1, or is solved exactly with ``calibrate=True``.

    Args:
      x: a floating array ``(N, *spatial, C)`` with 1 to 3 spatial dims (the Flax layout), or
        ``(N, C, *spatial)`` with ``channel_axis=1``; given ``spatial_dims``, also one
        unbatched example ``(*spatial, C)`` (or ``(C, *spatial)``), e.g. under ``jax.vmap``.
      key: a JAX PRNG key.
      drop_prob: in [0, 1]; a Python float or a real scalar array that may be traced (changing
        it does not retrace). A concrete 0 returns ``x`` itself and uses no randomness. A
        finite traced value outside [0, 1] is clipped; a traced NaN or infinity makes the whole
        output NaN.
      block_size: an int or one int per spatial dimension (static); clipped to the map.
      channel_axis: ``-1`` or ``1``.
      seed_region: ``"valid"`` (the paper: every block lies inside the map) or ``"full"``
        (timm: seeds everywhere, blocks clipped at the border).
      calibrate: solve gamma so that the expected dropped fraction equals ``drop_prob``.
      share_channels: one mask per sample shared by its channels (default: one per channel).
      share_batch: one mask shared by the whole batch.
      normalize: ``"batch"``, ``"sample"``, ``"expected"`` or ``"none"`` (see ``apply_seeds``).
      noise: dropped units receive standard normal noise instead of zero, no rescale.
      spatial_dims: the number of spatial dimensions (1 to 3). Given it, an ``x`` of rank
        ``spatial_dims + 2`` is a batch and one of rank ``spatial_dims + 1`` a single example
        (a batch of one: ``"sample"`` and ``"batch"`` agree); any other rank is an error.
        None: ``x.ndim - 2``.

    Returns:
      An array of ``x``'s shape and dtype. ``drop_prob=1`` gives zeros (or pure noise). Kept
      units of ``x`` that are inf or NaN stay so; dropped ones become 0.

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
      >>> per_example = jax.vmap(lambda x, key: dropblock(x, key, 0.1, 7, spatial_dims=2))
      >>> per_example(x, jax.random.split(jax.random.key(2), 8)).shape
      (8, 28, 28, 16)
    """
    return _checked_dropblock(
        x,
        key,
        drop_prob,
        block_size,
        rate_in_graph=False,
        channel_axis=channel_axis,
        seed_region=seed_region,
        calibrate=calibrate,
        share_channels=share_channels,
        share_batch=share_batch,
        normalize=normalize,
        noise=noise,
        spatial_dims=spatial_dims,
    )


def layer_dropblock(
    x: jax.typing.ArrayLike, key: jax.Array, drop_prob: jax.typing.ArrayLike, block_size: BlockSize, **options
) -> jax.Array:
    """``dropblock`` as the Flax layers run it: the rate always worked out in the compiled program.

    ``dropblock`` works out a concrete rate in float64 before tracing and picks the sampler
    for it; a traced one is worked out in float32 inside the program. A layer's rate is
    concrete when it runs eagerly and traced under ``jit``, so the layers take the traced
    route either way: the same key then gives the same mask eagerly and under ``nnx.jit``.
    A concrete rate is still validated, and a concrete 0 still returns ``x``.
    """
    return _checked_dropblock(x, key, drop_prob, block_size, rate_in_graph=True, **options)


def _checked_dropblock(
    x: jax.typing.ArrayLike,
    key: jax.Array,
    drop_prob: jax.typing.ArrayLike,
    block_size: BlockSize,
    *,
    rate_in_graph: bool,
    channel_axis: int = -1,
    spatial_dims: int | None = None,
    **options: object,
) -> jax.Array:
    x = jnp.asarray(x)
    shape, batched = _batched_shape(x.shape, spatial_dims, "x")
    layout = layouts.layout(shape, block_size, channel_axis=channel_axis)
    _check_floating(x)
    _check_key(key)
    checked = DropBlockOptions(**options)
    concrete = concrete_drop_prob(drop_prob)
    if concrete == 0.0 or x.size == 0:
        return x
    if concrete is not None and not hasattr(drop_prob, "dtype"):
        # A real number that is no JAX type (a Fraction, a Decimal) enters the program as its float.
        drop_prob = concrete
    rate = None
    if concrete is not None and not rate_in_graph:
        rate = _concrete_rates(concrete, layout, checked.seed_region, checked.calibrate)
    seed_shape = layout.seed_shape(checked.seed_region, checked.share_channels, checked.share_batch)
    budget = policy.seed_budget(math.prod(seed_shape), None if rate is None else float(rate.gamma))
    return _dropblock(
        x, key, drop_prob, rate, layout=layout, batched=batched, options=checked, seed_shape=seed_shape, budget=budget
    )


@functools.partial(jax.jit, static_argnames=("layout", "batched", "options", "seed_shape", "budget"))
def _dropblock(
    x: jax.Array,
    key: jax.Array,
    drop_prob: jax.typing.ArrayLike,
    rate: ConcreteRates | None,
    *,
    layout: layouts.Layout,
    batched: bool,
    options: DropBlockOptions,
    seed_shape: tuple[int, ...],
    budget: int | None,
) -> jax.Array:
    """``dropblock`` after validation; ``rate`` is None when ``drop_prob`` is traced (or ``rate_in_graph``)."""
    if not batched:
        x = x[None]
    seed_key, noise_key = jax.random.split(key) if options.noise else (key, None)
    if rate is None:
        gamma, expected = _traced_rates(drop_prob, layout, options.seed_region, options.calibrate)
        guard = _nan_guard(drop_prob, jnp.promote_types(x.dtype, jnp.float32))
    else:
        (gamma, expected), guard = rate, None
    packing = bitmask.packing(seed_shape, layout.channel_axis)
    words = sampling.bernoulli_words(seed_key, gamma, seed_shape, packing, budget)
    out = _expand_and_apply(
        x, words, packing, layout, options.seed_region, options.normalize, noise_key, expected, guard
    )
    return out if batched else out[0]
