"""The framework-free specification of DropBlock shared by ``dropblock_jax`` and ``dropblock_torch``.

Argument validation, seed-grid geometry, the seed rate gamma and the expected dropped
fraction live here, once; the twins only translate them into their frameworks. Pure Python
and numpy.
"""

import importlib.metadata

from dropblock_common.coverage import coverage_counts, coverage_histogram, seed_grid_shape
from dropblock_common.rates import expected_drop_fraction, seed_rate
from dropblock_common.validation import NORMALIZE_MODES, SEED_REGIONS

__all__ = [
    "NORMALIZE_MODES",
    "SEED_REGIONS",
    "coverage_counts",
    "coverage_histogram",
    "expected_drop_fraction",
    "seed_grid_shape",
    "seed_rate",
]
__version__ = importlib.metadata.version("dropblock-jax")
