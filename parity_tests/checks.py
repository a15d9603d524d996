"""One row of the parity report: what was compared, the values in each framework, the verdict."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Check:
    """A comparison between the twins (and the analytic value, where there is one).

    Attributes:
      kind: ``"exact"`` or ``"statistical"``.
      config: the configuration, e.g. ``"2D 28x28 k7 p=0.1 valid"``.
      statistic: what is compared, e.g. ``"mean dropped fraction"``.
      jax, torch: the value measured in each framework.
      analytic: the value ``dropblock_common`` predicts, or None.
      test_statistic: the number the verdict is based on (a z-score, a p-value, ulps).
      bound: the bound ``test_statistic`` must respect, as text (``"|z| < 4.37"``).
      passed: the verdict.
    """

    kind: str
    config: str
    statistic: str
    jax: Any
    torch: Any
    analytic: Any
    test_statistic: Any
    bound: str
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy scalars to Python numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value
