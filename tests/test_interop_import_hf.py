"""``python -m nmt.import_hf``: a random Transformers M2M100 with an NLLB tokenizer → nmt.

Checks against Transformers itself (no network, CPU, fp32): teacher-forced logits, beam search
ids, tokenization, the source convention, and import → export hf → import bit-identity.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from _fixtures_hf import build_m2m100, text_lines
from nmt.eval.search import beam_search
from nmt.import_hf import main as import_main
from nmt.inference import load_inference_checkpoint
from nmt.interop.vocab_layout import make_layout

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("m2m")
    hf = build_m2m100(root)
    import_main([str(hf), str(root / "ours")])
    return hf, root / "ours"


def _maps(ours_dir):
    ck = load_inference_checkpoint(ours_dir)
    src = json.loads((ours_dir / "config.json").read_text())["source"]["hf"]
    layout = make_layout(ck.tokenizer.vocab_size, src["codes"], src["mask"])
    fid = torch.tensor(layout.fairseq_id)
    inv = torch.full((src["embedding_rows"],), -1)  # fairseq id -> ours (-1: a row nmt drops)
    inv[fid[fid >= 0]] = torch.nonzero(fid >= 0).squeeze(1)
    return ck, fid, inv


def _hf(hf_dir, **kw):
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(hf_dir)).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(hf_dir), **kw)


def test_teacher_forced_logits_equal_transformers(imported):
    hf_dir, ours_dir = imported
    ck, fid, inv = _maps(ours_dir)
    model, tok = _hf(hf_dir, src_lang="eng_Latn", tgt_lang="fra_Latn")
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


def test_beam_search_gives_transformers_ids(imported):
    """Beam 4, length_penalty 0 (Transformers counts the forced tag in a hypothesis's length and
    nmt does not, nmt/eval/search.py, so only lenpen 0 normalises both alike). The imported model
    has 54 tag rows Transformers lacks (initialised to the mean language-code row, so their logit
    is the mean code logit) and lacks the 2 unused rows; a Transformers logits processor gives its
    distribution the same normaliser, then bans what nmt's Translator bans. The </s> row is
    scaled so most sentences finish before the length limit (there nmt forces </s> and
    Transformers does not); the ones that reach it are not compared."""
    hf_dir, ours_dir = imported
    ck, fid, inv = _maps(ours_dir)
    model, tok = _hf(hf_dir, src_lang="eng_Latn")
    ours = ck.build_model()
    with torch.no_grad():
        model.model.shared.weight[2] *= 6
        ours.embed.weight[ck.tokenizer.eos_id] *= 6
    banned = [ck.tokenizer.bos_id, *range(4, 260)]  # nmt's Translator bans these (and <pad>)
    banned_hf = sorted({0, 1} | {i for i in range(len(inv)) if inv[i] < 0 or int(inv[i]) in banned})
    n_ids, n_unknown = int((inv >= 0).sum()), int((fid < 0).sum())
    codes = [i for i in range(n_ids) if 4 <= int(inv[i]) < 260]

    class AsImported(transformers.LogitsProcessor):
        def __call__(self, ids, scores):
            if ids.shape[1] < 2:  # the forced language code
                return scores
            x = scores[:, :n_ids]
            mean_code = x[:, codes].mean(1, keepdim=True)
            out = scores - torch.logsumexp(torch.cat([x, mean_code.expand(-1, n_unknown)], 1), 1, keepdim=True)
            out[:, banned_hf] = float("-inf")
            return out

    lines, limit = text_lines(8, 7), 60
    fra = tok.convert_tokens_to_ids("fra_Latn")
    enc = tok(lines, return_tensors="pt", padding=True)
    with torch.no_grad():
        gen = model.generate(**enc, num_beams=4, forced_bos_token_id=fra, max_new_tokens=limit + 1,
                             length_penalty=0.0, early_stopping=True, do_sample=False,
                             logits_processor=transformers.LogitsProcessorList([AsImported()]))
    src = inv[enc["input_ids"]]
    src[enc["attention_mask"] == 0] = 0
    hyps = beam_search(ours, src, torch.full((len(lines),), ck.tokenizer.lang_id("fra_Latn")),
                       eos=ck.tokenizer.eos_id, beam=4, lenpen=0.0, max_len_a=0, max_len_b=limit, banned=banned)
    compared = 0
    for row, hyp in zip(gen.tolist(), hyps, strict=True):
        if len(hyp) >= limit - 1:
            continue
        assert row[:2] == [2, fra]
        theirs = [t for t in row[2:] if t != 1]
        assert theirs[-1] == 2
        assert [int(fid[t]) for t in hyp] == theirs[:-1]
        compared += 1
    assert compared >= 20 and max(len(h) for h in hyps if len(h) < limit - 1) >= 3


def test_text_tokenizes_to_the_original_ids(imported):
    hf_dir, ours_dir = imported
    ck, fid, _ = _maps(ours_dir)
    _, tok = _hf(hf_dir)
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

    ck, fid, _ = _maps(tmp_path / "ours")
    _, tok = _hf(hf, src_lang="deu_Latn")
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
