"""Each twin imports only its own framework, and each layer module only its own library."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("dropblock_common", ("jax", "torch", "flax", "equinox", "optax")),
        ("dropblock_jax", ("torch", "flax", "equinox", "optax")),
        ("dropblock_jax.schedules", ("torch", "flax", "equinox", "optax")),
        ("dropblock_jax.nnx", ("torch", "equinox")),
        ("dropblock_jax.linen", ("torch", "equinox")),
        ("dropblock_jax.equinox", ("torch", "flax")),
        ("dropblock_torch", ("jax", "flax")),
        # The drop-ins reimplement their peers; importing one must not need (or load) the peer.
        ("dropblock_torch.compat", ("jax", "flax", "timm", "torchvision", "dropblock")),
    ],
)
def test_package_does_not_import_the_other_framework(package, forbidden):
    code = f"import sys, {package}; print(' '.join(m for m in {forbidden!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{package} imported {result.stdout.strip()}"
