"""Grouped experts: E position-wise FFNs stored as ``[E, D, H]`` / ``[E, H, D]`` tensors.

Shape suffixes: E experts (E_local on this rank), D model dim, H expert hidden dim, R rows
(token→expert assignments, grouped by local expert: ``counts[i]`` rows for expert i).

Each expert runs on its contiguous slice of the rows. The ReLU path uses a fused kernel
(:class:`_ReluExperts`), in fp32 and under autocast alike: each expert's weights cast into one
reused buffer when used (no cast copy of all experts is kept), gradients written straight into
one ``[E, ...]`` tensor per parameter, in its dtype, without a zero fill; the backward's
per-expert products go into scratch buffers allocated once per call.
With an expert-parallel group of W ranks each rank holds ``E/W`` experts, expert
gradients are divided by W (tokens of all ranks reach them: this matches data-parallel averaging
of the dense gradients), and ``state_dict`` always holds all E experts (gathered), so
checkpoints load on any world size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.models.dropout import dropout, keep_mask


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
    """Every local expert's ReLU FFN on its contiguous slice, computed in ``dtype`` (the autocast
    dtype under autocast, else the input's), with a hand-written backward.

    Under autocast each expert's matrices are cast into one scratch buffer per weight just before
    use, in the forward and again in the backward (:class:`_ExpertWeights`): no bf16 copy of all
    experts lives from the forward to the backward, as autocast's cached casts would (256 MiB at
    E=64, d 512, H 2048), and reading the fp32 weights twice cost no measurable time on a CPU;
    autocast itself would also stack the slices' gradients and cast them back. Gradients go
    straight into one ``[E, ...]`` buffer per parameter in the parameter's dtype, allocated
    without a zero fill (only experts without rows are zeroed). Activation dropout is inverted
    dropout on the hidden units (the mask from :func:`nmt.models.dropout.keep_mask`); ReLU's
    derivative is read off the saved hidden activations (``h > 0``), so nothing else is kept
    for backward."""

    @staticmethod
    def forward(ctx, x_RD, w1_EDH, b1_EH, w2_EHD, b2_ED, counts: list[int], p: float, scale: float,
                dtype: torch.dtype | None = None):
        dtype = dtype or x_RD.dtype
        ctx.dtypes = (x_RD.dtype, w1_EDH.dtype, b1_EH.dtype, w2_EHD.dtype, b2_ED.dtype)
        with torch.autocast(x_RD.device.type, enabled=False):
            xc_RD, b1c_EH, b2c_ED = (t.to(dtype) for t in (x_RD, b1_EH, b2_ED))
            w1, w2 = _ExpertWeights(w1_EDH, dtype), _ExpertWeights(w2_EHD, dtype)
            out_RD = xc_RD.new_empty((xc_RD.shape[0], w2_EHD.shape[-1]))
            hidden_RH = xc_RD.new_empty((xc_RD.shape[0], w1_EDH.shape[-1]))
            for e, start, rows in _slices(counts):
                h = hidden_RH[start:start + rows]
                torch.addmm(b1c_EH[e], xc_RD[start:start + rows], w1[e], out=h)
                h.clamp_(min=0)
                if p > 0:
                    h.mul_(keep_mask(h.shape, p, h.device)).mul_(1.0 / (1 - p))
                torch.addmm(b2c_ED[e], h, w2[e], out=out_RD[start:start + rows])
        ctx.save_for_backward(xc_RD, w1_EDH, w2_EHD, hidden_RH)
        ctx.counts, ctx.p, ctx.scale = counts, p, scale
        return out_RD

    @staticmethod
    def backward(ctx, grad_out_RD):
        x_RD, w1_EDH, w2_EHD, hidden_RH = ctx.saved_tensors
        with torch.autocast(x_RD.device.type, enabled=False):
            grads = _relu_experts_backward(grad_out_RD.to(x_RD.dtype).contiguous(), x_RD, w1_EDH, w2_EHD,
                                           hidden_RH, ctx.counts, ctx.p, ctx.dtypes)
        if ctx.scale != 1.0:
            for t in grads[1:]:
                t.mul_(ctx.scale)
        return (*grads, None, None, None, None)


class _ExpertWeights:
    """One expert's matrix at a time in the compute dtype: ``w[e]`` itself when no cast is needed,
    else its cast into one scratch buffer reused by every expert (the last expert's cast is
    overwritten by the next lookup: use it before asking for another). All E casts at once would
    hold a second copy of the experts (256 MiB in bf16 at E=64, d 512, H 2048) from the forward
    to the end of the backward."""

    def __init__(self, w_E: Tensor, dtype: torch.dtype):
        self.w_E = w_E
        self.scratch = None if w_E.dtype == dtype else w_E.new_empty(w_E.shape[1:], dtype=dtype)

    def __getitem__(self, e: int) -> Tensor:
        return self.w_E[e] if self.scratch is None else self.scratch.copy_(self.w_E[e])


def _slices(counts: list[int]) -> Iterator[tuple[int, int, int]]:
    """``(expert, first row, rows)`` of every local expert that has rows."""
    start = 0
    for e, rows in enumerate(counts):
        if rows:
            yield e, start, rows
            start += rows


def _scratch(like: Tensor, shape: tuple[int, ...], out_dtype: torch.dtype) -> Tensor | None:
    """A buffer in ``like``'s dtype for products that are cast into ``out_dtype``; None when no cast is needed."""
    return None if out_dtype == like.dtype else like.new_empty(shape)


