"""bench.profile_step on the smoke recipe: every phase reported, shares add up, top ops listed.
Times nothing (shares on a loaded machine are not asserted)."""

import json

import pytest

from bench.profile_step import PHASES, phase_table
from conftest import run_module


def test_phase_table_attributes_the_step_by_hand_computed_figures():
    seconds = {"train_step": 1.0, "loader_with_collation": 0.3, "collation": 0.1, "host_to_device": 0.05,
               "forward": 0.25, "loss": 0.05, "backward": 0.2, "optimizer": 0.05, "per_direction_stats": 0.1,
               "logging": 0.9}
    table = phase_table(seconds, steps=2)
    assert table["loader"]["s_per_step"] == pytest.approx(0.1)  # 0.3 - 0.1 collation, over 2 steps
    assert table["other_in_step"]["s_per_step"] == pytest.approx(0.05)  # 1.0 - 0.9 timed inside
    assert table["logging"]["share"] == pytest.approx(0.45)  # of 1.0 + 0.1 + 0.9
    assert sum(r["share"] for r in table.values()) == pytest.approx(1.0)


def test_profile_step_runs_on_the_smoke_recipe(prepared_corpus, tmp_path):
    out = tmp_path / "profile.json"
    proc = run_module("bench.profile_step", "--corpus", prepared_corpus, "--recipe", "smoke", "--steps", "2",
                      "--warmup", "1", "--top", "5", "--out", out, "--override", "trainer.precision=fp32",
                      "trainer.threads=1", timeout=300)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == report
    assert list(report["phases"]) == list(PHASES)
    assert sum(r["share"] for r in report["phases"].values()) == pytest.approx(1.0, abs=1e-4)
    for phase in ("collation", "forward", "loss", "backward", "optimizer", "logging"):
        assert report["phases"][phase]["s_per_step"] > 0, phase  # every wrapped call was reached
    assert len(report["top_ops"]) == 5 and any(op["op"].startswith("aten::") for op in report["top_ops"])
    assert "forward" in proc.stdout and "top ops" in proc.stdout
