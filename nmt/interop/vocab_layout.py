"""Our vocabulary layout ↔ the fairseq/NLLB layout of Transformers checkpoints (docs/interop.md).

Ours (docs/architecture.md): ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, the 256 tag slots
(204 Flores-200 tags, 52 spares) at 4…259, then the sentence pieces, then ``<mask>`` if the
imported vocabulary has one. Fairseq/NLLB: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3,
SentencePiece piece k (k ≥ 3) at k + 1, then the language codes, then ``<mask>``.

An hf export of a model trained here also keeps our spare tag slots (``__spareN__``, after
the codes) and makes the last one the fairseq ``<mask>``: its rows are exactly ours, permuted.

:class:`Layout` holds one map, ``fairseq_id[i]`` for every internal id i (-1: a row the
fairseq side does not have, i.e. tags of languages it lacks). :meth:`Layout.to_internal` and
:meth:`Layout.to_fairseq_layout` permute embedding rows with it, in the two directions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from sentencepiece import sentencepiece_model_pb2 as _spm_pb2

from nmt.errors import UserError
from nmt.langs import FLORES200, all_tag_tokens, lang_tag

spm_pb2: Any = _spm_pb2  # generated protobuf module (no type stubs)
Piece: Any = spm_pb2.ModelProto.SentencePiece
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq ids 0..3
OUR_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")  # our ids 0..3
SPM_SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0..2 of an NLLB sentencepiece.bpe.model
MASK = "<mask>"
SPARE = re.compile(r"^__spare\d+__$")  # a spare tag slot (a model trained here)
N_TAGS = len(all_tag_tokens())
FIRST_PIECE = 4 + N_TAGS  # our id of the first sentence piece


@dataclass(frozen=True)
class Layout:
    """Row map between our ids and fairseq ids. The fairseq side has ``n_pieces`` pieces, then
    ``codes`` (Flores-200 language codes, in fairseq order), then ``spares`` (our spare tag slots
    a model trained here exports, ``__spareN__``), then ``<mask>`` when ``has_mask``."""

    fairseq_id: tuple[int, ...]  # fairseq_id[our id] (or -1)
    codes: tuple[str, ...]
    has_mask: bool
    n_pieces: int
    spares: tuple[str, ...] = ()

    @property
    def fairseq_size(self) -> int:
        return 4 + self.n_pieces + len(self.codes) + len(self.spares) + int(self.has_mask)

    @property
    def is_permutation(self) -> bool:
        """Every row on both sides (the export's softmax is ours, permuted)."""
        return len(self.fairseq_id) == self.fairseq_size and min(self.fairseq_id) >= 0

    def to_internal(self, fairseq_rows: torch.Tensor) -> torch.Tensor:
        """Rows in our order. A tag row the fairseq side lacks gets the mean of the language-code
        rows it has (a neutral language embedding to fine-tune from; zeros if it has none)."""
        if fairseq_rows.shape[0] != self.fairseq_size:
            raise ValueError(f"{fairseq_rows.shape[0]} rows where the layout has {self.fairseq_size}")
        idx = torch.tensor(self.fairseq_id, dtype=torch.long)
        known = idx >= 0
        out = fairseq_rows.new_zeros((len(idx), *fairseq_rows.shape[1:]))
        out[known] = fairseq_rows[idx[known]]
        code_rows = fairseq_rows[4 + self.n_pieces: 4 + self.n_pieces + len(self.codes)]
        if len(code_rows):
            out[~known] = code_rows.mean(0).to(out.dtype)
        return out

    def to_fairseq_layout(self, internal_rows: torch.Tensor) -> torch.Tensor:
        """Rows in fairseq order (the inverse of :meth:`to_internal` on the rows fairseq has)."""
        if internal_rows.shape[0] != len(self.fairseq_id):
            raise ValueError(f"{internal_rows.shape[0]} rows where the layout has {len(self.fairseq_id)}")
        idx = torch.tensor(self.fairseq_id, dtype=torch.long)
        ours = torch.nonzero(idx >= 0).squeeze(1)
        out = internal_rows.new_empty((self.fairseq_size, *internal_rows.shape[1:]))
        out[idx[ours]] = internal_rows[ours]
        return out


def spare_tokens() -> list[str]:
    """Our spare tag slots' pieces (``__spare0__`` …), in slot order."""
    return [t for t in all_tag_tokens() if SPARE.match(t)]


def make_layout(n_internal: int, codes: list[str], has_mask: bool, spares: list[str] | None = None,
                piece_fids: list[int] | None = None, added: dict[str, int] | None = None) -> Layout:
    """The layout of an internal vocabulary of ``n_internal`` ids whose pieces follow the tags;
    ``codes`` (Flores-200) become the fairseq codes. ``spares`` (``__spareN__`` names, a model
    trained here): those slots follow the codes and the one spare slot not listed becomes the
    fairseq ``<mask>`` (``has_mask`` then says the fairseq side has it; our vocabulary has no
    ``<mask>`` piece). Without ``spares``, ``has_mask`` means our last id is ``<mask>``.

    ``piece_fids``: the fairseq id of each of our ids from ``FIRST_PIECE`` on (-1: a row the
    fairseq side lacks), for a vocabulary whose piece ids come from a table (M2M-100's
    ``vocab.json``); by default our piece k is fairseq piece k (NLLB: SentencePiece id + 1).
    ``added``: codes that are not Flores-200, with the spare tag slot (our id) each occupies."""
    added = dict(added or {})
    unknown = [c for c in codes if c not in FLORES200 and c not in added]
    if unknown:
        raise UserError(f"language codes {', '.join(unknown[:5])} are not Flores-200 codes; nmt's tag slots "
                        f"hold Flores-200 languages only (see nmt.langs.FLORES200)")
    spares = list(spares or [])
    mask_slot = _mask_slot(spares) if spares else None
    own_mask = has_mask and mask_slot is None
    if piece_fids is None:
        n_pieces = n_internal - FIRST_PIECE - int(own_mask)
        piece_fids = [4 + k for k in range(n_pieces)]
    else:
        n_pieces = sum(f >= 0 for f in piece_fids)
    fid = [1, 3, 0, 2] + [-1] * N_TAGS + list(piece_fids)
    tail = [lang_tag(c) for c in codes] + spares
    slot = {t: 4 + i for i, t in enumerate(all_tag_tokens())} | {lang_tag(c): i for c, i in added.items()}
    for j, tag in enumerate(tail):
        fid[slot[tag]] = 4 + n_pieces + j
    if own_mask:
        fid.append(4 + n_pieces + len(tail))
    elif mask_slot is not None:
        fid[slot[mask_slot]] = 4 + n_pieces + len(tail)
    return Layout(tuple(fid), tuple(codes), has_mask or mask_slot is not None, n_pieces, tuple(spares))


def _mask_slot(spares: list[str]) -> str:
    """The spare slot that is Transformers' ``<mask>``: the only one of ours ``spares`` lacks."""
    rest = [t for t in spare_tokens() if t not in spares]
    if len(rest) != 1 or len(set(spares)) != len(spares) or not set(spares) <= set(spare_tokens()):
        raise UserError(f"the spare tag tokens ({', '.join(spares[:3])}…) are not nmt's {len(spare_tokens())} "
                        f"spare slots less one (the <mask> row); this is not an export of a model trained by nmt")
    return rest[0]


def new_piece(text: str, kind: int, score: float = 0.0) -> Any:
    p = Piece()
    p.piece, p.type, p.score = text, kind, score
    return p


def check_spm_specials(model: Any, want: tuple[str, ...], where: str) -> None:
    got = tuple(p.piece for p in model.pieces[: len(want)])
    if got != want:
        raise UserError(f"{where}: the SentencePiece model starts with {', '.join(got)} where "
                        f"{', '.join(want)} was expected; it is not the layout this converter reads")


def rebuilt_proto(src: Any, specials: tuple[str, ...], body: list, ids: dict[str, int]) -> bytes:
    """``src`` (normalizer, trainer settings kept) with the pieces ``specials`` + ``body``;
    ``ids`` gives the trainer_spec ids of pad/unk/bos/eos (-1: none)."""
    out = spm_pb2.ModelProto()
    out.CopyFrom(src)
    del out.pieces[:]
    out.pieces.extend(new_piece(p, Piece.UNKNOWN if p == "<unk>" else Piece.CONTROL) for p in specials)
    out.pieces.extend(body)
    t = out.trainer_spec
    for name, piece in (("pad", "<pad>"), ("unk", "<unk>"), ("bos", "<s>"), ("eos", "</s>")):
        setattr(t, f"{name}_id", ids[name])
        setattr(t, f"{name}_piece", piece)
    return out.SerializeToString()


def spm_to_internal(spm_bytes: bytes, has_mask: bool, where: str) -> bytes:
    """Our SentencePiece model from an NLLB ``sentencepiece.bpe.model``: our specials, the 256
    tag slots (USER_DEFINED), every original piece with its score and type (so text segments
    exactly as before), then ``<mask>`` (CONTROL) when the checkpoint's vocabulary has one."""
    src = spm_pb2.ModelProto()
    src.ParseFromString(spm_bytes)
    check_spm_specials(src, SPM_SPECIALS, where)
    body = [new_piece(t, Piece.USER_DEFINED) for t in all_tag_tokens()] + list(src.pieces[len(SPM_SPECIALS):])
    if has_mask:
        body.append(new_piece(MASK, Piece.CONTROL))
    return rebuilt_proto(src, OUR_SPECIALS, body, {"pad": 0, "unk": 1, "bos": 2, "eos": 3})


def spm_to_fairseq(spm_bytes: bytes, where: str) -> tuple[bytes, bool]:
    """The NLLB-layout ``sentencepiece.bpe.model`` of our SentencePiece model (the inverse of
    :func:`spm_to_internal`); also whether our model ends with ``<mask>``."""
    src = spm_pb2.ModelProto()
    src.ParseFromString(spm_bytes)
    check_spm_specials(src, OUR_SPECIALS, where)
    tags = [p.piece for p in src.pieces[4:FIRST_PIECE]]
    if tags != all_tag_tokens():
        raise UserError(f"{where}: the language tags are not at ids 4…{FIRST_PIECE - 1}; this vocabulary was "
                        f"not made by nmt (data_prep.train_spm or nmt.import_hf)")
    pieces = list(src.pieces[FIRST_PIECE:])
    has_mask = bool(pieces) and pieces[-1].piece == MASK and pieces[-1].type == Piece.CONTROL
    if has_mask:
        pieces.pop()
    return rebuilt_proto(src, SPM_SPECIALS, pieces, {"pad": -1, "unk": 0, "bos": 1, "eos": 2}), has_mask
