"""Readers, cleaning and manifest helpers of data_prep on small real-format fixtures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from data_prep import clean, readers
from data_prep.manifest import (
    LineWriter,
    add_input,
    add_pair,
    atomic_dir,
    atomic_file,
    load_manifest,
    new_manifest,
    pair_name,
    sha256_file,
    write_manifest,
)
from nmt.errors import UserError


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# --- readers ---------------------------------------------------------------------------------

def test_flores_reader_aligns_languages(tmp_path):
    write(tmp_path / "dev" / "eng_Latn.dev", "Hello.\nHow are you?\n")
    write(tmp_path / "dev" / "deu_Latn.dev", "Hallo.\nWie geht es dir?\n")
    write(tmp_path / "dev" / "zho_Hans.dev", "你好。\n你好吗？\n")
    rows = list(readers.read_flores(tmp_path, "dev", ["eng_Latn", "deu_Latn", "zho_Hans"]))
    assert rows == [("Hello.", "Hallo.", "你好。"), ("How are you?", "Wie geht es dir?", "你好吗？")]


def test_flores_missing_file_names_path(tmp_path):
    write(tmp_path / "devtest" / "eng_Latn.devtest", "a\n")
    with pytest.raises(UserError) as e:
        list(readers.read_flores(tmp_path, "devtest", ["eng_Latn", "fra_Latn"]))
    assert str(tmp_path / "devtest" / "fra_Latn.devtest") in str(e.value)
    assert "eng_Latn.devtest" in str(e.value)  # says what is there


def test_moses_prefix_crlf_and_bom(tmp_path):
    src, tgt = readers.moses_paths(tmp_path / "corpus.de-en", "de", "en")
    assert src.name == "corpus.de-en.de" and tgt.name == "corpus.de-en.en"
    write(src, b"\xef\xbb\xbfGuten Morgen\r\nDanke\r\n")
    write(tgt, b"Good morning\nThanks")  # no final newline
    assert list(readers.read_moses(src, tgt)) == [("Guten Morgen", "Good morning"), ("Danke", "Thanks")]


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    a = write(tmp_path / "a.de", "1\n2\n3\n")
    b = write(tmp_path / "b.en", "1\n2\n")
    with pytest.raises(UserError) as e:
        list(readers.read_moses(a, b))
    assert f"{a} has 3 lines" in str(e.value) and f"{b} has 2 lines" in str(e.value)


def test_tsv_reader_and_field_errors(tmp_path):
    good = write(tmp_path / "good.tsv", "Hallo\tHello\n\nJa\tYes\n")
    assert list(readers.read_tsv(good)) == [("Hallo", "Hello"), ("", ""), ("Ja", "Yes")]
    bad = write(tmp_path / "bad.tsv", "a\tb\nc\td\te\n")
    with pytest.raises(UserError, match=r"bad\.tsv:2: expected 2 tab-separated fields .* found 3"):
        list(readers.read_tsv(bad))


def test_invalid_utf8_strict_names_line_and_streams(tmp_path):
    path = write(tmp_path / "x.txt", b"ok 1\nok 2\nbad \xff byte\nok 4\n")
    it = readers.iter_lines(path)
    assert next(it) == "ok 1" and next(it) == "ok 2"  # lines come out before the bad one is read
    with pytest.raises(UserError, match=rf"{path}:3: not valid UTF-8"):
        next(it)
    assert list(readers.iter_lines(path, skip_invalid=True)) == ["ok 1", "ok 2", None, "ok 4"]


def test_empty_missing_and_directory_inputs(tmp_path):
    with pytest.raises(UserError, match="file is empty"):
        list(readers.iter_lines(write(tmp_path / "empty.txt", b"")))
    with pytest.raises(UserError, match="no such file"):
        list(readers.iter_lines(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="is a directory"):
        list(readers.iter_lines(tmp_path))


# --- cleaning --------------------------------------------------------------------------------

def test_cleaning_counts_match_hand_computed_values():
    pairs = [
        ("Hello world", "Hallo Welt"),            # kept
        ("  Hello   world ", "Hallo\tWelt"),      # same after whitespace normalisation: duplicate
        ("", "leer"),                             # empty
        ("x", "   "),                             # empty
        (None, "kaputt"),                         # invalid_utf8
        ("one two three four", "eins"),           # ratio (4+1)/(1+1) = 2.5 > 2
        ("a b c", "d e f g h i j k"),             # too_long (8 > 6)
        ("Tab", "Tabulator"),                     # kept (1 vs 1)
        ("Open file", "Datei öffnen"),            # kept
        ("Hello world", "Hallo Welt"),            # duplicate
    ]
    kept, counts = clean.clean(pairs, "eng_Latn", "deu_Latn", max_len=6, max_ratio=2.0)
    assert kept == [("Hello world", "Hallo Welt"), ("Tab", "Tabulator"), ("Open file", "Datei öffnen")]
    assert counts == {"kept": 3, "dropped": {"empty": 2, "too_long": 1, "ratio": 1,
                                             "duplicate": 2, "invalid_utf8": 1}}


def test_cleaning_switches_and_keep_duplicates():
    pairs = [("a", "b c d e f g"), ("a", "b c d e f g")]
    kept, counts = clean.clean(pairs, max_len=None, max_ratio=None, dedup=False)
    assert len(kept) == 2 and counts["kept"] == 2 and sum(counts["dropped"].values()) == 0


def test_seg_len_for_scripts_without_spaces():
    assert clean.seg_len("Open the file", "eng_Latn") == 3
    assert clean.seg_len("打开文件", "zho_Hans") == 3            # ceil(4 / 1.5)
    assert clean.seg_len("%1 を開く", "jpn_Jpan") == 1 + 2      # an ASCII run + ceil(3 / 2)
    assert clean.drop_reason("Open the file", "打开文件", "eng_Latn", "zho_Hans") is None


def test_format_report_is_a_table():
    text = clean.format_report({"train/deu_Latn-eng_Latn": clean.empty_counts()})
    head, row = text.splitlines()
    assert head.split() == ["split/pair", "kept", *clean.DROP_REASONS]
    assert row.split()[0] == "train/deu_Latn-eng_Latn"


# --- manifest --------------------------------------------------------------------------------

def test_manifest_round_trip_and_sha256(tmp_path):
    w = LineWriter(tmp_path / "f.txt")
    for line in ["Hallo", "Grüße"]:
        w.write(line)
    digest = w.close()
    assert digest == sha256_file(tmp_path / "f.txt") == hashlib.sha256("Hallo\nGrüße\n".encode()).hexdigest()
    assert w.lines == 2
    m = new_manifest()
    add_pair(m, "train", pair_name("eng_Latn", "deu_Latn"), 2, {"eng_Latn": "e", "deu_Latn": digest},
             clean.empty_counts())
    add_input(m, tmp_path / "f.txt")
    add_input(m, tmp_path / "f.txt")  # recorded once
    write_manifest(tmp_path, m)
    back = load_manifest(tmp_path)
    assert back == json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert back["pairs"]["train"]["deu_Latn-eng_Latn"] == {"lines": 2, "sha256": {"deu_Latn": digest,
                                                                                "eng_Latn": "e"}}
    assert back["languages"] == ["deu_Latn", "eng_Latn"]
    assert back["inputs"] == [{"path": str((tmp_path / "f.txt").resolve()), "sha256": digest}]
    assert set(back) == {"format", "pairs", "languages", "inputs", "cleaning", "flores"}


def test_load_manifest_errors_name_path_and_command(tmp_path):
    with pytest.raises(UserError) as e:
        load_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(e.value) and "data_prep.import_corpus" in str(e.value)
    write(tmp_path / "manifest.json", '{"format": 1,\n "pairs": {')
    with pytest.raises(UserError, match=r"manifest.json:2: corrupt manifest"):
        load_manifest(tmp_path)
    write(tmp_path / "manifest.json", '{"format": 7, "pairs": {}}')
    with pytest.raises(UserError, match="not a format-1 corpus manifest"):
        load_manifest(tmp_path)


def test_atomic_dir_and_file(tmp_path):
    out = tmp_path / "corpus"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        with atomic_dir(out):
            pass
    assert (out / "a").read_text() == "1"
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]
    with pytest.raises(UserError, match="is a file"):
        with atomic_dir(out / "b"):
            pass
    with atomic_file(tmp_path / "x.json") as tmp:
        assert tmp.name == "x.json.tmp"
        tmp.write_text("{}")
    assert (tmp_path / "x.json").read_text() == "{}" and not (tmp_path / "x.json.tmp").exists()
