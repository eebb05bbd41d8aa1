"""Label smoothing and the learning-rate schedule against hand-computed values."""

import math

import pytest
import torch

from nmt.config import OptimConfig
from nmt.data.parallel import TAG_OFFSET, collate
from nmt.langs import FLORES200
from nmt.training.loss import label_smoothed_nll, with_target_tag
from nmt.training.optim import inverse_sqrt_lr


def test_label_smoothing_hand_computed():
    # softmax([0, ln2, 0]) = [1/4, 1/2, 1/4]; gold = 1.
    # target distribution [0.05, 0.9, 0.05] -> CE = 0.1*ln4 + 0.9*ln2 = 1.1*ln2
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0]]])
    out = label_smoothed_nll(logits, torch.tensor([[1]]), epsilon=0.1)
    assert out.loss.item() == pytest.approx(1.1 * math.log(2.0), rel=1e-6)
    assert out.nll.item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert out.ntokens == 1


def test_padding_and_per_direction_sums():
    logits = torch.zeros(2, 2, 4)  # uniform over 4: nll = ln4 per token
    target = torch.tensor([[0, 2], [1, 3]])  # first position of sentence 0 is ignored (pad / forced tag)
    direction = torch.tensor([[1, 1], [0, 0]])  # per token
    out = label_smoothed_nll(logits, target, epsilon=0.0, direction=direction, n_directions=2)
    assert out.ntokens == 3
    assert out.nll.item() == pytest.approx(3 * math.log(4.0))
    assert out.nll_per_direction.tolist() == pytest.approx([2 * math.log(4.0), math.log(4.0)])
    assert out.tokens_per_direction.tolist() == [2.0, 1.0]


def test_loss_include_tag_adds_exactly_the_tag_position():
    # Two sentences (y = [7, 8] and [9]) into fra_Latn; V = 300. Logits are zero (uniform) at
    # position 0, so the tag position's smoothed loss is (1-e-e/(V-1))*lnV + e/(V-1)*V*lnV = lnV.
    fra = FLORES200.index("fra_Latn")
    batch = collate([[5], [6]], [[7, 8], [9]], [FLORES200.index("eng_Latn")] * 2, [fra] * 2, [0, 0])
    vocab, eps = 300, 0.1
    logits = torch.randn(2, batch.target.shape[1], vocab, generator=torch.Generator().manual_seed(0))
    logits[:, 0] = 0.0
    tagged = with_target_tag(batch)
    assert tagged.target[:, 0].tolist() == [TAG_OFFSET + fra] * 2 and batch.target[:, 0].tolist() == [0, 0]
    assert tagged.target[:, 1:].equal(batch.target[:, 1:])
    assert tagged.n_tgt_tokens == batch.n_tgt_tokens + 2 == 5 + 2
    without = label_smoothed_nll(logits, batch.target, eps)
    with_tag = label_smoothed_nll(logits, tagged.target, eps)
    assert with_tag.ntokens == without.ntokens + 2
    assert (with_tag.loss - without.loss).item() == pytest.approx(2 * math.log(vocab), rel=1e-5)
    assert (with_tag.nll - without.nll).item() == pytest.approx(2 * math.log(vocab), rel=1e-5)


def test_inverse_sqrt_schedule():
    cfg = OptimConfig(lr=1e-3, warmup_steps=4, warmup_init_lr=0.0)
    assert inverse_sqrt_lr(2, cfg) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(4, cfg) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(16, cfg) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(100, OptimConfig(lr=1e-3, warmup_steps=0)) == pytest.approx(1e-4)


def test_hand_written_backward_matches_autograd():
    torch.manual_seed(0)
    logits = torch.randn(7, 11, dtype=torch.float32, requires_grad=True)
    target = torch.tensor([3, 0, 5, 10, 1, 0, 7])  # two padded positions
    out = label_smoothed_nll(logits, target, epsilon=0.2)
    out.loss.backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    lp = torch.log_softmax(ref_logits, -1)
    keep = target.ne(0)
    nll = -lp.gather(-1, target[:, None]).squeeze(-1)[keep]
    smooth = -lp.sum(-1)[keep]
    eps_i = 0.2 / 10
    ref = (1 - 0.2 - eps_i) * nll.sum() + eps_i * smooth.sum()
    ref.backward()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)
    assert torch.all(logits.grad[target.eq(0)] == 0)


def test_cosine_and_linear_schedules_hand_computed():
    from nmt.training.optim import scheduled_lr

    cos = OptimConfig(lr=1e-3, warmup_steps=10, warmup_init_lr=0.0, schedule="cosine", min_lr=1e-4)
    assert scheduled_lr(5, cos, 110) == pytest.approx(5e-4)  # warm-up is shared
    assert scheduled_lr(10, cos, 110) == pytest.approx(1e-3)
    assert scheduled_lr(60, cos, 110) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half-way: cos(pi/2)
    assert scheduled_lr(110, cos, 110) == pytest.approx(1e-4)
    assert scheduled_lr(500, cos, 110) == pytest.approx(1e-4)  # past max_steps: stays at min_lr
    lin = OptimConfig(lr=1e-3, warmup_steps=0, schedule="linear")
    assert scheduled_lr(25, lin, 100) == pytest.approx(0.75e-3)
    assert scheduled_lr(30, OptimConfig(lr=1e-3, warmup_steps=4), 100) == pytest.approx(1e-3 * (4 / 30) ** 0.5)
