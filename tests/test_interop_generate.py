"""An import decodes like Transformers' ``generate``: absent vocabulary rows take no probability
mass (``model.absent_ids``) and ``length_convention=hf`` counts the forced tag and forces nothing
at the length limit. Random M2M100 + NLLB tokenizer, CPU, fp32, no network."""

from __future__ import annotations

import pytest
import torch

from _fixtures_hf import build_m2m100, hf_model, maps, text_lines
from nmt.eval.search import beam_search
from nmt.import_hf import main as import_main

transformers = pytest.importorskip("transformers")
LIMIT = 14  # generated tokens after the tag; Transformers' max_new_tokens = LIMIT + 1 (the tag)
SCALE = 6.0  # </s> row scale in both models: some sentences end early, others reach the limit


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("m2m")
    hf = build_m2m100(root)
    import_main([str(hf), str(root / "ours")])
    ck, fid, inv = maps(root / "ours")
    model, tok = hf_model(hf, src_lang="eng_Latn")
    n_ids = int((inv >= 0).sum())
    model.resize_token_embeddings(n_ids)  # the 2 rows past the tokenizer: nmt drops them (docs/interop.md)
    return ck, fid, inv, model, tok


def test_absent_rows_are_recorded_and_take_no_mass(imported):
    ck, fid, inv, model, tok = imported
    absent = ck.model_config["absent_ids"]
    assert absent == torch.nonzero(fid < 0).squeeze(1).tolist() and len(absent) == 54  # arb_Latn, min_Arab, 52 spares
    assert ck.tokenizer.lang_id("arb_Latn") in absent and ck.tokenizer.lang_id("fra_Latn") not in absent
    ours = ck.build_model()
    assert "absent" not in ours.state_dict()  # a buffer built from the config: the state_dict is unchanged
    lines = text_lines(2, 3)
    enc = tok(lines, return_tensors="pt", padding=True)
    tgt = tok(text_target=lines[::-1], return_tensors="pt", padding=True)["input_ids"]
    dec = torch.cat([torch.full((len(lines), 1), 2), tgt[:, :-1]], 1)
    src, prev = inv[enc["input_ids"]], inv[dec]
    src[enc["attention_mask"] == 0] = 0
    prev[dec == 1] = 0
    with torch.no_grad():
        theirs = torch.log_softmax(model(**enc, decoder_input_ids=dec).logits, -1)
        mine = torch.log_softmax(ours(src, prev)[0], -1)
    known, rows = fid >= 0, prev.ne(0)
    assert bool(mine[..., ~known].eq(float("-inf")).all())
    diff = (mine[..., known] - theirs[..., fid[known]])[rows].abs().max().item()
    assert diff < 1e-4, diff  # the same distribution, normaliser included


class _Ban(transformers.LogitsProcessor if transformers else object):  # type: ignore[misc]
    """What nmt's Translator bans (<s>, <pad>, every language code), after the forced code."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] >= 2:
            scores[:, self.ids] = float("-inf")
        return scores


@pytest.mark.parametrize("lenpen", [1.0, 0.0])
def test_beam_search_gives_generate_ids(imported, lenpen):
    ck, fid, inv, model, tok = imported
    ours = ck.build_model()
    with torch.no_grad():  # a larger </s> logit: some sentences end early, others reach the limit
        model.model.shared.weight[2] *= SCALE
        ours.embed.weight[ck.tokenizer.eos_id] *= SCALE
    try:
        banned = [ck.tokenizer.bos_id, *range(4, 260)]
        banned_hf = sorted({1} | {int(fid[i]) for i in banned if fid[i] >= 0})
        lines = text_lines(6, 7)  # 24 sentences
        fra = tok.convert_tokens_to_ids("fra_Latn")
        enc = tok(lines, return_tensors="pt", padding=True)
        with torch.no_grad():
            gen = model.generate(**enc, num_beams=4, forced_bos_token_id=fra, max_new_tokens=LIMIT + 1,
                                 length_penalty=lenpen, early_stopping=True, do_sample=False,
                                 logits_processor=transformers.LogitsProcessorList([_Ban(banned_hf)]))
        src = inv[enc["input_ids"]]
        src[enc["attention_mask"] == 0] = 0
        hyps = beam_search(ours, src, torch.full((len(lines),), ck.tokenizer.lang_id("fra_Latn")),
                           eos=ck.tokenizer.eos_id, beam=4, lenpen=lenpen, max_len_a=0, max_len_b=LIMIT,
                           banned=banned, length_convention="hf")
    finally:
        with torch.no_grad():
            model.model.shared.weight[2] /= SCALE
    at_limit = 0
    for row, hyp in zip(gen.tolist(), hyps, strict=True):
        assert row[:2] == [2, fra]
        theirs = [t for t in row[2:] if t != 1]
        ended = bool(theirs) and theirs[-1] == 2
        assert [int(fid[t]) for t in hyp] == (theirs[:-1] if ended else theirs)
        at_limit += not ended
        assert ended or len(hyp) == LIMIT
    assert 3 <= at_limit <= len(lines) - 10, at_limit  # both kinds of ending are compared


def test_add_language_makes_an_absent_tag_present(imported, tmp_path):
    from nmt.inference import load_inference_checkpoint
    from nmt.vocab.add_language import AddLanguage, add_language

    ck = imported[0]
    arb = ck.tokenizer.lang_id("arb_Latn")
    assert arb in ck.model_config["absent_ids"]
    add_language(AddLanguage(ck.path, tmp_path / "more", "arb_Latn", init="from:fra_Latn"))
    more = load_inference_checkpoint(tmp_path / "more")
    assert more.model_config["absent_ids"] == [i for i in ck.model_config["absent_ids"] if i != arb]
    model = more.build_model()
    with torch.no_grad():
        logits = model(torch.tensor([[4, 300, 3]]), torch.tensor([[3, arb]]))[0]
    assert bool(logits[..., arb].isfinite().all()) and bool(logits[..., more.model_config["absent_ids"]].isinf().all())
