"""``python -m nmt.import_hf``: a random Transformers M2M100 with an NLLB tokenizer → nmt.

Checks against Transformers itself (no network, CPU, fp32): teacher-forced logits,
tokenization, the source convention, and import → export hf → import bit-identity.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from _fixtures_hf import build_m2m100, hf_model, maps, text_lines
from nmt.import_hf import main as import_main

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("m2m")
    hf = build_m2m100(root)
    import_main([str(hf), str(root / "ours")])
    return hf, root / "ours"


def test_teacher_forced_logits_equal_transformers(imported):
    hf_dir, ours_dir = imported
    ck, fid, inv = maps(ours_dir)
    model, tok = hf_model(hf_dir, src_lang="eng_Latn", tgt_lang="fra_Latn")
    lines = text_lines(3, 5)  # 12 sentences of 4 languages, mixed lengths: a padded batch
    enc = tok(lines, return_tensors="pt", padding=True)
    tgt = tok(text_target=lines[::-1], return_tensors="pt", padding=True)["input_ids"]
    dec = torch.cat([torch.full((len(lines), 1), 2), tgt[:, :-1]], 1)  # </s> [fra] y
    src, prev = inv[enc["input_ids"]], inv[dec]
    src[enc["attention_mask"] == 0] = 0
    prev[dec == 1] = 0
    want_src = [ck.tokenizer.lang_id("eng_Latn"), *ck.tokenizer.encode(lines[0]), ck.tokenizer.eos_id]
    assert src[0, : len(want_src)].tolist() == want_src  # [src_lang] x </s> in both conventions
    with torch.no_grad():
        theirs = model(**enc, decoder_input_ids=dec).logits
        ours, _ = ck.build_model()(src, prev)
    known, rows = fid >= 0, prev.ne(0)
    assert rows.sum() > 100 and theirs[rows].std() > 0.1  # a real comparison, not of near-zero logits
    diff = (ours[..., known] - theirs[..., fid[known]])[rows].abs().max().item()
    assert diff < 1e-4, diff


def test_text_tokenizes_to_the_original_ids(imported):
    hf_dir, ours_dir = imported
    ck, fid, _ = maps(ours_dir)
    _, tok = hf_model(hf_dir)
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(hf_dir / "sentencepiece.bpe.model"))
    lines = text_lines(60, 11) + ["", "  spaces  between ", "UPPER lower 123 !?", "ünïcödé ß € 中文"]
    for line in lines:  # the original SentencePiece model: piece k at k + 1, <unk> at 3
        assert [int(fid[i]) for i in ck.tokenizer.encode(line)] == [k + 1 if k else 3 for k in sp.encode(line)], line
    for line in lines:  # Transformers' fast tokenizer keeps a trailing "▁" SentencePiece drops: strip
        want = tok(line.strip(), add_special_tokens=False)["input_ids"]  # (nmt.translate strips lines)
        assert [int(fid[i]) for i in ck.tokenizer.encode(line.strip())] == want, line


@pytest.mark.slow
def test_legacy_source_convention_is_recorded_and_honoured(tmp_path):
    hf = build_m2m100(tmp_path, legacy=True)
    import_main([str(hf), str(tmp_path / "ours")])
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["model"]["source_convention"] == "legacy"
    from nmt.data.batching import source_sequence

    ck, fid, _ = maps(tmp_path / "ours")
    _, tok = hf_model(hf, src_lang="deu_Latn")
    line = text_lines(1, 3)[0]
    ours = source_sequence(ck.tokenizer.encode(line), ck.tokenizer.lang_id("deu_Latn"), 3, "legacy")
    assert [int(fid[i]) for i in ours] == tok(line)["input_ids"]  # x </s> [src_lang]


def test_import_export_import_is_bit_identical(imported, tmp_path):
    from nmt.export import main as export_main

    _, ours_dir = imported
    export_main([str(ours_dir), str(tmp_path / "hf"), "--format", "hf"])
    import_main([str(tmp_path / "hf"), str(tmp_path / "again")])
    a, b = load_file(ours_dir / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (ours_dir / "spm.model").read_bytes() == (tmp_path / "again" / "spm.model").read_bytes()
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg["decoder_start_token_id"] == 2 and hf_cfg["pad_token_id"] == 1 and hf_cfg["bos_token_id"] == 0
    assert hf_cfg["nmt_export"]["codes"][0] == "ace_Arab"  # marks an earlier export: --overwrite may replace it
    export_main([str(ours_dir), str(tmp_path / "hf"), "--format", "hf", "--overwrite"])
    with pytest.raises(SystemExit):  # but not an nmt export directory
        export_main([str(ours_dir), str(tmp_path / "again"), "--format", "hf", "--overwrite"])
    assert (tmp_path / "again" / "spm.model").is_file()


@pytest.mark.slow
def test_translate_reads_the_import(imported, tmp_path):
    from conftest import run_module

    _, ours_dir = imported
    (tmp_path / "in.txt").write_text("\n".join(text_lines(2, 1)) + "\n", encoding="utf-8")
    proc = run_module("nmt.translate", f"ckpt={ours_dir}", "src_lang=eng_Latn", "tgt_lang=fra_Latn",
                      f"input={tmp_path / 'in.txt'}", "beam=2")
    assert len(proc.stdout.splitlines()) == 8


def test_nllb_codes_are_flores200_codes():
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    from nmt.langs import FLORES200

    assert len(FAIRSEQ_LANGUAGE_CODES) == 202 and set(FAIRSEQ_LANGUAGE_CODES) <= set(FLORES200)
    assert sorted(set(FLORES200) - set(FAIRSEQ_LANGUAGE_CODES)) == ["arb_Latn", "min_Arab"]  # start as mean rows
