"""DropBlock as a Flax NNX module that behaves like ``nnx.Dropout``.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) drops contiguous blocks of a feature map.
The module has Dropout's vocabulary: a ``deterministic`` attribute (so ``model.train()``,
``model.eval()`` and ``nnx.view`` reach it), an ``rng_collection="dropout"`` stream, and
``rngs`` at construction or at call time. A training call draws exactly one key from its
stream, whatever the rate, so an eager run and an ``nnx.jit`` run from the same seed agree.

A constant ``drop_prob`` lives in a ``DropRate`` variable (float32 state, not an ``nnx.Param``):
``layer.drop_prob = 0.2`` between calls never retraces a jitted step. Built with a schedule
(``step -> drop_prob``), the layer keeps its step in a ``ScheduleStep`` variable and, unless
``auto_step=False``, advances it once per training call. ``set_step(model, step)`` sets the
step of every scheduled DropBlock in a model from outside, e.g. from the optimizer.

Gradient accumulation makes several forward calls per optimizer step, which would run a
self-advancing schedule too fast. Build the layers with ``auto_step=False`` and set their
step from the optimizer's at the start of each step:

>>> import jax, jax.numpy as jnp, optax
>>> from flax import nnx
>>> from dropblock_jax import schedules
>>> class Net(nnx.Module):
...     def __init__(self, rngs):
...         self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
...         self.drop = DropBlock(schedules.ramp(0.1, 100), 3, auto_step=False, rngs=rngs)
...         self.head = nnx.Linear(4, 2, rngs=rngs)
...     def __call__(self, x):
...         return self.head(self.drop(nnx.relu(self.conv(x))).mean(axis=(1, 2)))
>>> model = Net(nnx.Rngs(0, dropout=1))
>>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
>>> @nnx.jit
... def train_step(model, optimizer, images, labels):
...     set_step(model, optimizer.step)  # the schedule follows optimizer steps, not forward calls
...     def loss_fn(model, x, y):
...         return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
...     grads = None
...     for x, y in zip(jnp.split(images, 2), jnp.split(labels, 2)):  # two micro-batches
...         g = nnx.grad(loss_fn)(model, x, y)
...         grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
...     optimizer.update(model, jax.tree.map(lambda g: g / 2, grads))
>>> images, labels = jnp.ones((8, 8, 8, 1)), jnp.zeros(8, jnp.int32)
>>> for _ in range(3):
...     train_step(model, optimizer, images, labels)
>>> int(model.drop.step[...]), int(optimizer.step[...])  # step 2 was the last one used
(2, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dropblock_common import validation
from dropblock_common.options import DropBlockOptions
from dropblock_jax import functional, schedules

_NO_RNG = (
    "DropBlock is in training mode (deterministic=False) but has no random key. Either pass "
    "rngs=nnx.Rngs(dropout=0) to the constructor, or rngs=... (an nnx.Rngs, an RngStream or a "
    "key) to the call, or put the module in eval mode with model.eval()."
)
_NO_DETERMINISTIC = (
    "No `deterministic` argument was given to DropBlock. Pass deterministic=True/False to the "
    "constructor or to the call, or use model.train() / model.eval() or nnx.view(model, deterministic=...)."
)


class ScheduleStep(nnx.Variable):
    """How many training calls a scheduled DropBlock has made: the step its schedule reads."""


class DropRate(nnx.Variable):
    """A constant ``drop_prob`` as float32 state, so that changing it never retraces ``nnx.jit``.

    Not an ``nnx.Param``: an optimizer built with ``wrt=nnx.Param`` leaves it alone.
    """


def _first_given(*values: object) -> object:
    """The first value that is not None, else None (``nnx.Dropout`` merges call and attribute so)."""
    return next((value for value in values if value is not None), None)


class DropBlock(nnx.Module):
    """DropBlock layer: drops random blocks in training, the identity in eval mode.

    Args:
      drop_prob: the fraction of units to drop, in [0, 1], or a schedule ``step -> drop_prob``
        (``dropblock_jax.schedules``, or any optax schedule). Read and written back as
        ``layer.drop_prob``; a constant is held in ``layer.rate``, a ``DropRate`` variable.
      block_size: an int or one int per spatial dimension.
      channel_axis, seed_region, calibrate, share_channels, share_batch, normalize, noise,
        spatial_dims: as in ``dropblock_jax.dropblock``; kept as plain attributes. With
        ``spatial_dims``, an input of rank ``spatial_dims + 1`` is one example (``nnx.vmap``).
      auto_step: with a schedule, advance ``layer.step`` once per training call. False: the
        step changes only through ``set_step`` (gradient accumulation, see the module doc).
      deterministic: if True, the layer is the identity (eval mode).
      rng_collection: the ``nnx.Rngs`` stream the masks are drawn from.
      rngs: an ``nnx.Rngs`` or ``RngStream`` (forked, as ``nnx.Dropout`` does), or None if
        keys are passed at call time.

    Raises:
      ValueError, TypeError: for a bad option, naming it.

    Examples:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> from dropblock_jax import schedules
      >>> layer = DropBlock(schedules.ramp(0.1, 1000), 3, rngs=nnx.Rngs(dropout=0))
      >>> layer(jnp.ones((2, 8, 8, 4))).shape
      (2, 8, 8, 4)
      >>> int(layer.step[...])
      1
      >>> layer.eval()
      >>> bool((layer(jnp.ones((2, 8, 8, 4))) == 1).all())
      True
      >>> layer.drop_prob = 0.1  # a constant from now on, read back as given
      >>> layer.drop_prob
      0.1
    """

    def __init__(
        self,
        drop_prob: float | Callable,
        block_size: int | Sequence[int],
        *,
        channel_axis: int = -1,
        seed_region: str = "valid",
        calibrate: bool = False,
        share_channels: bool = False,
        share_batch: bool = False,
        normalize: str = "batch",
        noise: bool = False,
        spatial_dims: int | None = None,
        auto_step: bool = True,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ):
        options = DropBlockOptions(
            seed_region=seed_region,
            calibrate=calibrate,
            share_channels=share_channels,
            share_batch=share_batch,
            normalize=normalize,
            noise=noise,
        )
        validation.check_module_options(
            block_size, seed_region, normalize, channel_axis, spatial_dims, auto_step=auto_step
        )
        if deterministic is not None:
            validation.check_flag(deterministic, "deterministic")
        if not isinstance(rng_collection, str):
            raise TypeError(f"rng_collection must be the name of an nnx.Rngs stream, got {rng_collection=!r}.")
        self.block_size = tuple(block_size) if isinstance(block_size, Sequence) else block_size
        self.channel_axis = channel_axis
        # Plain attributes, as nnx.Dropout keeps its options: layer.noise reads and sets one.
        for name, value in options.kwargs().items():
            setattr(self, name, value)
        self.spatial_dims = spatial_dims
        self.auto_step = auto_step
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.schedule: Callable | None = None
        self.rate: DropRate | None = nnx.data(None)
        self.step: ScheduleStep | None = nnx.data(None)
        self.drop_prob = drop_prob
        if isinstance(rngs, nnx.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, nnx.RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = nnx.data(None)
        else:
            raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or None, got rngs={rngs!r}.")

    @property
    def drop_prob(self) -> float | Callable | jax.Array:
        """The schedule, or the constant rate as the Python float it was given as.

        The rate is stored in float32; read back, it is the shortest decimal that rounds to
        that float32, which is the value given for any rate written with up to 7 significant
        digits (``0.1`` reads back as ``0.1``). Under a trace it is the traced float32. Layers
        stacked by ``nnx.vmap`` or ``nnx.scan`` hold one rate per copy: read back, that is the
        float32 array of them (setting ``drop_prob`` sets every copy).

        Examples:
          >>> from flax import nnx
          >>> stack = nnx.vmap(lambda rngs: DropBlock(0.1, 3, rngs=rngs))(nnx.Rngs(dropout=0).split(3))
          >>> stack.drop_prob
          Array([0.1, 0.1, 0.1], dtype=float32)
        """
        if self.schedule is not None:
            return self.schedule
        value = self.rate[...]
        if isinstance(value, jax.core.Tracer) or np.ndim(value) != 0:
            return value
        return float(str(np.float32(np.asarray(value))))

    @drop_prob.setter
    def drop_prob(self, drop_prob: float | Callable | jax.Array) -> None:
        if callable(drop_prob):
            self.schedule = drop_prob
            if self.step is None:
                self.step = ScheduleStep(jnp.zeros((), jnp.int32))
            return
        concrete = functional.concrete_drop_prob(drop_prob)  # validated, traced values included
        value = jnp.asarray(drop_prob if concrete is None else concrete, jnp.float32)
        self.schedule = None
        if self.rate is None:
            self.rate = DropRate(value)
        else:
            self.rate[...] = value

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
        drop_prob: jax.typing.ArrayLike | None = None,
    ) -> jax.Array:
        """Apply DropBlock to ``x`` in training mode, return ``x`` in eval mode.

        A training call draws one key from its stream (even at a rate of 0) and, with a
        schedule and ``auto_step``, advances the step. A call given ``drop_prob=`` does not
        read the schedule, so it leaves the step where it is: the step counts the training
        calls that used the schedule.

        Args:
          x: ``(N, *spatial, C)`` (or ``(N, C, *spatial)`` with ``channel_axis=1``); one example
            ``(*spatial, C)`` given ``spatial_dims``.
          deterministic: overrides the module's ``deterministic`` for this call.
          rngs: an ``nnx.Rngs``, an ``RngStream`` or a key; overrides the module's.
          drop_prob: overrides the stored rate or schedule for this call (may be traced); the
            step does not advance.

        Returns:
          An array of ``x``'s shape and dtype.

        Raises:
          ValueError, TypeError: for a bad argument, or training with no key, saying how to fix it.
        """
        deterministic = _first_given(deterministic, self.deterministic)
        if deterministic is None:
            raise ValueError(_NO_DETERMINISTIC)
        if validation.check_flag(deterministic, "deterministic"):
            return x
        rate = self._rate() if drop_prob is None else drop_prob
        key = self._key(rngs)
        if key is None and not functional.concrete_zero(rate):
            raise ValueError(_NO_RNG)  # before the step moves: a failed call changes nothing
        if drop_prob is None and self.step is not None and self.schedule is not None and self.auto_step:
            self.step[...] = self.step[...] + 1  # a training call that read the schedule
        if key is None:
            return x
        return functional.layer_dropblock(
            x,
            key,
            rate,
            self.block_size,
            channel_axis=self.channel_axis,
            spatial_dims=self.spatial_dims,
            **DropBlockOptions.from_attributes(self).kwargs(),
        )

    def _rate(self) -> jax.typing.ArrayLike:
        if self.schedule is not None:
            return functional.scheduled_rate(self.schedule, self.step[...])
        return self.rate[...]

    def _key(self, rngs: nnx.Rngs | nnx.RngStream | jax.Array | None) -> jax.Array | None:
        """One key from the call's ``rngs`` or else the module's, None if there are none."""
        rngs = _first_given(rngs, self.rngs)
        if rngs is None:
            return None
        if isinstance(rngs, nnx.Rngs):
            return rngs[self.rng_collection]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        if not functional.is_key(rngs):
            raise TypeError(
                f"rngs must be an nnx.Rngs, an nnx.RngStream or one JAX key (jax.random.key(0)), got rngs={rngs!r}."
            )
        return rngs

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view``: ``deterministic=True`` is eval mode.

        Args:
          deterministic: if True, the layer is the identity.
        """
        if deterministic is not None:
            self.deterministic = deterministic


