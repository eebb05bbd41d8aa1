"""Interference sweeps: the data subsample, the analysis on hand-made results with known answers,
and a tiny real sweep (bilingual + multilingual) end to end through one Hydra multirun."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_module
from nmt.data.parallel import ParallelData
from nmt.errors import UserError
from nmt.sweeps.interference import aggregate, analyse, interference, main, pair_runs, read_sweep

FOCUS = "eng_Latn-fra_Latn"


def test_interference_formula():
    assert interference(4.0, 4.4) == pytest.approx(-0.1)  # multilingual worse: interference
    assert interference(5.0, 4.5) == pytest.approx(0.1)  # multilingual better: synergy


# ---------------------------------------------------------------- hand-made sweep
def _job(sweep: Path, name: str, overrides: list[str], result: dict | None, log: str = "") -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if result is not None:
        (job / "result.json").write_text(json.dumps(result))
    if log:
        (job / "train.log").write_text(log)


def _result(model: str, params: int, arm: str, temp, seed: int, loss: float, chrf: float, share: float) -> dict:
    return {"format": 1, "status": "ok", "parameters": params,
            "cell": {"model": model, "arm": arm, "temperature": temp, "focus": FOCUS, "focus_size": 0, "seed": seed},
            "valid_loss": {FOCUS: loss + 0.5}, "test_loss": {FOCUS: loss},
            "focus_scores": {"chrf++": chrf, "bleu": chrf / 2}, "focus_share": share}


@pytest.fixture
def hand_sweep(tmp_path) -> Path:
    sweep = tmp_path / "sweep"
    runs = [  # (model, params, arm, T, seed, test loss, chrF++, share)
        ("xs", 1000, "bi", None, 1, 4.0, 30.0, 1.0), ("xs", 1000, "bi", None, 2, 5.0, 20.0, 1.0),
        ("xs", 1000, "multi", 1.0, 1, 4.4, 27.0, 0.5), ("xs", 1000, "multi", 1.0, 2, 4.5, 23.0, 0.5),
        ("xs", 1000, "multi", "inf", 1, 4.2, 29.0, 0.25), ("xs", 1000, "multi", "inf", 2, 5.5, 18.0, 0.25),
        ("s", 4000, "bi", None, 1, 3.0, 40.0, 1.0),
        ("s", 4000, "multi", 1.0, 1, 2.7, 41.5, 0.5),
        ("s", 4000, "multi", "inf", 1, 3.3, 38.0, 0.25),  # its seed-2 twin failed, below
    ]
    arm_name = {None: "bi", 1.0: "multi_t1", "inf": "multi_tinf"}
    for model, params, arm, temp, seed, loss, chrf, share in runs:
        ov = ["+recipe=interference", f"model={model}", f"arm={arm_name[temp]}", f"trainer.seed={seed}"]
        _job(sweep, ",".join(ov[1:]), ov, _result(model, params, arm, temp, seed, loss, chrf, share))
    failed = ["+recipe=interference", "model=s", "arm=multi_tinf", "trainer.seed=2"]
    _job(sweep, "failed", failed, None, log="step 10\nerror: config key x is wrong\n")
    # The sweep asked for s/bi/seed 2 and s/multi_t1/seed 2 too: they never ran.
    task = ["+recipe=interference", "model=xs,s", "arm=bi,multi_t1,multi_tinf", "trainer.seed=1,2"]
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    return sweep


def test_pairing_and_aggregation_match_hand_computed_values(hand_sweep):
    results, problems = read_sweep(hand_sweep)
    rows, unpaired = pair_runs(results)
    assert unpaired == []
    by = {(r["model"], r["temperature"], r["seed"]): r for r in rows}
    assert by[("xs", 1.0, 1)]["interference"] == pytest.approx((4.0 - 4.4) / 4.0)
    assert by[("xs", 1.0, 2)]["interference"] == pytest.approx((5.0 - 4.5) / 5.0)
    assert by[("s", 1.0, 1)]["interference"] == pytest.approx(0.1)
    assert by[("xs", "inf", 1)]["chrf_diff"] == pytest.approx(-1.0)
    cells = {(c["model"], c["temperature"]): c for c in aggregate(rows)}
    xs1 = cells[("xs", 1.0)]
    assert xs1["seeds"] == 2
    assert xs1["interference"] == pytest.approx(0.0, abs=1e-12)  # (-0.1 + 0.1) / 2
    assert xs1["interference_std"] == pytest.approx(math.sqrt(0.1**2 + 0.1**2))  # sample std of ±0.1
    assert xs1["chrf_diff"] == pytest.approx(0.0) and xs1["chrf_diff_std"] == pytest.approx(math.sqrt(18.0))
    xsinf = cells[("xs", "inf")]
    assert xsinf["interference"] == pytest.approx(((4.0 - 4.2) / 4.0 + (5.0 - 5.5) / 5.0) / 2)
    assert cells[("s", "inf")]["seeds"] == 1 and cells[("s", "inf")]["interference_std"] is None
    # Every missing or failed run is listed, with what went wrong.
    listed = {p["overrides"]: p["problem"] for p in problems}
    assert listed["+recipe=interference model=s arm=multi_tinf trainer.seed=2"] == "error: config key x is wrong"
    never = {o for o, why in listed.items() if why.startswith("never ran")}
    assert never == {" ".join(sorted(["+recipe=interference", "model=s", f"arm={a}", "trainer.seed=2"]))
                     for a in ("bi", "multi_t1")}


def test_cli_writes_tables_and_plots(hand_sweep, tmp_path, capsys):
    out = tmp_path / "analysis"
    main([str(hand_sweep), "--out", str(out)])
    for name in ("runs.csv", "interference.csv", "interference.md", "interference.json",
                 "interference_vs_size.png", "interference_vs_share.png"):
        assert (out / name).stat().st_size > 0, name
    cells = list(csv.DictReader((out / "interference.csv").open()))
    assert len(cells) == 4 and {c["seeds"] for c in cells} == {"1", "2"}
    md = (out / "interference.md").read_text()
    assert "Missing or failed runs (not averaged): 3" in md and "never ran" in md
    assert "| xs | 1k | 1.0 |" in md and "+0.00 ± 14.14" in md  # I in %: mean ± std
    assert (out / "interference_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_multilingual_run_without_baseline_is_listed_not_used(hand_sweep):
    import shutil

    shutil.rmtree(hand_sweep / "model=s,arm=bi,trainer.seed=1")
    out = analyse(hand_sweep)
    assert {(r["model"]) for r in out["runs"]} == {"xs"}
    assert sum("no bilingual baseline" in p["problem"] for p in out["problems"]) == 2


def test_bad_sweep_dirs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_sweep(tmp_path / "nope")
    with pytest.raises(UserError, match="no interference runs"):
        read_sweep(tmp_path)
    proc = run_module("nmt.sweeps.interference", tmp_path / "nope", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: sweep directory") and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- subsample
def test_subsample_is_seeded_nested_and_independent_of_the_training_seed(prepared_corpus):
    def kept(n: int, seed: int = 0) -> np.ndarray:
        data = ParallelData.open(prepared_corpus, "train", [FOCUS], subsample={FOCUS: n}, subsample_seed=seed)
        return data.kept(0)

    small, large = kept(100), kept(300)
    assert len(small) == 100 and len(large) == 300 and set(small) <= set(large)
    assert np.array_equal(small, kept(100)) and not np.array_equal(small, kept(100, seed=1))
    assert np.all(np.diff(small) > 0)  # file order
    with pytest.raises(UserError, match="only 600 are usable"):
        kept(601)
    with pytest.raises(UserError, match="data.subsample names"):
        ParallelData.open(prepared_corpus, "train", [FOCUS], subsample={"eng_Latn-deu_Latn": 5})


# ---------------------------------------------------------------- a real tiny sweep
def test_tiny_sweep_end_to_end(prepared_corpus, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_module(
        "nmt.train", "-m", "+recipe=interference", "model=tiny", "arm=bi,multi_t1",
        f"data.corpus={prepared_corpus}", "data.directions=[eng_Latn-fra_Latn,eng_Latn-deu_Latn]",
        f"interference.focus={FOCUS}", "interference.focus_size=400", "interference.test_max_sentences=10",
        "trainer.max_steps=24", "optim.warmup_steps=8", "trainer.valid_interval=8", "trainer.log_interval=8",
        "trainer.progress=false", "trainer.precision=fp32", "eval.beam=1", f"hydra.sweep.dir={sweep}",
        timeout=600)
    results, problems = read_sweep(sweep)
    assert problems == [], problems
    by_arm = {r["cell"]["arm"]: r for r in results}
    bi, multi = by_arm["bi"], by_arm["multi"]
    assert bi["directions"] == [FOCUS] and sorted(multi["directions"]) == ["eng_Latn-deu_Latn", FOCUS]
    for r in (bi, multi):  # same focus data (400 pairs), matched stopping on the focus direction
        assert r["config"]["data"]["subsample"] == {FOCUS: 400}
        assert r["config"]["trainer"]["best_by"] == [FOCUS]
        assert r["cell"]["focus_size"] == 400 and 0 <= r["focus_scores"]["chrf++"] <= 100
        assert r["best_step"] in (8, 16, 24)
    assert multi["cell"]["temperature"] == 1.0 and bi["cell"]["temperature"] is None
    assert 0.3 < multi["focus_share"] < 0.7 and bi["focus_share"] == 1.0
    summary = analyse(sweep)
    (row,) = summary["runs"]
    loss_bi, loss_multi = bi["test_loss"][FOCUS], multi["test_loss"][FOCUS]
    assert row["interference"] == pytest.approx((loss_bi - loss_multi) / loss_bi)
    assert (sweep / "analysis" / "interference_vs_share.png").is_file()
    assert "Launching 2 jobs" in proc.stdout + proc.stderr


@pytest.mark.parametrize("override, message", [
    ("++data.subsample={eng_Latn-fra_Latn:0}", "data.subsample.eng_Latn-fra_Latn=0"),
    ("++data.subsample={eng_Latn-fra_Latn:999999}", "only 600 are usable"),
    ("++data.subsample={eng_Latn-xxx_Latn:5}", "data.subsample"),
    ("trainer.best_by=[eng_Latn-xxx_Latn]", "trainer.best_by"),
    ("trainer.best_by=[eng_Latn-fra_Latn] data.valid_directions=[eng_Latn-deu_Latn]", "is not validated"),
    ("interference.arm=both", "interference.arm"),
    ("interference.arm=bi", "needs a focus direction"),
])
def test_bad_interference_settings_are_one_line_errors(prepared_corpus, tmp_path, override, message):
    from conftest import train_smoke

    proc = train_smoke(prepared_corpus, tmp_path / "run", *override.split(), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error:") and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
