"""Edit a SentencePiece model proto: give a spare tag slot to a language, append new pieces.

Old pieces keep their ids and scores, so every old embedding row keeps its meaning. New pieces
come from a small unigram model trained on the new language's text; the ones the old model
lacks are appended with scores *below every old piece* (the small model's scores shifted to
end under the old minimum, keeping their order). Viterbi picks the segmentation with the
highest total score, so on old-language text a new piece wins only where it replaces a run of
old pieces whose scores sum lower; the change is measured (:func:`changed_lines`) and documented.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from nmt.data.tokenizer import FIRST_TAG_ID, UNK_ID
from nmt.errors import UserError
from nmt.langs import FLORES200, lang_tag

# The generated protobuf module has no type stubs: its message class is typed as Any here.
ModelProto: Any = pb.ModelProto  # type: ignore[attr-defined]
NORMAL = ModelProto.SentencePiece.NORMAL
SCORE_MARGIN = 1.0  # the best new piece scores this much below the worst old piece


def parse(data: bytes) -> Any:
    proto = ModelProto()
    proto.ParseFromString(data)
    return proto


def processor(proto: Any) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    return sp


def take_spare_slot(proto: Any, code: str) -> int:
    """Rename the first free ``__spareN__`` piece to ``__code__``; returns its id."""
    for i in range(FIRST_TAG_ID + len(FLORES200), len(proto.pieces)):
        if proto.pieces[i].piece.startswith("__spare"):
            proto.pieces[i].piece = lang_tag(code)
            return i
    raise UserError(f"no spare language-tag slot is left for {code}: every spare slot of the vocabulary holds a "
                    f"language already; retrain the vocabulary (python -m data_prep.train_spm) with the languages")


def learn_pieces(proto: Any, lines: Sequence[str], n: int,
                 avoid: Sequence[str] = ()) -> list[tuple[str, float]]:
    """Up to ``n`` (piece, score) pairs the old model lacks, learned from ``lines`` with a small
    unigram model (same normalization as the old one): first the characters the old model has no
    piece for (they are what makes ``<unk>``), then the others by score. A piece that occurs in
    the (normalized) text ``avoid`` is skipped, so that text's segmentation cannot change."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, model_type="unigram",
            vocab_size=max(4 * n, 64), hard_vocab_limit=False, character_coverage=1.0,
            normalization_rule_name=proto.normalizer_spec.name or "nmt_nfkc",
            bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
    except RuntimeError as e:
        raise UserError(f"--text: SentencePiece could not learn pieces from it ({str(e).strip()[:160]}); "
                        f"give more text") from None
    small = parse(model.getvalue())
    have = {p.piece for p in proto.pieces}
    chars = {ch for p in proto.pieces if p.type == NORMAL for ch in p.piece}
    found = [(p.piece, p.score) for p in small.pieces if p.type == NORMAL and p.piece not in have]
    if avoid:
        old = processor(proto)
        seen = "\n".join(old.normalize(list(avoid)))
        found = [(piece, score) for piece, score in found if piece not in seen]
    found.sort(key=lambda x: (not (len(x[0]) == 1 and x[0] not in chars), -x[1]))
    return found[:n]


def append_pieces(proto: Any, pieces: Sequence[tuple[str, float]]) -> list[int]:
    """Append ``pieces`` as NORMAL pieces scored below every old piece; returns their ids."""
    if not pieces:
        return []
    old_min = min(p.score for p in proto.pieces if p.type == NORMAL)
    top = max(score for _, score in pieces)
    ids = []
    for piece, score in pieces:
        new = proto.pieces.add()
        new.piece, new.type = piece, NORMAL
        new.score = old_min - SCORE_MARGIN + (score - top)
        ids.append(len(proto.pieces) - 1)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return ids


def literal_processor(proto: Any) -> spm.SentencePieceProcessor:
    """The old model encoding a piece's text as it stands (no dummy prefix, spaces kept), so a
    piece ``▁abc`` decomposes into the old pieces of ``▁abc``."""
    copy = ModelProto()
    copy.CopyFrom(proto)
    copy.normalizer_spec.add_dummy_prefix = False
    copy.normalizer_spec.remove_extra_whitespaces = False
    return processor(copy)


def decompose(literal: spm.SentencePieceProcessor, piece: str) -> list[int]:
    """Old ids that spell ``piece`` (``<unk>`` for characters the old model lacks)."""
    ids = literal.encode(piece.replace("\u2581", " "), out_type=int)
    return ids or [UNK_ID]


def text_stats(sp: spm.SentencePieceProcessor, lines: Sequence[str]) -> dict[str, float]:
    """``<unk>`` rate (share of tokens) and tokens per character of ``lines``."""
    ids = sp.encode(list(lines), out_type=int)
    tokens = sum(len(x) for x in ids)
    chars = sum(len(line) for line in lines)
    unk = sum(1 for x in ids for i in x if i == UNK_ID)
    return {"tokens": tokens, "unk_rate": unk / max(tokens, 1), "tokens_per_char": tokens / max(chars, 1)}


def changed_lines(old: spm.SentencePieceProcessor, new: spm.SentencePieceProcessor, lines: Sequence[str]) -> float:
    """Share of ``lines`` whose segmentation differs between ``old`` and ``new``."""
    if not lines:
        return 0.0
    a, b = old.encode(list(lines), out_type=int), new.encode(list(lines), out_type=int)
    return sum(1 for x, y in zip(a, b, strict=True) if x != y) / len(lines)
