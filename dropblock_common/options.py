"""DropBlock's behavioural options as one frozen, validated record.

The same six options (``seed_region``, ``calibrate``, ``share_channels``, ``share_batch``,
``normalize``, ``noise``) are taken by both functionals and by every layer; a layer keeps
them, validated once, and hands them on to its functional with ``kwargs()``. Options about
the input rather than the algorithm (``channel_axis``, ``spatial_dims``, torch's
``inplace``) are not part of the record.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dropblock_common import validation


@dataclasses.dataclass(frozen=True)
class DropBlockOptions:
    """The options of one DropBlock configuration, checked when the record is made.

    Hashable, so a record can be a static argument of a jitted function, and picklable.
    Booleans given as numpy bools are kept as Python bools.

    Attributes:
      seed_region: ``"valid"`` (every block inside the map) or ``"full"`` (seeds everywhere).
      calibrate: solve the seed rate so the expected dropped fraction is exactly ``drop_prob``.
      share_channels: one mask per sample, shared by its channels.
      share_batch: one mask shared by the whole batch.
      normalize: ``"batch"``, ``"sample"``, ``"expected"`` or ``"none"``.
      noise: dropped units get standard normal noise instead of zero, no rescale.

    Raises:
      ValueError: for an unknown ``seed_region`` or ``normalize``, naming it and its value.
      TypeError: for a flag that is not a bool, naming it and its value.

    Examples:
      >>> options = DropBlockOptions(seed_region="full", share_channels=True)
      >>> options.kwargs()["seed_region"], options.repr_fragment()
      ('full', "seed_region='full', share_channels=True")
      >>> DropBlockOptions(calibrate="yes")
      Traceback (most recent call last):
      ...
      TypeError: calibrate must be True or False, got calibrate='yes'.
    """

    seed_region: str = "valid"
    calibrate: bool = False
    share_channels: bool = False
    share_batch: bool = False
    normalize: str = "batch"
    noise: bool = False

    def __post_init__(self) -> None:
        flags = {name: getattr(self, name) for name in _FLAGS}
        validation.check_options(self.seed_region, self.normalize, **flags)
        for name, value in flags.items():
            object.__setattr__(self, name, bool(value))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in the order of the record (and of the functionals' signatures).

        Examples:
          >>> DropBlockOptions.names()
          ('seed_region', 'calibrate', 'share_channels', 'share_batch', 'normalize', 'noise')
        """
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_attributes(cls, holder: object) -> DropBlockOptions:
        """The options that ``holder`` (a layer) keeps as attributes of the same names, validated.

        An option ``holder`` does not have takes its default (the Equinox layer has no
        ``share_batch``).

        Args:
          holder: any object, e.g. a layer built with these options.

        Returns:
          A ``DropBlockOptions``.

        Raises:
          ValueError, TypeError: for an attribute that is not a valid option, naming it.

        Examples:
          >>> import types
          >>> DropBlockOptions.from_attributes(types.SimpleNamespace(noise=True, normalize="none")).repr_fragment()
          "normalize='none', noise=True"
        """
        return cls(**{name: getattr(holder, name) for name in cls.names() if hasattr(holder, name)})

    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of ``dropblock_jax.dropblock`` or ``dropblock_torch.drop_block``.

        Examples:
          >>> DropBlockOptions(noise=True).kwargs()  # doctest: +NORMALIZE_WHITESPACE
          {'seed_region': 'valid', 'calibrate': False, 'share_channels': False, 'share_batch': False,
           'normalize': 'batch', 'noise': True}
        """
        return {name: getattr(self, name) for name in self.names()}

    def repr_fragment(self, *, defaults: bool = False) -> str:
        """``name=value`` pairs for a layer's repr: the options that differ from the defaults, or all of them.

        Args:
          defaults: include the options at their default values too.

        Returns:
          A string such as ``"calibrate=True, normalize='sample'"``; empty when every option
          is at its default and ``defaults`` is False.

        Examples:
          >>> DropBlockOptions(calibrate=True, normalize="sample").repr_fragment()
          "calibrate=True, normalize='sample'"
          >>> DropBlockOptions().repr_fragment()
          ''
        """
        shown = {name: value for name, value in self.kwargs().items() if defaults or value != getattr(_DEFAULTS, name)}
        return ", ".join(f"{name}={value!r}" for name, value in shown.items())


_FLAGS = ("calibrate", "share_channels", "share_batch", "noise")
_DEFAULTS = DropBlockOptions()
