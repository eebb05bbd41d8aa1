"""python -m data_prep.import_corpus end to end, via subprocess, on good and bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.manifest import sha256_file

REPO = Path(__file__).resolve().parents[1]


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.import_corpus", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, exactly one stderr line ``error: ...`` containing ``needles``, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


@pytest.fixture()
def moses(tmp_path: Path) -> Path:
    """A small de-en OPUS/Moses pair with one empty line and one duplicate."""
    write(tmp_path / "corpus.de-en.de", "Guten Morgen\nDanke\n\nDanke\nBis bald\n")
    write(tmp_path / "corpus.de-en.en", "Good morning\nThanks\nEmpty\nThanks\nSee you soon\n")
    return tmp_path / "corpus.de-en"


@pytest.fixture()
def corpus(tmp_path: Path, moses: Path) -> Path:
    out = tmp_path / "corpus"
    proc = run("--out", out, "--format", "moses", "--prefix", moses, "--src-lang", "de", "--tgt-lang", "en")
    assert proc.returncode == 0, proc.stderr
    return out


def test_moses_import_writes_layout_manifest_and_report(corpus, moses, tmp_path):
    proc = run("--out", tmp_path / "c2", "--format", "moses", "--prefix", moses,
               "--src-lang", "de", "--tgt-lang", "en")
    assert "note: --src-lang 'de' read as deu_Latn" in proc.stdout  # aliases are said
    assert "train/deu_Latn-eng_Latn" in proc.stdout and "duplicate" in proc.stdout
    bitext = corpus / "bitext" / "train"
    de = (bitext / "deu_Latn-eng_Latn.deu_Latn").read_text(encoding="utf-8")
    en = (bitext / "deu_Latn-eng_Latn.eng_Latn").read_text(encoding="utf-8")
    assert de == "Guten Morgen\nDanke\nBis bald\n" and en == "Good morning\nThanks\nSee you soon\n"
    m = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    assert m["format"] == 1 and m["languages"] == ["deu_Latn", "eng_Latn"]
    info = m["pairs"]["train"]["deu_Latn-eng_Latn"]
    assert info["lines"] == 3
    assert info["sha256"]["deu_Latn"] == sha256_file(bitext / "deu_Latn-eng_Latn.deu_Latn")
    assert m["cleaning"]["train/deu_Latn-eng_Latn"] == {
        "kept": 3, "dropped": {"empty": 1, "too_long": 0, "ratio": 0, "duplicate": 1, "invalid_utf8": 0}}
    assert [i["sha256"] for i in m["inputs"]] == [sha256_file(f"{moses}.de"), sha256_file(f"{moses}.en")]
    assert m["pairs"]["valid"] == {} and m["flores"] == {"dev": [], "devtest": []}


def test_append_tsv_and_flores_then_refuse_to_replace(corpus, tmp_path):
    tsv = write(tmp_path / "dev.tsv", "Hola\tHello\nGracias\tThanks\n")
    proc = run("--out", corpus, "--append", "--format", "tsv", "--files", tsv,
               "--src-lang", "spa_Latn", "--tgt-lang", "eng_Latn", "--split", "valid")
    assert proc.returncode == 0, proc.stderr
    flores = tmp_path / "flores"
    for code, text in [("eng_Latn", "One.\nTwo.\n"), ("deu_Latn", "Eins.\nZwei.\n"), ("fra_Latn", "Un.\nDeux.\n")]:
        write(flores / "dev" / f"{code}.dev", text)
        write(flores / "devtest" / f"{code}.devtest", text.replace(".", "!"))
    proc = run("--out", corpus, "--append", "--format", "flores", "--flores-dir", flores,
               "--langs", "eng_Latn", "de", "fra_Latn")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(m["pairs"]["valid"]) == ["deu_Latn-eng_Latn", "eng_Latn-fra_Latn", "eng_Latn-spa_Latn"]
    assert m["pairs"]["valid"]["eng_Latn-spa_Latn"]["lines"] == 2
    assert m["languages"] == ["deu_Latn", "eng_Latn", "fra_Latn", "spa_Latn"]
    assert m["pairs"]["test"]["deu_Latn-eng_Latn"]["lines"] == 2
    assert m["flores"] == {"dev": ["deu_Latn", "eng_Latn", "fra_Latn"],
                           "devtest": ["deu_Latn", "eng_Latn", "fra_Latn"]}
    assert (corpus / "flores" / "devtest" / "deu_Latn.devtest").read_text() == "Eins!\nZwei!\n"
    assert m["pairs"]["train"]["deu_Latn-eng_Latn"]["lines"] == 3  # train untouched
    assert not list(corpus.glob(".import-tmp-*"))
    before = snapshot(corpus)
    proc = run("--out", corpus, "--append", "--format", "tsv", "--files", tsv,
               "--src-lang", "es", "--tgt-lang", "en", "--split", "valid")
    assert_user_error(proc, "valid/eng_Latn-spa_Latn", "--overwrite")
    assert snapshot(corpus) == before


def test_flores_append_replaces_existing_pair_only_with_overwrite(corpus, tmp_path):
    """The TSV valid pair exists: Flores dev into the same pair needs --overwrite."""
    tsv = write(tmp_path / "dev.tsv", "Bonjour\tHello\n")
    assert run("--out", corpus, "--append", "--format", "tsv", "--files", tsv, "--src-lang", "fr",
               "--tgt-lang", "en", "--split", "valid").returncode == 0
    flores = tmp_path / "fl"
    write(flores / "dev" / "eng_Latn.dev", "One.\nTwo.\n")
    write(flores / "dev" / "fra_Latn.dev", "Un.\nDeux.\n")
    args = ["--out", corpus, "--append", "--format", "flores", "--flores-dir", flores,
            "--langs", "eng_Latn", "fra_Latn", "--flores-splits", "dev"]
    before = snapshot(corpus)
    assert_user_error(run(*args), "valid/eng_Latn-fra_Latn", "--overwrite")
    assert snapshot(corpus) == before
    assert run(*args, "--overwrite").returncode == 0
    m = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    assert m["pairs"]["valid"]["eng_Latn-fra_Latn"]["lines"] == 2


def test_skip_invalid_utf8_counts_dropped_lines(tmp_path):
    src = write(tmp_path / "a.de", b"gut\nschl\xe9cht\nauch gut\n")
    tgt = write(tmp_path / "a.en", "good\nbad\nalso good\n")
    out = tmp_path / "c"
    proc = run("--out", out, "--format", "moses", "--files", src, tgt, "--src-lang", "deu_Latn",
               "--tgt-lang", "eng_Latn", "--skip-invalid-utf8")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["cleaning"]["train/deu_Latn-eng_Latn"]["kept"] == 2
    assert m["cleaning"]["train/deu_Latn-eng_Latn"]["dropped"]["invalid_utf8"] == 1


# --- bad inputs: exit code 2, one line, no traceback, nothing written --------------------------

def test_mismatched_line_counts(tmp_path):
    src = write(tmp_path / "a.de", "1\n2\n3\n")
    tgt = write(tmp_path / "a.en", "1\n2\n")
    out = tmp_path / "c"
    proc = run("--out", out, "--format", "moses", "--files", src, tgt, "--src-lang", "de", "--tgt-lang", "en")
    assert_user_error(proc, f"{src} has 3 lines", f"{tgt} has 2 lines")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.de", "a.en"]


def test_empty_file(tmp_path):
    src = write(tmp_path / "a.de", "")
    tgt = write(tmp_path / "a.en", "x\n")
    proc = run("--out", tmp_path / "c", "--format", "moses", "--files", src, tgt,
               "--src-lang", "de", "--tgt-lang", "en")
    assert_user_error(proc, str(src), "empty")
    assert not (tmp_path / "c").exists()


def test_invalid_utf8_names_file_and_line(tmp_path):
    tsv = write(tmp_path / "x.tsv", b"a\tb\nc\td\n\xc3\x28\te\n")
    proc = run("--out", tmp_path / "c", "--format", "tsv", "--files", tsv, "--src-lang", "de", "--tgt-lang", "en")
    assert_user_error(proc, f"{tsv}:3", "UTF-8", "--skip-invalid-utf8")
    assert not (tmp_path / "c").exists()


def test_unknown_language_code(tmp_path, moses):
    proc = run("--out", tmp_path / "c", "--format", "moses", "--prefix", moses,
               "--src-lang", "de", "--tgt-lang", "english")
    assert_user_error(proc, "unknown language code 'english'", "--tgt-lang", "eng_Latn")
    assert not (tmp_path / "c").exists()


def test_missing_flores_file(tmp_path):
    write(tmp_path / "fl" / "dev" / "eng_Latn.dev", "a\n")
    write(tmp_path / "fl" / "devtest" / "eng_Latn.devtest", "a\n")
    proc = run("--out", tmp_path / "c", "--format", "flores", "--flores-dir", tmp_path / "fl",
               "--langs", "eng_Latn", "kor_Hang")
    assert_user_error(proc, str(tmp_path / "fl" / "dev" / "kor_Hang.dev"), "missing")
    assert not (tmp_path / "c").exists()


def test_output_dir_that_is_a_file(tmp_path, moses):
    out = write(tmp_path / "out", "precious\n")
    proc = run("--out", out, "--format", "moses", "--prefix", moses, "--src-lang", "de", "--tgt-lang", "en")
    assert_user_error(proc, str(out), "is a file")
    assert out.read_text() == "precious\n"
    assert_user_error(run("--out", out, "--append", "--format", "moses", "--prefix", moses,
                          "--src-lang", "de", "--tgt-lang", "en"), "is a file")
    assert out.read_text() == "precious\n"


def test_existing_output_not_overwritten_without_flag(corpus, moses, tmp_path):
    before = snapshot(corpus)
    write(tmp_path / "other.de", "Neu\n")
    write(tmp_path / "other.en", "New\n")
    args = ["--out", corpus, "--format", "moses", "--prefix", tmp_path / "other",
            "--src-lang", "de", "--tgt-lang", "en"]
    assert_user_error(run(*args), str(corpus), "already exists", "--overwrite")
    assert snapshot(corpus) == before
    assert run(*args, "--overwrite").returncode == 0
    assert (corpus / "bitext/train/deu_Latn-eng_Latn.deu_Latn").read_text() == "Neu\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_bad_flags_are_one_line_errors(tmp_path, moses):
    assert_user_error(run("--out", tmp_path / "c", "--format", "xml"), "invalid choice")
    assert_user_error(run("--out", tmp_path / "c", "--format", "moses", "--src-lang", "de",
                          "--tgt-lang", "en"), "--prefix", "--files")
    assert_user_error(run("--out", tmp_path / "c", "--append", "--format", "moses", "--prefix", moses,
                          "--src-lang", "de", "--tgt-lang", "en"), "--append needs an existing corpus")
    assert not (tmp_path / "c").exists()