def _mm_into(out: Tensor, a: Tensor, b: Tensor, scratch: Tensor | None) -> None:
    """``out = a @ b``; with a ``scratch`` (``out``'s shape, ``a``'s narrower dtype, reused by every
    expert) the product is formed there and cast into ``out``."""
    if scratch is None:
        torch.mm(a, b, out=out)
    else:
        out.copy_(torch.mm(a, b, out=scratch))


def _sum_into(out: Tensor, a: Tensor) -> None:
    """``out = a.sum(0)``, summed in ``a``'s dtype (as autocast's bias gradient) and cast into ``out``."""
    if out.dtype == a.dtype:
        torch.sum(a, 0, out=out)
    else:
        out.copy_(a.sum(0))


def _relu_experts_backward(grad_out_RD: Tensor, x_RD: Tensor, w1_EDH: Tensor, w2_EHD: Tensor, hidden_RH: Tensor,
                           counts: list[int], p: float, dtypes: tuple[torch.dtype, ...]) -> list[Tensor]:
    """Gradients ``[x, w1, b1, w2, b2]`` of :class:`_ReluExperts` in ``dtypes`` (the inputs'),
    computed in the saved tensors' dtype. Buffers are not zero-filled: every row is written, except
    those of experts without rows, which are zeroed."""
    e_local, d, h_dim = w1_EDH.shape
    w1, w2 = _ExpertWeights(w1_EDH, x_RD.dtype), _ExpertWeights(w2_EHD, x_RD.dtype)
    grad_x_RD = x_RD.new_empty(x_RD.shape, dtype=dtypes[0])
    grad_w1_EDH = w1_EDH.new_empty((e_local, d, h_dim), dtype=dtypes[1])
    grad_b1_EH = w1_EDH.new_empty((e_local, h_dim), dtype=dtypes[2])
    grad_w2_EHD = w2_EHD.new_empty((e_local, h_dim, d), dtype=dtypes[3])
    grad_b2_ED = w2_EHD.new_empty((e_local, d), dtype=dtypes[4])
    idle = [e for e, rows in enumerate(counts) if rows == 0]
    if idle:
        for g in (grad_w1_EDH, grad_b1_EH, grad_w2_EHD, grad_b2_ED):
            g[idle] = 0
    # Scratch buffers for the per-expert products, allocated once per call and sized for the
    # largest expert, instead of up to four varying-size temporaries per expert and step.
    most = max(counts, default=0)
    grad_hidden = x_RD.new_empty((most, h_dim))
    w1_scratch, w2_scratch = _scratch(x_RD, (d, h_dim), dtypes[1]), _scratch(x_RD, (h_dim, d), dtypes[3])
    x_scratch = _scratch(x_RD, (most, d), dtypes[0])
    for e, start, rows in _slices(counts):
        grad_RD, h = grad_out_RD[start:start + rows], hidden_RH[start:start + rows]
        _mm_into(grad_w2_EHD[e], h.t(), grad_RD, w2_scratch)
        _sum_into(grad_b2_ED[e], grad_RD)
        # ReLU's backward (and dropout's zeros: kept units carry dropout's 1/(1-p)), in place
        grad_h = torch.mm(grad_RD, w2[e].t(), out=grad_hidden[:rows])
        torch.ops.aten.threshold_backward.grad_input(grad_h, h, 0, grad_input=grad_h)
        if p > 0:
            grad_h.mul_(1.0 / (1 - p))
        _mm_into(grad_w1_EDH[e], x_RD[start:start + rows].t(), grad_h, w1_scratch)
        _sum_into(grad_b1_EH[e], grad_h)
        x_out = x_scratch[:rows] if x_scratch is not None else None
        _mm_into(grad_x_RD[start:start + rows], grad_h, w1[e].t(), x_out)
    return [grad_x_RD, grad_w1_EDH, grad_b1_EH, grad_w2_EHD, grad_b2_ED]


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
        """``x [R, D]`` rows grouped by local expert -> ``[R, D]`` expert outputs, same order
        (in the autocast dtype under autocast)."""
        scale = 1.0 / self.world  # tokens of all ranks reach these experts: match DP's gradient average
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        if self.act is F.relu:
            p = self.activation_dropout if self.training else 0.0
            return _ReluExperts.apply(x, self.w1, self.b1, self.w2, self.b2, counts, p, scale, dtype)
        ws: list[Tensor] = [self.w1, self.b1, self.w2, self.b2]
        if self.world > 1:
            ws = [_ScaleGrad.apply(t, scale) for t in ws]
        if dtype is not None:  # one cast per weight, not one per expert slice
            ws = [t.to(dtype) for t in ws]
        # unbind once: its backward stacks the per-expert gradients into one [E, ...] tensor
        # (indexing w1[i] per expert would allocate and add a full-size zero gradient per expert).
        w1s, b1s, w2s, b2s = (t.unbind(0) for t in ws)
        outs = []
        for e, start, rows in _slices(counts):
            h = self.act(torch.addmm(b1s[e], x[start:start + rows], w1s[e]))
            if self.activation_dropout > 0:
                h = dropout(h, self.activation_dropout, self.training)
            outs.append(torch.addmm(b2s[e], h, w2s[e]))
        return torch.cat(outs) if outs else x.new_zeros((0, ws[2].shape[-1]))

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


