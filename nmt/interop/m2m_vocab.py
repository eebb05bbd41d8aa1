"""M2M-100's tokenizer (Transformers' ``M2M100Tokenizer``) → nmt's SentencePiece model.

``M2M100Tokenizer`` segments text with ``sentencepiece.bpe.model`` and then looks every piece
up in ``vocab.json`` (fairseq's dictionary order); a piece the table lacks reads as ``<unk>``,
and the ``__xx__`` language tokens follow the table (ids ``len(vocab.json) + i``). The
import keeps that behaviour exactly in one SentencePiece model of nmt's layout:

- our specials and the 256 tag slots, then the table's tokens in table order (so our piece k is
  fairseq id ``4 + k``; ``make_layout(piece_fids=…)`` maps them);
- a table token that is not a piece of the SentencePiece model (text never produces it, but it is
  a row of the model's softmax) becomes a CONTROL piece;
- the SentencePiece pieces the table lacks stay in the model, so segmentation is unchanged,
  between the CONTROL markers ``UNK_PIECES``; ``nmt.data.tokenizer.Tokenizer`` reads every id
  between the markers as ``<unk>``, as Transformers does. These rows are absent on the fairseq
  side (``model.absent_ids``): never predicted, never a target.
"""

from __future__ import annotations

from pathlib import Path

from nmt.data.tokenizer import UNK_PIECES
from nmt.errors import UserError
from nmt.interop.vocab_layout import (
    FAIRSEQ_SPECIALS,
    OUR_SPECIALS,
    SPM_SPECIALS,
    Piece,
    check_spm_specials,
    new_piece,
    rebuilt_proto,
    spm_pb2,
)
from nmt.langs import FLORES200, all_tag_tokens, lang_tag

VOCAB_FILE = "vocab.json"


def check_vocab(vocab: dict, n_codes: int, config_rows: int, where: Path) -> dict[str, int]:
    """``vocab.json`` as read (a JSON object): ids 0 … n-1 once each, fairseq's specials at 0–3,
    and room for them and the ``n_codes`` language tokens in ``config.json``'s ``vocab_size``."""
    fix = "use the model's own vocab.json (M2M100Tokenizer's save_pretrained output)"
    for name, want in zip(FAIRSEQ_SPECIALS, range(4), strict=True):
        if vocab.get(name) != want:
            raise UserError(f"{where}: {name} has id {vocab.get(name)!r} where fairseq's layout has {want} "
                            f"({'it lacks <unk>' if name == '<unk>' and name not in vocab else 'wrong id'}); {fix}")
    ids = sorted(v for v in vocab.values() if isinstance(v, int) and not isinstance(v, bool))
    if ids != list(range(len(vocab))):
        raise UserError(f"{where}: the ids are not 0 … {len(vocab) - 1}, each once (a non-integer, a gap or a "
                        f"repeated id); {fix}")
    if len(vocab) + n_codes > config_rows:
        raise UserError(f"{where}: {len(vocab)} tokens and {n_codes} language codes need {len(vocab) + n_codes} "
                        f"ids but config.json has vocab_size={config_rows}; the tokenizer is not this checkpoint's")
    return dict(vocab)


def m2m_spm_to_internal(spm_bytes: bytes, vocab: dict[str, int], where: str,
                        added: list[str] | tuple[str, ...] = ()) -> tuple[bytes, list[int]]:
    """Our SentencePiece model for ``sentencepiece.bpe.model`` read through ``vocab``, and the
    fairseq id of each of our ids from the first piece on (-1: none; the ``piece_fids`` of
    :func:`nmt.interop.vocab_layout.make_layout`). ``added``: codes that are not Flores-200; they
    take the first spare tag slots (``__spareN__`` renamed, as ``nmt.vocab add-language`` does)."""
    src = spm_pb2.ModelProto()
    src.ParseFromString(spm_bytes)
    check_spm_specials(src, SPM_SPECIALS, where)
    pieces = {p.piece: p for p in src.pieces[len(SPM_SPECIALS):]}
    clash = sorted(set(vocab) & (set(all_tag_tokens()) | set(UNK_PIECES)))
    if clash:
        raise UserError(f"{where}: vocab.json has the token {clash[0]!r}, which nmt reserves")
    tags = all_tag_tokens()
    for i, code in enumerate(added):
        tags[len(FLORES200) + i] = lang_tag(code)
    body = [new_piece(t, Piece.USER_DEFINED) for t in tags]
    fids: list[int] = []
    for token, fid in sorted(vocab.items(), key=lambda kv: kv[1])[len(FAIRSEQ_SPECIALS):]:
        body.append(pieces[token] if token in pieces else new_piece(token, Piece.CONTROL))
        fids.append(fid)
    unk = [p for t, p in pieces.items() if t not in vocab]
    if unk:
        body += [new_piece(UNK_PIECES[0], Piece.CONTROL), *unk, new_piece(UNK_PIECES[1], Piece.CONTROL)]
        fids += [-1] * (len(unk) + 2)
    return rebuilt_proto(src, OUR_SPECIALS, body, {"pad": 0, "unk": 1, "bos": 2, "eos": 3}), fids


def piece_fids_of(spm_bytes: bytes) -> list[int] | None:
    """The ``piece_fids`` of a vocabulary :func:`m2m_spm_to_internal` wrote, read back from the
    model itself (pieces before and after the ``UNK_PIECES`` block keep their order; the block has
    no fairseq rows); None for a vocabulary without the block (our piece k is fairseq piece k)."""
    from nmt.interop.vocab_layout import FIRST_PIECE

    m = spm_pb2.ModelProto()
    m.ParseFromString(spm_bytes)
    names = [p.piece for p in m.pieces[FIRST_PIECE:]]
    if UNK_PIECES[0] not in names or UNK_PIECES[1] not in names:
        return None
    a, b = names.index(UNK_PIECES[0]), names.index(UNK_PIECES[1])
    return [4 + k for k in range(a)] + [-1] * (b - a + 1) + [4 + a + k for k in range(len(names) - b - 1)]


def write_m2m_tokenizer(out: Path, spm_bytes: bytes, fairseq_ids: dict[str, int], language_codes: str) -> None:
    """Transformers' ``M2M100Tokenizer`` files in ``out`` for our vocabulary ``spm_bytes`` (an
    M2M-100 import): ``vocab.json`` = ``fairseq_ids`` (piece -> fairseq id, specials included),
    ``sentencepiece.bpe.model`` = our normal pieces (those read as ``<unk>`` too, so text segments as
    before) with SentencePiece's specials, ``tokenizer_config.json`` naming ``language_codes``."""
    import json
    import tempfile

    from transformers import M2M100Tokenizer

    from nmt.interop.hf_tokenizer import SPM_FILE
    from nmt.interop.vocab_layout import FIRST_PIECE

    src = spm_pb2.ModelProto()
    src.ParseFromString(spm_bytes)
    pieces = [p for p in src.pieces[FIRST_PIECE:] if p.type != Piece.CONTROL]
    fs_spm = rebuilt_proto(src, SPM_SPECIALS, pieces, {"pad": -1, "unk": 0, "bos": 1, "eos": 2})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / VOCAB_FILE).write_text(json.dumps(fairseq_ids, ensure_ascii=False), encoding="utf-8")
        (Path(tmp) / SPM_FILE).write_bytes(fs_spm)
        tok = M2M100Tokenizer(str(Path(tmp) / VOCAB_FILE), str(Path(tmp) / SPM_FILE), language_codes=language_codes)
        tok.save_pretrained(str(out))
