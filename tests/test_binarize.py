"""train_spm sampling and the binarize CLI: end to end, bad inputs, vocabulary checks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from data_prep import binarize, train_spm
from nmt.data.bin_meta import check_bin_matches
from nmt.data.indexed import IndexedDataset
from nmt.data.tokenizer import Tokenizer
from nmt.errors import UserError

try:
    from _fixtures_spm import corpus_copy, plain_model, run_cli, trained_corpus, write_corpus  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests._fixtures_spm import corpus_copy, plain_model, run_cli, trained_corpus, write_corpus  # noqa: F401


# -- temperature sampling ---------------------------------------------------------------------

def test_sample_sizes_hand_computed() -> None:
    counts = {"a": 800, "b": 150, "c": 50}
    # q = .80 .15 .05; q**(1/5) = .956352 .684256 .549280 (sum 2.189888)
    # p*1000 = 436.71 312.46 250.83 -> floors 436 312 250, two leftover lines to .83 and .71
    assert train_spm.sample_sizes(counts, 1000, 5.0) == {"a": 437, "b": 312, "c": 251}
    assert train_spm.sample_sizes(counts, 1000, 1.0) == counts  # T=1: proportional
    assert train_spm.sample_sizes({"a": 10**6, "b": 1}, 10, 1.0)["b"] == 1  # never zero


def test_write_sample_dedups_and_upsamples(tmp_path: Path) -> None:
    eng = [f"e{i}" for i in range(700)]
    write_corpus(tmp_path, {"train": {
        "eng_Latn-fra_Latn": {"eng_Latn": eng[:600], "fra_Latn": [f"f{i}" for i in range(600)]},
        # 50 English lines repeat the other pair's: English has 650 unique lines, not 700
        "eng_Latn-zul_Latn": {"eng_Latn": eng[:50] + eng[600:650], "zul_Latn": [f"z{i}" for i in range(100)]},
    }})
    out = tmp_path / "sample.txt"
    comp = train_spm.write_sample(tmp_path, json.loads((tmp_path / "manifest.json").read_text()),
                                  1000, 5.0, 1, out)
    # n = 650 600 100; p*1000 = 374.27 368.33 257.40 -> 374 368 258
    assert {k: v["unique_lines"] for k, v in comp.items()} == {"eng_Latn": 650, "fra_Latn": 600, "zul_Latn": 100}
    assert {k: v["sampled"] for k, v in comp.items()} == {"eng_Latn": 374, "fra_Latn": 368, "zul_Latn": 258}
    assert comp["zul_Latn"]["upsampled"] and not comp["eng_Latn"]["upsampled"]
    lines = out.read_text(encoding="utf-8").splitlines()
    by_lang = Counter(line[0] for line in lines)
    assert by_lang == {"e": 374, "f": 368, "z": 258}
    eng_lines = [x for x in lines if x[0] == "e"]
    assert len(set(eng_lines)) == 374, "subsampled languages are drawn without replacement"
    assert {x for x in lines if x[0] == "z"} == {f"z{i}" for i in range(100)}, "every rare line is kept"


def test_spm_json_records_composition(trained_corpus: Path) -> None:
    info = json.loads((trained_corpus / "spm.json").read_text())
    langs = info["languages"]
    assert set(langs) == {"deu_Latn", "eng_Latn", "fra_Latn", "rus_Cyrl"}
    assert langs["eng_Latn"]["unique_lines"] == 260  # 200 + 200 + 80 lines, 260 distinct
    assert sum(v["sampled"] for v in langs.values()) == info["sample_total"] == 740
    assert langs["rus_Cyrl"]["upsampled"]
    assert info["spm_sha256"] == Tokenizer(trained_corpus / "spm.model").sha256


# -- binarize end to end ----------------------------------------------------------------------

def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_binarize_end_to_end(corpus_copy: Path, tmp_path: Path, trained_corpus: Path) -> None:
    r = run_cli("data_prep.binarize", "--corpus", corpus_copy, "--workers", "2")
    assert r.returncode == 0, r.stderr
    tok = Tokenizer(corpus_copy / "spm.model")
    meta = check_bin_matches(corpus_copy / "bin", tok)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 400
    manifest = json.loads((corpus_copy / "manifest.json").read_text())
    expected = {f"{split}/{pair}.{lang}" for split, pairs in manifest["pairs"].items()
                for pair in pairs for lang in pair.split("-")}
    assert set(meta["files"]) == expected
    for key, counts in meta["files"].items():
        split, name = key.split("/")
        text = _lines(corpus_copy / "bitext" / split / name)
        ds = IndexedDataset(corpus_copy / "bin" / split / name)
        assert counts["lines"] == len(text) == len(ds)
        assert counts["tokens"] == int(ds.sizes.sum())
        assert [tok.decode(ds[i]) for i in range(len(ds))] == text
    assert not [p for p in corpus_copy.iterdir() if p.name.startswith(".")], "temp dirs left behind"

    # one worker, in process: byte-identical output
    other = tmp_path / "one_worker"
    other.mkdir()
    for name in ("manifest.json", "spm.model"):
        (other / name).write_bytes((trained_corpus / name).read_bytes())
    (other / "bitext").symlink_to(trained_corpus / "bitext")
    binarize.main(["--corpus", str(other), "--workers", "1"])
    for key in meta["files"]:
        for ext in (".bin", ".idx"):
            a = (corpus_copy / "bin" / f"{key}{ext}").read_bytes()
            assert a == (other / "bin" / f"{key}{ext}").read_bytes(), key

    # same spm and manifest again: nothing to do, exit 0
    r = run_cli("data_prep.binarize", "--corpus", corpus_copy)
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr


def test_check_bin_matches_rejects_other_vocabulary(corpus_copy: Path, plain_model: Path) -> None:
    with pytest.raises(UserError, match="meta.json: not found"):
        check_bin_matches(corpus_copy / "bin", Tokenizer(corpus_copy / "spm.model"))
    (corpus_copy / "bin").mkdir()
    (corpus_copy / "bin" / "meta.json").write_text(json.dumps(
        {"spm_sha256": Tokenizer(corpus_copy / "spm.model").sha256, "vocab_size": 400}))
    check_bin_matches(corpus_copy / "bin", Tokenizer(corpus_copy / "spm.model"))
    with pytest.raises(UserError, match="different vocabulary.*data_prep.binarize"):
        check_bin_matches(corpus_copy / "bin", Tokenizer(plain_model))


# -- bad inputs: one `error:` line, exit code 2, no traceback ------------------------------------

def check_one_error_line(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_manifest(tmp_path: Path) -> None:
    check_one_error_line(run_cli("data_prep.binarize", "--corpus", tmp_path), "manifest.json", "import_corpus")
    check_one_error_line(run_cli("data_prep.train_spm", "--corpus", tmp_path), "manifest.json", "demo_corpus")


def test_missing_spm(corpus_copy: Path) -> None:
    (corpus_copy / "spm.model").unlink()
    check_one_error_line(run_cli("data_prep.binarize", "--corpus", corpus_copy), "spm.model", "train_spm")


def test_spm_without_tags(corpus_copy: Path, plain_model: Path) -> None:
    r = run_cli("data_prep.binarize", "--corpus", corpus_copy, "--spm", plain_model)
    check_one_error_line(r, str(plain_model), "train_spm")
    assert not (corpus_copy / "bin").exists()


def test_mismatched_sha_needs_overwrite(corpus_copy: Path) -> None:
    (corpus_copy / "bin").mkdir()
    (corpus_copy / "bin" / "meta.json").write_text(json.dumps({"spm_sha256": "0" * 64, "vocab_size": 400}))
    r = run_cli("data_prep.binarize", "--corpus", corpus_copy)
    check_one_error_line(r, "different SentencePiece model", "--overwrite")
    r = run_cli("data_prep.binarize", "--corpus", corpus_copy, "--overwrite", "--workers", "1")
    assert r.returncode == 0, r.stderr
    check_bin_matches(corpus_copy / "bin", Tokenizer(corpus_copy / "spm.model"))


def test_line_count_mismatch(corpus_copy: Path) -> None:
    src = corpus_copy / "bitext" / "valid" / "eng_Latn-fra_Latn.fra_Latn"
    src.write_text("".join(x + "\n" for x in _lines(src)[:-1]), encoding="utf-8")
    check_one_error_line(run_cli("data_prep.binarize", "--corpus", corpus_copy, "--workers", "1"),
                    str(src), "19 lines")
    assert not (corpus_copy / "bin").exists()


def test_train_spm_errors(corpus_copy: Path) -> None:
    check_one_error_line(run_cli("data_prep.train_spm", "--corpus", corpus_copy), "already exists", "--overwrite")
    r = run_cli("data_prep.train_spm", "--corpus", corpus_copy, "--vocab-size", "20000", "--overwrite")
    check_one_error_line(r, "--vocab-size 20000", "lower --vocab-size")
    check_one_error_line(run_cli("data_prep.train_spm", "--corpus", corpus_copy, "--vocab-size", "100"),
                    "too small")
    assert Tokenizer(corpus_copy / "spm.model").vocab_size == 400, "a failed run keeps the old model"
    assert not [p for p in corpus_copy.iterdir() if p.name.startswith(".")], "temp dirs left behind"
