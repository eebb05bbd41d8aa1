"""Trainer internals: gradient accumulation equals one large batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO
from nmt.config import register
from nmt.training.stop import StopReason
from nmt.training.trainer import Trainer

register()


def make_trainer(corpus, run_dir, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        d = compose("config", overrides=["+recipe=smoke", f"data.corpus={corpus}", "trainer.progress=false",
                                         "trainer.precision=fp32", "model.dropout=0.0", *overrides])
    return Trainer(OmegaConf.to_object(d), run_dir, OmegaConf.to_container(d, resolve=True))


def test_gradient_accumulation_equals_one_large_batch(prepared_corpus, tmp_path):
    one = make_trainer(prepared_corpus, tmp_path / "a", "trainer.update_freq=1")
    two = make_trainer(prepared_corpus, tmp_path / "b", "trainer.update_freq=2")
    two.model.load_state_dict(one.model.state_dict())
    data = one.data.train
    d = np.array([0, 0, 1, 2, 3, 3])
    local = np.array([0, 1, 2, 3, 4, 5])
    full = data.collate(d, local)
    halves = iter([data.collate(d[:2], local[:2]), data.collate(d[2:], local[2:])])
    one.data.loader = iter([full])
    two.data.loader = halves
    # Stop before the optimizer changes anything: compare the normalised gradients.
    for t in (one, two):
        t.optimizer.step = lambda: None
        t.optimizer.zero_grad = lambda set_to_none=True: None
    s1, s2 = one.train_step(), two.train_step()
    assert s1.tokens == s2.tokens == int(full.target.ne(0).sum())
    assert abs(s1.nll_sum - s2.nll_sum) < 1e-3
    for (name, p1), (_, p2) in zip(one.model.named_parameters(), two.model.named_parameters(), strict=True):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-6, rtol=1e-4), name


def test_non_finite_loss_skips_the_update_then_stops_the_run(prepared_corpus, tmp_path):
    from nmt.errors import UserError

    t = make_trainer(prepared_corpus, tmp_path / "nan", "trainer.max_bad_updates=3")
    forward = t._forward
    poison = {2, 4, 5, 6}  # steps (0-based calls) whose loss is NaN

    def maybe_nan(batch, n):
        loss, out, aux = forward(batch, n)
        return (loss * float("nan") if t.state.step in poison else loss), out, aux

    t._forward = maybe_nan
    t.train_step()
    t.train_step()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    adam_steps = [int(s["step"]) for s in t.optimizer.state_dict()["state"].values()][:1]
    stats = t.train_step()  # step 2: NaN -> skipped, nothing changes
    assert stats.skipped and t.state.skipped_updates == 1 and t.state.step == 3
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    assert [int(s["step"]) for s in t.optimizer.state_dict()["state"].values()][:1] == adam_steps
    assert not t.train_step().skipped and t.state.bad_in_a_row == 0  # step 3 is fine again
    t.train_step()
    t.train_step()
    assert t.stop.poll(t.state) is None  # two NaN in a row: the run goes on
    t.train_step()  # third NaN in a row
    assert t.stop.poll(t.state) is StopReason.BAD_UPDATES
    with pytest.raises(UserError, match="trainer.max_bad_updates=3"):
        raise t.stop.bad_updates_error(t.state, tmp_path / "nan" / "checkpoints")
