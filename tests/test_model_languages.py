"""A model knows its languages: translate/evaluate refuse others (unless allow_untrained_lang=true),
checkpoints without the record derive it from their directions; the forgetting report's deltas."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import LANGS
from nmt.errors import UserError
from nmt.eval.forgetting import check_comparable, compare, format_forgetting
from nmt.evaluate import main as evaluate_main
from nmt.inference import load_inference_checkpoint
from nmt.training.checkpoint import save_checkpoint
from nmt.translate import main as translate_main

KNOWN = "deu_Latn, eng_Latn, fra_Latn"


def _refused(capsys, main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_checkpoint_records_its_languages(smoke_run):
    state = torch.load(smoke_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["languages"] == ["deu_Latn", "eng_Latn", "fra_Latn"]


def test_translate_refuses_an_untrained_language(smoke_run, tmp_path, capsys, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("time year\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    argv = [f"ckpt={smoke_run / 'checkpoints' / 'last.pt'}", "src_lang=eng_Latn", "tgt_lang=swh_Latn",
            f"input={src}", f"output={out}", "beam=1"]
    err = _refused(capsys, translate_main, argv)
    assert "not trained on swh_Latn" in err and f"its languages are {KNOWN}" in err
    assert "allow_untrained_lang=true" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]

    translate_main(argv + ["allow_untrained_lang=true"])
    captured = capsys.readouterr()
    assert "warning: the model was not trained on swh_Latn" in captured.err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1


def test_old_checkpoint_without_a_record_uses_its_directions(smoke_run, tmp_path):
    state = torch.load(smoke_run / "checkpoints" / "last.pt", weights_only=True)
    del state["languages"]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(smoke_run / "spm.model", run / "spm.model")
    save_checkpoint(state, run / "checkpoints" / "old.pt")
    ck = load_inference_checkpoint(run / "checkpoints" / "old.pt")
    assert ck.languages == ["deu_Latn", "eng_Latn", "fra_Latn"]  # from deu_Latn-eng_Latn, fra_Latn-eng_Latn, ...
    del state["directions"]
    save_checkpoint(state, run / "checkpoints" / "older.pt")
    assert load_inference_checkpoint(run / "checkpoints" / "older.pt").languages is None  # nothing to check against


def test_evaluate_refuses_before_writing(smoke_run, prepared_corpus, tmp_path, capsys):
    flores = tmp_path / "flores"
    shutil.copytree(prepared_corpus / "flores", flores)
    shutil.copy(flores / "devtest" / "fra_Latn.devtest", flores / "devtest" / "swh_Latn.devtest")
    out = tmp_path / "eval"
    err = _refused(capsys, evaluate_main, [f"ckpt={smoke_run / 'checkpoints' / 'last.pt'}", f"flores.dir={flores}",
                                           f"out_dir={out}", "directions=[eng_Latn-swh_Latn,eng_Latn-fra_Latn]",
                                           "device=cpu"])
    assert "not trained on swh_Latn" in err and KNOWN in err
    assert not out.exists()


# ---------------------------------------------------------------- forgetting report

def _results(scores: dict[str, tuple[float, float]], languages=None, n=40) -> dict:
    out = {"split": "devtest", "signatures": {"chrf++": "sig"},
           "directions": {d: {"chrf++": c, "bleu": b, "n": n} for d, (c, b) in scores.items()}}
    if languages is not None:
        out["model_languages"] = languages
    out["_path"] = "ref/results.json"
    return out


def test_forgetting_deltas_by_hand():
    ref = _results({"eng_Latn-fra_Latn": (50.0, 20.0), "fra_Latn-eng_Latn": (40.0, 10.0),
                    "eng_Latn-swh_Latn": (5.0, 0.5)}, languages=["eng_Latn", "fra_Latn"])
    new = _results({"eng_Latn-fra_Latn": (48.0, 19.0), "fra_Latn-eng_Latn": (41.0, 7.0),
                    "eng_Latn-swh_Latn": (30.0, 8.5), "swh_Latn-eng_Latn": (25.0, 6.0)})
    section = compare(new, ref)
    rows = section["directions"]
    assert rows["eng_Latn-fra_Latn"] == {"new": False, "chrf++": 48.0, "ref_chrf++": 50.0, "delta_chrf++": -2.0,
                                         "bleu": 19.0, "ref_bleu": 20.0, "delta_bleu": -1.0}
    assert rows["eng_Latn-swh_Latn"]["new"] and rows["eng_Latn-swh_Latn"]["delta_chrf++"] == 25.0
    assert rows["swh_Latn-eng_Latn"]["delta_chrf++"] is None  # the reference was not scored there
    # untouched: (-2 + 1) / 2 chrF++, (-1 - 3) / 2 BLEU; new: scores (30 + 25) / 2, gain 25 over the one scored
    assert section["untouched"] == {"directions": 2, "delta_chrf++": -0.5, "delta_bleu": -2.0}
    assert section["new"] == {"directions": 2, "chrf++": 27.5, "bleu": 7.25, "delta_chrf++": 25.0,
                              "delta_bleu": 8.0, "scored_by_reference": 1}
    md = format_forgetting(section)
    assert "| eng_Latn-fra_Latn |  | 48.00 | 50.00 | -2.00 | 19.00 | 20.00 | -1.00 |" in md
    assert "mean Δ, untouched directions** (2)" in md and "not scored on 1 new direction" in md


def test_forgetting_without_reference_languages_counts_unscored_directions_as_new():
    ref = _results({"eng_Latn-fra_Latn": (50.0, 20.0)})
    section = compare(_results({"eng_Latn-fra_Latn": (50.0, 20.0), "eng_Latn-deu_Latn": (9.0, 1.0)}), ref)
    assert not section["directions"]["eng_Latn-fra_Latn"]["new"] and section["directions"]["eng_Latn-deu_Latn"]["new"]
    assert section["untouched"]["delta_chrf++"] == 0.0


def test_forgetting_refuses_incomparable_references():
    ref = _results({"eng_Latn-fra_Latn": (50.0, 20.0)}, n=40)
    with pytest.raises(UserError, match="scored 40 lines of eng_Latn-fra_Latn where this evaluation scores 10"):
        check_comparable(ref, "devtest", {"eng_Latn-fra_Latn": 10})
    with pytest.raises(UserError, match="split 'devtest', this evaluation 'dev'"):
        check_comparable(ref, "dev", {})
    with pytest.raises(UserError, match="another chrF\\+\\+ signature"):
        compare({**_results({}), "signatures": {"chrf++": "other"}}, ref)


def test_evaluate_writes_the_forgetting_table(prepared_corpus, tmp_path, capsys):
    """hyp_dir mode (no model): the reference is an earlier evaluation of other hypotheses."""
    flores = prepared_corpus / "flores"
    refs = {lang: (flores / "devtest" / f"{lang}.devtest").read_text(encoding="utf-8") for lang in LANGS}
    hyp_ref, hyp_new = tmp_path / "ref", tmp_path / "new"
    for d, good in ((hyp_ref, False), (hyp_new, True)):
        d.mkdir()
        for lang, text in refs.items():
            (d / f"eng_Latn-{lang}.hyp").write_text(text if good or lang == "fra_Latn" else
                                                    "x\n" * len(text.splitlines()), encoding="utf-8")
    evaluate_main([f"hyp_dir={hyp_ref}", f"flores.dir={flores}"])
    evaluate_main([f"hyp_dir={hyp_new}", f"flores.dir={flores}",
                   f"reference_results={hyp_ref / 'eval' / 'results.json'}"])
    capsys.readouterr()
    results = json.loads((hyp_new / "eval" / "results.json").read_text(encoding="utf-8"))
    rows = results["forgetting"]["directions"]
    assert rows["eng_Latn-fra_Latn"]["delta_chrf++"] == 0.0  # identical hypotheses
    assert rows["eng_Latn-deu_Latn"]["delta_chrf++"] == pytest.approx(
        results["directions"]["eng_Latn-deu_Latn"]["chrf++"] - rows["eng_Latn-deu_Latn"]["ref_chrf++"])
    assert rows["eng_Latn-deu_Latn"]["delta_chrf++"] > 50
    assert "## Change against the reference" in (hyp_new / "eval" / "results.md").read_text(encoding="utf-8")


def test_a_long_language_list_is_cut_in_the_message():
    from nmt.inference import MAX_LISTED, Translator
    from nmt.langs import FLORES200

    tr = Translator.__new__(Translator)  # check_languages reads only the language set
    tr.languages = sorted(FLORES200[:202])
    with pytest.raises(UserError) as e:
        tr.check_languages([("eng_Latn", "zul_Latn")])
    msg = str(e.value)
    assert "not trained on zul_Latn" in msg and "… (202 in all)" in msg
    listed = msg.split("its languages are ")[1].split(" … ")[0].split(", ")
    assert listed == sorted(FLORES200[:202])[:MAX_LISTED]
    tr.check_languages([("eng_Latn", "fra_Latn")])  # both known: nothing raised
