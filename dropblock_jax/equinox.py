"""DropBlock as an Equinox module that behaves like ``eqx.nn.Dropout``.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) drops contiguous blocks of a feature map.
Like every Equinox layer, ``DropBlock`` takes one unbatched example, channels first
``(C, *spatial)`` as ``eqx.nn.Conv2d`` gives it, and a model is mapped over the batch with
``jax.vmap``, one key per example: each example and each channel gets its own blocks. The
module is pure: the key is explicit, ``inference`` switches it off (``eqx.nn.inference_mode``
reaches it), and a call-time ``inference=`` or ``drop_prob=`` overrides the field.

Equinox modules are immutable, so a schedule (``step -> drop_prob``) is not state here: work
the rate out from the optimizer's step inside the jitted train step and pass it at call time.
The step must be an array (a Python int is static under ``eqx.filter_jit`` and recompiles at
every new value); then the rate is traced and changing it never recompiles:

>>> import equinox as eqx, jax, jax.numpy as jnp, optax
>>> from dropblock_jax import schedules
>>> class Net(eqx.Module):
...     conv: eqx.nn.Conv2d
...     drop: DropBlock
...     head: eqx.nn.Linear
...     def __init__(self, key):
...         conv_key, head_key = jax.random.split(key)
...         self.conv = eqx.nn.Conv2d(1, 4, 3, padding=1, key=conv_key)
...         self.drop = DropBlock(0.1, 3)
...         self.head = eqx.nn.Linear(4, 2, key=head_key)
...     def __call__(self, x, *, key=None, drop_prob=None):
...         h = self.drop(jax.nn.relu(self.conv(x)), key=key, drop_prob=drop_prob)
...         return self.head(h.mean(axis=(1, 2)))
>>> model, schedule, optimizer = Net(jax.random.key(0)), schedules.ramp(0.1, 100), optax.adamw(1e-2)
>>> opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
>>> @eqx.filter_jit
... def train_step(model, opt_state, images, labels, step, key):
...     drop_prob = schedule(step)  # traced: a new value each step, one compilation
...     keys = jax.random.split(key, images.shape[0])  # one key per example
...     def loss_fn(model):
...         logits = jax.vmap(lambda x, k: model(x, key=k, drop_prob=drop_prob))(images, keys)
...         return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
...     loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
...     updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
...     return eqx.apply_updates(model, updates), opt_state, loss
>>> images, labels = jnp.ones((8, 1, 8, 8)), jnp.zeros(8, jnp.int32)
>>> for step, key in enumerate(jax.random.split(jax.random.key(1), 3)):
...     model, opt_state, loss = train_step(model, opt_state, images, labels, jnp.asarray(step), key)
>>> evaluation = eqx.nn.inference_mode(model)  # no key needed: DropBlock is the identity
>>> jax.vmap(evaluation)(images).shape
(8, 2)

A rate stored as a Python float is a static hyperparameter, as ``eqx.nn.Dropout``'s ``p`` is:
no optimizer sees it, and a new value (``eqx.tree_at``) recompiles a jitted function. A rate
stored as an array (``DropBlock(jnp.asarray(0.1), 3)``, or ``eqx.tree_at(lambda m: m.drop.drop_prob,
model, jnp.asarray(0.2))``) is traced, so a new value does not recompile; but it is then a leaf
like the weights: its gradient is always zero, yet decoupled weight decay (``optax.adamw``)
shrinks it step by step unless the optimizer is given only the weights. The call-time
``drop_prob=`` has neither cost.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from dropblock_common import validation
from dropblock_common.options import DropBlockOptions
from dropblock_jax import functional

_NO_KEY = (
    "DropBlock is in training mode (inference=False) but got no key. Pass key=... to the call, one key per "
    "example under jax.vmap (e.g. jax.random.split(key, batch_size)), or switch it off with "
    "eqx.nn.inference_mode(model) or inference=True."
)
_LAYOUTS = {0: "(C, *spatial)", -1: "(*spatial, C)"}


def _rate(drop_prob: object) -> float | jax.Array:
    """A validated ``drop_prob``: a number (numpy's too) as a float, an array (maybe traced) as float32."""
    if callable(drop_prob):
        raise TypeError(
            f"drop_prob must be a number in [0, 1], got the callable drop_prob={drop_prob!r}. Equinox modules "
            "are immutable, so a schedule is not state: pass drop_prob=schedule(step) to the call, with the "
            "step as an array inside the jitted train step."
        )
    functional.concrete_drop_prob(drop_prob)  # raises, naming drop_prob; a traced value passes
    if isinstance(drop_prob, numbers.Real):
        return float(drop_prob)
    return jnp.asarray(drop_prob, jnp.float32)


def _check_channel_axis(channel_axis: object) -> int:
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral) or channel_axis not in _LAYOUTS:
        raise ValueError(
            "channel_axis must be 0 (channels first, (C, *spatial): the Equinox layout) or -1 (channels last, "
            f"(*spatial, C)); it indexes one unbatched example, got {channel_axis=!r}."
        )
    return int(channel_axis)


