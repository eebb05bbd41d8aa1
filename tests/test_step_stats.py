"""StepStats: micro-batch sums, the all-reduce layout, the log window and its record."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from nmt.training.step_stats import StepStats


def out(ntokens, loss, nll, nll_dir, tok_dir):
    return SimpleNamespace(ntokens=ntokens, loss=torch.tensor(loss), nll=torch.tensor(nll),
                           nll_per_direction=torch.tensor(nll_dir), tokens_per_direction=torch.tensor(tok_dir))


def test_micro_batches_sum():
    s = StepStats(2)
    s.add_micro_batch(out(3, 6.0, 4.0, [4.0, 0.0], [3.0, 0.0]), {"moe/load": torch.tensor(0.5)}, 6.5)
    s.add_micro_batch(out(2, 3.0, 2.0, [0.0, 2.0], [0.0, 2.0]), {"moe/load": torch.tensor(1.5)}, 3.0)
    assert (s.tokens, s.loss_sum, s.nll_sum, s.objective) == (5, 9.0, 6.0, 9.5)
    assert s.nll_dir.tolist() == [4.0, 2.0] and s.tok_dir.tolist() == [3.0, 2.0]
    assert float(s.aux.means()["moe/load"]) == 1.0


def test_all_reduce_sends_one_vector_and_reads_the_totals_back():
    s = StepStats(2)
    s.add_micro_batch(out(3, 6.0, 4.0, [4.0, 0.0], [3.0, 0.0]), {}, 6.0)
    sent = []

    def twice(t):  # two identical ranks
        sent.append(t.clone())
        return t * 2

    s.all_reduce(twice)
    assert len(sent) == 1 and sent[0].tolist() == [3, 6, 6, 4, 4, 0, 3, 0]
    assert (s.tokens, s.objective, s.loss_sum, s.nll_sum) == (6, 12.0, 12.0, 8.0)
    assert s.nll_dir.tolist() == [8.0, 0.0] and s.tok_dir.tolist() == [6.0, 0.0]


def test_a_window_skips_non_finite_updates_and_averages_the_gradient_norm():
    window = StepStats(2)
    for tokens, nll, gnorm, skipped in ((4, 8.0, 1.0, 0), (4, float("nan"), float("inf"), 1), (4, 4.0, 3.0, 0)):
        s = StepStats(2)
        s.add_micro_batch(out(tokens, nll * 1.5, nll, [nll, 0.0], [float(tokens), 0.0]), {}, nll)
        s.gnorm, s.lr, s.skipped = gnorm, 0.1 * (window.updates + window.skipped + 1), skipped
        assert s.finite() == (not skipped)
        window.add_update(s)
    assert (window.updates, window.skipped, window.tokens) == (2, 1, 8)
    record = window.record(30, 2.0, ["a-b", "c-d"], {"sampling/target/a-b": 1.0})
    assert record["step"] == 30 and record["skipped_updates"] == 1
    assert record["train/nll"] == pytest.approx(12.0 / 8) and record["train/loss"] == pytest.approx(18.0 / 8)
    assert record["train/ppl"] == pytest.approx(math.exp(1.5))
    assert record["gnorm"] == pytest.approx(2.0) and record["lr"] == pytest.approx(0.3)
    assert record["tokens_per_s"] == pytest.approx(4.0)
    assert record["train/loss/a-b"] == pytest.approx(1.5) and "train/loss/c-d" not in record  # no tokens
    assert list(record)[-1] == "sampling/target/a-b"  # context after the core keys
