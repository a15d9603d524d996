"""``pytest parity_tests``: the parity checks with fewer draws, on ``PARITY_DEVICE`` (default auto)."""

import os

import pytest

# Both frameworks share a GPU: JAX allocates what it uses instead of 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from parity_tests import devices  # noqa: E402  (imports jax, which reads the setting above)


@pytest.fixture(scope="session")
def parity_devices():
    return devices.resolve(os.environ.get("PARITY_DEVICE", "auto"))
