"""data_prep.demo_corpus: .mo parsing, string cleaning, splitting, and a real Django build."""

from __future__ import annotations

import gettext
import json
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from data_prep import clean, demo_catalogs, demo_corpus
from data_prep.manifest import sha256_file
from data_prep.readers import CatalogEntry, read_mo
from nmt.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write_mo(path: Path, entries: list[tuple[str | None, str, str | None, list[str]]]) -> Path:
    """A minimal GNU .mo writer: (context, msgid, msgid_plural, msgstr forms) per message."""
    table = {b"": b"Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"}
    for ctx, msgid, plural, forms in entries:
        key = (f"{ctx}\x04" if ctx else "") + msgid + (f"\x00{plural}" if plural else "")
        table[key.encode()] = "\x00".join(forms).encode()
    items = sorted(table.items())
    n = len(items)
    orig_at, trans_at = 28, 28 + 8 * n
    offset = trans_at + 8 * n
    heads, blob = [b"", b""], b""
    for col in (0, 1):
        for item in items:
            s = item[col]
            heads[col] += struct.pack("<2I", len(s), offset + len(blob))
            blob += s + b"\x00"
    header = struct.pack("<7I", 0x950412DE, 0, n, orig_at, trans_at, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + heads[0] + heads[1] + blob)
    return path


# --- .mo parsing -----------------------------------------------------------------------------

def test_read_mo_contexts_plurals_and_agreement_with_gettext(tmp_path):
    path = write_mo(tmp_path / "sw.mo", [
        (None, "~Save", None, ["~Speichern"]),
        ("STR_TITLE", "Title", None, ["Titel"]),
        ("STR_CHAPTERS", "chapter", "chapters", ["Kapitel", "Kapitel (mehrere)"]),
        (None, "Untranslated", None, [""]),
    ])
    entries = list(read_mo(path))
    assert CatalogEntry(None, "~Save", None, ("~Speichern",)) in entries
    assert CatalogEntry("STR_TITLE", "Title", None, ("Titel",)) in entries
    assert CatalogEntry("STR_CHAPTERS", "chapter", "chapters", ("Kapitel", "Kapitel (mehrere)")) in entries
    assert len(entries) == 3  # header and the empty translation are skipped
    with path.open("rb") as f:  # the writer is sound: Python's own reader agrees
        t = gettext.GNUTranslations(f)
    assert t.gettext("~Save") == "~Speichern" and t.pgettext("STR_TITLE", "Title") == "Titel"
    assert t.npgettext("STR_CHAPTERS", "chapter", "chapters", 2) == "Kapitel (mehrere)"


def test_read_mo_rejects_non_catalogs(tmp_path):
    bad = tmp_path / "x.mo"
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(UserError, match=r"x\.mo: not a GNU \.mo catalog"):
        list(read_mo(bad))


# --- string cleaning -------------------------------------------------------------------------

@pytest.mark.parametrize("raw, text", [
    ("Ti_me", "Time"), ("~Tools", "Tools"), ("< Bac~k", "< Back"),
    ("時刻(_M)", "時刻"), ("詳細(~D)...", "詳細..."), ("ミリ秒(_C):", "ミリ秒:"),
    ("Removing %EXTENSION_NAME", "Removing %EXTENSION_NAME"),      # placeholder kept whole
    ("Use %DEFAULTEXTENSION _Format", "Use %DEFAULTEXTENSION Format"),
    ("ISO_WEEK_NUM", "ISO_WEEK_NUM"),                                # several "_": an identifier
    ("The drawing.<BR>Please check", "The drawing. Please check"),
    ("<b>Note</b>: see <a href='x'>here</a> &amp; there", "Note: see here & there"),
    ("<empty>", "<empty>"),                                          # not an HTML tag
    ("Line one\nline  two", "Line one line two"),
])
def test_clean_ui_string(raw, text):
    assert clean.clean_ui_string(raw) == text


def test_placeholders_and_split_key():
    assert clean.placeholders("Slide %1 of %2 in $(ARG1) by %PRODUCTNAME, %(name)s {0} 50%") == \
        sorted(["%1", "%2", "$(ARG1)", "%PRODUCTNAME", "%(name)s", "{0}"])
    keys = {clean.split_key(s) for s in ["Save", "Save.", "save...", "Save %1!", "(Save)"]}
    assert keys == {"save"}
    assert clean.split_key("%1 - %2") == ""


