"""Eager validation of DropBlock's static arguments, shared by both twins.

Every check raises in Python, before any tracing or compiling, with a message that names
the argument and the value it was given, and says how to fix the call where that is not
obvious.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

SEED_REGIONS = ("valid", "full")
NORMALIZE_MODES = ("batch", "sample", "expected", "none")


def check_spatial_dims(spatial_dims: object) -> int | None:
    """``spatial_dims`` if it is None or an int in {1, 2, 3}.

    Raises:
      ValueError: naming the argument and its value.

    Examples:
      >>> check_spatial_dims(2), check_spatial_dims(None)
      (2, None)
    """
    if spatial_dims is None:
        return None
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, numbers.Integral) or not 1 <= spatial_dims <= 3:
        raise ValueError(f"spatial_dims must be None, 1, 2 or 3 (how many dims are spatial), got {spatial_dims=!r}.")
    return int(spatial_dims)


def input_rank(shape: Sequence[int], spatial_dims: int | None = None, *, name: str = "x") -> tuple[int, bool]:
    """The number of spatial dimensions of an input, and whether it is a batch.

    Without ``spatial_dims`` an input is a batch ``(N, *spatial, C)`` or ``(N, C, *spatial)`` with
    1 to 3 spatial dims. With it, rank ``spatial_dims + 2`` is a batch and rank
    ``spatial_dims + 1`` is one unbatched example (``(*spatial, C)`` or ``(C, *spatial)``, what
    ``jax.vmap`` and ``torch.func.vmap`` over examples see), never a batch of lower dimension.

    Args:
      shape: the full shape of the input.
      spatial_dims: None, or the number of spatial dimensions (1 to 3).
      name: the argument's name, for the error message.

    Returns:
      ``(dims, batched)``.

    Raises:
      ValueError: for a rank that does not fit, naming ``name`` and ``spatial_dims``.

    Examples:
      >>> input_rank((8, 32, 32, 3)), input_rank((32, 32, 3), spatial_dims=2)
      ((2, True), (2, False))
    """
    ndim = len(shape)
    spatial_dims = check_spatial_dims(spatial_dims)
    if spatial_dims is None:
        if not 3 <= ndim <= 5:
            raise ValueError(
                f"{name} must have 3, 4 or 5 dimensions (batch, 1 to 3 spatial, channel), got {name}.ndim={ndim} "
                f"with shape {tuple(shape)}. For one unbatched example pass spatial_dims=..."
            )
        return ndim - 2, True
    if ndim == spatial_dims + 2:
        return spatial_dims, True
    if ndim == spatial_dims + 1:
        return spatial_dims, False
    raise ValueError(
        f"{name} must have {spatial_dims + 2} dimensions (a batch) or {spatial_dims + 1} (one example) "
        f"for {spatial_dims=}, got {name}.ndim={ndim} with shape {tuple(shape)}."
    )


def shape_tuple(shape: object, name: str) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative Python ints (a concrete shape, as JAX and numpy have).

    Args:
      shape: a sequence of ints.
      name: the argument's name, for the error message.

    Returns:
      The sizes as a tuple of Python ints.

    Raises:
      TypeError: if ``shape`` is not a sequence.
      ValueError: if a size is not a non-negative int.

    Examples:
      >>> shape_tuple([8, 28, 28, 3], "shape")
      (8, 28, 28, 3)
    """
    try:
        sizes = tuple(shape)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints (a shape), got {name}={shape!r}.") from None
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
            raise ValueError(f"{name} must be a shape of non-negative ints, got {name}={sizes!r}.")
    return tuple(int(size) for size in sizes)


def spatial_dims(shape: Sequence[int], *, name: str = "x") -> int:
    """Number of spatial dimensions of a batched ``(N, *spatial, C)`` or ``(N, C, *spatial)`` shape.

    Raises:
      ValueError: if the shape does not have 3 to 5 dimensions.

    Examples:
      >>> spatial_dims((8, 32, 32, 3))
      2
    """
    return input_rank(shape, name=name)[0]


def channel_axis_index(channel_axis: int, ndim: int) -> int:
    """The non-negative index of the channel axis, which must be the second or the last.

    Args:
      channel_axis: ``-1`` (channels last, the Flax layout) or ``1`` (channels first, the
        torch layout); any integer that points at one of those two axes is accepted.
      ndim: the number of dimensions of ``x``.

    Returns:
      ``1`` or ``ndim - 1``.

    Raises:
      ValueError: for any other axis, or a value that is not an integer.

    Examples:
      >>> channel_axis_index(-1, 4), channel_axis_index(1, 4)
      (3, 1)
    """
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
        raise ValueError(f"channel_axis must be an int (1 or -1), got {channel_axis=!r}.")
    index = int(channel_axis) + ndim if channel_axis < 0 else int(channel_axis)
    if index not in (1, ndim - 1):
        raise ValueError(
            f"channel_axis must be 1 (channels first) or -1 (channels last) for an input "
            f"with {ndim} dimensions, got {channel_axis=}."
        )
    return index


