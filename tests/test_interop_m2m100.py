"""``python -m nmt.import_hf`` of an M2M-100 checkpoint: Transformers' ``M2M100Tokenizer``
(``vocab.json`` in a shuffled order lacking some SentencePiece pieces, ``__xx__`` codes) and a
random ``M2M100ForConditionalGeneration``; CPU, fp32, no network. Compared with Transformers
itself: token ids, teacher-forced logits, beam search through ``Translator`` against
``generate(num_beams=4, forced_bos_token_id=tokenizer.get_lang_id(...))``, and export hf."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from _fixtures_hf import M2M_LEFT_OUT, M2M_ONLY, ban_after_tag, build_m2m100, hf_model, maps, text_lines
from nmt.import_hf import main as import_main
from nmt.interop.m2m_codes import M2M100_TO_NMT

transformers = pytest.importorskip("transformers")
LIMIT = 14  # generated tokens after the tag; Transformers' max_new_tokens = LIMIT + 1 (the tag)
SCALE = 6.0  # </s> row scale in both models: some sentences end early, others reach the limit
SCRIPTS = ["Ελληνικά γράμματα και λέξεις.", "中文字符 和 日本語のテキスト.", "النص العربي هنا.",
           "हिन्दी पाठ यहाँ है.", "Mixed кошка cat 中 ok!", "", "  spaces  between", "UPPER lower 123 !?"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("m2m_tok")
    hf = build_m2m100(root, tokenizer="m2m100")
    import_main([str(hf), str(root / "ours")])
    return hf, root / "ours"


def test_config_records_the_languages_it_can_translate(imported):
    _, ours_dir = imported
    cfg = json.loads((ours_dir / "config.json").read_text())
    assert cfg["languages"] == sorted(M2M100_TO_NMT.values()) and len(cfg["languages"]) == 100
    assert cfg["added_languages"] == {"bre_Latn": 208, "fry_Latn": 209}  # the first two spare slots
    hf_src = cfg["source"]["hf"]
    assert hf_src["tokenizer"] == "m2m100" and hf_src["pieces_read_as_unk"] == M2M_LEFT_OUT
    assert hf_src["unused_rows_dropped"] == 8  # M2M-100's madeup words
    ck, fid, _ = maps(ours_dir)
    absent = set(cfg["model"]["absent_ids"])
    assert ck.tokenizer.lang_id("bre_Latn") == 208 and 208 not in absent
    assert ck.tokenizer.lang_id("eng_Latn") not in absent and ck.tokenizer.lang_id("ace_Arab") in absent
    assert absent == set(torch.nonzero(fid < 0).squeeze(1).tolist())
    assert len(absent) == 204 - 98 + 50 + M2M_LEFT_OUT + 2  # missing tags, spares, unk pieces and markers


def test_token_ids_equal_m2m100_tokenizer(imported):
    hf_dir, ours_dir = imported
    ck, fid, _ = maps(ours_dir)
    _, tok = hf_model(hf_dir)
    assert type(tok).__name__ == "M2M100Tokenizer"
    lines = text_lines(60, 11) + SCRIPTS  # 248 lines: Latin, Cyrillic and scripts the model lacks
    unks = 0
    for line in lines:
        want = tok(line, add_special_tokens=False)["input_ids"]
        assert [int(fid[i]) for i in ck.tokenizer.encode(line)] == want, line
        unks += want.count(3)
    assert unks > 50  # the left-out pieces and unknown characters are compared, not only known pieces
    assert ck.tokenizer.encode_batch(lines) == [ck.tokenizer.encode(line) for line in lines]
    for m2m, ours in (("de", "deu_Latn"), ("br", "bre_Latn"), ("zh", "zho_Hans")):
        tok.src_lang = m2m  # [src_lang] x </s>
        want = [fid[ck.tokenizer.lang_id(ours)], *(fid[i] for i in ck.tokenizer.encode(lines[0])), 2]
        assert tok(lines[0])["input_ids"] == [int(i) for i in want]
    only = ck.tokenizer.id_to_piece(int(torch.nonzero(fid == tok.convert_tokens_to_ids(M2M_ONLY[0]))))
    assert only == M2M_ONLY[0]  # a vocab.json token that is no piece keeps its row


def _batch(tok, lines, inv):
    enc = tok(lines, return_tensors="pt", padding=True)
    tgt = tok(text_target=lines[::-1], return_tensors="pt", padding=True)["input_ids"]
    dec = torch.cat([torch.full((len(lines), 1), 2), tgt[:, :-1]], 1)  # </s> [tgt] y
    src, prev = inv[enc["input_ids"]], inv[dec]
    src[enc["attention_mask"] == 0] = 0
    prev[dec == 1] = 0
    return enc, dec, src, prev


def test_teacher_forced_logits_equal_transformers(imported):
    hf_dir, ours_dir = imported
    ck, fid, inv = maps(ours_dir)
    model, tok = hf_model(hf_dir, src_lang="en", tgt_lang="fr")
    lines = text_lines(3, 5) + SCRIPTS[:4]  # 16 sentences, <unk> included, mixed lengths: a padded batch
    enc, dec, src, prev = _batch(tok, lines, inv)
    assert bool((src >= 0).all()) and bool(prev.eq(ck.tokenizer.unk_id).any())
    with torch.no_grad():
        theirs = model(**enc, decoder_input_ids=dec).logits
        ours, _ = ck.build_model()(src, prev)
    known, rows = fid >= 0, prev.ne(0)
    assert rows.sum() > 100 and theirs[rows].std() > 0.1
    diff = (ours[..., known] - theirs[..., fid[known]])[rows].abs().max().item()
    assert diff < 1e-4, diff


def test_translator_gives_generate_output(imported):
    from nmt.inference import Translator

    hf_dir, ours_dir = imported
    ck, fid, inv = maps(ours_dir)
    model, tok = hf_model(hf_dir, src_lang="en")
    model.resize_token_embeddings(int((inv >= 0).sum()))  # the madeup rows: nmt drops them (docs/interop.md)
    tr = Translator.from_checkpoint(ours_dir)
    with torch.no_grad():  # a larger </s> logit: some sentences end early, others reach the limit
        model.model.shared.weight[2] *= SCALE
        tr.model.embed.weight[ck.tokenizer.eos_id] *= SCALE
    banned_hf = sorted({1} | {int(fid[i]) for i in tr.banned if fid[i] >= 0})
    lines = text_lines(6, 7)  # 24 sentences
    enc = tok(lines, return_tensors="pt", padding=True)
    fra = tok.get_lang_id("fr")
    with torch.no_grad():
        gen = model.generate(**enc, num_beams=4, forced_bos_token_id=fra, max_new_tokens=LIMIT + 1,
                             length_penalty=1.0, early_stopping=True, do_sample=False,
                             logits_processor=ban_after_tag(banned_hf))
    assert bool((gen[:, 1] == fra).all())
    want = [ck.tokenizer.decode([int(inv[t]) for t in row[2:] if t not in (1, 2)]) for row in gen.tolist()]
    got = tr.translate(lines, "eng_Latn", "fra_Latn", beam_size=4, len_penalty=1.0, max_len_a=0, max_len_b=LIMIT)
    assert got == want
    ended = [2 in row[2:] for row in gen.tolist()]
    assert 3 <= ended.count(False) <= len(lines) - 3, ended  # both kinds of ending are compared


@pytest.mark.slow
def test_translate_cli_reads_the_import(imported, tmp_path):
    from conftest import run_module

    _, ours_dir = imported
    (tmp_path / "in.txt").write_text("\n".join(text_lines(1, 2)) + "\n", encoding="utf-8")
    for src, tgt in (("eng_Latn", "fra_Latn"), ("bre_Latn", "fry_Latn")):  # fry_Latn: M2M-100's fy, a spare slot
        proc = run_module("nmt.translate", f"ckpt={ours_dir}", f"src_lang={src}", f"tgt_lang={tgt}",
                          f"input={tmp_path / 'in.txt'}", "beam=2")
        assert len(proc.stdout.splitlines()) == 4, proc.stderr[-300:]


def test_import_export_hf_loads_in_transformers(imported, tmp_path):
    from nmt.export import main as export_main

    hf_dir, ours_dir = imported
    ck, fid, inv = maps(ours_dir)
    export_main([str(ours_dir), str(tmp_path / "hf"), "--format", "hf"])
    model, tok = hf_model(tmp_path / "hf", src_lang="en", tgt_lang="fr")
    orig, orig_tok = hf_model(hf_dir, src_lang="en", tgt_lang="fr")
    lines = text_lines(2, 4) + SCRIPTS[:3]
    for line in lines:
        assert tok(line)["input_ids"] == orig_tok(line)["input_ids"], line
    enc = orig_tok(lines, return_tensors="pt", padding=True)
    dec = torch.cat([torch.full((len(lines), 1), 2), enc["input_ids"][:, :-1]], 1)
    with torch.no_grad():
        a = model(**enc, decoder_input_ids=dec).logits
        b = orig(**enc, decoder_input_ids=dec).logits
    assert a.shape[-1] == b.shape[-1] - 8 and torch.allclose(a, b[..., : a.shape[-1]], atol=1e-5)  # no madeup rows
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["tokenizer_class"] == "M2M100Tokenizer"
    import_main([str(tmp_path / "hf"), str(tmp_path / "again")])  # and back: the same model and vocabulary
    x, y = load_file(ours_dir / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert (ours_dir / "spm.model").read_bytes() == (tmp_path / "again" / "spm.model").read_bytes()


def test_ct2_export_is_refused_clearly(imported, tmp_path, capsys):
    from nmt.export import main as export_main

    with pytest.raises(SystemExit) as e:
        export_main([str(imported[1]), str(tmp_path / "ct2"), "--format", "ct2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "M2M-100 tokenizer" in err and "backend=torch" in err, err
    assert not (tmp_path / "ct2").exists()


def test_m2m_codes_are_transformers_list_in_order():
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    from nmt.langs import ALIASES, FLORES200

    assert list(M2M100_TO_NMT) == FAIRSEQ_LANGUAGE_CODES["m2m100"]
    assert set(FAIRSEQ_LANGUAGE_CODES["wmt21"]) <= set(M2M100_TO_NMT)
    assert {k: v for k, v in M2M100_TO_NMT.items() if v not in FLORES200} == {"br": "bre_Latn", "fy": "fry_Latn"}
    assert all(ALIASES[k] == v for k, v in M2M100_TO_NMT.items() if k in ALIASES)  # one meaning per code
    picks = {"ar": "arb_Arab", "zh": "zho_Hans", "fa": "pes_Arab", "ms": "zsm_Latn", "ne": "npi_Deva",
             "mn": "khk_Cyrl", "ff": "fuv_Latn", "mg": "plt_Latn", "ns": "nso_Latn", "yi": "ydd_Hebr"}
    assert all(M2M100_TO_NMT[k] == v for k, v in picks.items())