def test_extract_picks_one_translation_and_counts_drops(tmp_path):
    a = write_mo(tmp_path / "a.mo", [
        ("c1", "~Save", None, ["~Speichern"]),
        ("c2", "Save", None, ["Sichern"]),
        ("c3", "_Save", None, ["Speichern"]),            # majority: Speichern (2 votes)
        ("c1", "Open", None, ["Öffnen"]),
        ("c2", "Open", None, ["Aufmachen"]),             # 1:1 tie -> smallest string
        (None, "OK", None, ["OK"]),                       # identical
        (None, "Page %1", None, ["Seite"]),               # placeholder lost
        (None, "%1", None, ["%1 "]),                      # no words
        (None, "Ta_b", None, ["(_B)"]),                   # empty after cleaning
        ("p", "%d file", "%d files", ["%d Datei", "%d Dateien"]),
    ])
    pick, why = demo_corpus.extract([a], accelerators=True)
    assert pick == {"Save": "Speichern", "Open": "Aufmachen", "%d file": "%d Datei"}
    assert (why["identical"], why["placeholders"], why["no_words"], why["empty"]) == (1, 1, 1, 1)
    assert why["messages"] == 10 and why["several_translations"] == 2


def test_locale_mapping():
    m = demo_catalogs.locale_to_flores
    assert m("de") == "deu_Latn" and m("zh_CN") == m("zh-cn") == m("zh_Hans") == "zho_Hans"
    assert m("pt-br") == "por_Latn" and m("pa-in") == "pan_Guru" and m("he") == "heb_Hebr"
    assert m("sr@latin") is None and m("en-gb") is None and m("es_AR") is None and m("in") is None
    assert demo_catalogs.choose_locales(["pt", "pt-br", "de", "br"], ["por_Latn", "deu_Latn"], "X") == \
        {"por_Latn": "pt-br", "deu_Latn": "de"}
    with pytest.raises(UserError, match="--langs kor_Hang: X has no catalog"):
        demo_catalogs.choose_locales(["de"], ["kor_Hang"], "X")


# --- splitting -------------------------------------------------------------------------------

def test_assign_splits_multiway_eval_and_no_straddling():
    langs = ["deu_Latn", "fra_Latn", "jpn_Jpan"]
    have: dict[str, set[str]] = {}
    for i in range(60):
        have[f"Item number {i}"] = set(langs if i % 3 else langs[:2])   # 40 multi-way
        have[f"Item number {i}."] = {"deu_Latn"}                           # near-variant, one lang
    split_of, held, size = demo_corpus.assign_splits(have, langs, eval_size=6)
    assert size == 6
    assert split_of == demo_corpus.assign_splits(have, langs, eval_size=6)[0]  # deterministic
    by_split = defaultdict(list)
    for en, s in split_of.items():
        by_split[s].append(en)
    assert len(by_split["valid"]) == len(by_split["test"]) == 6
    assert all(have[en] == set(langs) for s in ("valid", "test") for en in by_split[s])
    key_splits = defaultdict(set)
    for en, s in split_of.items():
        key_splits[clean.split_key(en)].add(s)
    assert all(len(v) == 1 for v in key_splits.values())
    assert held == {f"{en}." for en in by_split["valid"] + by_split["test"]}  # variants held out
    assert not held & set(split_of)
    # a small multi-way pool: each eval split gets at most a quarter of it
    assert demo_corpus.assign_splits(have, langs, eval_size=500)[2] == 10


def _tiny_catalogs(tmp_path: Path) -> demo_corpus.Catalogs:
    words = [f"Colour {c} {n}" for c in ("red", "green", "blue", "grey") for n in range(10)]
    files = {}
    for code, tr, count in [("deu_Latn", "Farbe", 40), ("fra_Latn", "Couleur", 40), ("jpn_Jpan", "色", 24)]:
        entries = [(None, w, None, [f"{tr} {w[7:]}"]) for w in words[:count]]
        entries.append((None, "~Save", None, [f"~{tr}!"]))
        entries.append((None, "Long", None, [" ".join([tr] * 12)]))  # ratio: ja (6+1)/(1+1) > 3
        files[code] = [write_mo(tmp_path / "mo" / code / "x.mo", entries)]
    return demo_corpus.Catalogs("tiny", files, {c: c[:2] for c in files}, [f[0] for f in files.values()])


