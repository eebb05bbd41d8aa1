"""NLLB-MoE import: logits equal Transformers' own model with its top-2 dispatch corrected.

Transformers 5.24's ``NllbMoeExperts.forward`` one-hots the router's top-1 *mask* again, so it
runs only experts 0 and 1 (verified below on the installed version); the reference replaces only
that method with bench/nllbmoe_peer.py's ``top2_dispatch`` (each token to its kept top-2 experts
with the router's renormalised gates; no capacity drops at evaluation, outputs scaled by
``1 - moe_token_dropout`` at evaluation), the benchmark peer's fix.
"""

from __future__ import annotations

import json

import pytest
import torch

from _fixtures_hf import build_nllb_moe, text_lines
from bench.nllbmoe_peer import top2_dispatch
from nmt.import_hf import main as import_main
from nmt.inference import load_inference_checkpoint
from nmt.interop.vocab_layout import make_layout

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    hf = build_nllb_moe(root)
    import_main([str(hf), str(root / "ours")])
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(hf)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(hf), src_lang="eng_Latn")
    return model, tok, root / "ours"


def _batch(tok, ck, layout):
    lines = text_lines(2, 4)
    enc = tok(lines, return_tensors="pt", padding=True)
    tgt = tok(text_target=lines[::-1], return_tensors="pt", padding=True)["input_ids"]
    dec = torch.cat([torch.full((len(lines), 1), 2), tgt[:, :-1]], 1)
    fid = torch.tensor(layout.fairseq_id)
    inv = torch.full((layout.fairseq_size + 2,), -1)
    inv[fid[fid >= 0]] = torch.nonzero(fid >= 0).squeeze(1)
    src, prev = inv[enc["input_ids"]], inv[dec]
    src[enc["attention_mask"] == 0] = 0
    prev[dec == 1] = 0
    return enc, dec, src, prev, fid


def _hf_logits(model, enc, dec):
    with torch.no_grad():
        return model(**enc, decoder_input_ids=dec).logits


def _max_diff_to_reference(model, tok, ours_dir, monkeypatch) -> float:
    """Max abs difference of our logits and ``model``'s with the dispatch corrected."""
    ck = load_inference_checkpoint(ours_dir)
    cfg = json.loads((ours_dir / "config.json").read_text())
    layout = make_layout(ck.tokenizer.vocab_size, cfg["source"]["hf"]["codes"], cfg["source"]["hf"]["mask"])
    enc, dec, src, prev, fid = _batch(tok, ck, layout)
    monkeypatch.setattr(transformers.models.nllb_moe.modeling_nllb_moe.NllbMoeExperts, "forward", top2_dispatch)
    theirs = _hf_logits(model, enc, dec)
    with torch.no_grad():
        ours, _ = ck.build_model()(src, prev)
    known, rows = fid >= 0, prev.ne(0)
    assert theirs[rows].std() > 0.1  # a real comparison, not of near-zero logits
    return (ours[..., known] - theirs[..., fid[known]])[rows].abs().max().item()


def test_logits_equal_transformers_with_the_top2_dispatch_corrected(moe, monkeypatch):
    model, tok, ours_dir = moe
    cfg = json.loads((ours_dir / "config.json").read_text())
    assert cfg["model"]["moe"]["experts"] == 4 and cfg["model"]["moe"]["encoder_freq"] == 2
    assert cfg["model"]["moe"]["eom"] == pytest.approx(0.2) and cfg["model"]["moe"]["capacity_rule"] == "fairseq"
    assert _max_diff_to_reference(model, tok, ours_dir, monkeypatch) < 1e-4


@pytest.mark.skipif(transformers.__version__ != "5.24.0", reason="the dispatch check is for the pinned version")
def test_transformers_5_24_runs_only_experts_0_and_1(moe):
    model, tok, ours_dir = moe
    ck = load_inference_checkpoint(ours_dir)
    cfg = json.loads((ours_dir / "config.json").read_text())
    layout = make_layout(ck.tokenizer.vocab_size, cfg["source"]["hf"]["codes"], cfg["source"]["hf"]["mask"])
    enc, dec, *_ = _batch(tok, ck, layout)
    before = _hf_logits(model, enc, dec)
    sparse_cls = transformers.models.nllb_moe.modeling_nllb_moe.NllbMoeSparseMLP
    sparse = [m for m in model.modules() if isinstance(m, sparse_cls)]
    saved = [(m.experts["expert_2"].fc2.weight.clone(), m.experts["expert_3"].fc2.weight.clone()) for m in sparse]
    with torch.no_grad():
        for m in sparse:
            m.experts["expert_2"].fc2.weight.mul_(10)
            m.experts["expert_3"].fc2.weight.mul_(10)
    try:
        assert torch.equal(_hf_logits(model, enc, dec), before)  # experts 2 and 3 never ran
    finally:
        with torch.no_grad():
            for m, (w2, w3) in zip(sparse, saved, strict=True):
                m.experts["expert_2"].fc2.weight.copy_(w2)
                m.experts["expert_3"].fc2.weight.copy_(w3)


def test_moe_export_hf_loads_as_nllb_moe_and_reimports_bit_identically(moe, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from nmt.export import main as export_main

    _, tok, ours_dir = moe
    export_main([str(ours_dir), str(tmp_path / "hf"), "--format", "hf"])
    import_main([str(tmp_path / "hf"), str(tmp_path / "again")])
    a, b = load_file(ours_dir / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    exported = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(exported).__name__ == "NllbMoeForConditionalGeneration"
    assert _max_diff_to_reference(exported, tok, ours_dir, monkeypatch) < 1e-4
