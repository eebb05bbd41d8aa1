"""TrainState counters and the checkpoint's non-tensor state (ExtraState)."""

from __future__ import annotations

import torch

from nmt.training.train_state import ExtraState, TrainState


def test_updates_count_steps_and_bad_updates():
    s = TrainState()
    for skipped in (False, True, True, False, True):
        s.record_update(skipped)
    assert (s.step, s.skipped_updates, s.bad_in_a_row) == (5, 3, 1)


def test_improves_keeps_the_lowest_selection_loss_and_its_step():
    s = TrainState(step=10)
    assert s.improves(2.5) and (s.best_valid, s.best_step) == (2.5, 10)
    s.step = 20
    assert not s.improves(2.5)  # equal is not better
    assert not s.improves(3.0) and s.best_step == 10
    s.step = 30
    assert s.improves(2.0) and (s.best_valid, s.best_step) == (2.0, 30)


def test_state_dict_round_trip_drops_what_is_not_saved():
    s = TrainState(step=7, best_valid=1.5, best_step=6, skipped_updates=2, bad_in_a_row=2, stage=1)
    assert s.state_dict() == {"step": 7, "best_valid": 1.5, "best_step": 6, "skipped_updates": 2}
    back = TrainState()
    back.load_state_dict(s.state_dict())
    assert (back.step, back.best_valid, back.best_step, back.skipped_updates) == (7, 1.5, 6, 2)
    assert back.bad_in_a_row == 0 and back.stage == 0  # a resumed run starts a new streak; stage follows step


def test_extra_state_keys_and_round_trip():
    rng = [{"torch": torch.get_rng_state()}, {"torch": torch.get_rng_state()}]
    extra = ExtraState(TrainState(step=3, best_valid=2.0, best_step=3), {"epoch": 1}, rng, {"a": 1},
                       ["eng_Latn-fra_Latn"], languages=["eng_Latn", "fra_Latn"],
                       tokenizer={"path": "/r/spm.model", "sha256": "ab"})
    d = extra.state_dict()
    assert sorted(d) == sorted(["step", "best_valid", "best_step", "skipped_updates", "loader", "rng",
                                "rng_per_rank", "world_size", "config", "directions", "languages", "tokenizer"])
    assert d["world_size"] == 2 and d["rng"] is rng[0]
    back = ExtraState.from_state_dict(d)
    assert back.train.step == 3 and back.loader == {"epoch": 1} and len(back.rng_per_rank) == 2
    assert back.directions == ["eng_Latn-fra_Latn"] and back.tokenizer["sha256"] == "ab"
    assert back.languages == ["eng_Latn", "fra_Latn"]


def test_an_older_checkpoint_without_rng_per_rank_reads_its_single_rng():
    state = {"step": 1, "loader": {}, "rng": {"torch": torch.get_rng_state()}}
    assert len(ExtraState.from_state_dict(state).rng_per_rank) == 1