def test_pipeline_on_tiny_catalogs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_corpus, "django_catalogs", lambda langs: _tiny_catalogs(tmp_path))
    out = tmp_path / "corpus"
    demo_corpus.main(["--out", str(out), "--source", "django", "--langs", "deu_Latn", "fr", "jpn_Jpan",
                      "--eval-size", "4", "--max-train-per-lang", "30"])
    printed = capsys.readouterr().out
    assert "note: --langs 'fr' read as fra_Latn" in printed and "deu_Latn" in printed
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    lines = {s: {p: v["lines"] for p, v in m["pairs"][s].items()} for s in ("train", "valid", "test")}
    assert lines["valid"] == lines["test"] == {"deu_Latn-eng_Latn": 4, "eng_Latn-fra_Latn": 4,
                                               "eng_Latn-jpn_Jpan": 4}
    # 25 multi-way strings -> 8 in eval; de/fr have 41 in all -> capped at 30; ja 25 - 8 = 17
    assert lines["train"] == {"deu_Latn-eng_Latn": 30, "eng_Latn-fra_Latn": 30, "eng_Latn-jpn_Jpan": 17}
    dropped = [m["cleaning"][f"{s}/deu_Latn-eng_Latn"]["dropped"]["ratio"] for s in ("train", "valid", "test")]
    assert sum(dropped) == 1
    eng = (out / "flores" / "dev" / "eng_Latn.dev").read_text(encoding="utf-8").splitlines()
    ja = (out / "flores" / "dev" / "jpn_Jpan.dev").read_text(encoding="utf-8").splitlines()
    assert len(eng) == len(ja) == 4 and all(j == "色 " + e[7:] for e, j in zip(eng, ja, strict=True))
    assert m["flores"]["devtest"] == ["deu_Latn", "eng_Latn", "fra_Latn", "jpn_Jpan"]
    train_en = (out / "bitext/train/deu_Latn-eng_Latn.eng_Latn").read_text(encoding="utf-8").splitlines()
    assert not set(train_en) & set(eng)
    sha = m["pairs"]["train"]["eng_Latn-jpn_Jpan"]["sha256"]["jpn_Jpan"]
    assert sha == sha256_file(out / "bitext/train/eng_Latn-jpn_Jpan.jpn_Jpan")


# --- the real thing: Django's catalogs, and CLI errors ------------------------------------------

def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.demo_corpus", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_build_from_installed_django_catalogs(tmp_path):
    pytest.importorskip("django")
    out = tmp_path / "demo"
    proc = run("--out", out, "--source", "django", "--langs", "de", "ru", "ja", "--eval-size", "60",
               "--max-train-per-lang", "400")
    assert proc.returncode == 0, proc.stderr
    assert "source: Django" in proc.stdout and "locales without a Flores-200 code" in proc.stdout
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["languages"] == ["deu_Latn", "eng_Latn", "jpn_Jpan", "rus_Cyrl"]
    splits: dict[str, dict[str, list[str]]] = {}
    for split in ("train", "valid", "test"):
        splits[split] = {}
        for pair, info in m["pairs"][split].items():
            for lang in pair.split("-"):
                text = (out / "bitext" / split / f"{pair}.{lang}").read_text(encoding="utf-8")
                assert len(text.splitlines()) == info["lines"] and "\t" not in text
                assert sha256_file(out / "bitext" / split / f"{pair}.{lang}") == info["sha256"][lang]
            splits[split][pair] = (out / "bitext" / split / f"{pair}.eng_Latn").read_text(
                encoding="utf-8").splitlines()
    for split, fsplit in (("valid", "dev"), ("test", "devtest")):
        eng = (out / "flores" / fsplit / f"eng_Latn.{fsplit}").read_text(encoding="utf-8").splitlines()
        assert len(eng) == 60 and all(v == eng for v in splits[split].values())  # multi-way, same order
    assert all(150 < len(v) <= 400 for v in splits["train"].values())
    key_split: dict[str, set[str]] = defaultdict(set)
    for split, pairs in splits.items():
        for lines in pairs.values():
            for en in lines:
                key_split[clean.split_key(en)].add(split)
    assert all(len(s) == 1 for s in key_split.values())
    assert not any("~" in en or "<a " in en for lines in splits["train"].values() for en in lines)


def test_demo_cli_errors_leave_outputs_alone(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for args, needle in [((), "already exists; pass --overwrite"),
                         (("--overwrite", "--langs", "xx_Yyyy"), "unknown language code 'xx_Yyyy'")]:
        proc = run("--out", out, "--source", "django", *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().startswith("error: ") and needle in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert [p.name for p in tmp_path.iterdir()] == ["demo"] and (out / "keep.txt").read_text() == "mine"