class DropBlock(eqx.Module):
    """DropBlock layer for one unbatched example: drops random blocks in training, the identity in inference.

    Map it (or the model around it) over the batch with ``jax.vmap`` and one key per example:
    each example then gets its own masks, one per channel (``share_channels=False``). The
    same key for every example (``in_axes=None``) gives the whole batch one mask, which is
    what ``share_batch=True`` does elsewhere, so that option is not taken here.

    The normalisation is per call, and a call sees one example: under ``jax.vmap`` each
    example is rescaled by its own kept fraction, so ``normalize="batch"`` (the default) is
    ``"sample"`` here. ``"expected"`` rescales by the analytic ``1 / (1 - E)`` instead, the same
    for every example.

    Args:
      drop_prob: the fraction of units to drop, in [0, 1]. A Python float is kept as one: a
        static hyperparameter, as ``eqx.nn.Dropout``'s ``p`` (a new value recompiles a jitted
        function). An array is kept as a float32 array: traced, so a new value does not
        recompile (see the module doc for its cost). A schedule is not state in Equinox: pass
        ``drop_prob=schedule(step)`` at call time.
      block_size: an int or one int per spatial dimension; clipped to the map.
      channel_axis: ``0`` (channels first, ``(C, *spatial)``, the Equinox layout) or ``-1``
        (channels last, ``(*spatial, C)``), an axis of the unbatched example.
      seed_region, calibrate, share_channels, normalize, noise: as in ``dropblock_jax.dropblock``.
      spatial_dims: the number of spatial dimensions (1, 2 or 3); an input has one more.
      inference: if True, the layer is the identity. Toggled by ``eqx.nn.inference_mode``.

    Raises:
      ValueError, TypeError: for a bad option, naming it.

    Examples:
      >>> import equinox as eqx, jax, jax.numpy as jnp
      >>> layer = DropBlock(0.2, 3)
      >>> x = jnp.ones((8, 4, 16, 16))  # a batch of 8 examples (C, H, W)
      >>> keys = jax.random.split(jax.random.key(0), 8)
      >>> y = jax.vmap(lambda x, key: layer(x, key=key))(x, keys)
      >>> y.shape
      (8, 4, 16, 16)
      >>> bool(0.1 < float((y == 0).mean()) < 0.3)
      True
      >>> example = x[0]
      >>> eqx.nn.inference_mode(layer)(example) is example
      True
    """

    drop_prob: float | jax.Array
    block_size: int | tuple[int, ...] = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)
    seed_region: str = eqx.field(static=True)
    calibrate: bool = eqx.field(static=True)
    share_channels: bool = eqx.field(static=True)
    normalize: str = eqx.field(static=True)
    noise: bool = eqx.field(static=True)
    spatial_dims: int = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        drop_prob: float | jax.Array,
        block_size: int | Sequence[int],
        *,
        channel_axis: int = 0,
        seed_region: str = "valid",
        calibrate: bool = False,
        share_channels: bool = False,
        normalize: str = "batch",
        noise: bool = False,
        spatial_dims: int = 2,
        inference: bool = False,
    ):
        if spatial_dims is None:
            raise ValueError(
                "spatial_dims must be 1, 2 or 3 (an Equinox layer takes one example, of spatial_dims + 1 "
                "dimensions), got spatial_dims=None."
            )
        options = DropBlockOptions(
            seed_region=seed_region,
            calibrate=calibrate,
            share_channels=share_channels,
            normalize=normalize,
            noise=noise,
        )
        validation.check_module_options(block_size, seed_region, normalize, None, spatial_dims, inference=inference)
        self.drop_prob = _rate(drop_prob)
        self.block_size = tuple(map(int, block_size)) if isinstance(block_size, Sequence) else int(block_size)
        self.channel_axis = _check_channel_axis(channel_axis)
        self.seed_region = options.seed_region
        self.calibrate = options.calibrate
        self.share_channels = options.share_channels
        self.normalize = options.normalize
        self.noise = options.noise
        self.spatial_dims = spatial_dims
        self.inference = inference

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        drop_prob: jax.typing.ArrayLike | None = None,
    ) -> jax.Array:
        """Apply DropBlock to one example ``x`` in training, return ``x`` in inference.

        Args:
          x: one floating example ``(C, *spatial)`` (``(*spatial, C)`` with ``channel_axis=-1``).
          key: a JAX PRNG key; needed in training unless the rate is a concrete 0.
          inference: overrides the field for this call.
          drop_prob: overrides the field for this call; may be traced (e.g. ``schedule(step)``).

        Returns:
          An array of ``x``'s shape and dtype; ``x`` itself in inference or at a concrete rate of 0.

        Raises:
          ValueError, TypeError: for a bad argument (a batch for ``x`` included), naming it.
          RuntimeError: in training with no key, saying how to fix the call (as ``eqx.nn.Dropout``).
        """
        self._check_example(x)
        inference = self.inference if inference is None else inference
        if validation.check_flag(inference, "inference"):
            return x
        rate = self.drop_prob if drop_prob is None else _rate(drop_prob)
        if functional.concrete_drop_prob(rate) == 0.0:
            return x
        if key is None:
            raise RuntimeError(_NO_KEY)
        # The rate is worked out inside the program whether it is concrete or traced, so one key
        # gives the same mask eagerly and under eqx.filter_jit.
        return functional.layer_dropblock(
            x,
            key,
            rate,
            self.block_size,
            channel_axis=1 if self.channel_axis == 0 else -1,
            spatial_dims=self.spatial_dims,
            **DropBlockOptions.from_attributes(self).kwargs(),  # no share_batch here: its default
        )

    def _check_example(self, x: jax.Array) -> None:
        """One unbatched example, never a batch: Equinox layers are mapped over the batch."""
        shape = tuple(np.shape(x))
        if len(shape) != self.spatial_dims + 1:
            raise ValueError(
                f"x must be one unbatched example {_LAYOUTS[self.channel_axis]} of {self.spatial_dims + 1} "
                f"dimensions for spatial_dims={self.spatial_dims}, got x.ndim={len(shape)} with shape {shape}. "
                "Equinox layers take one example: map the model over a batch with jax.vmap, one key per "
                "example (jax.random.split(key, batch_size))."
            )
