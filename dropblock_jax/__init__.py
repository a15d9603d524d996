"""DropBlock for JAX and Flax: structured dropout as pure functions with explicit keys.

``dropblock`` is the whole operation; ``sample_seeds`` and ``apply_seeds`` are its random and
deterministic halves; ``seed_rate`` and ``expected_drop_fraction`` are the analytic values
from ``dropblock_common``, for a concrete rate. Flax modules live in ``dropblock_jax.nnx`` and
``dropblock_jax.linen``, the Equinox module in ``dropblock_jax.equinox``, optax-style
schedules in ``dropblock_jax.schedules``.
"""

import importlib.metadata

from dropblock_jax.functional import apply_seeds, dropblock, expected_drop_fraction, sample_seeds, seed_rate

__all__ = ["apply_seeds", "dropblock", "expected_drop_fraction", "sample_seeds", "seed_rate"]
__version__ = importlib.metadata.version("dropblock-jax")
