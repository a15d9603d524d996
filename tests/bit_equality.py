"""Bit-for-bit comparison of tensors: signed zeros and NaN payloads count, unlike ``torch.equal``."""

import torch

_SAME_WIDTH_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` have one dtype and shape and every element has the same bits.

    Examples:
      >>> same_bits(torch.tensor([0.0, float("nan")]), torch.tensor([0.0, float("nan")]))
      True
      >>> same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
      False
    """
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    integer = _SAME_WIDTH_INT[a.dtype.itemsize]
    return torch.equal(a.contiguous().view(integer), b.contiguous().view(integer))
