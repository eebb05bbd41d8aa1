"""CheckpointManager on a tiny model (no training run): save, keep-k, latest good, RNG, refusals."""

from __future__ import annotations

import pytest
import torch

from nmt.errors import UserError
from nmt.training.checkpoint import load_checkpoint
from nmt.training.checkpoint_manager import CheckpointManager
from nmt.training.train_state import ExtraState, TrainState


def manager(tmp_path, keep_last=2, **kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    return CheckpointManager(tmp_path / "checkpoints", sharded=False, keep_last=keep_last, model=model,
                             wrapped=model, optimizer=opt, **kw)


def extra(m, step):
    return ExtraState(TrainState(step=step), {"pos": step}, m.gather_rng(), {"cfg": 1}, ["a-b"])


def train_once(m):
    m.model(torch.ones(1, 3)).sum().backward()
    m.optimizer.step()


def test_save_writes_files_and_manifests_and_keeps_the_newest_k(tmp_path):
    m = manager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        m.save(["last", f"step_{step}"], extra(m, step))
    names = sorted(p.name for p in m.dir.iterdir())
    assert names == ["last.json", "last.pt", "step_20.json", "step_20.pt", "step_30.json", "step_30.pt"]
    state = load_checkpoint(m.dir / "last.pt")
    assert state["step"] == 30 and state["loader"] == {"pos": 30} and "optimizer" in state


def test_load_latest_restores_tensors_and_falls_back_past_a_corrupt_last(tmp_path, caplog):
    m = manager(tmp_path)
    train_once(m)
    m.save(["step_1"], extra(m, 1))
    saved = {k: v.clone() for k, v in m.model.state_dict().items()}
    train_once(m)
    m.save(["last"], extra(m, 2))
    (m.dir / "last.pt").write_bytes(b"garbage")
    fresh = manager(tmp_path)
    got = fresh.load_latest()
    assert got is not None and got.train.step == 1 and got.loader == {"pos": 1}
    assert all(torch.equal(saved[k], v) for k, v in fresh.model.state_dict().items())
    assert "last.pt is unusable" in caplog.text and "previous good checkpoint" in caplog.text


def test_nothing_to_resume_and_nothing_usable(tmp_path):
    m = manager(tmp_path)
    assert m.load_latest() is None
    m.dir.mkdir(parents=True)
    (m.dir / "last.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no checkpoint in .* is usable"):
        m.load_latest()


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    m = manager(tmp_path)
    m.save(["last"], extra(m, 1))
    other = torch.nn.Linear(4, 2)
    wrong = CheckpointManager(m.dir, sharded=False, keep_last=2, model=other, wrapped=other,
                              optimizer=torch.optim.Adam(other.parameters()))
    with pytest.raises(UserError, match="does not fit this config's model"):
        wrong.load_latest()


def test_single_files_are_refused_where_only_sharded_ones_resume(tmp_path):
    m = manager(tmp_path)
    m.save(["last"], extra(m, 1))
    sharded_only = manager(tmp_path, single_file_resumable=False)
    with pytest.raises(UserError, match="is unusable|no checkpoint"):
        sharded_only.load_latest()


def test_rng_round_trip_and_reseed_at_another_world_size(tmp_path):
    m = manager(tmp_path)
    torch.manual_seed(5)
    per_rank = m.gather_rng()
    expected = torch.rand(3)
    torch.rand(7)
    m.restore_rng(per_rank, seed=1, step=4)
    assert torch.equal(torch.rand(3), expected)
    rank1 = manager(tmp_path, rank=1, world=2)  # written by one rank: rank 1 reseeds, deterministically
    rank1.restore_rng(per_rank, seed=1, step=4)
    a = torch.rand(3)
    rank1.restore_rng(per_rank, seed=1, step=4)
    assert torch.equal(torch.rand(3), a) and not torch.equal(a, expected)
