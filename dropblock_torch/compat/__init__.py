"""Drop-in replacements for other DropBlock implementations: change one import.

- ``dropblock_torch.compat`` itself: the ``dropblock`` 0.3.0 package (``DropBlock2D``,
  ``DropBlock3D``, ``LinearScheduler``; the code lives in ``compat.dropblock``).
- ``dropblock_torch.compat.timm``: timm 1.0.x's ``drop_block_2d`` and ``DropBlock2d``.
- ``dropblock_torch.compat.torchvision``: ``torchvision.ops``' ``drop_block2d``,
  ``drop_block3d``, ``DropBlock2d`` and ``DropBlock3d``.

Each keeps its peer's API and semantics (on the CPU, under the same ``torch.manual_seed``, the
same bits in float32 and float64) and fixes what the peer gets wrong, as its docstring lists.
None of them imports its peer.
"""

# The submodules are attributes (``compat.timm.DropBlock2d``) but not in ``__all__``: a star
# import must not shadow the real timm or torchvision.
from dropblock_torch.compat import timm as timm
from dropblock_torch.compat import torchvision as torchvision
from dropblock_torch.compat.dropblock import DropBlock2D, DropBlock3D, LinearScheduler

__all__ = ["DropBlock2D", "DropBlock3D", "LinearScheduler"]
