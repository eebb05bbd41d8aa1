"""Label-smoothed cross-entropy with fairseq's exact smoothing, plus per-direction sums."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from nmt.data.parallel import Batch

PAD = 0


@dataclass
class LossOutput:
    loss: Tensor  # label-smoothed loss, summed over counted target tokens
    nll: Tensor  # negative log-likelihood, summed (detached)
    ntokens: int  # target tokens that count (not padding, not the forced tag)
    nll_per_direction: Tensor  # [n_directions] summed nll (detached)
    tokens_per_direction: Tensor  # [n_directions]


ROWS_PER_CHUNK = 256  # logits rows per fp32 chunk (256 × 32k vocabulary = 32 MiB, not the whole [N, V])


class _SmoothedLoss(torch.autograd.Function):
    """``loss = a·Σ nll + b·Σ smooth`` over tokens, with per-token ``nll = -log p_gold`` and
    ``smooth = Σ_v(-log p_v)`` (0 at ``PAD``), from fp32 log-probabilities of one row chunk at a time.

    When the logits need a gradient it is formed in the same pass, while the chunk is in cache:
    ``∂loss/∂z = p·(a + V·b) - b - a·onehot(gold)`` (``p = softmax(z)``), stored in the logits'
    dtype (under bf16 autocast half the bytes of the ``[N, V]`` fp32 log-probabilities that a
    separate backward would keep) and scaled by the incoming gradient in backward, in place: a
    second backward through the same graph raises an error. ``present`` (or None): the columns
    that are classes; the others are -inf logits and get no gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, present: Tensor | None, a: float, b: float
                ) -> tuple[Tensor, Tensor]:
        n, vocab = logits.shape
        classes = vocab if present is None else int(present.sum())
        pad = target.eq(PAD)
        nll_smooth = torch.empty(2, n, dtype=torch.float32, device=logits.device)
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        with torch.autocast(logits.device.type, enabled=False):  # fp32 by construction, also inside autocast
            for i in range(0, n, ROWS_PER_CHUNK):
                rows = slice(i, i + ROWS_PER_CHUNK)
                lp = _chunk_nll_smooth(logits[rows], target[rows], present, nll_smooth[:, rows], grad, rows)
                if grad is not None:
                    _chunk_grad(lp, target[rows], present, (a, b, classes), grad[rows])
        if grad is not None and bool(pad.any()):
            grad[pad] = 0.0
        nll, smooth = nll_smooth.masked_fill_(pad, 0.0)
        ctx.grad = grad
        ctx.mark_non_differentiable(nll)
        return a * nll.sum() + b * smooth.sum(), nll

    @staticmethod
    def backward(ctx, g_loss: Tensor, _g_nll: Tensor | None) -> tuple[Tensor, None, None, None, None]:
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("the label-smoothed loss's gradient was already used: backward runs once per forward")
        ctx.grad = None
        if bool(g_loss != 1.0):
            grad.mul_(g_loss.to(grad.dtype))
        return grad, None, None, None, None


def _chunk_nll_smooth(z: Tensor, target: Tensor, present: Tensor | None, out: Tensor, grad: Tensor | None,
                      rows: slice) -> Tensor:
    """``out`` = (nll, smooth) of the rows ``z``; returns their fp32 log-probabilities, written
    straight into ``grad[rows]`` when the gradient is fp32 (it becomes the gradient there)."""
    if grad is not None and grad.dtype == torch.float32:
        lp = torch.log_softmax(z, -1, dtype=torch.float32, out=grad[rows])
    else:
        lp = torch.log_softmax(z, -1, dtype=torch.float32)
    torch.neg(lp.gather(-1, target[:, None]).squeeze(-1), out=out[0])
    torch.neg((lp if present is None else lp[:, present]).sum(-1), out=out[1])
    return lp


def _chunk_grad(lp: Tensor, target: Tensor, present: Tensor | None, coef: tuple[float, float, int], out: Tensor
                ) -> None:
    """``out = p·(a + V·b) - b - a·onehot(gold)`` from a chunk's log-probabilities ``lp`` (overwritten);
    ``coef = (a, b, V)``."""
    a, b, classes = coef
    p = lp.exp_().mul_(a + classes * b).sub_(b)
    p.scatter_add_(-1, target[:, None], torch.full((len(target), 1), -a, dtype=p.dtype, device=p.device))
    if present is not None:  # constant -inf logits: no gradient
        p[:, ~present] = 0.0
    if p.data_ptr() != out.data_ptr():
        out.copy_(p)


def _present_classes(logits: Tensor) -> Tensor | None:
    """None, or the columns that are classes when some logits are -inf in every row: the rows an
    imported model's origin lacked (``model.absent_ids``, set by ``Transformer.decode``). They are
    no class, so smoothing spreads ``ε`` over the others (what fine-tuning the original would do)."""
    if logits.shape[0] == 0:
        return None
    absent = torch.isneginf(logits[0])
    return ~absent if bool(absent.any()) else None


def label_smoothed_nll(
    logits: Tensor, target: Tensor, epsilon: float, direction: Tensor | None = None, n_directions: int = 0
) -> LossOutput:
    """``(1 - ε - ε_i)·nll + ε_i·Σ_v(-log p_v)`` with ``ε_i = ε/(V-1)`` — the gold class gets
    ``1-ε`` and every other class ``ε/(V-1)`` (fairseq's ``label_smoothed_nll_loss``); ``V``
    excludes columns that are -inf (in the first row; an import's absent rows, :func:`_present_classes`).

    ``logits`` ``[..., V]`` and ``target`` ``[...]`` (``PAD`` where nothing is predicted); the
    trainer passes only the counted positions, flattened. ``direction`` has ``target``'s shape.
    Log-probabilities are computed in fp32 whatever the logits' dtype.
    """
    vocab = logits.shape[-1]
    logits = logits.reshape(-1, vocab)
    target = target.reshape(-1)
    keep = target.ne(PAD)
    present = _present_classes(logits)
    if present is not None:
        vocab = int(present.sum())
    eps_i = epsilon / (vocab - 1) if vocab > 1 else 0.0
    loss, nll = _SmoothedLoss.apply(logits, target, present, 1.0 - epsilon - eps_i, eps_i)
    if direction is not None and n_directions > 0:
        d = direction.reshape(-1)
        nll_dir = torch.zeros(n_directions, device=nll.device).index_add_(0, d, nll)
        tok_dir = torch.zeros(n_directions, device=nll.device).index_add_(0, d, keep.float())
    else:
        nll_dir = tok_dir = torch.zeros(0)
    return LossOutput(loss, nll.sum(), int(keep.sum()), nll_dir, tok_dir)


def with_target_tag(batch: Batch) -> Batch:
    """``batch`` with the forced target-language tag counted in the loss (``trainer.loss_include_tag``).

    fairseq counts the tag unless ``--ignore-prefix-size 1``; this framework does not by default
    (``collate`` leaves target position 0 as pad). Here position 0 becomes the tag that
    ``prev_output_tokens[:, 1]`` feeds (predicted from ``</s>``), and ``n_tgt_tokens`` counts it,
    so the summed loss gains exactly each sentence's tag-position token loss.
    """
    target = batch.target.clone()
    target[:, 0] = batch.prev_output_tokens[:, 1]
    return replace(batch, target=target, n_tgt_tokens=batch.n_tgt_tokens + len(batch))
