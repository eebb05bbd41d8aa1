"""Batched beam search with a KV cache and a forced target-language tag (NLLB inference).

Decoder prefix is ``</s> __tgt__``; the tag is forced, not scored (log-probability 0). A
hypothesis' score is the sum of its token log-probabilities divided by ``length ** lenpen``.
``length_convention`` (``eval.length_convention``, docs/interop.md) says what ``length`` is and
what happens at the length limit ``max_len_a · src_len + max_len_b`` (generated tokens after the tag):

- ``nmt``: the generated tokens including ``</s>``, the tag excluded; ``</s>`` is forced at the
  limit. (fairseq counts the tag as generated step 0 and scores it with its log-probability.)
- ``hf``: Transformers' ``generate`` (``early_stopping=True``): the tag counted too; nothing is
  forced at the limit, where the best ``beam`` candidates end as they are (no ``</s>``), as
  with ``max_new_tokens`` = limit + 1.

A sentence stops once ``beam`` hypotheses have finished or at the limit; finished sentences
leave the batch (their rows of the encoder output and caches are dropped). Logits of absent
vocabulary rows are -inf (``Transformer.decode``), so they take no probability mass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nmt.models.transformer import PAD, Transformer


@torch.no_grad()
def beam_search(
    model: Transformer,
    src_tokens: Tensor,
    tgt_tags: Tensor,
    *,
    eos: int,
    beam: int = 4,
    lenpen: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    banned: Sequence[int] = (),
    src_lang: Tensor | None = None,
    tgt_lang: Tensor | None = None,
    length_convention: str = "nmt",
) -> list[list[int]]:
    """Best hypothesis per sentence (token ids without the tag and without ``</s>``)."""
    if length_convention not in ("nmt", "hf"):
        raise ValueError(f"length_convention {length_convention!r}: use nmt or hf")
    hf = length_convention == "hf"
    device = src_tokens.device
    bsz, k, vocab = src_tokens.shape[0], beam, model.vocab_size
    memory, mask = model.encode(src_tokens, src_lang, tgt_lang)
    src_len = src_tokens.ne(PAD).sum(1)
    limit = model.cfg.max_positions - 1  # decoder positions used: prefix of 2, then tokens
    max_len = (max_len_a * src_len.float() + max_len_b).long().clamp(min=1, max=limit - 1)

    def rep(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.repeat_interleave(k, 0)

    memory, mask = memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    src_lang_r, tgt_lang_r = rep(src_lang), rep(tgt_lang)
    cache = model.new_cache()
    prefix = torch.stack([torch.full_like(tgt_tags, eos), tgt_tags], dim=1).repeat_interleave(k, 0)
    logits = model.decode(prefix, memory, mask, src_lang_r, tgt_lang_r, cache=cache, offset=0)[:, -1]

    banned_t = torch.tensor(sorted(set(banned) | {PAD}), dtype=torch.long, device=device)
    scores = torch.zeros(bsz, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand from the first only
    history = torch.zeros(bsz * k, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(bsz)]
    sentence = list(range(bsz))  # original index of each sentence still being searched
    beam_offsets = torch.arange(k, device=device)

    for step in range(int(max_len.max())):
        n = len(sentence)
        lprobs = torch.log_softmax(logits.float(), dim=-1).view(n, k, vocab)
        lprobs[:, :, banned_t] = float("-inf")
        at_max = step >= max_len - 1
        if bool(at_max.any()) and not hf:
            eos_col = lprobs[at_max][:, :, eos].clone()
            lprobs[at_max] = float("-inf")
            lprobs[at_max, :, eos] = eos_col
        cand = (scores.unsqueeze(-1) + lprobs).view(n, -1)
        top_scores, top_idx = cand.topk(2 * k, dim=1)
        beam_idx, tokens = top_idx // vocab, top_idx % vocab
        is_eos = tokens.eq(eos) & top_scores.gt(float("-inf"))

        # Finalise end-of-sentence candidates ranked within the top k (hf: all of them at the limit).
        ends = is_eos[:, :k] | (at_max[:, None] & top_scores[:, :k].gt(float("-inf"))) if hf else is_eos[:, :k]
        length = step + 1 + int(hf)  # generated tokens with </s> (hf: and the tag)
        for b, r in ends.nonzero().tolist():
            done_list = finished[sentence[b]]
            if len(done_list) < k:
                seq = history[b * k + beam_idx[b, r]].tolist()
                if not bool(is_eos[b, r]):  # hf at the limit: the candidate token ends it
                    seq.append(int(tokens[b, r]))
                done_list.append((float(top_scores[b, r]) / length ** lenpen, seq))
        last = at_max.tolist()  # the limit: nothing can follow
        alive = [b for b in range(n) if len(finished[sentence[b]]) < k and not last[b]]
        if not alive:
            break

        # Continue with the best k candidates that did not end.
        rank = torch.arange(2 * k, device=device).expand(n, -1) + is_eos.long() * 2 * k
        keep = rank.topk(k, dim=1, largest=False).indices
        scores = top_scores.gather(1, keep)
        beam_sel = beam_idx.gather(1, keep)  # [n, k]: beam of the same sentence each row continues
        new_tok = tokens.gather(1, keep)
        if len(alive) < n:  # drop finished sentences from the batch
            a = torch.tensor(alive, device=device)
            rows = (a[:, None] * k + beam_offsets).view(-1)
            scores, beam_sel, new_tok, max_len = scores[a], beam_sel[a], new_tok[a], max_len[a]
            memory, mask = memory.index_select(0, rows), mask.index_select(0, rows)
            src_lang_r = None if src_lang_r is None else src_lang_r.index_select(0, rows)
            tgt_lang_r = None if tgt_lang_r is None else tgt_lang_r.index_select(0, rows)
            history = history.index_select(0, rows)
            cache.reorder(rows)
            sentence = [sentence[b] for b in alive]
            n = len(alive)
        src_beam = (beam_sel + (torch.arange(n, device=device) * k)[:, None]).view(-1)
        history = torch.cat([history.index_select(0, src_beam), new_tok.view(-1, 1)], dim=1)
        cache.reorder(src_beam, cross=False)  # within sentences: the cross-attention rows are equal
        new_tok = new_tok.view(-1, 1)
        logits = model.decode(new_tok, memory, mask, src_lang_r, tgt_lang_r, cache=cache, offset=step + 2)[:, -1]

    # Every sentence has a hypothesis: at its max_len </s> is forced (nmt) or the top k end (hf).
    return [max(f, key=lambda h: h[0])[1] for f in finished]
