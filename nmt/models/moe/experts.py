"""Grouped experts: E position-wise FFNs stored as ``[E, D, H]`` / ``[E, H, D]`` tensors.

Shape suffixes: E experts (E_local on this rank), D model dim, H expert hidden dim, R rows
(token→expert assignments, grouped by local expert: ``counts[i]`` rows for expert i).

Each expert runs on its contiguous slice of the rows. The ReLU path uses a fused kernel
(:class:`_ReluExperts`) whose backward writes each expert's gradients straight into one
``[E, ...]`` tensor per parameter. With an expert-parallel group of W ranks each rank holds
``E/W`` experts, expert gradients are divided by W (tokens of all ranks reach them: this matches
data-parallel averaging of the dense gradients), and ``state_dict`` always holds all E experts
(gathered), so checkpoints load on any world size.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class _ReluExperts(torch.autograd.Function):
    """Every local expert's ReLU FFN on its contiguous slice, with a hand-written backward that
    writes each expert's gradients straight into one ``[E, ...]`` tensor per parameter (autograd
    through per-expert views would allocate and sum a full-size gradient per expert). Activation
    dropout is inverted dropout on the hidden units; ReLU's derivative is read off the saved
    hidden activations (``h > 0``), so nothing else is kept for backward."""

    @staticmethod
    def forward(ctx, x_RD, w1_EDH, b1_EH, w2_EHD, b2_ED, counts: list[int], p: float, scale: float):
        out_RD = x_RD.new_empty((x_RD.shape[0], w2_EHD.shape[-1]))
        hidden_RH = x_RD.new_empty((x_RD.shape[0], w1_EDH.shape[-1]))
        start = 0
        for e, rows in enumerate(counts):
            if rows == 0:
                continue
            h = hidden_RH[start:start + rows]
            torch.addmm(b1_EH[e], x_RD[start:start + rows], w1_EDH[e], out=h)
            h.clamp_(min=0)
            if p > 0:
                h.mul_(torch.rand_like(h).ge_(p).div_(1 - p))
            torch.addmm(b2_ED[e], h, w2_EHD[e], out=out_RD[start:start + rows])
            start += rows
        ctx.save_for_backward(x_RD, w1_EDH, w2_EHD, hidden_RH)
        ctx.counts, ctx.p, ctx.scale = counts, p, scale
        return out_RD

    @staticmethod
    def backward(ctx, grad_out_RD):
        x_RD, w1_EDH, w2_EHD, hidden_RH = ctx.saved_tensors
        grad_out_RD = grad_out_RD.contiguous()
        grad_x_RD = torch.empty_like(x_RD)
        grad_w1_EDH, grad_w2_EHD = torch.zeros_like(w1_EDH), torch.zeros_like(w2_EHD)
        grad_b1_EH = w1_EDH.new_zeros(w1_EDH.shape[0], w1_EDH.shape[2])
        grad_b2_ED = w2_EHD.new_zeros(w2_EHD.shape[0], w2_EHD.shape[2])
        start = 0
        for e, rows in enumerate(ctx.counts):
            if rows == 0:
                continue
            grad_RD, h = grad_out_RD[start:start + rows], hidden_RH[start:start + rows]
            torch.mm(h.t(), grad_RD, out=grad_w2_EHD[e])
            torch.sum(grad_RD, 0, out=grad_b2_ED[e])
            grad_h = torch.mm(grad_RD, w2_EHD[e].t())
            grad_h.mul_(h > 0)  # ReLU (and dropout's zeros); kept units carry dropout's 1/(1-p)
            if ctx.p > 0:
                grad_h.mul_(1.0 / (1 - ctx.p))
            torch.mm(x_RD[start:start + rows].t(), grad_h, out=grad_w1_EDH[e])
            torch.sum(grad_h, 0, out=grad_b1_EH[e])
            torch.mm(grad_h, w1_EDH[e].t(), out=grad_x_RD[start:start + rows])
            start += rows
        if ctx.scale != 1.0:
            for t in (grad_w1_EDH, grad_b1_EH, grad_w2_EHD, grad_b2_ED):
                t.mul_(ctx.scale)
        return grad_x_RD, grad_w1_EDH, grad_b1_EH, grad_w2_EHD, grad_b2_ED, None, None, None


class Experts(nn.Module):
    """``E_local`` position-wise FFNs stored as ``[E, D, H]`` / ``[E, H, D]`` tensors.

    ``forward(x_RD, counts)`` takes rows grouped by expert (``counts[i]`` rows for local expert i)
    and runs each expert on its contiguous slice. With an expert-parallel group the module holds
    experts ``rank·E/W … (rank+1)·E/W - 1`` while its state dict holds all E.
    """

    def __init__(self, experts: int, d_model: int, hidden: int, activation: str = "relu",
                 activation_dropout: float = 0.0, group=None):
        super().__init__()
        self.world = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        if experts % self.world:
            raise ValueError(f"{experts} experts do not split evenly over {self.world} expert-parallel ranks")
        self.experts, self.local = experts, experts // self.world
        self.group = group
        self.act = F.relu if activation == "relu" else F.gelu
        self.activation_dropout = activation_dropout
        self.w1 = nn.Parameter(torch.empty(self.local, d_model, hidden))
        self.b1 = nn.Parameter(torch.zeros(self.local, hidden))
        self.w2 = nn.Parameter(torch.empty(self.local, hidden, d_model))
        self.b2 = nn.Parameter(torch.zeros(self.local, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform per expert (as ``nn.Linear`` layers get in the dense model)."""
        for w in (self.w1, self.w2):
            bound = math.sqrt(6.0 / (w.shape[1] + w.shape[2]))
            nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.b1)
        nn.init.zeros_(self.b2)

    def forward(self, x: Tensor, counts: list[int]) -> Tensor:
        """``x [R, D]`` rows grouped by local expert -> ``[R, D]`` expert outputs, same order."""
        scale = 1.0 / self.world  # tokens of all ranks reach these experts: match DP's gradient average
        if self.act is F.relu and not torch.is_autocast_enabled(x.device.type):
            p = self.activation_dropout if self.training else 0.0
            return _ReluExperts.apply(x, self.w1, self.b1, self.w2, self.b2, counts, p, scale)
        w1, b1, w2, b2 = self.w1, self.b1, self.w2, self.b2
        if self.world > 1:
            w1, b1, w2, b2 = (_ScaleGrad.apply(p, scale) for p in (w1, b1, w2, b2))
        # unbind once: its backward stacks the per-expert gradients into one [E, ...] tensor
        # (indexing w1[i] per expert would allocate and add a full-size zero gradient per expert).
        w1s, b1s, w2s, b2s = w1.unbind(0), b1.unbind(0), w2.unbind(0), b2.unbind(0)
        outs, start = [], 0
        for e, rows in enumerate(counts):
            if rows == 0:
                continue
            h = self.act(torch.addmm(b1s[e], x[start:start + rows], w1s[e]))
            if self.activation_dropout > 0:
                h = F.dropout(h, p=self.activation_dropout, training=self.training)
            outs.append(torch.addmm(b2s[e], h, w2s[e]))
            start += rows
        return torch.cat(outs) if outs else x.new_zeros((0, w2.shape[-1]))

    # Checkpoints always hold all experts, whatever the expert-parallel world size.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, p in self._parameters.items():
            if p is None:
                continue
            t = p if keep_vars else p.detach()
            if self.world > 1:
                parts = [torch.empty_like(t) for _ in range(self.world)]
                dist.all_gather(parts, t.detach().contiguous(), group=self.group)
                t = torch.cat(parts)
            destination[prefix + name] = t

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        lo, hi = self.rank * self.local, (self.rank + 1) * self.local
        for name in self._parameters:
            key = prefix + name
            if key in state_dict and state_dict[key].shape[0] == self.experts and self.experts != self.local:
                state_dict[key] = state_dict[key][lo:hi]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


