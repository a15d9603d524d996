"""DropBlock for PyTorch: the twin of ``dropblock_jax`` with identical semantics, channels at dim 1.

``drop_block`` is the whole operation; ``sample_seeds`` and ``apply_seeds`` its random and
deterministic halves; ``DropBlock1d``/``2d``/``3d`` the layers; ``LinearScheduler`` the old
``dropblock`` package's ramp; ``dropblock_torch.compat`` a drop-in for ``dropblock`` 0.3.0.
"""

import importlib.metadata

from dropblock_common.rates import expected_drop_fraction, seed_rate
from dropblock_torch.functional import apply_seeds, drop_block, sample_seeds
from dropblock_torch.modules import DropBlock1d, DropBlock2d, DropBlock3d, LinearScheduler, set_step
from dropblock_torch.resnets import add_dropblock

__all__ = [
    "DropBlock1d",
    "DropBlock2d",
    "DropBlock3d",
    "LinearScheduler",
    "add_dropblock",
    "apply_seeds",
    "drop_block",
    "expected_drop_fraction",
    "sample_seeds",
    "seed_rate",
    "set_step",
]
__version__ = importlib.metadata.version("dropblock-jax")
