"""``pytest parity_tests``: the parity checks with fewer draws, on ``PARITY_DEVICE`` (default auto)."""

import os

import pytest

from parity_tests import devices


@pytest.fixture(scope="session")
def parity_devices():
    return devices.resolve(os.environ.get("PARITY_DEVICE", "auto"))
