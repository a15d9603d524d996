"""Which device both frameworks run on: ``auto`` (a GPU when both see one), ``cpu`` or ``gpu``."""

from __future__ import annotations

import dataclasses

import jax
import torch


@dataclasses.dataclass(frozen=True)
class Devices:
    """The same kind of device in both frameworks."""

    kind: str
    jax_device: jax.Device
    torch_device: torch.device

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.torch_device) if self.kind == "gpu" else "CPU"
        return f"{self.kind} ({name}; jax {jax.__version__} on {self.jax_device.platform}, torch {torch.__version__})"


def _jax_gpus() -> list[jax.Device]:
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


def resolve(kind: str = "auto") -> Devices:
    """The devices for ``kind``.

    Raises:
      ValueError: for an unknown kind, or ``gpu`` when either framework sees none.
    """
    if kind not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got device={kind!r}.")
    gpus = _jax_gpus()
    both = bool(gpus) and torch.cuda.is_available()
    if kind == "gpu" and not both:
        raise ValueError(
            f"device='gpu' needs a GPU in both frameworks; jax sees {len(gpus)}, "
            f"torch.cuda.is_available() is {torch.cuda.is_available()}."
        )
    if kind == "gpu" or (kind == "auto" and both):
        return Devices("gpu", gpus[0], torch.device("cuda", 0))
    return Devices("cpu", jax.devices("cpu")[0], torch.device("cpu"))