def spatial_axes(ndim: int, channel_axis: int) -> tuple[int, ...]:
    """The axes of ``x`` that are spatial, given a validated channel axis index.

    Examples:
      >>> spatial_axes(4, 3), spatial_axes(4, 1)
      ((1, 2), (2, 3))
    """
    return tuple(axis for axis in range(1, ndim) if axis != channel_axis)


def block_size_tuple(block_size: int | Sequence[int], dims: int) -> tuple[int, ...]:
    """``block_size`` as a tuple of ``dims`` positive ints.

    Args:
      block_size: an int (the same size in every spatial dimension) or a sequence of
        ``dims`` ints, each at least 1.
      dims: the number of spatial dimensions.

    Returns:
      A tuple of ``dims`` Python ints.

    Raises:
      ValueError: if a size is below 1, or the sequence has the wrong length.
      TypeError: if a size is not an integer (a traced value included: it must be static).

    Examples:
      >>> block_size_tuple(7, 2), block_size_tuple((3, 5), 2)
      ((7, 7), (3, 5))
    """
    sizes = tuple(block_size) if isinstance(block_size, Sequence) else (block_size,) * dims
    if len(sizes) != dims:
        raise ValueError(
            f"block_size must be an int or a sequence of {dims} ints (one per spatial dimension), got {block_size=!r}."
        )
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(
                f"block_size must hold Python ints, got {block_size=!r}. It is static (it fixes the "
                "shapes): pass a plain int, not an array, a tensor or a traced value."
            )
        if size < 1:
            raise ValueError(f"block_size must be at least 1 in every dimension, got {block_size=!r}.")
    return tuple(int(size) for size in sizes)


