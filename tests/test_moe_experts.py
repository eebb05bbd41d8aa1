"""The fused expert kernel under bf16 autocast: numerics within bf16 tolerance of autocast's own
per-expert computation, and per-step work outside the matmuls that does not grow with E."""

from __future__ import annotations

from collections import Counter

import torch

from _count_ops import CountOps
from nmt.models.moe.experts import Experts


def _experts(e: int, d: int = 16, h: int = 32) -> Experts:
    torch.manual_seed(0)
    ex = Experts(e, d, h)
    with torch.no_grad():
        ex.b1.normal_()
        ex.b2.normal_()
    return ex


def _reference(ex: Experts, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Autocast's own per-expert computation (what the model ran before the fused bf16 path)."""
    outs, start = [], 0
    for e, rows in enumerate(counts):
        if rows:
            h = torch.relu(torch.addmm(ex.b1[e], x[start:start + rows], ex.w1[e]))
            outs.append(torch.addmm(ex.b2[e], h, ex.w2[e]))
            start += rows
    return torch.cat(outs)


def test_bf16_fused_kernel_matches_autocast_reference():
    ex = _experts(4)
    counts = [5, 0, 7, 4]  # an expert without rows gets zero gradients
    x = torch.randn(sum(counts), 16)
    g = torch.randn(sum(counts), 16)
    results = []
    for fn in (ex, lambda x_, c: _reference(ex, x_, c)):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(xi, counts)
        (y.float() * g).sum().backward()
        results.append((y.detach().float(), xi.grad, *(p.grad.clone() for p in ex.parameters())))
        assert y.dtype == torch.bfloat16 and all(p.grad.dtype == torch.float32 for p in ex.parameters())
        ex.zero_grad(set_to_none=True)
    for got, want in zip(*results, strict=True):
        assert torch.allclose(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    fused = results[0]
    assert all(float(t[1].abs().max()) == 0.0 for t in fused[2:])  # expert 1 had no rows


def _ops_per_step(e: int, rows: int = 128) -> Counter[str]:
    ex = _experts(e)
    counts = [rows // e] * e
    x = torch.randn(rows, 16, requires_grad=True)
    with CountOps() as mode, torch.autocast("cpu", dtype=torch.bfloat16):
        ex(x, counts).float().sum().backward()
    return mode.ops


def test_casts_and_fills_do_not_grow_with_the_number_of_experts():
    few, many = _ops_per_step(4), _ops_per_step(16)
    # Casts of weights and activations: one per tensor and step, whatever E.
    assert few["_to_copy"] == many["_to_copy"]
    # No zero fill of the gradient buffers when every expert has rows, no stacking of slices.
    for op in ("fill_", "zero_", "zeros_like", "cat", "stack"):
        assert few[op] == many[op] == 0, op
    # What does grow: the per-expert matmuls (2 forward, 4 backward).
    assert many["addmm"] - few["addmm"] == 2 * 12 and many["mm"] - few["mm"] == 4 * 12


def test_backward_allocates_no_per_expert_products():
    """Every per-expert product of the backward lands in a scratch buffer allocated once per call,
    not in a new varying-size temporary per expert."""
    for autocast in (False, True):
        for e in (4, 16):
            ex = _experts(e)
            x = torch.randn(128, 16, requires_grad=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = ex(x, [128 // e] * e)
            with CountOps() as mode:
                y.float().sum().backward()
            assert mode.ops["mm.out"] == 4 * e, (autocast, e, mode.ops)  # grad of h, w2, w1, x
            assert mode.ops["mm.default"] == 0 and mode.ops["threshold_backward.default"] == 0, mode.ops
            assert mode.ops["threshold_backward.grad_input"] == e


def test_weights_are_cast_one_expert_at_a_time():
    """Under autocast no op makes a bf16 copy of all experts' weights: each expert's matrix is
    cast into one scratch buffer when it is used, in the forward and again in the backward, so
    no second copy of the experts lives from the forward to the end of the backward."""
    e, d, h = 8, 16, 32
    ex = _experts(e, d, h)
    x = torch.randn(64, d, requires_grad=True)
    with CountOps() as mode, torch.autocast("cpu", dtype=torch.bfloat16):
        ex(x, [8] * e).float().sum().backward()
    bf16 = [shape for _, shape, dtype in mode.results if dtype == torch.bfloat16]
    assert (d, h) in bf16 and (h, d) in bf16  # the per-expert scratch buffers
    assert not [s for s in bf16 if s in ((e, d, h), (e, h, d))], bf16
    assert mode.ops["copy_"] >= 4 * e  # w1 and w2 of every expert, forward and backward
