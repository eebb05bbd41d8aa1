"""Curriculum stages: validation, the switch at the exact step, resume across a boundary, the planner."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_module, train_smoke
from nmt.config import StageConfig
from nmt.curriculum import check_stages, entry_table, plan_stages, planned_entries, stage_at
from nmt.errors import UserError
from test_trainer_step import make_trainer

ALL = ["eng_Latn-fra_Latn", "fra_Latn-eng_Latn", "deu_Latn-eng_Latn", "eng_Latn-deu_Latn"]
STAGES = ("curriculum.stages=[{start_step:0,directions:[eng_Latn-fra_Latn,fra_Latn-eng_Latn]},"
          "{start_step:40,directions:[eng_Latn-fra_Latn,fra_Latn-eng_Latn,deu_Latn-eng_Latn,eng_Latn-deu_Latn]}]")


def test_check_stages_and_stage_at():
    stages = check_stages([StageConfig(0, ["eng_Latn-fra_Latn"]), StageConfig(10, ALL)], ALL)
    assert [stage_at(stages, s) for s in (0, 9, 10, 500)] == [0, 0, 1, 1]
    with pytest.raises(UserError, match=r"curriculum.stages\[0\].start_step=5"):
        check_stages([StageConfig(5, ALL)], ALL)
    with pytest.raises(UserError, match="increasing"):
        check_stages([StageConfig(0, ALL), StageConfig(0, ALL)], ALL)
    with pytest.raises(UserError, match="eng_Latn-spa_Latn not among the training directions"):
        check_stages([StageConfig(0, ["eng_Latn-spa_Latn"])], ALL)
    with pytest.raises(UserError, match="xx_Latn"):
        check_stages([StageConfig(0, ["eng_Latn-xx_Latn"])], ALL)


def test_plan_stages_hand_computed():
    # best validation steps out of a 1000-step run: the early-best (over-fitting) pairs enter late.
    best = {"a-b": 1000, "b-a": 900, "c-d": 400, "d-c": 300, "e-f": 100, "f-e": 1000}
    stages = plan_stages(best, 1000, 3)
    # ideal entries N - best: a-b 0, f-e 0 | b-a 100, c-d 600, d-c 700, e-f 900. Stage 0 = the
    # entry-0 directions; the later entries 100 600 700 900 have gaps 500, 100, 200: the widest
    # (500) cuts them into {100} and {600, 700, 900}, each stage starting at its latest entry.
    assert [(s.start_step, s.directions) for s in stages] == [
        (0, ["a-b", "f-e"]), (100, ["a-b", "f-e", "b-a"]),
        (900, ["a-b", "f-e", "b-a", "c-d", "d-c", "e-f"])]
    assert planned_entries(stages) == {"a-b": 0, "f-e": 0, "b-a": 100, "c-d": 900, "d-c": 900, "e-f": 900}
    # Four stages: the next widest gap (200, between 700 and 900) is cut too.
    four = plan_stages(best, 1000, 4)
    assert [s.start_step for s in four] == [0, 100, 700, 900]
    assert planned_entries(four)["c-d"] == 700
    # Never early: every planned entry >= its ideal entry N - best.
    for n in (2, 3, 4, 5, 9):
        planned = planned_entries(plan_stages(best, 1000, n))
        assert all(planned[d] >= 1000 - b for d, b in best.items())
    table = entry_table(best, 1000, stages)
    assert "# c-d" in table and "600      900  (late by 300)" in table


def test_plan_stages_refuses_what_would_enter_early():
    with pytest.raises(UserError, match="--steps 900"):  # nobody is best at the last step
        plan_stages({"a-b": 900, "b-a": 500}, 1000, 3)
    with pytest.raises(UserError, match="--stages 2"):
        plan_stages({"a-b": 1000, "b-a": 500}, 1000, 1)
    assert [s.start_step for s in plan_stages({"a-b": 1000, "b-a": 1000}, 1000, 1)] == [0]


def test_stage_switch_happens_at_the_exact_step(prepared_corpus, tmp_path):
    t = make_trainer(prepared_corpus, tmp_path / "c", STAGES.replace("start_step:40", "start_step:3"))
    seen = []
    for _ in range(5):
        stats = t.train_step()
        seen.append({t.directions[i] for i, n in enumerate(stats.tok_dir.tolist()) if n > 0})
    first = {"eng_Latn-fra_Latn", "fra_Latn-eng_Latn"}
    assert all(s <= first for s in seen[:3])  # updates 0, 1, 2
    assert any(s - first for s in seen[3:])  # update 3 onwards may draw German
    assert t.state.stage == 1 and set(t.data.probs) == set(ALL)


def test_resume_across_a_stage_boundary_is_exact(prepared_corpus, tmp_path):
    full = tmp_path / "full"
    train_smoke(prepared_corpus, full, STAGES)
    log = [json.loads(x) for x in (full / "train_log.jsonl").read_text().splitlines()]
    assert [r["curriculum/stage"] for r in log] == [0, 0, 0, 0, 1, 1]
    assert log[0]["sampling/target/deu_Latn-eng_Latn"] == 0.0 and log[-1]["sampling/target/deu_Latn-eng_Latn"] > 0
    part = tmp_path / "part"
    train_smoke(prepared_corpus, part, STAGES, "trainer.max_steps=30")
    proc = train_smoke(prepared_corpus, part, STAGES, "trainer.resume=true")
    assert "curriculum: stage 1 from step 40" in proc.stdout
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_plan_cli_writes_a_snippet_that_trains(prepared_corpus, smoke_run, tmp_path):
    out = tmp_path / "stages.yaml"
    proc = run_module("nmt.curriculum", "plan", smoke_run, "--stages", "2", "--out", out)
    assert "ideal" in proc.stdout and "planned" in proc.stdout  # the entry table is printed too
    text = out.read_text()
    assert "# direction" in text
    assert "curriculum:" in text and "start_step: 0" in text
    again = run_module("nmt.curriculum", "plan", smoke_run, "--out", out, check=False)
    assert again.returncode == 2 and "Traceback" not in again.stderr  # never overwrites
    bad = run_module("nmt.curriculum", "plan", tmp_path, check=False)
    assert bad.returncode == 2 and "valid_log.jsonl" in bad.stderr


@settings(max_examples=200, deadline=None)
@given(best=st.lists(st.integers(0, 1000), min_size=1, max_size=12), n=st.integers(2, 6))
def test_plan_never_lets_a_direction_in_early(best, n):
    best_step = {f"d{i}-e{i}": b for i, b in enumerate(best)}
    best_step["top-last"] = 1000  # one direction is best at the last step: stage 0 is not empty
    stages = plan_stages(best_step, 1000, n)
    planned = planned_entries(stages)
    assert set(planned) == set(best_step) and len(stages) <= n and stages[0].start_step == 0
    assert all(planned[d] >= 1000 - b for d, b in best_step.items())
    for a, b in itertools.pairwise(stages):  # nested and strictly later
        assert set(a.directions) < set(b.directions) and a.start_step < b.start_step
    # Each stage starts exactly at the ideal entry of one of its new directions (its latest).
    for a, b in itertools.pairwise(stages):
        new = set(b.directions) - set(a.directions)
        assert b.start_step == max(1000 - best_step[d] for d in new)
