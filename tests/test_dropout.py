"""nmt/models/dropout.py: the 16-bit keep mask's rate and independence, inverted scaling and its
gradient, reproducibility under a seed, and identity outside training."""

from __future__ import annotations

import math

import pytest
import torch

from nmt.models.dropout import dropout, keep_mask

N = 1 << 22  # 4M elements: the kept fraction's standard deviation is ≤ 2.5e-4


@pytest.mark.parametrize("p", [0.1, 0.25, 0.3, 0.5, 0.9])
def test_the_kept_fraction_is_one_minus_p_rounded_to_16_bits(p: float) -> None:
    torch.manual_seed(1)
    keep = 1 - round(p * 65536) / 65536  # p = 0.1 drops 6554 of every 65536 levels
    got = keep_mask(torch.Size([N]), p, torch.device("cpu")).double().mean().item()
    assert abs(got - keep) < 5 * math.sqrt(keep * (1 - keep) / N)


def test_neighbours_are_independent() -> None:
    # Four elements share one 64-bit random word: the mask of element i must not tell about i + 1..3.
    torch.manual_seed(2)
    m = keep_mask(torch.Size([N]), 0.5, torch.device("cpu")).view(-1, 4).double()
    for j in range(1, 4):
        both = (m[:, 0] * m[:, j]).mean().item()
        assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / (N // 4))


def test_kept_elements_are_scaled_and_the_gradient_follows_the_mask() -> None:
    torch.manual_seed(3)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.1, True)
    g = torch.randn_like(y)
    y.backward(g)
    kept = y.detach().ne(0)
    assert 0.8 < kept.double().mean().item() < 0.97
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.9)
    torch.testing.assert_close(x.grad, torch.where(kept, g / 0.9, 0.0))


def test_a_seed_reproduces_the_mask_and_other_modes_leave_the_input() -> None:
    x = torch.randn(128, 16)
    torch.manual_seed(4)
    a = dropout(x, 0.3, True)
    torch.manual_seed(4)
    assert torch.equal(a, dropout(x, 0.3, True))
    assert dropout(x, 0.3, False) is x and dropout(x, 0.0, True) is x
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))
