"""nmt.evaluate end to end (hyp_dir and a stub checkpoint), the report files, and bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import sacrebleu

from nmt.cli import parse_overrides
from nmt.errors import UserError
from nmt.eval import report
from nmt.evaluate import EvalConfig, evaluate, main

REPO = Path(__file__).resolve().parents[1]

FLORES = {
    "eng_Latn": ["The cat sits on the mat.", "Open the file.", "Save the document now."],
    "fra_Latn": ["Le chat est assis sur le tapis.", "Ouvrir le fichier.",
                 "Enregistrer le document maintenant."],
    "deu_Latn": ["Die Katze sitzt auf der Matte.", "Datei öffnen.", "Dokument jetzt speichern."],
}
HYPS = {
    "eng_Latn-fra_Latn": ["Le chat est sur le tapis.", "Ouvrir fichier.", "Enregistrer le document."],
    "fra_Latn-eng_Latn": ["The cat is on the mat.", "Open file.", "Save document now."],
    "deu_Latn-fra_Latn": ["Le chat est sur la natte.", "Ouvrir le fichier.", "Sauver document."],
}


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")


@pytest.fixture
def layout(tmp_path) -> Path:
    for code, lines in FLORES.items():
        write_lines(tmp_path / "flores" / "devtest" / f"{code}.devtest", lines)
    for name, lines in HYPS.items():
        write_lines(tmp_path / "hyp" / f"{name}.hyp", lines)
    train = tmp_path / "corpus" / "bitext" / "train"
    write_lines(train / "eng_Latn-fra_Latn.eng_Latn", ["Open the file.", "Close the window."])
    write_lines(train / "eng_Latn-fra_Latn.fra_Latn", ["Ouvrir le fichier.", "Fermer la fenêtre."])
    return tmp_path


# ---------------------------------------------------------------- report (unit)

def _dirs() -> dict:
    return {
        "eng_Latn-fra_Latn": {"chrf++": 50.0, "bleu": 20.0, "n": 3,
                              "copy_baseline": {"chrf++": 10.0, "bleu": 1.0}},
        "eng_Latn-deu_Latn": {"chrf++": 40.0, "bleu": 10.0, "n": 3,
                              "copy_baseline": {"chrf++": 20.0, "bleu": 3.0}},
        "fra_Latn-eng_Latn": {"chrf++": 60.0, "bleu": 30.0, "n": 3,
                              "copy_baseline": {"chrf++": 30.0, "bleu": 2.0}},
    }


def test_report_shape_and_group_means(tmp_path):
    sig = {"chrf++": "c", "bleu": {"13a": "b"}}
    res = report.build_results(_dirs(), sig, {"split": "devtest", "model": "m"})
    assert set(res) == {"signatures", "directions", "averages", "copy_baseline", "split", "model"}
    assert res["averages"] == {
        "all": {"chrf++": 50.0, "bleu": 20.0},
        "en-xx": {"chrf++": 45.0, "bleu": 15.0},
        "xx-en": {"chrf++": 60.0, "bleu": 30.0},
        "xx-yy": None,
    }
    assert res["copy_baseline"]["all"] == {"chrf++": 20.0, "bleu": 2.0}
    assert res["copy_baseline"]["en-xx"] == {"chrf++": 15.0, "bleu": 2.0}
    assert res["copy_baseline"]["xx-yy"] is None

    paths = report.write_report(tmp_path / "out", res)
    assert json.loads(paths["results.json"].read_text()) == res
    md = paths["results.md"].read_text()
    for d in _dirs():
        assert f"| {d} |" in md
    assert "chrF++ (copy)" in md and "**average en-xx**" in md and "average xx-yy" not in md
    assert paths["chrf.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob("*.tmp"))
    with pytest.raises(UserError, match="already exists"):
        report.write_report(tmp_path / "out", res)
    report.write_report(tmp_path / "out", res, overwrite=True)


def test_report_without_baselines(capsys):
    dirs = {d: {k: v for k, v in s.items() if k != "copy_baseline"} for d, s in _dirs().items()}
    res = report.build_results(dirs, {"chrf++": "c", "bleu": {"13a": "b"}})
    assert "copy_baseline" not in res
    report.print_table(res)
    out = capsys.readouterr().out
    assert "chrF++ (model)" in out and "(copy)" not in out and "BLEU (tok 13a): b" in out


# ---------------------------------------------------------------- CLI in process

def test_hyp_dir_end_to_end(layout, capsys):
    main([f"hyp_dir={layout / 'hyp'}", f"flores.dir={layout / 'flores'}",
          f"baselines.corpus={layout / 'corpus'}"])
    out_dir = layout / "hyp" / "eval"
    res = json.loads((out_dir / "results.json").read_text())
    assert set(res["directions"]) == set(HYPS)
    for name, hyps in HYPS.items():
        tgt = name.split("-")[1]
        refs = FLORES[tgt]
        d = res["directions"][name]
        assert d["chrf++"] == sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score
        assert d["bleu"] == sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score
        assert d["n"] == 3 and "spbleu" not in d
        src = name.split("-")[0]
        assert d["copy_baseline"]["chrf++"] == sacrebleu.corpus_chrf(
            FLORES[src], [refs], word_order=2).score
    # Retrieval exists only where the corpus has the pair; the exact training match is used.
    assert res["directions"]["deu_Latn-fra_Latn"]["retrieval_baseline"] is None
    assert res["retrieval_baseline"]["xx-yy"] is None
    assert res["averages"]["xx-yy"]["chrf++"] == res["directions"]["deu_Latn-fra_Latn"]["chrf++"]
    assert any("spBLEU omitted" in n for n in res["notes"])
    printed = capsys.readouterr().out
    assert "nrefs:1|case:mixed|eff:yes|nc:6|nw:2" in printed and "| eng_Latn-fra_Latn |" in printed
    md = (out_dir / "results.md").read_text()
    assert all(f"| {d} |" in md for d in HYPS)


def test_hyp_dir_explicit_directions_and_max_lines(layout):
    out = layout / "o"
    main([f"hyp_dir={layout / 'hyp'}", f"flores.dir={layout / 'flores'}", f"out_dir={out}",
          "directions=[en-fr]", "max_lines=2"])
    res = json.loads((out / "results.json").read_text())
    assert list(res["directions"]) == ["eng_Latn-fra_Latn"]
    hyps, refs = HYPS["eng_Latn-fra_Latn"][:2], FLORES["fra_Latn"][:2]
    assert res["directions"]["eng_Latn-fra_Latn"]["chrf++"] == sacrebleu.corpus_chrf(
        hyps, [refs], word_order=2).score


def test_checkpoint_mode_with_stub_translator(layout, monkeypatch, capsys):
    calls = []

    class StubTranslator:
        languages = None  # no record: nothing is refused

        @classmethod
        def from_checkpoint(cls, path, device="cpu"):
            calls.append(("load", path, device))
            return cls()

        def check_languages(self, pairs, allow_untrained=False):
            assert allow_untrained is False and len(pairs) == 4

        def translate(self, lines, src_lang, tgt_lang, beam_size=4, len_penalty=1.0,
                      batch_size=64, max_len_a=1.2, max_len_b=10):
            calls.append((src_lang, tgt_lang, beam_size))
            return [f"{tgt_lang} {x}" for x in lines]

    monkeypatch.setitem(sys.modules, "nmt.inference", types.SimpleNamespace(Translator=StubTranslator))
    ckpt = layout / "run" / "checkpoints" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"stub")
    main([f"ckpt={ckpt}", f"flores.dir={layout / 'flores'}", "beam=2", "device=cpu"])
    out_dir = layout / "run" / "eval" / "devtest"
    res = json.loads((out_dir / "results.json").read_text())
    # default directions: en-centric over the split's languages
    assert set(res["directions"]) == {"eng_Latn-deu_Latn", "eng_Latn-fra_Latn",
                                      "deu_Latn-eng_Latn", "fra_Latn-eng_Latn"}
    hyp = (out_dir / "hyp" / "eng_Latn-fra_Latn.hyp").read_text().splitlines()
    assert hyp == [f"fra_Latn {x}" for x in FLORES["eng_Latn"]]
    assert calls[0] == ("load", str(ckpt), "cpu") and calls[1][2] == 2
    assert res["mode"] == "checkpoint" and res["decoding"]["beam"] == 2
    # the written hypotheses can be re-scored in hyp_dir mode with the same result
    main([f"hyp_dir={out_dir / 'hyp'}", f"flores.dir={layout / 'flores'}"])
    again = json.loads((out_dir / "hyp" / "eval" / "results.json").read_text())
    assert again["directions"]["eng_Latn-fra_Latn"] == res["directions"]["eng_Latn-fra_Latn"]
    # a second run refuses to overwrite the hypotheses
    with pytest.raises(SystemExit) as e:
        main([f"ckpt={ckpt}", f"flores.dir={layout / 'flores'}"])
    assert e.value.code == 2 and "already exists" in capsys.readouterr().err


def test_unit_errors(layout):
    base = [f"flores.dir={layout / 'flores'}"]
    for argv, pattern in [
        (base, "exactly one of ckpt"),
        ([f"hyp_dir={layout / 'hyp'}", "ckpt=x.pt"] + base, "exactly one of ckpt"),
        ([f"hyp_dir={layout / 'hyp'}"], "flores.dir is required"),
        ([f"hyp_dir={layout / 'hyp'}", "directions=[eng_Latn-eng_Latn]"] + base, "into itself"),
        ([f"hyp_dir={layout / 'hyp'}", "max_lines=0"] + base, "max_lines"),
        ([f"ckpt={layout / 'none.pt'}"] + base, "checkpoint .* does not exist"),
    ]:
        with pytest.raises(UserError, match=pattern):
            evaluate(parse_overrides(EvalConfig, argv))


# ---------------------------------------------------------------- CLI bad inputs (subprocess)

def test_bad_inputs_exit_2_one_line(layout):
    f = layout
    (f / "hyp_short").mkdir()
    write_lines(f / "hyp_short" / "eng_Latn-fra_Latn.hyp", ["only one line"])
    (f / "outfile").write_text("keep me")
    (f / "hyp_dup").mkdir()
    write_lines(f / "hyp_dup" / "eng_Latn-fra_Latn.hyp", HYPS["eng_Latn-fra_Latn"])
    write_lines(f / "hyp_dup" / "eval" / "results.json", ["{}"])
    hyp, fl = f"hyp_dir={f / 'hyp'}", f"flores.dir={f / 'flores'}"
    cases = {
        "missing split": ([hyp, fl, "split=dev"], str(f / "flores" / "dev")),
        "missing language": ([hyp, fl, "directions=[eng_Latn-spa_Latn]"],
                             str(f / "flores" / "devtest" / "spa_Latn.devtest")),
        "short hyp": ([f"hyp_dir={f / 'hyp_short'}", fl],
                      f"{f / 'hyp_short' / 'eng_Latn-fra_Latn.hyp'} has 1 lines but the reference has 3"),
        "unknown code": ([hyp, fl, "directions=[eng_Latn-xyz_Latn]"], "unknown language code 'xyz_Latn'"),
        "out_dir is a file": ([hyp, fl, f"out_dir={f / 'outfile'}"], "is an existing file"),
        "existing results": ([f"hyp_dir={f / 'hyp_dup'}", fl], "already exists"),
    }
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "nmt.evaluate", *argv], cwd=f, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (argv, _) in cases.items()
    }
    for name, p in procs.items():
        _, err = p.communicate(timeout=120)
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert p.returncode == 2, (name, err)
        assert len(errors) == 1 and cases[name][1] in errors[0], (name, err)
        assert "Traceback" not in err, (name, err)
    # nothing pre-existing was touched and nothing was written
    assert (f / "outfile").read_text() == "keep me"
    assert (f / "hyp_dup" / "eval" / "results.json").read_text() == "{}\n"
    assert not (f / "hyp" / "eval").exists() and not (f / "hyp_short" / "eval").exists()
