"""DropBlock as a Flax NNX module that behaves like ``nnx.Dropout``.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) drops contiguous blocks of a feature map.
The module has Dropout's vocabulary: a ``deterministic`` attribute (so ``model.train()``,
``model.eval()`` and ``nnx.view`` reach it), an ``rng_collection="dropout"`` stream, and
``rngs`` at construction or at call time. Built with a schedule (``step -> drop_prob``), it
keeps its step as state and advances it once per training call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.module import first_from

from dropblock_common import validation
from dropblock_jax import functional

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


class DropBlock(nnx.Module):
    """DropBlock layer: drops random blocks in training, the identity in eval mode.

    Args:
      drop_prob: the fraction of units to drop, in [0, 1], or a schedule ``step -> drop_prob``
        (``dropblock_jax.schedules``, or any optax schedule).
      block_size: an int or one int per spatial dimension.
      channel_axis, seed_region, calibrate, share_channels, share_batch, normalize, noise:
        as in ``dropblock_jax.dropblock``.
      deterministic: if True, the layer is the identity (eval mode).
      rng_collection: the ``nnx.Rngs`` stream the masks are drawn from.
      rngs: an ``nnx.Rngs`` or ``RngStream`` (forked, as ``nnx.Dropout`` does), or None if
        keys are passed at call time.

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
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: rnglib.Rngs | rnglib.RngStream | None = None,
    ):
        validation.check_module_options(block_size, seed_region, normalize, channel_axis)
        self.drop_prob = validation.rate_or_schedule(drop_prob)
        self.block_size = block_size
        self.options = dict(
            channel_axis=channel_axis,
            seed_region=seed_region,
            calibrate=calibrate,
            share_channels=share_channels,
            share_batch=share_batch,
            normalize=normalize,
            noise=noise,
        )
        self.step = ScheduleStep(jnp.zeros((), jnp.int32)) if callable(drop_prob) else None
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if isinstance(rngs, rnglib.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, rnglib.RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = nnx.data(None)
        else:
            raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or None, got {type(rngs).__name__}.")

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: rnglib.Rngs | rnglib.RngStream | jax.Array | None = None,
        drop_prob: jax.typing.ArrayLike | None = None,
    ) -> jax.Array:
        """Apply DropBlock to ``x`` in training mode, return ``x`` in eval mode.

        Args:
          x: ``(N, *spatial, C)`` (or ``(N, C, *spatial)`` with ``channel_axis=1``).
          deterministic: overrides the module's ``deterministic`` for this call.
          rngs: an ``nnx.Rngs``, an ``RngStream`` or a key; overrides the module's.
          drop_prob: overrides the stored rate or schedule for this call (may be traced).

        Returns:
          An array of ``x``'s shape and dtype.
        """
        if first_from(deterministic, self.deterministic, error_msg=_NO_DETERMINISTIC):
            return x
        rate = self._rate() if drop_prob is None else drop_prob
        if self.step is not None:
            self.step[...] = self.step[...] + 1
        if functional.concrete_zero(rate):
            return x
        return functional.dropblock(x, self._key(rngs), rate, self.block_size, **self.options)

    def _rate(self) -> jax.typing.ArrayLike:
        return self.drop_prob(self.step[...]) if self.step is not None else self.drop_prob

    def _key(self, rngs: rnglib.Rngs | rnglib.RngStream | jax.Array | None) -> jax.Array:
        rngs = first_from(rngs, self.rngs, error_msg=_NO_RNG)
        if isinstance(rngs, rnglib.Rngs):
            return rngs[self.rng_collection]()
        if isinstance(rngs, rnglib.RngStream):
            return rngs()
        return rngs

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view``: ``deterministic=True`` is eval mode.

        Args:
          deterministic: if True, the layer is the identity.
        """
        if deterministic is not None:
            self.deterministic = deterministic
