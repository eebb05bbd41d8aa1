"""Multi-head attention with fused projections and an incremental-decoding cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.device import cpu_has_bf16
from nmt.models.dropout import dropout
from nmt.models.kv_cache import LayerKV


def auto_impl(q: Tensor) -> str:
    """``math`` for bf16 on a CPU with bf16 units, else ``sdpa``. Measured with torch 2.13 (fwd +
    bwd of [64, 8, 64, 64] heads, ms): AMD EPYC with AVX512-BF16: fp32 sdpa 30 / math 34-39, bf16
    sdpa 54-56 / math 12.5-13; on an AVX2-only CPU bf16 batched matmuls are emulated and ~20x
    slower than sdpa's bf16 kernel. On GPUs sdpa's fused kernels win."""
    return "math" if q.dtype == torch.bfloat16 and q.device.type == "cpu" and cpu_has_bf16() else "sdpa"


class MultiheadAttention(nn.Module):
    """Self- or cross-attention.

    ``impl="math"`` runs two batched matmuls with a softmax between; ``impl="sdpa"`` calls
    PyTorch's scaled_dot_product_attention; ``impl="auto"`` picks per call (:func:`auto_impl`).
    ``mask`` is additive (0 / -inf), broadcastable to ``[B, H, Tq, Tk]``.
    """

    def __init__(self, d_model: int, heads: int, dropout: float, cross: bool, impl: str = "auto"):
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.cross = cross
        self.dropout = dropout
        self.impl = impl
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, H, T, Dh]
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the encoder output (cached once per sentence in decoding)."""
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        cache: LayerKV | None = None,
    ) -> Tensor:
        """``cache`` (incremental decoding): self-attention appends the new positions' keys and
        values to it and attends over all of them; cross-attention projects ``memory`` on the
        first call and reads the cached keys/values after."""
        if self.cross:
            q = self._split(self.q_proj(x))
            if cache is not None and cache.cross_kv is not None:
                k, v = cache.cross_kv
            else:
                assert memory is not None, "cross-attention needs the encoder output on its first call"
                k, v = self.project_kv(memory)
                if cache is not None:
                    cache.cross_kv = (k, v)
        else:
            q, k, v = (self._split(t) for t in self.qkv_proj(x).chunk(3, dim=-1))
            if cache is not None:
                k, v = cache.append_self(k, v)
        p = self.dropout if self.training else 0.0
        if (self.impl if self.impl != "auto" else auto_impl(q)) == "sdpa":
            if mask is not None and mask.dtype != q.dtype:
                mask = mask.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
            if mask is not None:
                scores = scores + mask.to(scores.dtype)
            attn = dropout(torch.softmax(scores, dim=-1), p, p > 0)  # the cheaper CPU mask (nmt/models/dropout.py)
            out = torch.matmul(attn, v)
        b, h, t, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * dh))
