"""The chunked label-smoothed loss against a plain autograd reference: across chunk boundaries,
with padding, -inf (absent) columns, bf16 logits, a scaled objective, and without gradients."""

import pytest
import torch

import nmt.training.loss as loss_module
from nmt.training.loss import label_smoothed_nll


def reference(logits, target, eps):
    """fairseq's formula through autograd, in fp32: (1-ε-ε_i)·nll + ε_i·Σ_v(-log p_v), V = present classes."""
    lp = torch.log_softmax(logits.float(), -1)
    present = ~torch.isneginf(logits[0])
    vocab = int(present.sum())
    keep = target.ne(0)
    nll = -lp.gather(-1, target[:, None]).squeeze(-1)[keep]
    smooth = -lp[:, present].sum(-1)[keep]
    eps_i = eps / (vocab - 1)
    return (1 - eps - eps_i) * nll.sum() + eps_i * smooth.sum(), nll.sum()


def case(n, vocab, dtype, absent=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, vocab, generator=g)).to(dtype)
    logits[:, list(absent)] = float("-inf")
    allowed = torch.tensor([v for v in range(1, vocab) if v not in absent])
    target = allowed[torch.randint(0, len(allowed), (n,), generator=g)]
    target[::5] = 0  # padding
    return logits, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("absent", [(), (7, 8)])
def test_chunked_loss_and_gradient_match_autograd(monkeypatch, dtype, absent):
    monkeypatch.setattr(loss_module, "ROWS_PER_CHUNK", 4)  # 11 rows: chunks of 4, 4 and 3
    logits, target = case(11, 13, dtype, absent)
    ours = logits.clone().requires_grad_()
    out = label_smoothed_nll(ours, target, 0.1)
    (3.0 * out.loss).backward()  # a scaled objective: backward scales the stored gradient
    ref_logits = logits.clone().requires_grad_()
    ref_loss, ref_nll = reference(ref_logits, target, 0.1)
    (3.0 * ref_loss).backward()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert out.nll.item() == pytest.approx(ref_nll.item(), rel=1e-6)
    assert ours.grad.dtype == dtype
    assert torch.allclose(ours.grad.float(), ref_logits.grad.float(), atol=tol, rtol=tol)
    assert torch.all(ours.grad[target.eq(0)] == 0)
    if absent:
        assert torch.all(ours.grad[:, list(absent)] == 0)


def test_second_backward_raises():
    logits, target = case(6, 9, torch.float32)
    logits.requires_grad_()
    out = label_smoothed_nll(logits, target, 0.1)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward runs once"):
        out.loss.backward()


def test_no_grad_gives_the_same_values_and_stores_no_gradient():
    logits, target = case(9, 11, torch.float32)
    with torch.no_grad():
        plain = label_smoothed_nll(logits, target, 0.2)
    tracked = label_smoothed_nll(logits.clone().requires_grad_(), target, 0.2)
    assert not plain.loss.requires_grad
    assert plain.loss.item() == tracked.loss.item() and plain.nll.item() == tracked.nll.item()
