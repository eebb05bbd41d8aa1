"""Flores+ next to Flores-200: code renames both ways, the text, jsonl and parquet layouts, the release
recorded in results.json and corpora, and refusing to mix the two."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_module
from nmt.errors import UserError
from nmt.eval import flores
from nmt.eval.flores_layout import check_comparable
from nmt.evaluate import main as evaluate_main
from nmt.langs import from_flores_plus, normalize_lang, to_flores_plus

SENTS = {  # Flores+ file code -> its dev/devtest lines
    "eng_Latn": ["One cat.", "Two dogs."],
    "cmn_Hans": ["一只猫。", "两只狗。"],
    "apc_Arab_sout3123": ["قطة.", "كلبان."],
    "nqo_Nkoo": ["ߞߊ߬ߟߊ.", "ߝߌ߬ߟߊ."],  # in Flores+ only: no Flores-200 code, ignored
}


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")


def flores_plus_text(root: Path) -> Path:
    d = root / "floresp-v2.0-rc.3"
    for split in ("dev", "devtest"):
        for code, lines in SENTS.items():
            write_lines(d / split / f"{split}.{code}", lines)
    return d


def test_renamed_codes_map_both_ways():
    assert to_flores_plus("zho_Hans") == "cmn_Hans" and from_flores_plus("cmn_Hans") == "zho_Hans"
    assert to_flores_plus("est_Latn") == "ekk_Latn" and from_flores_plus("ekk_Latn") == "est_Latn"
    assert to_flores_plus("ajp_Arab") == "apc_Arab_sout3123" and to_flores_plus("apc_Arab") == "apc_Arab_nort3139"
    assert from_flores_plus("twi_Latn_akua1239") == "twi_Latn" and from_flores_plus("twi_Latn_asan1239") == "aka_Latn"
    assert to_flores_plus("eng_Latn") == "eng_Latn" and from_flores_plus("nqo_Nkoo") == "nqo_Nkoo"
    assert normalize_lang("cmn_Hant") == "zho_Hant" and normalize_lang("apc_Arab") == "apc_Arab"


def test_flores_plus_text_layout(tmp_path):
    d = flores_plus_text(tmp_path)
    assert flores.list_languages(d, "devtest") == ["ajp_Arab", "eng_Latn", "zho_Hans"]
    assert flores.lang_path(d, "devtest", "zho_Hans") == d / "devtest" / "devtest.cmn_Hans"
    assert flores.read_languages(d, "dev", ["zho_Hans", "ajp_Arab"]) == {
        "zho_Hans": SENTS["cmn_Hans"], "ajp_Arab": SENTS["apc_Arab_sout3123"]}
    assert flores.layout(d, "dev").describe() == {"dataset": "flores+", "version": "2.0-rc.3",
                                                  "layout": "<split>.<code>"}


def test_flores_plus_jsonl_layout_in_id_order(tmp_path):
    d = tmp_path / "hf"
    for code, lines in (("eng_Latn", SENTS["eng_Latn"]), ("cmn_Hans", SENTS["cmn_Hans"])):
        rows = [{"id": i + 9, "iso_639_3": code[:3], "text": t} for i, t in enumerate(lines)]  # ids 9, 10
        rows[1]["id"] = "10"  # a string id sorts as a number (10 after 9), not as text
        write_lines(d / "devtest" / f"{code}.jsonl", [json.dumps(r, ensure_ascii=False) for r in reversed(rows)])
    assert flores.read_languages(d, "devtest", ["eng_Latn", "zho_Hans"]) == {
        "eng_Latn": SENTS["eng_Latn"], "zho_Hans": SENTS["cmn_Hans"]}
    assert flores.layout(d, "devtest").describe()["version"] == "unknown"
    write_lines(d / "devtest" / "fra_Latn.jsonl", ['{"id": 1}'])
    with pytest.raises(UserError, match='fra_Latn.jsonl: row 1 has no "text"'):
        flores.read_language(d, "devtest", "fra_Latn")


def test_flores_plus_parquet_layout_in_id_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "hf"
    (d / "dev").mkdir(parents=True)
    for code, lines in (("eng_Latn", SENTS["eng_Latn"]), ("apc_Arab_sout3123", SENTS["apc_Arab_sout3123"])):
        ids = list(range(len(lines)))[::-1]  # stored in reverse id order
        table = pa.table({"id": ids, "iso_639_3": [code[:3]] * len(lines), "text": lines[::-1]})
        pq.write_table(table, d / "dev" / f"{code}.parquet")
    assert flores.list_languages(d, "dev") == ["ajp_Arab", "eng_Latn"]
    assert flores.read_languages(d, "dev", ["eng_Latn", "ajp_Arab"]) == {
        "eng_Latn": SENTS["eng_Latn"], "ajp_Arab": SENTS["apc_Arab_sout3123"]}
    (d / "dev" / "fra_Latn.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(UserError, match="fra_Latn.parquet: not a readable parquet file"):
        flores.read_language(d, "dev", "fra_Latn")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)  # as if not installed
    (tmp_path / "devtest").mkdir()
    (tmp_path / "devtest" / "eng_Latn.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match="pip install pyarrow"):
        flores.read_language(tmp_path, "devtest", "eng_Latn")


def test_a_directory_mixing_releases_is_refused(tmp_path):
    write_lines(tmp_path / "devtest" / "eng_Latn.devtest", ["a"])
    write_lines(tmp_path / "devtest" / "devtest.cmn_Hans", ["b"])
    with pytest.raises(UserError, match="mixes Flores file layouts"):
        flores.list_languages(tmp_path, "devtest")


def test_check_comparable():
    f200 = {"dataset": "flores200", "version": "unknown"}
    check_comparable(f200, None, "x")  # no record = Flores-200 (written before Flores+ support)
    check_comparable({"dataset": "flores+", "version": "2.0-rc.3"}, {"dataset": "flores+", "version": "2.1"}, "x")
    with pytest.raises(UserError, match="not comparable"):
        check_comparable(f200, {"dataset": "flores+", "version": "2.0-rc.3"}, "baseline")
    with pytest.raises(UserError, match="not comparable"):
        check_comparable({"dataset": "flores+", "version": "1.0"}, {"dataset": "flores+", "version": "2.0"}, "x")


def test_evaluate_records_the_release(tmp_path):
    d = flores_plus_text(tmp_path)
    hyp = tmp_path / "hyp"
    write_lines(hyp / "eng_Latn-cmn_Hans.hyp", SENTS["cmn_Hans"])  # a Flores+ code in the file name
    evaluate_main([f"hyp_dir={hyp}", f"flores.dir={d}"])
    res = json.loads((hyp / "eval" / "results.json").read_text())
    assert res["testset"] == {"dataset": "flores+", "version": "2.0-rc.3", "layout": "<split>.<code>"}
    assert res["directions"]["eng_Latn-zho_Hans"]["chrf++"] == pytest.approx(100.0)
    assert any("test set: flores+ 2.0-rc.3" in n for n in res["notes"])


def test_import_flores_plus_then_refuse_flores200_into_the_same_corpus(tmp_path):
    d = flores_plus_text(tmp_path)
    corpus = tmp_path / "corpus"
    run_module("data_prep.import_corpus", "--out", corpus, "--format", "flores", "--flores-dir", d,
               "--langs", "eng_Latn", "cmn_Hans", "ajp_Arab")
    assert (corpus / "flores" / "devtest" / "zho_Hans.devtest").read_text(encoding="utf-8").splitlines() == \
        SENTS["cmn_Hans"]
    assert json.loads((corpus / "flores" / "testset.json").read_text())["dataset"] == "flores+"
    assert flores.layout(corpus / "flores", "devtest").describe()["version"] == "2.0-rc.3"
    f200 = tmp_path / "flores200"
    for split in ("dev", "devtest"):
        write_lines(f200 / split / f"deu_Latn.{split}", ["x", "y"])
        write_lines(f200 / split / f"eng_Latn.{split}", ["x", "y"])
    bad = run_module("data_prep.import_corpus", "--out", corpus, "--append", "--format", "flores",
                     "--flores-dir", f200, "--langs", "eng_Latn", "deu_Latn", check=False)
    assert bad.returncode == 2 and "not comparable" in bad.stderr and "Traceback" not in bad.stderr
    assert not (corpus / "flores" / "devtest" / "deu_Latn.devtest").exists()
