"""trainer.precision=auto: decided by timing the model's own training step, recorded in the run
directory, reused on resume, and leaving no trace on the run (weights, optimizer, RNG, loader)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_module
from nmt.training import precision
from nmt.training.precision import choose_precision, decide
from nmt.training.precision_trial import timed_steps
from test_trainer_step import make_trainer

FAST = ["+recipe=smoke", "trainer.progress=false", "trainer.threads=1", "trainer.valid_interval=1000",
        "trainer.log_interval=2", "optim.warmup_steps=1"]


def test_bf16_needs_to_win_by_the_margin():
    assert decide({"fp32": 1.0, "bf16": 0.8}) == "bf16"  # 0.8 · 1.2 = 0.96 < 1.0
    assert decide({"fp32": 1.0, "bf16": 0.85}) == "fp32"  # 1.02: not enough
    assert decide({"fp32": 0.42, "bf16": 0.76}) == "fp32"  # the demo's real step: bf16 1.8x slower


def test_timed_steps_fit_the_budget():
    assert timed_steps(warmup_s=1.0, budget_s=6.0, max_steps=3) == 3  # 5 s left: room for 5, capped at 3
    assert timed_steps(warmup_s=2.5, budget_s=6.0, max_steps=3) == 1  # 3.5 s left: one more of each
    assert timed_steps(warmup_s=10.0, budget_s=6.0, max_steps=3) == 1  # over budget: still one timed step


def _state(trainer):
    return ({k: v.clone() for k, v in trainer.model.state_dict().items()}, trainer.optimizer.state_dict(),
            torch.get_rng_state(), trainer.data.loader.state_dict())


def test_auto_leaves_the_run_untouched_and_records_its_figures(prepared_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "bf16_matmul_emulated", lambda: (False, "forced: trial runs"))
    fixed = make_trainer(prepared_corpus, tmp_path / "fixed", "trainer.precision=fp32")
    w32, opt32, rng32, loader32 = _state(fixed)
    auto = make_trainer(prepared_corpus, tmp_path / "auto", "trainer.precision=auto")
    w, opt, rng, loader = _state(auto)
    assert w.keys() == w32.keys() and all(torch.equal(w[k], w32[k]) for k in w)
    assert opt == opt32 and not opt["state"]
    assert torch.equal(rng, rng32) and loader == loader32
    assert all(p.grad is None for p in auto.model.parameters())
    record = json.loads((tmp_path / "auto" / "precision.json").read_text())
    assert record["precision"] == auto.precision == decide(record["step_s"])
    assert record["requested"] == "auto" and record["batch"] == "first training batch"
    assert 1 <= record["timed_steps"] <= precision.MAX_TIMED_STEPS
    assert set(record["tok_s"]) == {"fp32", "bf16"} and record["tokens"] > 0
    first = next(fixed.data.loader)
    assert record["tokens"] == first.n_tgt_tokens  # timed on the run's own first batch
    assert "fp32" in record["reason"] and "bf16" in record["reason"]


def test_resume_reuses_the_recorded_choice_without_measuring(tmp_path, monkeypatch):
    (tmp_path / "precision.json").write_text(json.dumps({"precision": "bf16", "device": "cpu", "reason": "r"}))

    def no_trial(*args, **kwargs):
        raise AssertionError("a resumed run must not measure again")

    monkeypatch.setattr(precision, "time_both", no_trial)
    monkeypatch.setattr(precision, "bf16_matmul_emulated", no_trial)
    chosen, why = choose_precision("auto", torch.device("cpu"), tmp_path, True, None, None, None, 0.1)
    assert chosen == "bf16" and "recorded" in why
    # A fixed precision is the config's, recorded or not.
    assert choose_precision("fp32", torch.device("cpu"), tmp_path, True, None, None, None, 0.1)[0] == "fp32"


def test_emulated_bf16_picks_fp32_without_a_trial(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "bf16_matmul_emulated", lambda: (True, "1x1x1 matmul"))
    monkeypatch.setattr(precision, "time_both", lambda *a, **k: pytest.fail("no trial when bf16 is emulated"))
    chosen, why = choose_precision("auto", torch.device("cpu"), tmp_path, False, None, None, None, 0.1)
    assert chosen == "fp32" and "emulated" in why
    assert json.loads((tmp_path / "precision.json").read_text())["precision"] == "fp32"


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_auto_then_resume_equals_the_fixed_choice_bit_for_bit(prepared_corpus, tmp_path):
    auto = tmp_path / "auto"
    first = run_module("nmt.train", *FAST, f"data.corpus={prepared_corpus}", f"hydra.run.dir={auto}",
                       "trainer.precision=auto", "trainer.max_steps=2")
    assert "allocator keeps freed memory" in first.stdout + first.stderr  # trainer.reuse_memory=true (default)
    record = json.loads((auto / "precision.json").read_text())
    proc = run_module("nmt.train", *FAST, f"data.corpus={prepared_corpus}", f"hydra.run.dir={auto}",
                      "trainer.precision=auto", "trainer.max_steps=4", "trainer.resume=true")
    assert f"precision: {record['precision']} (recorded in" in proc.stdout
    assert json.loads((auto / "precision.json").read_text()) == record  # not measured again
    fixed = tmp_path / "fixed"
    run_module("nmt.train", *FAST, f"data.corpus={prepared_corpus}", f"hydra.run.dir={fixed}",
               f"trainer.precision={record['precision']}", "trainer.max_steps=4", "trainer.reuse_memory=false")
    a, b = weights(auto), weights(fixed)  # glibc's allocator defaults change no number
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_ranks_agree_on_the_trial_and_the_choice(prepared_corpus, tmp_path):
    """Expert-parallel MoE on 2 ranks: the trial's collectives line up (no hang), both ranks use
    the recorded choice, and the run continues as one with that precision fixed."""
    from test_distributed_train import COMMON, MOE, torchrun
    from test_distributed_train import weights as rank_weights

    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    steps = ["trainer.max_steps=2", "trainer.valid_interval=2"]
    proc = torchrun(prepared_corpus, auto, *COMMON, *MOE, *steps, "trainer.precision=auto")
    record = json.loads((auto / "precision.json").read_text())
    assert json.loads((auto / "summary.json").read_text())["precision"] == record["precision"]
    # rank 0 prints the choice once: "(measured ...)" after a trial, "(bf16 matmul emulated ...)" on
    # a CPU without bf16 units, where fp32 is taken without one
    assert proc.stdout.count(f"precision: {record['precision']} (") == 1
    torchrun(prepared_corpus, fixed, *COMMON, *MOE, *steps, f"trainer.precision={record['precision']}")
    a, b = rank_weights(auto), rank_weights(fixed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
