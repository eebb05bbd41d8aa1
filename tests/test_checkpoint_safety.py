"""Checkpoints: manifest checks, fallback to the previous good one, and refusal of code-running pickles."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from conftest import train_smoke
from nmt.errors import UserError
from nmt.training.checkpoint import latest_good_checkpoint, load_checkpoint, manifest_path, save_checkpoint


def test_manifest_detects_truncation_and_bit_flips(tmp_path):
    path = tmp_path / "a.pt"
    save_checkpoint({"step": 3, "model": {"w": torch.arange(1000.0)}}, path)
    assert manifest_path(path).name == "a.json"
    assert load_checkpoint(path)["step"] == 3
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        load_checkpoint(path)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(path)


def test_latest_good_checkpoint_falls_back_and_names_the_bad_one(tmp_path):
    for step, name in ((10, "step_10.pt"), (20, "step_20.pt"), (20, "best.pt"), (30, "last.pt")):
        save_checkpoint({"step": step, "model": {}}, tmp_path / name)
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:50])  # killed mid-copy
    path, state, warnings = latest_good_checkpoint(tmp_path)
    assert path.name in ("step_20.pt", "best.pt") and state["step"] == 20
    assert len(warnings) == 1 and "last.pt" in warnings[0]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": {}, "payload": RunsCode()}, path)
    with pytest.raises(UserError, match="run code"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    with open(tmp_path / "plain.pt", "wb") as f:  # a bare pickle, not even a torch zip file
        pickle.dump(RunsCode(), f)
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "plain.pt")
    assert not (tmp_path / "PWNED").exists()


def test_resume_uses_the_previous_good_checkpoint(prepared_corpus, tmp_path):
    run = tmp_path / "run"
    train_smoke(prepared_corpus, run, "trainer.max_steps=30", "trainer.save_interval=10", "trainer.valid_interval=10")
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a torn latest checkpoint
    proc = train_smoke(prepared_corpus, run, "trainer.max_steps=40", "trainer.save_interval=10",
                       "trainer.valid_interval=10", "trainer.resume=true")
    assert "last.pt is unusable" in proc.stdout and "previous good checkpoint" in proc.stdout
    assert "resumed from" in proc.stdout and "at step 30" in proc.stdout
    assert load_checkpoint(last)["step"] == 40


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "model": {"w": torch.ones(3)}}, path)

    def out_of_space(obj, f):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", out_of_space)
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint is untouched"):
        save_checkpoint({"step": 2, "model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot create the checkpoint directory"):
        save_checkpoint({"step": 1, "model": {}}, tmp_path / "file" / "last.pt")
