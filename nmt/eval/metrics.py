"""Per-direction scores with sacrebleu: chrF++, BLEU and (optionally) spBLEU.

* chrF++ — ``CHRF(word_order=2)``, sacrebleu's defaults otherwise (``-m chrf --chrf-word-order 2``).
* BLEU — sacrebleu's defaults with a tokenizer chosen by the target language
  (:func:`bleu_tokenizer`): ``zh`` for Chinese, ``char`` for Japanese, Korean and the scripts
  written without spaces between words, ``13a`` for everything else. sacrebleu's own choices
  for Japanese/Korean (``ja-mecab``/``ko-mecab``) need MeCab packages and dictionaries that are
  not installed offline, and a tokenizer that depends on what happens to be installed would make
  scores incomparable between machines, so ``char`` is used unconditionally.
* spBLEU — BLEU with the Flores-200 SentencePiece model (``-tok flores200``), computed only
  when a local copy of that model is given. sacrebleu's ``flores200`` tokenizer looks for
  ``$SACREBLEU/models/flores200sacrebleuspm`` (default ``~/.sacrebleu``) and downloads it when
  missing; here the tokenizer is replaced by :class:`LocalSpmTokenizer`, which loads the given
  file and never touches sacrebleu's download code. The signature still says ``tok:flores200``;
  the model's sha256 is recorded next to it (:attr:`Scorer.spm_info`) so a reader can check
  it is the official file.

Scores equal ``sacrebleu.corpus_chrf(..., word_order=2)`` / ``sacrebleu.corpus_bleu(...,
tokenize=...)`` exactly; the reference side is pre-processed once per target language and
reused for every system scored against it (score directions grouped by target to benefit).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_base import BaseTokenizer

from nmt.errors import UserError

# Target languages whose BLEU uses a tokenizer other than 13a.
ZH_TOKENIZED = frozenset({"zho_Hans", "zho_Hant", "yue_Hant"})
CHAR_TOKENIZED = frozenset({
    "jpn_Jpan", "kor_Hang",                 # sacrebleu would use MeCab (not available offline)
    "tha_Thai", "lao_Laoo", "khm_Khmr",     # no spaces between words: 13a sees one token
    "mya_Mymr", "shn_Mymr", "bod_Tibt", "dzo_Tibt",
})
SPBLEU_SIGNATURE_TOK = "flores200"


def bleu_tokenizer(tgt_lang: str) -> str:
    """sacrebleu tokenizer name used for BLEU into ``tgt_lang`` (a Flores-200 code)."""
    if tgt_lang in ZH_TOKENIZED:
        return "zh"
    if tgt_lang in CHAR_TOKENIZED:
        return "char"
    return "13a"


class LocalSpmTokenizer(BaseTokenizer):
    """sacrebleu-compatible tokenizer that splits with a SentencePiece model from a local file.

    Same output as sacrebleu's ``flores200`` tokenizer (pieces joined by spaces) when given the
    same model, but no download is ever attempted.
    """

    def __init__(self, model_path: str | Path, *, key: str = "spm_flores200") -> None:
        import sentencepiece as spm

        p = Path(model_path)
        if not p.is_file():
            raise UserError(
                f"SentencePiece model {p} does not exist ({key}): give the path of a local copy "
                f"of the Flores-200 spBLEU model (flores200_sacrebleu_tokenizer_spm.model), or "
                f"leave {key} unset to skip spBLEU"
            )
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(p))
        except (RuntimeError, OSError) as e:
            raise UserError(f"{p} is not a SentencePiece model ({key}): {e}") from None
        self.path = p
        self.sha256 = hashlib.sha256(p.read_bytes()).hexdigest()

    def signature(self) -> str:
        return SPBLEU_SIGNATURE_TOK

    def __call__(self, line: str) -> str:
        return " ".join(self.sp.encode(line, out_type=str))


class _SpBLEU(BLEU):
    """sacrebleu BLEU whose tokenizer is a :class:`LocalSpmTokenizer` (set before references
    are cached, which ``BLEU(tokenize=...)`` cannot do for a tokenizer it does not know)."""

    def __init__(self, tokenizer: LocalSpmTokenizer, references: list[list[str]] | None = None):
        super().__init__(tokenize="none")
        self.tokenizer = tokenizer
        self.tokenizer_signature = tokenizer.signature()
        if references is not None:
            self._ref_cache = self._cache_references(references)


def check_line_counts(hyps: list[str], refs: list[str], hyp_name: str) -> None:
    """UserError naming ``hyp_name`` when hypotheses and references differ in length."""
    if len(hyps) != len(refs):
        raise UserError(
            f"{hyp_name} has {len(hyps)} lines but the reference has {len(refs)}: "
            f"write exactly one hypothesis per reference line"
        )


class Scorer:
    """Scores directions and collects the sacrebleu signature of every metric used.

    ``spm_model``: path of a local Flores-200 SentencePiece model; ``None`` skips spBLEU.
    After scoring, :attr:`signatures` is ``{"chrf++": str, "bleu": {tok: str}, "spbleu": str}``
    (``spbleu`` only with a model; ``bleu`` has one entry per tokenizer actually used).
    """

    def __init__(self, spm_model: str | Path | None = None) -> None:
        self.spm = LocalSpmTokenizer(spm_model) if spm_model else None
        self.signatures: dict = {"chrf++": None, "bleu": {}}
        self._cached: tuple[str, list[str], dict] | None = None
        if self.spm is not None:
            self.signatures["spbleu"] = None

    @property
    def spm_info(self) -> dict | None:
        """``{"path", "sha256"}`` of the spBLEU model, or None when spBLEU is off."""
        if self.spm is None:
            return None
        return {"path": str(self.spm.path), "sha256": self.spm.sha256}

    def score(
        self, hyps: list[str], refs: list[str], tgt_lang: str, *, hyp_name: str = "hypotheses"
    ) -> dict[str, float | int]:
        """``{"chrf++", "bleu", ["spbleu"], "n"}`` for one direction (scores in 0..100)."""
        check_line_counts(hyps, refs, hyp_name)
        if not refs:
            raise UserError(f"no reference lines to score {hyp_name} against")
        metrics = self._metrics_for(refs, tgt_lang)
        out: dict[str, float | int] = {}
        for name, metric in metrics.items():
            out[name] = metric.corpus_score(hyps, None).score
            sig = metric.get_signature().format()
            if name == "bleu":
                self.signatures["bleu"][bleu_tokenizer(tgt_lang)] = sig
            else:
                self.signatures[name] = sig
        out["n"] = len(refs)
        return out

    def _metrics_for(self, refs: list[str], tgt_lang: str) -> dict:
        """Metric objects with ``refs`` pre-processed once; reused while the target is the same.

        Scoring several systems (model, copy, retrieval) or several sources against one target
        then tokenizes and counts the reference n-grams once. Scores are unchanged: sacrebleu
        computes the same statistics from cached references.
        """
        if self._cached is not None:
            c_lang, c_refs, c_metrics = self._cached
            if c_lang == tgt_lang and c_refs == refs:
                return c_metrics
        streams = [list(refs)]
        metrics = {
            "chrf++": CHRF(word_order=2, references=streams),
            "bleu": BLEU(tokenize=bleu_tokenizer(tgt_lang), references=streams),
        }
        if self.spm is not None:
            metrics["spbleu"] = _SpBLEU(self.spm, references=streams)
        self._cached = (tgt_lang, list(refs), metrics)
        return metrics

    def note(self) -> str:
        """One line for the report: whether spBLEU was computed and with which model."""
        if self.spm is None:
            return ("spBLEU omitted: no local Flores-200 SentencePiece model configured "
                    "(set spm_flores200=PATH)")
        return f"spBLEU tokenizer: {self.spm.path} (sha256 {self.spm.sha256[:12]}…)"
