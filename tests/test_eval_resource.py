"""Resource-group averages (NLLB: low < 1M, very low < 100k training pairs) against hand values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nmt.errors import UserError
from nmt.eval import report
from nmt.eval.resource import check_thresholds, resource_group, resource_info
from test_evaluate_cli import layout  # noqa: F401  (fixture)

SIG = {"chrf++": "c", "bleu": {"13a": "b"}}


def write_manifest(corpus: Path, train: dict[str, int]) -> Path:
    corpus.mkdir(parents=True, exist_ok=True)
    pairs = {p: {"lines": n, "sha256": {}} for p, n in train.items()}
    (corpus / "manifest.json").write_text(json.dumps({"format": 1, "pairs": {"train": pairs}}))
    return corpus


@pytest.mark.parametrize("count, group", [
    (0, "zero-shot"), (1, "very-low-resource"), (99_999, "very-low-resource"),
    (100_000, "low-resource"), (999_999, "low-resource"), (1_000_000, "high-resource")])
def test_nllb_default_thresholds(count, group):
    assert resource_group(count) == group


def test_custom_thresholds_and_their_errors():
    assert resource_group(50, low=100, very_low=10) == "low-resource"
    assert resource_group(5, low=100, very_low=10) == "very-low-resource"
    with pytest.raises(UserError, match="resource.very_low=200 is above resource.low=100"):
        check_thresholds(100, 200)
    with pytest.raises(UserError, match="resource.low"):
        check_thresholds(0, 0)


def test_groups_from_the_manifest_and_their_averages(tmp_path):
    # deu-eng 2M pairs (high), eng-fra 300k (low, both directions), eng-zul 5k (very low);
    # deu-fra has no training pair (zero-shot).
    corpus = write_manifest(tmp_path / "c", {"deu_Latn-eng_Latn": 2_000_000, "eng_Latn-fra_Latn": 300_000,
                                             "eng_Latn-zul_Latn": 5_000})
    scores = {"eng_Latn-deu_Latn": 60.0, "eng_Latn-fra_Latn": 50.0, "fra_Latn-eng_Latn": 40.0,
              "eng_Latn-zul_Latn": 20.0, "zul_Latn-eng_Latn": 30.0, "deu_Latn-fra_Latn": 10.0}
    dirs = {d: {"chrf++": c, "bleu": c / 2, "n": 3} for d, c in scores.items()}
    info = resource_info(list(dirs), corpus)
    assert info["train_pairs"]["fra_Latn-eng_Latn"] == 300_000 and info["train_pairs"]["deu_Latn-fra_Latn"] == 0
    res = report.build_results(dirs, SIG, {}, info)
    avg = res["averages"]
    assert avg["high-resource"] == {"chrf++": 60.0, "bleu": 30.0}
    assert avg["low-resource"] == {"chrf++": 45.0, "bleu": 22.5}  # (50 + 40) / 2
    assert avg["very-low-resource"] == {"chrf++": 25.0, "bleu": 12.5}  # (20 + 30) / 2
    assert avg["zero-shot"] == {"chrf++": 10.0, "bleu": 5.0}
    assert avg["all"]["chrf++"] == pytest.approx(35.0)  # the language groups are unchanged
    assert res["resource"]["thresholds"]["low"] == 1_000_000
    md = report.format_markdown(res)
    assert "| **average low-resource** | low-resource | 2 dir. | 45.00 | 22.50 |" in md
    assert "| eng_Latn-zul_Latn | en-xx, very-low-resource | 3 |" in md
    # Without a corpus the results keep their old shape.
    assert "high-resource" not in report.build_results(dirs, SIG)["averages"]


def test_bad_manifest_is_a_user_error(tmp_path):
    corpus = write_manifest(tmp_path / "c", {"deu_Latn-eng_Latn": -3})
    with pytest.raises(UserError, match="pairs.train.deu_Latn-eng_Latn.lines"):
        resource_info(["deu_Latn-eng_Latn"], corpus)
    with pytest.raises(UserError, match="no manifest"):
        resource_info(["deu_Latn-eng_Latn"], tmp_path / "none")


def test_evaluate_writes_resource_groups(layout):  # noqa: F811  (the fixture imported above)
    from nmt.evaluate import main

    corpus = write_manifest(layout / "manifest_only", {"eng_Latn-fra_Latn": 150_000})
    main([f"hyp_dir={layout / 'hyp'}", f"flores.dir={layout / 'flores'}", f"resource.corpus={corpus}",
          "resource.low=200000", "resource.very_low=1000"])
    res = json.loads((layout / "hyp" / "eval" / "results.json").read_text())
    assert res["resource"]["groups"] == {"eng_Latn-fra_Latn": "low-resource", "fra_Latn-eng_Latn": "low-resource",
                                         "deu_Latn-fra_Latn": "zero-shot"}
    low = [res["directions"][d]["chrf++"] for d in ("eng_Latn-fra_Latn", "fra_Latn-eng_Latn")]
    assert res["averages"]["low-resource"]["chrf++"] == pytest.approx(sum(low) / 2)
    assert res["averages"]["high-resource"] is None
    assert "low < 200,000" in (layout / "hyp" / "eval" / "results.md").read_text()


def test_resource_corpus_falls_back_to_the_checkpoint_runs_data_corpus(tmp_path):
    from nmt.evaluate import EvalConfig, resource_corpus

    corpus = write_manifest(tmp_path / "corpus", {"deu_Latn-eng_Latn": 5})
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  corpus: {corpus}\n")
    cfg = EvalConfig(ckpt=str(run / "checkpoints" / "best.pt"))
    assert resource_corpus(cfg) == str(corpus)
    cfg.baselines.corpus = str(tmp_path / "no_manifest_here")  # skipped: not a corpus
    assert resource_corpus(cfg) == str(corpus)
    cfg.resource.corpus = "explicit"  # an explicit key always wins (and must be a corpus)
    assert resource_corpus(cfg) == "explicit"
    assert resource_corpus(EvalConfig(hyp_dir="h")) is None
