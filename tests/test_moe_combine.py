"""The MoE combine (nmt/models/moe/dispatch.py ``_GatedSum``): the gate-weighted sum per token,
bit-identical in value and gradients to autograd's ``index_add_`` of ``y · gate``, without keeping
that ``[N, D]`` product for the backward."""

from __future__ import annotations

import pytest
import torch

from _count_ops import CountOps
from nmt.models.moe.dispatch import Dispatched, TokenDispatcher, _GatedSum


def _autograd_reference(y, gate, token, tokens):
    dtype = torch.promote_types(y.dtype, gate.dtype)
    return torch.zeros((tokens, y.shape[1]), dtype=dtype).index_add_(0, token, y * gate[:, None].to(dtype))


@pytest.mark.parametrize("chunk", [1024, 7])  # one chunk; 29 chunks, the last one short
@pytest.mark.parametrize("y_dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gated_sum_matches_autograd_bit_for_bit(y_dtype, chunk, monkeypatch):
    monkeypatch.setattr(_GatedSum, "CHUNK", chunk)
    torch.manual_seed(0)
    token = torch.randint(0, 50, (200,))
    w = torch.randn(50, 8)
    grads = []
    for fn in (_autograd_reference, _GatedSum.apply):
        y = torch.randn(200, 8, generator=torch.Generator().manual_seed(1)).to(y_dtype).requires_grad_()
        gate = torch.rand(200, generator=torch.Generator().manual_seed(2)).requires_grad_()
        out = fn(y, gate, token, 50)
        (out.float() * w).sum().backward()
        grads.append((out.detach(), y.grad, gate.grad))
    for ours, ref in zip(grads[1], grads[0], strict=True):
        assert ours.dtype == ref.dtype and torch.equal(ours, ref)


def test_gated_sum_gradients_by_finite_differences():
    torch.manual_seed(0)
    y = torch.randn(30, 4, dtype=torch.float64, requires_grad=True)
    gate = torch.rand(30, dtype=torch.float64, requires_grad=True)
    token = torch.randint(0, 10, (30,))
    assert torch.autograd.gradcheck(lambda a, b: _GatedSum.apply(a, b, token, 10), (y, gate))


def test_combine_keeps_no_gated_product_for_backward():
    torch.manual_seed(0)
    y = torch.randn(64, 16, requires_grad=True)
    gate = torch.rand(64, requires_grad=True)
    token = torch.randint(0, 40, (64,))
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = TokenDispatcher(4).combine(y, Dispatched(token), gate, 40)
    assert out.shape == (40, 16)
    rows = [t for t in saved if t.shape == (64, 16)]
    assert len(rows) == 1 and rows[0].data_ptr() == y.data_ptr()  # y itself, not a product


def test_combine_never_forms_the_whole_product(monkeypatch):
    """Forward and backward form ``gate · y`` and ``grad · y`` a chunk of assignments at a time."""
    monkeypatch.setattr(_GatedSum, "CHUNK", 16)
    y = torch.randn(64, 8, dtype=torch.bfloat16, requires_grad=True)
    gate = torch.rand(64, requires_grad=True)
    token = torch.randint(0, 40, (64,))
    with CountOps() as mode:
        _GatedSum.apply(y, gate, token, 40).sum().backward()
    products = [shape for op, shape, _ in mode.results if op == "mul"]
    assert products and all(shape[0] <= 16 for shape in products), products
