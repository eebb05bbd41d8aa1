"""Flores-200 layout reader: languages, strict UTF-8, alignment and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmt.errors import UserError
from nmt.eval import flores


def make_split(root: Path, split: str, langs: dict[str, str]) -> Path:
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    for code, text in langs.items():
        (d / f"{code}.{split}").write_text(text, encoding="utf-8")
    return root


def test_list_and_read(tmp_path):
    root = make_split(tmp_path, "devtest", {
        "fra_Latn": "Bonjour.\nMerci.\n",
        "eng_Latn": "Hello.\r\nThanks.",  # CRLF and no final newline
    })
    (tmp_path / "devtest" / "README.md").write_text("not a language")
    (tmp_path / "devtest" / "xxx_Yyyy.devtest").write_text("unknown code\nx\n")
    (tmp_path / "devtest" / "eng_Latn.dev").write_text("other split\n")
    assert flores.list_languages(root, "devtest") == ["eng_Latn", "fra_Latn"]
    assert flores.read_language(root, "devtest", "eng_Latn") == ["Hello.", "Thanks."]
    both = flores.read_languages(root, "devtest", ["eng_Latn", "fra_Latn"], max_lines=1)
    assert both == {"eng_Latn": ["Hello."], "fra_Latn": ["Bonjour."]}


def test_read_text_lines_keeps_inner_empty_lines(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes(b"a\n\nc\n")
    assert flores.read_text_lines(p) == ["a", "", "c"]


def test_missing_split_names_path_and_layout(tmp_path):
    make_split(tmp_path, "dev", {"eng_Latn": "a\n"})
    with pytest.raises(UserError) as e:
        flores.list_languages(tmp_path, "devtest")
    msg = str(e.value)
    assert str(tmp_path / "devtest") in msg and "<dir>/<split>/<code>.<split>" in msg
    assert "found dev" in msg


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        flores.list_languages(tmp_path / "nope", "dev")


def test_missing_language_names_exact_path(tmp_path):
    make_split(tmp_path, "devtest", {"eng_Latn": "a\n"})
    with pytest.raises(UserError) as e:
        flores.read_language(tmp_path, "devtest", "fra_Latn")
    msg = str(e.value)
    assert str(tmp_path / "devtest" / "fra_Latn.devtest") in msg
    assert "<dir>/<split>/<code>.<split>" in msg and "eng_Latn" in msg


def test_unequal_line_counts(tmp_path):
    make_split(tmp_path, "dev", {"eng_Latn": "a\nb\n", "fra_Latn": "a\n"})
    with pytest.raises(UserError) as e:
        flores.read_languages(tmp_path, "dev", ["eng_Latn", "fra_Latn"])
    msg = str(e.value)
    assert "fra_Latn.dev has 1 lines" in msg and "eng_Latn.dev has 2" in msg


def test_empty_file(tmp_path):
    make_split(tmp_path, "dev", {"eng_Latn": ""})
    with pytest.raises(UserError, match=r"eng_Latn\.dev is empty"):
        flores.read_language(tmp_path, "dev", "eng_Latn")


def test_invalid_utf8_names_file_and_line(tmp_path):
    d = tmp_path / "dev"
    d.mkdir()
    (d / "eng_Latn.dev").write_bytes(b"ok\nstill ok\nbad \xff byte\n")
    with pytest.raises(UserError) as e:
        flores.read_language(tmp_path, "dev", "eng_Latn")
    assert f"{d / 'eng_Latn.dev'}:3: invalid UTF-8" in str(e.value)
