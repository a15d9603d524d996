"""DropBlock as a Flax Linen module that behaves like ``linen.Dropout``.

DropBlock (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) drops contiguous blocks of a feature map.
Like ``linen.Dropout``: dataclass fields, ``deterministic`` merged from the field and the call
(``nn.merge_param``), keys from ``self.make_rng(rng_collection)`` unless ``rng=`` is given.
Linen modules hold no mutable state by default, so a schedule reads the step passed as
``step=``, typically the optimizer's step count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from dropblock_common import validation
from dropblock_jax import functional


class DropBlock(nn.Module):
    """DropBlock layer: drops random blocks in training, the identity when deterministic.

    Attributes:
      drop_prob: the fraction of units to drop, in [0, 1], or a schedule ``step -> drop_prob``.
      block_size: an int or one int per spatial dimension.
      channel_axis, seed_region, calibrate, share_channels, share_batch, normalize, noise:
        as in ``dropblock_jax.dropblock``.
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
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self) -> None:
        validation.check_module_options(self.block_size, self.seed_region, self.normalize, self.channel_axis)
        validation.rate_or_schedule(self.drop_prob)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
        step: jax.typing.ArrayLike | None = None,
    ) -> jax.Array:
        """Apply DropBlock to ``x`` unless deterministic.

        Args:
          x: ``(N, *spatial, C)`` (or ``(N, C, *spatial)`` with ``channel_axis=1``).
          deterministic: merged with the field of the same name (one of them must be set).
          rng: a key to use instead of ``self.make_rng(self.rng_collection)``.
          step: the training step a schedule reads; required when ``drop_prob`` is a schedule.

        Returns:
          An array of ``x``'s shape and dtype.

        Raises:
          ValueError: when ``drop_prob`` is a schedule and ``step`` is missing.
        """
        if nn.merge_param("deterministic", self.deterministic, deterministic):
            return x
        if callable(self.drop_prob):
            if step is None:
                raise ValueError(
                    "DropBlock was built with a schedule, so its call needs step=..., e.g. "
                    "layer(x, deterministic=False, step=state.step)."
                )
            rate = self.drop_prob(step)
        else:
            rate = self.drop_prob
        if functional.concrete_zero(rate):
            return x
        key = self.make_rng(self.rng_collection) if rng is None else rng
        fields = ("channel_axis", "seed_region", "calibrate", "share_channels", "share_batch", "normalize", "noise")
        return functional.dropblock(x, key, rate, self.block_size, **{name: getattr(self, name) for name in fields})
