"""Ours (torch beam search) against CTranslate2 float32 on a model trained here, beam 4.

Needs ``nmt.interop.hf_export`` (``--format hf``, another branch): skipped until it is merged.
At most 1% of the lines may differ, and each difference must be explained: a tie (both
hypotheses score the same under our model and our length normalisation) or a hypothesis
that reached the length limit, where the two searches differ by design
(nmt/interop/ct2_translate.py).
"""

from __future__ import annotations

import importlib.util

import pytest

from conftest import run_module

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ctranslate2") is None or importlib.util.find_spec("transformers") is None,
    reason="ctranslate2 and transformers (the 'dev' extra) are not installed")

DIRECTIONS = [("eng_Latn", "fra_Latn"), ("eng_Latn", "deu_Latn"), ("fra_Latn", "eng_Latn"), ("deu_Latn", "eng_Latn")]
TIE = 1e-4  # per-token score difference that counts as a tie (float32 sums in two libraries)


def _score(model, src_ids: list[int], tag: int, hyp: list[int], eos: int, lenpen: float) -> float:
    """Our search's score of ``hyp`` for ``src_ids`` (no tag, no </s>): Σ log p(hyp </s>) ÷ len ** lenpen."""
    import torch

    src = torch.tensor([src_ids])
    prev = torch.tensor([[eos, tag, *hyp]])
    with torch.no_grad():
        logits, _ = model(src, prev)
    lp = torch.log_softmax(logits[0, 1:].float(), -1)
    target = torch.tensor([*hyp, eos])
    return float(lp[torch.arange(len(target)), target].sum()) / len(target) ** lenpen


def _explain(ours, sp, line: str, src: str, tgt: str, ct2_pieces: list[str], max_len: int) -> str:
    """Why the two outputs for ``line`` differ ("tie" or "limit"), or "" when unexplained."""
    import torch

    from nmt.eval.search import beam_search
    from nmt.langs import FLORES200

    tok = ours.tokenizer
    src_ids = [tok.lang_id(src), *tok.encode(line), tok.eos_id]
    ours_ids = beam_search(ours.model, torch.tensor([src_ids]), torch.tensor([tok.lang_id(tgt)]), eos=tok.eos_id,
                           beam=4, lenpen=1.0, max_len_a=1.2, max_len_b=10, banned=ours.banned,
                           src_lang=torch.tensor([FLORES200.index(src)]),
                           tgt_lang=torch.tensor([FLORES200.index(tgt)]))[0]
    ct2_ids = [sp.piece_to_id(p) for p in ct2_pieces]
    if max(len(ours_ids), len(ct2_ids)) >= max_len - 1:
        return "limit"
    a, b = (_score(ours.model, src_ids, tok.lang_id(tgt), h, tok.eos_id, 1.0) for h in (ours_ids, ct2_ids))
    return "tie" if abs(a - b) <= TIE else ""


def test_ct2_float32_gives_our_beam4_translations(smoke_run, prepared_corpus, tmp_path):
    pytest.importorskip("nmt.interop.hf_export",
                        reason="nmt.interop.hf_export (nmt.export --format hf, branch wt-hf) is not merged yet")
    import sentencepiece

    from nmt.inference import Translator
    from nmt.interop.ct2_translate import Ct2Translator, max_target_len

    ckpt = smoke_run / "checkpoints" / "last.pt"
    out = tmp_path / "ct2"
    run_module("nmt.export", ckpt, out, "--format", "ct2")  # the CLI, float32
    ours, ct2 = Translator.from_checkpoint(ckpt), Ct2Translator(out)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(ours.tokenizer.path))
    flores = prepared_corpus / "flores" / "devtest"
    total, unexplained, explained = 0, [], []
    for src, tgt in DIRECTIONS:
        lines = (flores / f"{src}.devtest").read_text(encoding="utf-8").splitlines()
        want = ours.translate(lines, src, tgt, beam_size=4, len_penalty=1.0, max_len_a=1.2, max_len_b=10)
        got_tokens = [h for h, _ in ct2.translate_scored(lines, src, tgt, beam_size=4, len_penalty=1.0,
                                                         max_len_a=1.2, max_len_b=10)]
        got = ct2.translate(lines, src, tgt, beam_size=4, len_penalty=1.0, max_len_a=1.2, max_len_b=10)
        total += len(lines)
        for i, (w, g) in enumerate(zip(want, got)):
            if w == g:
                continue
            limit = max_target_len(len(ct2.source_tokens(lines[i], src)), 1.2, 10, ours.model.cfg.max_positions)
            why = _explain(ours, sp, lines[i], src, tgt, got_tokens[i], limit)
            (explained if why else unexplained).append((f"{src}-{tgt}:{i + 1}", why, w, g))
    print(f"{total} lines, {len(explained)} differ, explained: {explained}")
    assert not unexplained, unexplained
    assert len(explained) <= total // 100, explained
