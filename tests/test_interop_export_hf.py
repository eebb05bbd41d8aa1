"""``nmt.export --format hf``: a model in nmt's format → Transformers M2M100 with equal logits.

The model is the 60-step smoke run on the tiny test corpus (a unigram vocabulary made by
data_prep.train_spm); Transformers must load the export with no custom code and compute the
same logits (fp32, max abs 1e-4) over exactly our rows, permuted (the spare tag slots kept, the
last one being ``<mask>``), on a padded batch of mixed lengths, and its tokenizer must give the
ids ours gives (permuted to the fairseq layout). Exactness (log-probabilities, beam search,
the round trip) is tests/test_interop_export_exact.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from nmt.export import main as export_main
from nmt.inference import load_inference_checkpoint
from nmt.interop.vocab_layout import make_layout, spare_tokens, spm_to_fairseq
from nmt.langs import FLORES200

transformers = pytest.importorskip("transformers")

LINES = ["The cat sat on a mat.", "Le chat est sur un tapis pendant que la maison rouge.", "Кошка сидит.",
         "Birds sing under blue sky with green trees near old river and we saw the red house."]


@pytest.fixture(scope="module")
def hf_export(smoke_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "hf"
    export_main([str(smoke_run / "checkpoints" / "best.pt"), str(out), "--format", "hf"])
    return out


def _layout(ck):
    _, has_mask = spm_to_fairseq(ck.tokenizer.path.read_bytes(), "spm")
    return make_layout(ck.tokenizer.vocab_size, list(FLORES200), has_mask, spare_tokens()[:-1])


def test_transformers_loads_the_export_and_computes_our_logits(smoke_run, hf_export):
    ck = load_inference_checkpoint(smoke_run / "checkpoints" / "best.pt")
    ours = ck.build_model().float()
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(hf_export)).eval()
    cfg = json.loads((hf_export / "config.json").read_text())
    assert cfg["model_type"] == "m2m_100" and cfg["decoder_start_token_id"] == 2 and cfg["pad_token_id"] == 1
    tok, layout = ck.tokenizer, _layout(ck)
    fid = torch.tensor(layout.fairseq_id)
    eng, fra = tok.lang_id("eng_Latn"), tok.lang_id("fra_Latn")
    src = [[eng, *tok.encode(s), tok.eos_id] for s in LINES]
    prev = [[tok.eos_id, fra, *tok.encode(s)[:5]] for s in reversed(LINES)]

    def pad(seqs, value):
        t = torch.full((len(seqs), max(map(len, seqs))), value)
        for i, s in enumerate(seqs):
            t[i, : len(s)] = torch.tensor(s)
        return t

    s_ours, p_ours = pad(src, 0), pad(prev, 0)
    with torch.no_grad():
        logits, _ = ours(s_ours, p_ours)
        theirs = hf(input_ids=fid[s_ours], attention_mask=s_ours.ne(0).long(), decoder_input_ids=fid[p_ours]).logits
    assert layout.is_permutation and theirs.shape[-1] == len(fid)  # every row ours, no other row
    diff = (logits - theirs[..., fid])[p_ours.ne(0)].abs().max().item()
    assert diff < 1e-4, diff


def test_transformers_tokenizer_gives_our_ids(smoke_run, hf_export):
    ck = load_inference_checkpoint(smoke_run / "checkpoints" / "best.pt")
    fid = _layout(ck).fairseq_id
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf_export))
    from _fixtures_spm import sentences
    from conftest import dict_sentences, render

    lines = [render(w, lang) for w in dict_sentences(60, 3) for lang in ("eng_Latn", "fra_Latn", "deu_Latn")]
    lines += [s for lang in ("rus_Cyrl", "fra_Latn") for s in sentences(lang, 50, 9)]  # several scripts
    for line in lines + LINES:
        want = [fid[i] for i in ck.tokenizer.encode(line)]
        assert hf_tok(line, add_special_tokens=False)["input_ids"] == want, line
    eng = fid[ck.tokenizer.lang_id("eng_Latn")]
    assert hf_tok.convert_tokens_to_ids("eng_Latn") == eng
    assert hf_tok(LINES[0])["input_ids"] == [eng, *(fid[i] for i in ck.tokenizer.encode(LINES[0])), 2]
    spare0 = 4 + len(FLORES200)  # our tag block: the Flores-200 tags, then the spare slots
    last = spare0 + len(spare_tokens()) - 1  # the last spare slot is Transformers' <mask>
    assert ck.tokenizer.id_to_piece(spare0) == "__spare0__"
    assert hf_tok.convert_tokens_to_ids(["__spare0__", "<mask>"]) == [fid[spare0], fid[last]]
    assert {"__spare0__", "<mask>"} <= set(hf_tok.all_special_tokens)  # never text
