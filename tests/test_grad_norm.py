"""Gradient scaling and the global gradient norm (nmt.training.parallel), single process."""

import math

import torch
from torch import nn

from nmt.training.parallel import clip_grad_norm, scale_gradients


def _model_with_grads(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.LayerNorm(8))
    model(torch.randn(5, 16)).pow(2).sum().backward()
    model[3].bias.grad = None  # a parameter without a gradient is skipped
    return model


def test_scale_gradients_gives_the_products_of_a_mul_per_parameter():
    a, b = _model_with_grads(), _model_with_grads()
    scale_gradients(a, 1 / 37)
    for p in b.parameters():
        if p.grad is not None:
            p.grad.mul_(1 / 37)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert (pa.grad is None) == (pb.grad is None)
        if pa.grad is not None:
            assert torch.equal(pa.grad, pb.grad)


def test_norm_is_the_fp64_norm_of_all_gradients_and_inf_leaves_them_alone():
    model = _model_with_grads()
    before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    expected = math.sqrt(sum(float(g.double().pow(2).sum()) for g in before))
    assert math.isclose(clip_grad_norm(model, float("inf")), expected, rel_tol=1e-12)
    after = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_clipping_matches_torch_clip_grad_norm():
    ours, ref = _model_with_grads(), _model_with_grads()
    norm = clip_grad_norm(ours, 0.5)
    ref_norm = nn.utils.clip_grad_norm_([p for p in ref.parameters() if p.grad is not None], 0.5)
    assert math.isclose(norm, float(ref_norm), rel_tol=1e-6) and norm > 0.5
    total = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in ours.parameters() if p.grad is not None))
    assert math.isclose(total, 0.5, rel_tol=1e-5)
    for po, pr in zip(ours.parameters(), ref.parameters(), strict=True):
        if po.grad is not None:
            torch.testing.assert_close(po.grad, pr.grad, rtol=1e-6, atol=0)


def test_no_gradients_give_norm_zero():
    model = nn.Linear(3, 3)
    assert clip_grad_norm(model, 1.0) == 0.0