def set_step(model: nnx.Module, step: jax.typing.ArrayLike | nnx.Variable) -> None:
    """Set the step of every scheduled DropBlock in ``model`` (its whole graph), in place.

    Works under ``nnx.jit`` with a traced step. With layers built with ``auto_step=False``
    this is the only way their step changes: the gradient-accumulation pattern of the module
    docstring. Layers stacked by ``nnx.vmap`` or ``nnx.scan`` hold one step per copy; each
    gets ``step``.

    Pass the count of real optimizer updates. ``optimizer.step`` is that when every train step
    calls ``optimizer.update`` once with whole gradients. With ``optax.MultiSteps`` (gradient
    accumulation inside the optimizer), every call of ``optimizer.update`` is a micro-step and
    advances ``optimizer.step``, which would run the schedule ``every_k_schedule`` times too
    fast: pass ``optimizer.opt_state.gradient_step``, MultiSteps' count of real updates.

    Args:
      model: any NNX graph node (a model, a layer, a list of them).
      step: one integer (an integer scalar array, or a Variable such as ``optimizer.step``);
        Python ints are clipped to the int32 range of the step (schedules are constant past
        their end).

    Raises:
      TypeError: for a ``step`` that is not one integer (None, a string, a float), naming it.

    Examples:
      >>> from flax import nnx
      >>> from dropblock_jax import schedules
      >>> model = nnx.Sequential(DropBlock(schedules.ramp(0.2, 10), 3), DropBlock(0.1, 3))
      >>> set_step(model, 5)
      >>> int(model.layers[0].step[...]), round(float(model.layers[0].drop_prob(5)), 3)
      (5, 0.1)
    """
    if isinstance(step, nnx.Variable):
        step = step[...]
    step = schedules.step_value(step)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, DropBlock) and node.schedule is not None and node.step is not None:
            node.step[...] = step
