"""Label-smoothed cross-entropy with fairseq's exact smoothing, plus per-direction sums."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PAD = 0


@dataclass
class LossOutput:
    loss: Tensor  # label-smoothed loss, summed over counted target tokens
    nll: Tensor  # negative log-likelihood, summed (detached)
    ntokens: int  # target tokens that count (not padding, not the forced tag)
    nll_per_direction: Tensor  # [n_directions] summed nll (detached)
    tokens_per_direction: Tensor  # [n_directions]


def label_smoothed_nll(
    logits: Tensor, target: Tensor, epsilon: float, direction: Tensor | None = None, n_directions: int = 0
) -> LossOutput:
    """``(1 - ε - ε_i)·nll + ε_i·Σ_v(-log p_v)`` with ``ε_i = ε/(V-1)`` — the gold class gets
    ``1-ε`` and every other class ``ε/(V-1)`` (fairseq's ``label_smoothed_nll_loss``).

    ``logits`` ``[B, T, V]``, ``target`` ``[B, T]`` with ``PAD`` where nothing is predicted.
    Log-probabilities are computed in fp32 whatever the logits' dtype.
    """
    vocab = logits.shape[-1]
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    keep = target.ne(PAD)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -lprobs.sum(-1)
    nll = nll.masked_fill(~keep, 0.0)
    smooth = smooth.masked_fill(~keep, 0.0)
    eps_i = epsilon / (vocab - 1) if vocab > 1 else 0.0
    loss = (1.0 - epsilon - eps_i) * nll.sum() + eps_i * smooth.sum()
    if direction is not None and n_directions > 0:
        per_sent_nll = nll.detach().sum(1)
        per_sent_tok = keep.sum(1).to(per_sent_nll.dtype)
        nll_dir = torch.zeros(n_directions, dtype=per_sent_nll.dtype, device=nll.device).index_add_(0, direction, per_sent_nll)
        tok_dir = torch.zeros(n_directions, dtype=per_sent_nll.dtype, device=nll.device).index_add_(0, direction, per_sent_tok)
    else:
        nll_dir = tok_dir = torch.zeros(0)
    return LossOutput(loss, nll.detach().sum(), int(keep.sum()), nll_dir, tok_dir)
