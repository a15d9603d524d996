"""One row of the parity report: what was compared, the values in each framework, the verdict."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check:
    """A comparison between the twins (and the analytic value, where there is one).

    Keyword-only: a row has nine fields, and a positional one in the wrong place would still build.

    Attributes:
      kind: ``"exact"`` or ``"statistical"``.
      config: the configuration, e.g. ``"2D 28x28 k=7 p=0.1 valid normalize=expected"``.
      statistic: what ``jax``, ``torch`` and ``analytic`` hold, and what ``test_statistic`` measures,
        e.g. ``"mean dropped fraction (z vs analytic)"``.
      jax, torch: the value of the statistic in each framework; None where the row compares the
        twins with each other and has no value of its own (an ulp distance).
      analytic: the value ``dropblock_common`` (or ``numpy``) predicts, or None.
      test_statistic: the number the verdict is based on (a z-score, a p-value, ulps, a count).
      bound: the bound ``test_statistic`` must respect, as text (``"|z| < 4.37"``).
      passed: the verdict.

    Examples:
      >>> row = Check(kind="exact", config="1D", statistic="output (ulps)", test_statistic=0, bound="<= 1", passed=True)
      >>> row.as_dict()["jax"] is None
      True
    """

    kind: str
    config: str
    statistic: str
    jax: Any = None
    torch: Any = None
    analytic: Any = None
    test_statistic: Any
    bound: str
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-friendly Python values (numpy scalars become numbers)."""
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy scalars to Python numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value
