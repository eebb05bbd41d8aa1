"""Token dispatcher: ``dispatch()`` sends each kept token→expert assignment to its expert,
``combine()`` brings the expert outputs back and sums them per token, weighted by the gates.

Shape suffixes: T tokens, D model dim, N kept assignments (expert-major, from the router),
W expert-parallel ranks, E experts in all, L experts on this rank (E/W), R rows received for
this rank's experts (grouped by local expert).

Nothing builds GShard's one-hot ``[T, E, C]`` dispatch tensors: the router already sorted the
assignments by expert, so ``dispatch`` gathers their token rows (``index_select``), and
``combine`` scales the outputs by their gate and ``index_add``-s them to their tokens. With an
expert-parallel group the rows travel with ``all_to_all_single`` (per-expert counts exchanged
first); rows from W ranks arrive ordered (rank, expert) and are regrouped (expert, rank) so that
every local expert sees one contiguous slice, and ``combine`` undoes both steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with variable splits; backward sends the gradients back."""

    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


class _GatedSum(torch.autograd.Function):
    """``out_TD[t] = Σ gate_N · y_ND`` over the assignments of token t (``index_add_``), in the
    promotion of both dtypes. Autograd would keep the product ``gate · y`` for ``index_add_``'s
    backward (it saves its source, an ``[N, D]`` tensor per MoE layer, though the gradient needs
    only the index); this keeps ``y``, the gates and the index, and computes the same gradients
    with the same ops (mul, then the row sum for the gates). Forward and backward run over
    ``CHUNK`` assignments at a time, so their ``[N, D]`` products in the promoted dtype are never
    whole (same values: every row's ops and the order of additions per token are unchanged)."""

    CHUNK = 1024

    @staticmethod
    def forward(ctx, y_ND: Tensor, gate_N: Tensor, token_N: Tensor, tokens: int) -> Tensor:
        dtype = torch.promote_types(y_ND.dtype, gate_N.dtype)
        ctx.save_for_backward(y_ND, gate_N, token_N)
        out_TD = torch.zeros((tokens, y_ND.shape[1]), dtype=dtype, device=y_ND.device)
        for c in _chunks(token_N.shape[0], _GatedSum.CHUNK):
            out_TD.index_add_(0, token_N[c], y_ND[c] * gate_N[c, None].to(dtype))
        return out_TD

    @staticmethod
    def backward(ctx, grad_TD: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        y_ND, gate_N, token_N = ctx.saved_tensors
        want_y, want_gate = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_y = y_ND.new_empty(y_ND.shape) if want_y else None
        grad_gate = gate_N.new_empty(gate_N.shape) if want_gate else None
        for c in _chunks(token_N.shape[0], _GatedSum.CHUNK):
            grad_ND = grad_TD.index_select(0, token_N[c])
            if grad_gate is not None:
                grad_gate[c] = (grad_ND * y_ND[c]).sum(1)
            if grad_y is not None:
                grad_y[c] = grad_ND.mul_(gate_N[c, None].to(grad_ND.dtype))
        return grad_y, grad_gate, None, None


def _chunks(n: int, size: int) -> list[slice]:
    """Slices covering ``range(n)``, ``size`` at a time."""
    return [slice(i, i + size) for i in range(0, n, size)]


def _regroup(counts_WL: Tensor) -> Tensor:
    """Permutation taking rows ordered (rank, expert) to (expert, rank); ``counts_WL [W, L]``."""
    lens_rank_major = counts_WL.reshape(-1)
    starts = torch.cumsum(lens_rank_major, 0) - lens_rank_major
    lens = counts_WL.t().reshape(-1)  # expert-major segment lengths
    seg_starts = starts.view(counts_WL.shape).t().reshape(-1)
    total = int(lens.sum())
    within = torch.arange(total, device=counts_WL.device) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    return torch.repeat_interleave(seg_starts, lens) + within


@dataclass
class Dispatched:
    """What ``combine`` needs to undo a ``dispatch``."""

    token_N: Tensor  # token row of every kept assignment
    send_splits: list[int] | None = None  # rows sent to each rank (None: no expert parallelism)
    recv_splits: list[int] | None = None  # rows received from each rank
    perm_R: Tensor | None = None  # (rank, expert) -> (expert, rank) row order of the received rows


class TokenDispatcher:
    """Moves token rows to their experts and back, locally or over an expert-parallel group."""

    def __init__(self, experts: int, world: int = 1, group=None):
        self.experts, self.world, self.group = experts, world, group
        self.local = experts // world

    def dispatch(self, x_TD: Tensor, token_N: Tensor, expert_N: Tensor) -> tuple[Tensor, list[int], Dispatched]:
        """Rows for this rank's experts ``[R, D]``, grouped by local expert, with the row count of
        each local expert; ``expert_N`` (global ids) must be non-decreasing."""
        rows_ND = x_TD.index_select(0, token_N)
        counts_E = torch.bincount(expert_N, minlength=self.experts)
        if self.world == 1:
            return rows_ND, counts_E.tolist(), Dispatched(token_N)
        recv_counts = torch.empty_like(counts_E)
        dist.all_to_all_single(recv_counts, counts_E, group=self.group)  # [W * L]: rows each rank sends me
        recv_WL = recv_counts.view(self.world, self.local)
        send_splits = counts_E.view(self.world, self.local).sum(1).tolist()
        recv_splits = recv_WL.sum(1).tolist()
        recv_RD = _AllToAll.apply(rows_ND, recv_splits, send_splits, self.group)
        perm_R = _regroup(recv_WL)
        return recv_RD[perm_R], recv_WL.sum(0).tolist(), Dispatched(token_N, send_splits, recv_splits, perm_R)

    def combine(self, y_RD: Tensor, d: Dispatched, gate_N: Tensor, tokens: int) -> Tensor:
        """Expert outputs back to their tokens: ``out_TD[t] = Σ gate · y`` over t's assignments
        (tokens with none get zeros); dtype: the promotion of the outputs' and the gates'."""
        y_ND = y_RD
        if d.perm_R is not None:
            y_ND = _AllToAll.apply(y_RD[torch.argsort(d.perm_R)], d.send_splits, d.recv_splits, self.group)
        return _GatedSum.apply(y_ND, gate_N, d.token_N, tokens)


def pad_to_capacity(rows_RD: Tensor, counts: list[int], slots: int) -> tuple[Tensor, Tensor]:
    """GShard/fairseq static dispatch: ``[L·C, D]`` with expert i's rows in slots ``i·C …``
    followed by zero rows up to ``C = slots``, and the slot of every real row ``[R]`` (to read
    the outputs back). Every count must be at most ``slots`` (the router cut them to it)."""
    counts_L = torch.tensor(counts, dtype=torch.long, device=rows_RD.device)
    starts_L = torch.cumsum(counts_L, 0) - counts_L
    expert_R = torch.repeat_interleave(torch.arange(len(counts), device=rows_RD.device), counts_L)
    within_R = torch.arange(rows_RD.shape[0], device=rows_RD.device) - starts_L[expert_R]
    slot_R = expert_R * slots + within_R
    padded = rows_RD.new_zeros((len(counts) * slots, rows_RD.shape[1]))
    return padded.index_copy_(0, slot_R, rows_RD), slot_R
