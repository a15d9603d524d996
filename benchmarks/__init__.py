"""Benchmarks of both twins against baselines and peers: ``benchmarks.bench`` and ``benchmarks.training_step``."""

import os

# On a GPU, JAX takes 75% of the memory at its first use unless told otherwise; the benchmarks
# run torch on the same device, so JAX allocates what it uses. Set before any module imports jax.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
