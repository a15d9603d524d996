"""Each twin imports only its own framework."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("dropblock_common", ("jax", "torch", "flax")),
        ("dropblock_jax", ("torch",)),
        ("dropblock_torch", ("jax", "flax")),
    ],
)
def test_package_does_not_import_the_other_framework(package, forbidden):
    code = f"import sys, {package}; print(' '.join(m for m in {forbidden!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{package} imported {result.stdout.strip()}"
