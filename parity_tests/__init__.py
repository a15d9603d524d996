"""Cross-framework parity suite: dropblock_jax and dropblock_torch implement one DropBlock.

Exact parity (``exact.py``): the same seeds through both ``apply_seeds`` give the same mask,
output and gradient. Statistical parity (``statistical.py``): each framework's own generator,
fixed seeds, many draws, compared with the analytic values of ``dropblock_common`` and with
each other, Bonferroni-corrected over the tests actually run, so that the whole suite's
false-alarm rate is at most ``statistical.SUITE_FALSE_ALARM``. ``python -m parity_tests``
runs both and writes a report; ``pytest parity_tests`` runs the same checks with fewer draws.
"""

import importlib.metadata

__version__ = importlib.metadata.version("dropblock-jax")
