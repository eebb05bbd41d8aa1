"""``nmt.vocab add-language``: a model (checkpoint or export) → a new export that knows one more language.

Nothing is changed in place. The language's tag: a Flores-200 code already has its slot; any
other well-formed code (``xxx_Scrp``, optionally ``_abcd1234``) takes the first free spare slot,
renamed ``__code__`` in the SentencePiece model (``config.json`` records ``added_languages``).
The tag's embedding row starts as the mean of the model's language tags' rows (``--init mean``)
or as a copy of one language's row (``--init from:LANG``). With ``--text FILE --new-pieces N``
up to N pieces learned from FILE are appended (:mod:`nmt.vocab.spm_edit`); each new row is the
mean of the rows of the old pieces its text decomposes into. Old rows are untouched, so old
inputs give the same logits over the old vocabulary (the re-initialised tag row aside).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nmt.data.tokenizer import FIRST_TAG_ID, Tokenizer
from nmt.errors import UserError
from nmt.langs import FLORES200, is_lang_code, lang_tag
from nmt.vocab import spm_edit

if TYPE_CHECKING:
    from nmt.inference import InferenceCheckpoint

EMBED = "embed.weight"  # the (tied) embedding / output matrix of nmt.models.transformer.Transformer


@dataclass
class AddLanguage:
    ckpt: Path
    out: Path
    lang: str
    init: str = "mean"  # mean | from:LANG
    text: Path | None = None
    new_pieces: int = 0
    old_text: Path | None = None  # measure how much the segmentation of this (old-language) text changes
    keep_old_segmentation: bool = False  # skip new pieces that occur in old_text (its segmentation stays)
    overwrite: bool = False

    def validate(self) -> None:
        """Checks that need no model (each names the option and the fix)."""
        if not is_lang_code(self.lang):
            raise UserError(f"--lang {self.lang!r} is not a language code of the form xxx_Scrp (ISO 639-3 letters, "
                            f"an ISO 15924 script, optionally _ and a glottocode: swh_Latn, xyz_Latn_abcd1234)")
        if not (self.init == "mean" or (self.init.startswith("from:") and len(self.init) > 5)):
            raise UserError(f"--init {self.init!r}: use mean or from:LANG (a language of the model, "
                            f"e.g. from:fra_Latn)")
        if self.new_pieces < 0:
            raise UserError(f"--new-pieces {self.new_pieces} must be positive")
        if self.new_pieces and self.text is None:
            raise UserError("--new-pieces needs --text FILE (the new language's text the pieces are learned from)")
        if self.keep_old_segmentation and self.old_text is None:
            raise UserError("--keep-old-segmentation needs --old-text FILE (text of the model's languages)")


def read_text(path: Path, option: str) -> list[str]:
    """Non-empty lines of a UTF-8 file; UserError naming the file and line otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{option} {path}: cannot read it ({e.strerror})") from None
    lines = []
    for no, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{option} {path}:{no}: invalid UTF-8 at byte {e.start}; "
                            f"convert the file to UTF-8") from None
        if text.strip():
            lines.append(text.strip())
    if not lines:
        raise UserError(f"{option} {path} holds no text")
    return lines


def tag_init_row(weight: torch.Tensor, tok: Tokenizer, languages: list[str], init: str) -> torch.Tensor:
    """The new tag's row: the mean of the known language tags' rows, or one language's row."""
    if init.startswith("from:"):
        src = init[5:]
        if src not in languages:
            raise UserError(f"--init {init}: {src} is not a language of the model (its languages: "
                            f"{', '.join(languages)})")
        return weight[tok.lang_id(src)].clone()
    ids = [tok.lang_id(c) for c in languages]
    return weight[ids].double().mean(0).to(weight.dtype)


def grow_embedding(weight: torch.Tensor, rows: list[list[int]]) -> torch.Tensor:
    """``weight`` with one appended row per entry of ``rows``: the mean of those old rows."""
    if not rows:
        return weight
    new = torch.stack([weight[ids].double().mean(0) for ids in rows]).to(weight.dtype)
    return torch.cat([weight, new], 0)


def print_table(before: dict, after: dict, name: str) -> None:
    print(f"tokenization of {name}:")
    print(f"{'':10} {'<unk> rate':>11} {'tokens/char':>12} {'tokens':>8}")
    for name, s in (("before", before), ("after", after)):
        print(f"{name:10} {s['unk_rate']:>10.2%} {s['tokens_per_char']:>12.3f} {s['tokens']:>8}")


@dataclass
class VocabEdit:
    """The new SentencePiece model and what changed: the tag's id and the appended pieces."""

    proto: Any  # sentencepiece_model_pb2.ModelProto (no type stubs)
    tag_id: int
    pieces: list[tuple[str, float]]  # (piece, score as learned), in the order appended
    new_ids: list[int]
    rows: list[list[int]]  # per new piece: the old ids its text decomposes into

    def serialized(self) -> bytes:
        return self.proto.SerializeToString()


