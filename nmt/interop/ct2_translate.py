"""Translate with a CTranslate2 export (``backend=ct2``), with nmt's ``Translator`` interface.

Same tokenization as the torch path (``nmt.data.tokenizer.Tokenizer``, whose pieces are the
vocabulary's token strings), the same source ``[src] x </s>`` (or the export's
``source_convention``), the target prefix ``[tgt]``, and the same search settings where
CTranslate2 allows (checked in ``translate_batch`` of CTranslate2 4.x, ``src/decoding.cc``):

- length normalisation: CTranslate2 divides by (tag + tokens + ``</s>``) ** lenpen, ours by
  (tokens + ``</s>``) ** lenpen (``nmt.eval.search``); the tag is scored in neither. So all
  ``beam`` finished hypotheses are asked for and re-ranked with ours (:func:`_ours`). With
  lenpen 0 CTranslate2 would stop at the first finished best beam: a 1e-9 penalty keeps our
  rule (stop once ``beam`` hypotheses have finished);
- maximum length: ``max_decoding_length`` counts the tag, so our ``max_len`` (generated
  tokens including ``</s>``) is passed as is: at most ``max_len - 1`` tokens, like ours. It is
  one value per call, so sentences are grouped by their ``max_len``;
- banned tokens (``<s>``, ``<pad>``, ``<mask>``, language codes, nmt's tags): we ban them
  after the softmax, CTranslate2's ``suppress_sequences`` before it (their probability would
  go to the other tokens and change every score). So the search runs without it, and only
  a sentence whose best hypothesis holds a banned token is searched again with it (with a
  trained model: never).

Where it cannot match (rare with a trained model; tests/test_ct2.py measures it):
- at the limit we force ``</s>`` (its log-probability enters the score); CTranslate2 cuts the
  hypothesis without it;
- at the first free step CTranslate2 drops ``</s>`` from every beam but the best, so it never
  returns an empty translation from a lower-ranked beam; ours can;
- when more than ``beam`` hypotheses end at the same step we keep the best-ranked candidates,
  CTranslate2 keeps all of them (it returns the ``beam`` best).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece

from nmt.config import EvalConfig
from nmt.data.tokenizer import Tokenizer
from nmt.errors import UserError
from nmt.inference import Translator
from nmt.interop.ct2 import read_ct2_config
from nmt.langs import normalize_lang

EOS = "</s>"
# CTranslate2 stops a sentence as soon as its best beam ends when length_penalty == 0; ours waits
# for `beam` finished hypotheses. A negligible penalty keeps our stopping rule (scores are
# re-normalised by _ours with the penalty asked for).
_NO_EARLY_EXIT = 1e-9


def max_target_len(src_len: int, max_len_a: float, max_len_b: int, max_positions: int) -> int:
    """Our beam search's limit on generated tokens (``</s>`` included), computed in float32 as
    ``nmt.eval.search.beam_search`` does, clamped to [1, max_positions - 2]."""
    n = int(np.float32(max_len_a) * np.float32(src_len) + np.float32(max_len_b))
    return max(1, min(n, max_positions - 2))


def _ours(hyp: list[str], score: float, tgt_token: str, max_len: int, lenpen: float) -> tuple[list[str], float]:
    """A CTranslate2 hypothesis and its score re-normalised as ours: CTranslate2 divides by
    (tag + tokens + </s>) ** lenpen, or (tag + tokens) at the limit; we divide by (tokens + </s>)."""
    tokens = hyp[1:] if hyp and hyp[0] == tgt_token else hyp
    cut = len(tokens) >= max_len - 1  # stopped at the limit, without </s>
    raw = score * (len(tokens) + (1 if cut else 2)) ** max(lenpen, _NO_EARLY_EXIT)
    return tokens, raw / (len(tokens) + 1) ** lenpen


class Ct2Translator:
    """A CTranslate2 translator, its SentencePiece model and the export's conventions."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", threads: int = 0,
                 compute_type: str = "default") -> None:
        import ctranslate2  # type: ignore[import-untyped]

        self.dir = Path(model_dir)
        self.meta: dict[str, Any] = read_ct2_config(self.dir)
        spm = self.dir / (self.meta["tokenizer"].get("file") or "sentencepiece.bpe.model")
        self.tokenizer = Tokenizer(spm)  # encodes exactly as the torch path does
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))  # decodes piece strings
        want = self.meta["tokenizer"].get("sha256")
        if want and self.tokenizer.sha256 != want:
            raise UserError(f"{spm} is not the SentencePiece model this export was converted with (sha256 "
                            f"differs from {self.dir / 'config.json'}); convert the model again")
        self.defaults = EvalConfig(**{k: v for k, v in (self.meta.get("eval") or {}).items()
                                      if k in EvalConfig.__dataclass_fields__})
        try:
            self.model = ctranslate2.Translator(str(self.dir), device=device, compute_type=compute_type,
                                               intra_threads=threads)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"CTranslate2 cannot load {self.dir} on device={device} ({str(e)[:200]}); "
                            f"convert the model again or choose another device") from None
        self._suppress = [[t] for t in self.meta["suppress_tokens"]]
        self.languages: list[str] | None = list(self.meta.get("languages") or []) or None  # trained ones
        self._banned = set(self.meta["suppress_tokens"])
        self._drop = self._banned | {EOS}

    @classmethod
    def from_dir(cls, path: str | Path, device: str = "cpu") -> Ct2Translator:
        return cls(path, device=device)

    check_languages = Translator.check_languages  # the same refusal (or warning) on self.languages

    def resolve_lang(self, code: str, where: str) -> str:
        """A code of this export (Flores-200 codes and their aliases)."""
        return code if code in self.meta["language_tokens"] else normalize_lang(code, where=where)

    def lang_token(self, code: str, where: str) -> str:
        code = normalize_lang(code, where=where)
        token = self.meta["language_tokens"].get(code)
        if token is None:
            raise UserError(f"{where}={code}: the ct2 export {self.dir} has no language token for it; it knows "
                            f"{', '.join(self.meta.get('languages') or sorted(self.meta['language_tokens']))}")
        return token

    def source_tokens(self, line: str, src_lang: str) -> list[str]:
        """The encoder input of one line, as vocabulary tokens (``[src] pieces </s>``)."""
        return self._source([self.tokenizer.encode(line.strip())], self.lang_token(src_lang, "src_lang"))[0]

    def _source(self, encoded: list[list[int]], src_token: str) -> list[list[str]]:
        keep = int(self.meta["max_source_positions"]) - 2  # as the torch path truncates
        pieces = [[self.tokenizer.id_to_piece(t) for t in ids[:keep]] for ids in encoded]
        if self.meta.get("source_convention") == "lang_last":
            return [p + [EOS, src_token] for p in pieces]
        return [[src_token] + p + [EOS] for p in pieces]

    def translate_scored(
        self,
        lines: list[str],
        src_lang: str,
        tgt_lang: str,
        beam_size: int | None = None,
        len_penalty: float | None = None,
        batch_size: int | None = None,
        max_len_a: float | None = None,
        max_len_b: int | None = None,
    ) -> list[tuple[list[str], float]]:
        """The best hypothesis per line as vocabulary tokens (no target tag, no ``</s>``) and its
        score (sum of log-probabilities ÷ length ** lenpen); empty lines give ``([], 0.0)``."""
        d = self.defaults
        lenpen = d.lenpen if len_penalty is None else len_penalty
        a = d.max_len_a if max_len_a is None else max_len_a
        b = d.max_len_b if max_len_b is None else max_len_b
        src_tok, tgt_tok = self.lang_token(src_lang, "src_lang"), self.lang_token(tgt_lang, "tgt_lang")
        todo = [i for i, line in enumerate(lines) if line.strip()]
        encoded = self.tokenizer.encode_batch([lines[i].strip() for i in todo])
        sources = dict(zip(todo, self._source(encoded, src_tok), strict=True))
        limit = int(self.meta["max_source_positions"])
        max_len = {i: max_target_len(len(s), a, b, limit) for i, s in sources.items()}
        out: list[tuple[list[str], float]] = [([], 0.0) for _ in lines]
        search: dict[str, Any] = {"beam": beam_size or d.beam, "lenpen": lenpen,
                                  "batch_size": batch_size or d.batch_size, "tgt": tgt_tok}
        for n, group in itertools.groupby(sorted(todo, key=lambda i: (max_len[i], i)), key=lambda i: max_len[i]):
            idx = list(group)
            best = self._search([sources[i] for i in idx], n, suppress=False, **search)
            redo = [k for k, (hyp, _) in enumerate(best) if self._banned.intersection(hyp)]
            if redo:  # rare: a banned token won; search these again with the tokens suppressed
                again = self._search([sources[idx[k]] for k in redo], n, suppress=True, **search)
                for k, r in zip(redo, again, strict=True):
                    best[k] = r
            for i, r in zip(idx, best, strict=True):
                out[i] = r
        return out

    def _search(self, sources: list[list[str]], max_len: int, *, beam: int, lenpen: float, batch_size: int,
                tgt: str, suppress: bool) -> list[tuple[list[str], float]]:
        """The best hypothesis of each source under our length normalisation (see the module doc)."""
        results = self.model.translate_batch(
            sources, target_prefix=[[tgt]] * len(sources), beam_size=beam, num_hypotheses=beam,
            return_scores=True, length_penalty=max(lenpen, _NO_EARLY_EXIT), max_decoding_length=max_len,
            min_decoding_length=0, max_input_length=0, max_batch_size=batch_size,
            suppress_sequences=self._suppress if suppress else None)
        return [max((_ours(h, s, tgt, max_len, lenpen) for h, s in zip(r.hypotheses, r.scores, strict=True)),
                    key=lambda x: x[1]) for r in results]

    def translate(
        self,
        lines: list[str],
        src_lang: str,
        tgt_lang: str,
        beam_size: int | None = None,
        len_penalty: float | None = None,
        batch_size: int | None = None,
        max_len_a: float | None = None,
        max_len_b: int | None = None,
    ) -> list[str]:
        """One output per input line; empty (or whitespace-only) inputs give empty outputs
        (the interface of :meth:`nmt.inference.Translator.translate`)."""
        hyps = self.translate_scored(lines, src_lang, tgt_lang, beam_size, len_penalty, batch_size,
                                     max_len_a, max_len_b)
        return [self._sp.decode_pieces([t for t in h if t not in self._drop]).replace("\n", " ").strip()
                for h, _ in hyps]