def spatial_shape_tuple(spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """``spatial_shape`` as a tuple of 1 to 3 positive ints.

    Raises:
      ValueError: for an empty or a zero-size dimension, or more than 3 dimensions.

    Examples:
      >>> spatial_shape_tuple([28, 28])
      (28, 28)
    """
    shape = tuple(spatial_shape)
    if not 1 <= len(shape) <= 3 or any(
        isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1 for size in shape
    ):
        raise ValueError(f"spatial_shape must be 1 to 3 positive ints, got spatial_shape={shape!r}.")
    return tuple(int(size) for size in shape)


def effective_block_size(spatial_shape: Sequence[int], block_size: Sequence[int]) -> tuple[int, ...]:
    """Per dimension ``min(block_size, size)``: a block never exceeds the feature map.

    Examples:
      >>> effective_block_size((28, 5), (7, 7))
      (7, 5)
    """
    return tuple(min(block, size) for block, size in zip(block_size, spatial_shape, strict=True))


def is_boolean(value: object) -> bool:
    """Whether ``value`` is a bool, or a scalar or array of a boolean dtype (numpy, jax, torch)."""
    if isinstance(value, bool | int | float):
        # Not asked for a dtype: a float that torch.compile traces as a symbol (a layer's rate
        # that changed between calls) looks like a float there and cannot answer getattr.
        return isinstance(value, bool)
    dtype = getattr(value, "dtype", None)
    return isinstance(value, bool) or (dtype is not None and str(dtype) in ("bool", "torch.bool"))


def drop_prob_value(drop_prob: object, name: str = "drop_prob") -> float:
    """A concrete ``drop_prob`` as a float in [0, 1].

    Args:
      drop_prob: a real number: a Python int or float, a numpy scalar or a 0-d array of a
        real dtype (booleans and strings are refused: ``True`` is not a rate).
      name: the argument's name, for the error message.

    Returns:
      ``float(drop_prob)``.

    Raises:
      ValueError: for NaN or a value outside [0, 1].
      TypeError: for something that is not a real number.

    Examples:
      >>> drop_prob_value(0.1)
      0.1
    """
    if is_boolean(drop_prob) or isinstance(drop_prob, str | bytes):
        raise TypeError(f"{name} must be a real number in [0, 1], got {name}={drop_prob!r}.")
    try:
        value = float(drop_prob)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number in [0, 1], got {name}={drop_prob!r}.") from None
    if value != value or not 0.0 <= value <= 1.0:  # NaN fails both
        raise ValueError(
            f"{name} must be in [0, 1] (the fraction of units to drop, not the keep probability), got {name}={value!r}."
        )
    return value


def expected_drop_value(expected_drop: object) -> float:
    """A concrete ``expected_drop`` (the expected dropped fraction) as a float in [0, 1).

    Raises:
      ValueError, TypeError: naming the argument; 1 or more would scale the kept units by infinity.

    Examples:
      >>> expected_drop_value(0.25)
      0.25
    """
    try:
        value = drop_prob_value(expected_drop, "expected_drop")
    except ValueError:  # outside [0, 1] or NaN: say [0, 1) instead
        value = None
    if value is None or value >= 1.0:
        raise ValueError(f"expected_drop must be in [0, 1) (1 leaves nothing to rescale), got {expected_drop=!r}.")
    return value


def check_flag(value: object, name: str) -> bool:
    """``value`` if it is a bool (Python or numpy); anything else would be read by its truthiness.

    Raises:
      TypeError: naming the argument, e.g. for the string ``"False"``.

    Examples:
      >>> check_flag(False, "calibrate")
      False
    """
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {name}={value!r}.")


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``.

    Raises:
      ValueError: naming the argument, its value and the valid choices.

    Examples:
      >>> check_choice("full", "seed_region", SEED_REGIONS)
      'full'
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {name}={value!r}.")
    return value


_NOT_TAKEN = object()


def check_options(seed_region: object, normalize: object = _NOT_TAKEN, **flags: object) -> None:
    """Check ``seed_region``, ``normalize`` (unless the caller takes none) and boolean options.

    Args:
      seed_region: one of ``SEED_REGIONS``.
      normalize: one of ``NORMALIZE_MODES`` (``None`` is refused: it would hide a typo); leave
        it out where the function takes no ``normalize`` (``sample_seeds``).
      **flags: boolean options by name (``calibrate=...``), each must be a bool.

    Raises:
      ValueError, TypeError: naming the argument and its value.

    Examples:
      >>> check_options("full", "sample", calibrate=False)
    """
    check_choice(seed_region, "seed_region", SEED_REGIONS)
    if normalize is not _NOT_TAKEN:
        check_choice(normalize, "normalize", NORMALIZE_MODES)
    for name, value in flags.items():
        check_flag(value, name)


def check_module_options(
    block_size: int | Sequence[int],
    seed_region: object,
    normalize: object,
    channel_axis: int | None = None,
    spatial_dims: int | None = None,
    **flags: object,
) -> None:
    """Validate a layer's static options at construction, before any input is seen.

    The rank of the input is not known yet: an int ``block_size`` fits any rank, a sequence
    fixes the number of spatial dimensions to its length (which must then equal
    ``spatial_dims`` if that is given).

    Raises:
      ValueError, TypeError: naming the argument and its value.

    Examples:
      >>> check_module_options((3, 5), "valid", "batch", channel_axis=-1, calibrate=False)
    """
    spatial_dims = check_spatial_dims(spatial_dims)
    dims = len(block_size) if isinstance(block_size, Sequence) else (spatial_dims or 1)
    if not 1 <= dims <= 3:
        raise ValueError(f"block_size must be an int or 1 to 3 ints, got {block_size=!r}.")
    block_size_tuple(block_size, spatial_dims or dims)
    if channel_axis is not None and (isinstance(channel_axis, bool) or channel_axis not in (1, -1)):
        raise ValueError(f"channel_axis must be 1 (channels first) or -1 (channels last), got {channel_axis=!r}.")
    check_options(seed_region, normalize, **flags)


def rate_or_schedule(drop_prob: object) -> object:
    """A schedule (any callable ``step -> drop_prob``) as it is, or a constant validated to [0, 1].

    Examples:
      >>> rate_or_schedule(0.1)
      0.1
    """
    return drop_prob if callable(drop_prob) else drop_prob_value(drop_prob)


def check_seed_shape(
    seed_shape: Sequence[int],
    grid_shape: Sequence[int],
    channel_axis: int,
    *,
    x_shape: Sequence[int],
    block_size: object,
    seed_region: str,
) -> None:
    """Check that a seed grid fits ``x``: the grid's shape, with 1 allowed on the batch and channel axes.

    Args:
      seed_shape: the shape of the seeds given.
      grid_shape: the full seed grid for ``x`` (nothing shared).
      channel_axis: the index of the channel axis (the batch axis is 0).
      x_shape, block_size, seed_region: for the message.

    Raises:
      ValueError: naming the expected and the given shape.

    Examples:
      >>> check_seed_shape((2, 1, 6, 6), (2, 3, 6, 6), 1, x_shape=(2, 3, 8, 8), block_size=3, seed_region="valid")
    """
    seed_shape, grid_shape = tuple(seed_shape), tuple(grid_shape)
    fits = len(seed_shape) == len(grid_shape) and all(
        size == expected or (size == 1 and axis in (0, channel_axis))
        for axis, (size, expected) in enumerate(zip(seed_shape, grid_shape, strict=True))
    )
    if not fits:
        raise ValueError(
            f"seeds must have shape {grid_shape} for x of shape {tuple(x_shape)}, block_size={block_size!r} "
            f"and seed_region={seed_region!r} (1 allowed on the batch and channel axes), "
            f"got seeds.shape={seed_shape}."
        )
