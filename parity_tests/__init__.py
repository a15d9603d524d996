"""Cross-framework parity suite: dropblock_jax and dropblock_torch implement one DropBlock.

Exact parity (``exact.py``): the same seeds through both ``apply_seeds`` give the same mask,
output and gradient. Statistical parity (``statistical.py``): each framework's own generator,
fixed seeds, many draws, compared with the analytic values of ``dropblock_common`` and with
each other, Bonferroni-corrected over the tests actually run, so that the whole suite's
false-alarm rate is at most ``statistical.SUITE_FALSE_ALARM``. ``python -m parity_tests``
runs both and writes a report; ``pytest parity_tests`` runs the same checks with fewer draws.
"""

import importlib.metadata
import os

# Both frameworks share a GPU: JAX allocates what it uses instead of 75% of it at its first use.
# Set here, before any of the suite's modules imports jax (the command, the pytest conftest).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

__version__ = importlib.metadata.version("dropblock-jax")
