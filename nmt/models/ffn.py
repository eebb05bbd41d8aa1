"""The feed-forward slot of every layer, and the per-batch context that slot modules may read.

Every encoder/decoder layer calls ``ffn(x, ctx)``. The dense FFN ignores ``ctx``; MoE, CMR and
adapter modules read language ids and padding from it and add auxiliary losses and statistics
to ``ctx.aux``, which the model returns beside the logits. The trainer adds every entry of
``aux`` whose key starts with ``loss/`` to the loss and logs the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from nmt.models.dropout import dropout


@dataclass
class BatchContext:
    src_lang: Tensor | None = None  # [B] Flores index
    tgt_lang: Tensor | None = None  # [B] Flores index
    pad_mask: Tensor | None = None  # [B, T] True at padding, for the side being computed
    side: str = "encoder"  # encoder | decoder
    layer: int = 0
    aux: dict[str, Tensor] = field(default_factory=dict)
    generated: dict | None = None  # hyper-adapter parameters per layer id, for this batch
    aux_loss_scale: float = 1.0  # d(objective)/d(aux loss): the number of target tokens in training


class DenseFFN(nn.Module):
    """``W2 · dropout(act(W1 · x))`` — the Transformer's position-wise feed-forward block."""

    def __init__(self, d_model: int, ffn_dim: int, activation: str = "relu", activation_dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.act = F.relu if activation == "relu" else F.gelu
        self.activation_dropout = activation_dropout

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        h = self.act(self.fc1(x))
        if self.activation_dropout > 0:
            h = dropout(h, self.activation_dropout, self.training)
        return self.fc2(h)
