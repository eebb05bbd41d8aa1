"""Inverted dropout with a cheaper mask on CPU.

On CPU ``F.dropout`` draws its keep mask with ``bernoulli_``, one 32-bit Mersenne-Twister draw and a
float comparison per element: 103 ms for a 4096 × 2048 tensor, five times the multiply it masks
(AVX2 CPU, 2 threads). Here each element takes 16 random bits instead: ``random_`` fills 64-bit
words over their full range, viewed as four int16 each, and an element is kept when its int16 is
at least ``-2¹⁵ + round(p · 2¹⁶)``. The mask costs 12 ms, the whole dropout 47 ms.

Semantics: an element is dropped with probability ``round(p · 2¹⁶) / 2¹⁶`` (|Δp| ≤ 7.7·10⁻⁶; for
p = 0.1, 0.1000061) and the kept ones are scaled by ``1 / (1 − p)``, as in ``F.dropout``. Draws
come from torch's default generator, so ``torch.manual_seed`` and a restored RNG state reproduce
them. Other devices use ``F.dropout`` (CUDA's fused kernel is already cheap).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_LEVELS = 2**16


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """A bool mask of ``shape``: True with probability ``1 − round(p·2¹⁶)/2¹⁶``, elements independent."""
    n = shape.numel()
    words = torch.empty(((n + 3) // 4,), dtype=torch.int64, device=device).random_(-(2**63), None)
    threshold = -(_LEVELS // 2) + round(p * _LEVELS)
    return words.view(torch.int16)[:n].view(shape) >= threshold


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        mask = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / (1.0 - p)
        return x.mul(mask).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad.mul(mask).mul_(ctx.scale), None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(x, p, training)``, with the cheaper mask on CPU (module docstring)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p=p, training=True)
    return _Dropout.apply(x, p)
