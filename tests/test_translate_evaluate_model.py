"""A trained checkpoint through nmt.translate and nmt.evaluate (model mode)."""

from __future__ import annotations

import json

from conftest import run_module


def test_translate_gives_one_line_per_input_line(smoke_run, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("time year people\n\nwater room\n   \nbook\n", encoding="utf-8")
    ckpt = smoke_run / "checkpoints" / "best.pt"
    proc = run_module("nmt.translate", f"ckpt={ckpt}", "src_lang=eng_Latn", "tgt_lang=fra_Latn", f"input={src}",
                      "beam=2")
    lines = proc.stdout.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 5
    assert lines[1] == "" and lines[3] == ""
    assert all("__" not in line for line in lines)  # tags never leak into the output
    out = tmp_path / "out.txt"
    run_module("nmt.translate", f"ckpt={ckpt}", "src_lang=en", "tgt_lang=deu_Latn", f"input={src}", f"output={out}")
    assert len(out.read_text(encoding="utf-8").splitlines()) == 5


def test_translate_bad_inputs(smoke_run, tmp_path):
    ckpt = smoke_run / "checkpoints" / "best.pt"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    cases = [
        ([f"ckpt={ckpt}", "src_lang=eng_Latn", "tgt_lang=xyz_Latn", f"input={bad}"], "xyz_Latn"),
        ([f"ckpt={ckpt}", "src_lang=eng_Latn", "tgt_lang=fra_Latn", f"input={bad}"], "bad.txt:2"),
        ([f"ckpt={tmp_path / 'none.pt'}", "src_lang=eng_Latn", "tgt_lang=fra_Latn", f"input={bad}"], "none.pt"),
        (["src_lang=eng_Latn", "tgt_lang=fra_Latn"], "ckpt"),
        ([f"ckpt={ckpt}", "src_lang=eng_Latn", "tgt_lang=fra_Latn", f"input={bad}", f"output={bad}"], "overwrite=true"),
        ([f"ckpt={ckpt}", "src_lang=eng_Latn", "tgt_lang=fra_Latn", f"output={tmp_path / 'no' / 'x.txt'}"],
         "does not exist"),
        ([f"ckpt={ckpt}", "src_lang=eng_Latn", "tgt_lang=fra_Latn", "device=gpu"], "device"),
    ]
    for args, needle in cases:
        proc = run_module("nmt.translate", *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert bad.read_bytes() == b"fine\n\xff\xfe broken\n"  # never overwritten


def test_corrupt_checkpoint_is_refused_clearly(smoke_run, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes((smoke_run / "checkpoints" / "best.pt").read_bytes()[:5000])
    proc = run_module("nmt.translate", f"ckpt={broken}", "src_lang=eng_Latn", "tgt_lang=fra_Latn",
                      f"input={tmp_path}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_evaluate_with_a_checkpoint_writes_results(smoke_run, prepared_corpus, tmp_path):
    out = tmp_path / "eval"
    run_module("nmt.evaluate", f"ckpt={smoke_run / 'checkpoints' / 'best.pt'}",
               f"flores.dir={prepared_corpus / 'flores'}", "split=devtest", f"out_dir={out}", "beam=2",
               "max_lines=10", f"baselines.corpus={prepared_corpus}")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results["directions"]) == {"eng_Latn-fra_Latn", "fra_Latn-eng_Latn", "eng_Latn-deu_Latn",
                                          "deu_Latn-eng_Latn"}
    for scores in results["directions"].values():
        assert scores["n"] == 10 and 0.0 <= scores["chrf++"] <= 100.0
    assert results["averages"]["xx-yy"] is None
    assert set(results["copy_baseline"]) >= {"all", "en-xx", "xx-en"}
    assert len((out / "hyp" / "eng_Latn-fra_Latn.hyp").read_text(encoding="utf-8").splitlines()) == 10
    assert (out / "results.md").is_file()
    assert (out / "chrf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
