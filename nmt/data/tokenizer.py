"""SentencePiece tokenizer with the fixed special-token and language-tag layout.

Ids (docs/architecture.md): 0 ``<pad>``, 1 ``<unk>``, 2 ``<s>``, 3 ``</s>``, then the tag
tokens of :func:`nmt.langs.all_tag_tokens` at ``4 + i``.

Tags in raw text: SentencePiece matches user-defined symbols anywhere in the (normalized)
input, so a sentence that literally contains ``__fra_Latn__`` (or ``＿＿fra_Latn＿＿``, which
NFKC normalizes to it) would come out with the *tag id* in it and could steer the model.
:meth:`Tokenizer.encode` never returns a tag id: every tag id SentencePiece produced from text
is replaced by the ids of the tag's single characters (``_``, ``_``, ``f``, …; ``<unk>`` for
a character the vocabulary lacks), so the literal text still decodes back. Tags enter a
sequence only when batches are built (:meth:`Tokenizer.lang_id`).

Pieces read as ``<unk>``: a vocabulary imported from an M2M-100 tokenizer keeps the SentencePiece
pieces its model has no row for between two CONTROL markers (``UNK_PIECES``), so text segments
as before; :meth:`Tokenizer.encode` returns ``<unk>`` for each of them, as Transformers'
``M2M100Tokenizer`` does (nmt/interop/m2m_vocab.py).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from nmt.errors import UserError
from nmt.langs import FLORES200, all_tag_tokens, is_lang_code, lang_tag, normalize_lang

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
FIRST_TAG_ID = 4
UNK_PIECES = ("<unk_pieces>", "</unk_pieces>")  # CONTROL markers around pieces read as <unk>

_RETRAIN = "retrain it with python -m data_prep.train_spm"


class Tokenizer:
    """A SentencePiece model plus the project's id conventions.

    ``num_threads`` is used by the batch methods (default: all cores, at most 8).
    """

    pad_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise UserError(
                f"{self.path}: SentencePiece model not found; train one with "
                "python -m data_prep.train_spm --corpus CORPUS (or pass the right path)"
            ) from None
        except OSError as e:
            raise UserError(f"{self.path}: cannot read SentencePiece model ({e.strerror})") from None
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except Exception:  # sentencepiece raises RuntimeError/OSError with an internal message
            raise UserError(
                f"{self.path}: not a valid SentencePiece model (corrupt or wrong file); {_RETRAIN}"
            ) from None
        if self._sp.get_piece_size() == 0:
            raise UserError(f"{self.path}: SentencePiece model has no pieces; {_RETRAIN}")
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.num_threads = num_threads or min(os.cpu_count() or 1, 8)
        unk = self._sp.unk_id()
        self._tag_ids: frozenset[int] = frozenset(
            i for i in (self._sp.piece_to_id(t) for t in all_tag_tokens()) if i != unk
        ) | frozenset(self.added_languages().values())
        # Fast path: a sequence whose smallest id is above every special/tag id needs no scan.
        self._max_special = max([EOS_ID, *self._tag_ids])
        self._tag_literal: dict[int, list[int]] = {}
        self._unk_range = self._pieces_read_as_unk()

    # -- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def is_tag(self, i: int) -> bool:
        return i in self._tag_ids

    def added_languages(self) -> dict[str, int]:
        """Languages added in spare tag slots (``nmt.vocab add-language``): code -> tag id.

        A spare slot ``__spareN__`` renamed ``__xxx_Scrp__`` in the SentencePiece model makes
        that code resolve in this vocabulary only (codes are resolved per model)."""
        first_spare = FIRST_TAG_ID + len(FLORES200)
        out: dict[str, int] = {}
        for i in range(first_spare, min(FIRST_TAG_ID + len(all_tag_tokens()), self.vocab_size)):
            piece = self._sp.id_to_piece(i)
            code = piece[2:-2]
            if piece.startswith("__") and piece.endswith("__") and is_lang_code(code):
                out[code] = i
        return out

    def lang_id(self, code: str) -> int:
        """Id of the tag ``__code__``: a Flores-200 language, or one added to this vocabulary."""
        if not is_lang_code(code):
            code = normalize_lang(code, allow_alias=False, where=f"tag lookup in {self.path}")
        i = self._sp.piece_to_id(lang_tag(code))
        if i not in self._tag_ids:
            fix = _RETRAIN if code in FLORES200 else "add it with python -m nmt.vocab add-language"
            raise UserError(f"{self.path}: the model has no tag {lang_tag(code)}; {fix}")
        return i

    def check_tags(self) -> None:
        """Verify the special ids 0..3 and that every tag sits at ``4 + i``, else UserError."""
        sp = self._sp
        specials = {"<pad>": (sp.pad_id(), PAD_ID), "<unk>": (sp.unk_id(), UNK_ID),
                    "<s>": (sp.bos_id(), BOS_ID), "</s>": (sp.eos_id(), EOS_ID)}
        for name, (got, want) in specials.items():
            if got != want:
                raise UserError(
                    f"{self.path}: {name} has id {got}, expected {want} (the model was not "
                    f"trained with this project's settings); {_RETRAIN}"
                )
        tags = all_tag_tokens()
        if self.vocab_size <= FIRST_TAG_ID + len(tags):
            raise UserError(
                f"{self.path}: vocabulary of {self.vocab_size} pieces cannot hold the "
                f"{len(tags)} language tags; {_RETRAIN}"
            )
        added = self.added_languages()
        for i, tag in enumerate(tags):
            want = FIRST_TAG_ID + i
            if i >= len(FLORES200) and added.get(sp.id_to_piece(want)[2:-2]) == want:
                continue  # a spare slot that holds an added language
            if sp.piece_to_id(tag) != want or sp.id_to_piece(want) != tag:
                raise UserError(
                    f"{self.path}: language tag {tag} is not at id {want} (the model was "
                    f"trained without the project's language tags); {_RETRAIN}"
                )

    def _pieces_read_as_unk(self) -> tuple[int, int] | None:
        """The ids strictly between the ``UNK_PIECES`` markers (None: no such pieces)."""
        sp = self._sp
        a, b = (sp.piece_to_id(m) for m in UNK_PIECES)
        if a == sp.unk_id() or b == sp.unk_id() or not (sp.is_control(a) and sp.is_control(b)) or b <= a:
            return None
        return a, b

    # -- encoding ---------------------------------------------------------------------------

    def _literal(self, tag_id: int) -> list[int]:
        """Ids spelling a tag's text character by character (never the tag id itself)."""
        ids = self._tag_literal.get(tag_id)
        if ids is None:
            ids = [self._sp.piece_to_id(ch) for ch in self._sp.id_to_piece(tag_id)]
            self._tag_literal[tag_id] = ids
        return ids

    def _untag(self, ids: list[int]) -> list[int]:
        if self._unk_range is not None:
            a, b = self._unk_range
            ids = [UNK_ID if a < i < b else i for i in ids]
        if not ids or min(ids) > self._max_special:
            return ids
        if not any(i in self._tag_ids for i in ids):
            return ids
        out: list[int] = []
        for i in ids:
            if i in self._tag_ids:
                out.extend(self._literal(i))
            else:
                out.append(i)
        return out

    def encode(self, text: str) -> list[int]:
        """Sentence-piece ids of ``text`` (no tags, no bos/eos)."""
        return self._untag(self._sp.encode(text, out_type=int, num_threads=1))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of many texts at once, using SentencePiece's multi-threaded batch API."""
        if not texts:
            return []
        out = self._sp.encode(list(texts), out_type=int, num_threads=self.num_threads)
        return [self._untag(ids) for ids in out]

    # -- decoding ---------------------------------------------------------------------------

    def _clean(self, ids: Sequence[int]) -> list[int]:
        drop = self._tag_ids
        return [int(i) for i in ids if i == UNK_ID or (i > EOS_ID and i not in drop)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; pad, bos, eos and language tags are dropped."""
        return self._sp.decode(self._clean(ids))

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        if not batch:
            return []
        return self._sp.decode([self._clean(ids) for ids in batch], num_threads=self.num_threads)

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"