def known_languages(ck: InferenceCheckpoint, code: str) -> list[str]:
    """The model's languages, refusing a code it already has."""
    languages = list(ck.languages or [])
    if code in languages or code in ck.tokenizer.added_languages():
        raise UserError(f"--lang {code}: the model already knows {code} (its languages: {', '.join(languages)})")
    if not languages:
        raise UserError(f"{ck.path} records no languages and no directions, so --init cannot use its language "
                        f"tags; re-export it from its training checkpoint")
    return languages


def edit_vocabulary(tok: Tokenizer, args: AddLanguage, text: list[str] | None, old_text: list[str] | None) -> VocabEdit:
    """The tag slot (a Flores-200 code's own, else the first free spare) and the appended pieces."""
    proto = spm_edit.parse(tok.path.read_bytes())
    try:
        tag_id = tok.lang_id(args.lang)  # a Flores-200 code: its own slot
    except UserError:
        tag_id = spm_edit.take_spare_slot(proto, args.lang)
    pieces: list[tuple[str, float]] = []
    if args.new_pieces and text:
        avoid = old_text if args.keep_old_segmentation and old_text else ()
        pieces = spm_edit.learn_pieces(proto, text, args.new_pieces, avoid)
    literal = spm_edit.literal_processor(proto)
    rows = [spm_edit.decompose(literal, piece) for piece, _ in pieces]
    return VocabEdit(proto, tag_id, pieces, spm_edit.append_pieces(proto, pieces), rows)


def new_config(ck: InferenceCheckpoint, state: dict, args: AddLanguage, edit: VocabEdit, languages: list[str]) -> dict:
    """The export's config.json: the source's, with the new vocabulary, language set and provenance."""
    from nmt.export import export_config

    config = export_config(ck, state, args.ckpt)
    from nmt.interop.absent_rows import mark_present  # an import's unused slot gets a row the softmax sees

    mark_present(config["model"], [edit.tag_id])
    config["vocab_size"] = len(edit.proto.pieces)
    config["languages"] = sorted([*languages, args.lang])
    config["tokenizer"]["sha256"] = hashlib.sha256(edit.serialized()).hexdigest()
    spare = edit.tag_id >= FIRST_TAG_ID + len(FLORES200)
    added = {**ck.tokenizer.added_languages(), **({args.lang: edit.tag_id} if spare else {})}
    if added:
        config["added_languages"] = added
    config["vocab_edit"] = {"added_language": args.lang, "tag_id": edit.tag_id, "init": args.init,
                            "new_pieces": len(edit.new_ids),
                            "first_new_piece_id": edit.new_ids[0] if edit.new_ids else None,
                            "text": str(args.text) if args.text else None}
    return config


def report(args: AddLanguage, old: Tokenizer, edit: VocabEdit, text: list[str] | None,
           old_text: list[str] | None) -> None:
    old_sp, new_sp = spm_edit.processor(spm_edit.parse(old.path.read_bytes())), spm_edit.processor(edit.proto)
    print(f"added {args.lang} to {args.ckpt}: tag {lang_tag(args.lang)} at id {edit.tag_id} (init {args.init}); "
          f"{len(edit.new_ids)} new pieces, vocabulary {old.vocab_size} -> {len(edit.proto.pieces)}")
    if text is not None:
        print_table(spm_edit.text_stats(old_sp, text), spm_edit.text_stats(new_sp, text), str(args.text))
    if old_text is not None:
        share = spm_edit.changed_lines(old_sp, new_sp, old_text)
        print(f"segmentation of {args.old_text}: {share:.2%} of its lines changed")
    print(f"wrote {args.out}/; binarize the fine-tuning corpus with python -m data_prep.binarize --corpus CORPUS "
          f"--spm {args.out}/spm.model --overwrite, then train with +recipe=nllb_finetune trainer.init_from={args.out}")


def add_language(args: AddLanguage) -> dict:
    """Write the extended export; returns its config.json object. Every check runs before anything is written."""
    from nmt.export import check_out_dir, tensors_for_safetensors, write_export_dir
    from nmt.inference import load_inference_checkpoint

    args.validate()
    check_out_dir(args.out, args.ckpt, args.overwrite)
    text = read_text(args.text, "--text") if args.text else None
    old_text = read_text(args.old_text, "--old-text") if args.old_text else None
    ck = load_inference_checkpoint(args.ckpt)
    languages = known_languages(ck, args.lang)
    edit = edit_vocabulary(ck.tokenizer, args, text, old_text)
    state = tensors_for_safetensors(ck.build_model().state_dict())  # build_model: the weights fit their config
    weight = state[EMBED].clone()
    weight[edit.tag_id] = tag_init_row(weight, ck.tokenizer, languages, args.init)
    state[EMBED] = grow_embedding(weight, edit.rows)
    config = new_config(ck, state, args, edit, languages)
    write_export_dir(args.out, state, config, edit.serialized(), what=f"checkpoint {args.ckpt}")
    report(args, ck.tokenizer, edit, text, old_text)
    return config
