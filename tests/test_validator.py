"""Validator with a fake forward: per-direction loss, the selection loss, best.pt and step_N."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nmt.errors import UserError
from nmt.training.train_state import TrainState
from nmt.training.validator import Validator, check_best_by

DIRS = ["eng_Latn-fra_Latn", "fra_Latn-eng_Latn"]


def fake_batches(data, max_per_direction=None):
    return [SimpleNamespace(direction=torch.tensor([d]), nll=nll, tok=tok) for d, nll, tok in data]


def fake_forward(batch, n):
    nll, tok = torch.zeros(n), torch.zeros(n)
    d = int(batch.direction[0])
    nll[d], tok[d] = batch.nll, batch.tok
    return None, SimpleNamespace(nll_per_direction=nll, tokens_per_direction=tok), {}


def validator(tmp_path, best_by=(), data=((0, 4.0, 2.0), (0, 2.0, 2.0), (1, 9.0, 3.0)), interval=30):
    return Validator(list(data), DIRS, check_best_by(list(best_by), DIRS), interval, None, fake_batches,
                     fake_forward, torch.nn.Linear(1, 1), tmp_path / "plots")


def test_loss_per_direction_and_overall(tmp_path):
    r = validator(tmp_path).validate(step=30)
    assert r["valid/loss/eng_Latn-fra_Latn"] == pytest.approx(6.0 / 4)
    assert r["valid/loss/fra_Latn-eng_Latn"] == pytest.approx(3.0)
    assert r["valid/loss"] == pytest.approx(15.0 / 7)  # token-weighted
    assert r["valid/ppl"] == pytest.approx(torch.tensor(15.0 / 7).exp().item())


def test_selection_by_best_by_directions(tmp_path):
    v = validator(tmp_path, best_by=["fra_Latn-eng_Latn"])
    assert v.selection_loss(v.validate(30)) == pytest.approx(3.0)
    with pytest.raises(UserError, match="trainer.best_by names deu_Latn-eng_Latn"):
        check_best_by(["deu_Latn-eng_Latn"], DIRS)


def test_when_it_runs(tmp_path):
    v = validator(tmp_path, interval=30)
    assert [s for s in range(1, 61) if v.due(s, final=False)] == [30, 60]
    assert v.due(45, final=True)
    off = Validator(None, [], [], 30, None, fake_batches, fake_forward, torch.nn.Linear(1, 1), tmp_path)
    assert not off.enabled and not off.due(30, final=True)


def test_checkpoint_names_follow_improvement_and_the_save_interval(tmp_path):
    v, state = validator(tmp_path), TrainState(step=30)
    assert v.checkpoint_names({"valid/loss": 2.0}, state, save_interval=0) == ["last", "best"]
    state.step = 60
    assert v.checkpoint_names({"valid/loss": 2.5}, state, save_interval=20) == ["last", "step_60"]
    assert (state.best_valid, state.best_step) == (2.0, 30)
