"""Drop-in replacements for other DropBlock implementations: change one import.

``dropblock_torch.compat`` itself is the ``dropblock`` 0.3.0 package (``DropBlock2D``,
``DropBlock3D``, ``LinearScheduler``; the code lives in ``compat.dropblock``).
"""

from dropblock_torch.compat.dropblock import DropBlock2D, DropBlock3D, LinearScheduler

__all__ = ["DropBlock2D", "DropBlock3D", "LinearScheduler"]
