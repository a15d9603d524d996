"""DropBlock as a Flax Linen module that behaves like ``linen.Dropout``.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) drops contiguous blocks of a feature map.
Like ``linen.Dropout``: dataclass fields, ``deterministic`` merged from the field and the call
(``nn.merge_param``), keys from ``self.make_rng(rng_collection)`` unless ``rng=`` is given.

Built with a schedule (``step -> drop_prob``), the layer keeps its step as the variable
``"step"`` of the ``"dropblock"`` collection, created by ``init``. As ``BatchNorm`` does with
``batch_stats``, it advances the step once per training call when that collection is mutable
(``apply(..., mutable=["dropblock"])``) and ``auto_step`` is True; ``set_step(variables, step)``
sets it from outside (gradient accumulation: ``auto_step=False`` and the optimizer's step).
A ``step=`` given to the call is used instead and leaves the variable alone.

>>> import jax, jax.numpy as jnp
>>> from dropblock_jax import schedules
>>> layer = DropBlock(schedules.ramp(0.2, 100), 3)
>>> x = jnp.ones((2, 8, 8, 4))
>>> variables = layer.init(jax.random.key(0), x, deterministic=True)
>>> for i in range(3):
...     y, updates = layer.apply(
...         variables, x, deterministic=False, rngs={"dropout": jax.random.key(i)}, mutable=["dropblock"]
...     )
...     variables = {**variables, **updates}
>>> int(variables["dropblock"]["step"])
3
>>> int(set_step(variables, 50)["dropblock"]["step"])
50
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from dropblock_common import validation
from dropblock_common.options import DropBlockOptions
from dropblock_jax import functional, schedules

COLLECTION = "dropblock"


def _layer(name: str | None) -> str:
    """How messages name the layer: a top-level module has no name."""
    return "DropBlock" if name is None else f"DropBlock {name!r}"


def _frozen_step_message(name: str | None) -> str:
    return (
        f"{_layer(name)} advances its schedule's step in the {COLLECTION!r} collection, which this apply "
        f"cannot change: pass mutable=[{COLLECTION!r}] to apply (and keep the updated variables), or pass "
        "step=... (e.g. the optimizer's step), or build the layer with auto_step=False and use set_step."
    )


def _missing_step_message(name: str | None) -> str:
    return (
        f"{_layer(name)} was built with a schedule, but the variables given to apply have no "
        f"{COLLECTION!r} collection, where its step lives: a step created by this call would start at 0 "
        "every time, keeping the rate at the schedule's start. Pass the whole variables that init returned, "
        f"e.g. apply({{'params': params, {COLLECTION!r}: variables[{COLLECTION!r}]}}, x, rngs=..., "
        f"mutable=[{COLLECTION!r}]), and keep the {COLLECTION!r} updates it returns for the next call; "
        "or pass step=... (e.g. the optimizer's step) to the call. If init never reaches this layer (it "
        "sits in a branch that init does not take, such as `if train:`), run init through that branch "
        "(e.g. with train=True), so that it creates the step."
    )


def _no_step_message(name: str | None) -> str:
    return (
        f"{_layer(name)} was built with a schedule but has no step: either pass step=... to its call "
        "(e.g. the optimizer's step count), or keep the 'dropblock' collection that init creates in the "
        "variables given to apply, with mutable=['dropblock'] so that the step advances: "
        "variables = model.init(key, x); y, updates = model.apply(variables, x, rngs={'dropout': key}, "
        "mutable=['dropblock'])."
    )


class DropBlock(nn.Module):
    """DropBlock layer: drops random blocks in training, the identity when deterministic.

    Attributes:
      drop_prob: the fraction of units to drop, in [0, 1], or a schedule ``step -> drop_prob``;
        concrete (known before tracing): a traced rate goes to the call's ``drop_prob``.
      block_size: an int or one int per spatial dimension.
      channel_axis, seed_region, calibrate, share_channels, share_batch, normalize, noise,
        spatial_dims: as in ``dropblock_jax.dropblock``. With ``spatial_dims``, an input of
        rank ``spatial_dims + 1`` is one example (``jax.vmap`` / ``nn.vmap`` over examples).
      auto_step: with a schedule, advance the ``"dropblock"`` step once per training call
        when that collection is mutable.
      deterministic: if True, the layer is the identity; may be given at call time instead.
      rng_collection: the rng collection the masks are drawn from.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> layer = DropBlock(0.1, 3)
      >>> x = jnp.ones((2, 8, 8, 4))
      >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
      >>> y.shape, bool((layer.apply({}, x, deterministic=True) == x).all())
      ((2, 8, 8, 4), True)
    """

    drop_prob: float | Callable
    block_size: int | Sequence[int]
    channel_axis: int = -1
    seed_region: str = "valid"
    calibrate: bool = False
    share_channels: bool = False
    share_batch: bool = False
    normalize: str = "batch"
    noise: bool = False
    spatial_dims: int | None = None
    auto_step: bool = True
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self) -> None:
        DropBlockOptions.from_attributes(self)  # raises for a bad option
        validation.check_module_options(
            self.block_size,
            self.seed_region,
            self.normalize,
            self.channel_axis,
            self.spatial_dims,
            auto_step=self.auto_step,
        )
        if self.deterministic is not None:
            validation.check_flag(self.deterministic, "deterministic")
        functional.check_concrete(
            self.drop_prob,
            "drop_prob",
            "A traced rate goes to the call instead: DropBlock(0.0, block_size)(x, drop_prob=rate), or build the "
            "layer with a schedule and pass step=... to the call.",
        )
        validation.rate_or_schedule(self.drop_prob)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
        step: jax.typing.ArrayLike | None = None,
        drop_prob: jax.typing.ArrayLike | None = None,
    ) -> jax.Array:
        """Apply DropBlock to ``x`` unless deterministic.

        Args:
          x: ``(N, *spatial, C)`` (or ``(N, C, *spatial)`` with ``channel_axis=1``); one example
            ``(*spatial, C)`` given ``spatial_dims``.
          deterministic: merged with the field of the same name (one of them must be set).
          rng: a key to use instead of ``self.make_rng(self.rng_collection)``.
          step: the step a schedule reads, instead of the ``"dropblock"`` variable: one
            integer (an int32 scalar, maybe traced); it leaves the variable alone.
          drop_prob: a rate for this call instead of the field (may be traced).

        Returns:
          An array of ``x``'s shape and dtype.

        Raises:
          ValueError: when ``drop_prob`` is a schedule and there is no step to read, or the
            ``"dropblock"`` collection is mutable but was not given to ``apply`` (outside
            ``init``: a step created there would restart at 0 on every call), saying what to
            pass; TypeError for a ``deterministic`` or a ``step`` of the wrong type.
        """
        step_variable = None
        step_given_to_apply = self.has_variable(COLLECTION, "step")
        if callable(self.drop_prob) and (step_given_to_apply or self.is_mutable_collection(COLLECTION)):
            # Created even when the first call is deterministic, as BatchNorm's statistics are.
            step_variable = self.variable(COLLECTION, "step", lambda: jnp.zeros((), jnp.int32))
        if step is not None:
            step = schedules.step_value(step)  # raises for anything but one integer, naming step
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if validation.check_flag(deterministic, "deterministic"):
            return x
        rate = drop_prob
        if rate is None and callable(self.drop_prob):
            if step is None and step_variable is None:
                raise ValueError(_no_step_message(self.name))
            if step is None and not step_given_to_apply and not self.is_initializing():
                # A step created by this apply starts at 0 and is lost with it unless the caller
                # keeps the updates: the rate would stay schedule(0), silently dropping nothing.
                raise ValueError(_missing_step_message(self.name))
            rate = functional.scheduled_rate(self.drop_prob, step_variable.value if step is None else step)
            if step is None and self.auto_step and not self.is_initializing():
                if not self.is_mutable_collection(COLLECTION):
                    # As BatchNorm refuses to train with immutable batch_stats: a frozen step would
                    # keep the ramp at its start, silently dropping nothing.
                    raise ValueError(_frozen_step_message(self.name))
                step_variable.value = step_variable.value + 1
        elif rate is None:
            rate = self.drop_prob
        # ``make_rng`` falls back to the "params" stream, so ``model.init(key, x)`` in training
        # mode works, as it does with ``linen.Dropout``.
        if rng is None and not (self.has_rng(self.rng_collection) or self.has_rng("params")):
            if functional.concrete_zero(rate):
                return x
            raise ValueError(
                f"DropBlock {self.name!r} is training (deterministic=False) but has no random key: pass "
                f"rngs={{{self.rng_collection!r}: key}} to apply (or rng=key to the call), or deterministic=True."
            )
        key = self.make_rng(self.rng_collection) if rng is None else rng
        return functional.layer_dropblock(
            x,
            key,
            rate,
            self.block_size,
            channel_axis=self.channel_axis,
            spatial_dims=self.spatial_dims,
            **DropBlockOptions.from_attributes(self).kwargs(),
        )


def set_step(variables: Mapping[str, Any], step: jax.typing.ArrayLike) -> Mapping[str, Any]:
    """``variables`` with the step of every scheduled DropBlock set to ``step``.

    Every leaf named ``"step"`` in the ``"dropblock"`` collection is replaced by ``step``,
    keeping the leaf's shape and dtype: a layer stacked by ``nn.scan`` or ``nn.vmap`` holds one
    step per copy, shape ``(length,)``, and each copy gets ``step``. The rest is returned as it
    is, in the same kind of mapping. Works under ``jax.jit`` with a traced step.

    Args:
      variables: the variables of a model, as ``init`` returns them.
      step: an integer (or an integer scalar array); Python ints are clipped to the int32 range.

    Returns:
      The updated variables (a new mapping; ``variables`` is not changed).

    Raises:
      ValueError: when ``variables`` has no ``"dropblock"`` collection (no scheduled layer,
        or variables from before ``init``).
      TypeError: for a ``step`` that is not one integer, naming it.

    Examples:
      >>> variables = {"params": {}, "dropblock": {"block1": {"step": jnp.int32(0)}}}
      >>> int(set_step(variables, 7)["dropblock"]["block1"]["step"])
      7
      >>> stacked = {"dropblock": {"scan": {"step": jnp.zeros(3, jnp.int32)}}}  # nn.scan, length 3
      >>> set_step(stacked, 7)["dropblock"]["scan"]["step"]
      Array([7, 7, 7], dtype=int32)
    """
    if COLLECTION not in variables:
        raise ValueError(
            f"variables has no {COLLECTION!r} collection: the model has no DropBlock with a schedule, or the "
            "variables do not come from model.init."
        )
    step = schedules.step_value(step)

    def replace(path: tuple, leaf: Any) -> Any:
        name = getattr(path[-1], "key", None) if path else None
        if name != "step":
            return leaf
        # A layer stacked by nn.scan or nn.vmap keeps one step per copy: every copy gets ``step``.
        return jnp.broadcast_to(step, jnp.shape(leaf)).astype(jnp.result_type(leaf))

    steps = jax.tree_util.tree_map_with_path(replace, variables[COLLECTION])
    if isinstance(variables, FrozenDict):
        return variables.copy({COLLECTION: steps})
    return {**variables, COLLECTION: steps}
