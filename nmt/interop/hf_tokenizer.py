"""Write and read the Transformers side of an NLLB-layout tokenizer (docs/interop.md).

:func:`write_hf_tokenizer` turns an NLLB-layout ``sentencepiece.bpe.model`` into the files
``AutoTokenizer.from_pretrained`` loads: built with Transformers' own ``NllbTokenizer`` from the
written model (language codes as special tokens, ``<mask>`` last), then checked id by id.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from nmt.errors import UserError
from nmt.interop.vocab_layout import spm_pb2

SPM_FILE = "sentencepiece.bpe.model"


def spm_kind(spm_bytes: bytes) -> str:
    """``bpe`` or ``unigram`` (the SentencePiece model type)."""
    m = spm_pb2.ModelProto()
    m.ParseFromString(spm_bytes)
    return {spm_pb2.TrainerSpec.BPE: "bpe", spm_pb2.TrainerSpec.UNIGRAM: "unigram"}.get(m.trainer_spec.model_type,
                                                                                         "other")


def write_hf_tokenizer(out: Path, spm_bytes: bytes, codes: list[str], legacy: bool,
                       spares: list[str] | None = None) -> None:
    """``sentencepiece.bpe.model``, ``tokenizer.json`` and ``tokenizer_config.json`` in ``out``;
    ``spares`` (a model trained here: ``__spareN__``) follow the codes as special tokens.

    Transformers 5's ``NllbTokenizer`` always runs a BPE model; a unigram vocabulary (the
    ones ``data_prep.train_spm`` trains) gets a Unigram ``tokenizer.json`` loaded by the generic
    ``TokenizersBackend`` class instead (same ids; no ``src_lang`` switching, see docs/interop.md)."""
    from tokenizers import models
    from transformers import NllbTokenizer

    tail = [*codes, *(spares or [])]
    (out / SPM_FILE).write_bytes(spm_bytes)
    kind = spm_kind(spm_bytes)
    if kind not in ("bpe", "unigram"):
        raise UserError(f"the vocabulary is a SentencePiece model of type {kind}; Transformers' NLLB tokenizer "
                        f"reads BPE (and nmt writes unigram as a plain fast tokenizer): nothing else is supported")
    with tempfile.TemporaryDirectory() as tmp:  # from_pretrained sees only the spm: no stale tokenizer.json
        (Path(tmp) / SPM_FILE).write_bytes(spm_bytes)
        tok = NllbTokenizer.from_pretrained(tmp, extra_special_tokens=tail, mask_token=None,
                                            legacy_behaviour=legacy, src_lang=_default_src(codes))
    tok.add_special_tokens({"mask_token": "<mask>"})  # after the codes, as in NLLB's vocabulary
    if kind == "unigram":
        m = spm_pb2.ModelProto()
        m.ParseFromString(spm_bytes)
        vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
        vocab += [(p.piece, p.score) for p in m.pieces[3:]]
        tok._tokenizer.model = models.Unigram(vocab, 3, m.trainer_spec.byte_fallback)
    check_layout(tok, spm_bytes, tail)
    tok.save_pretrained(str(out))
    (out / SPM_FILE).write_bytes(spm_bytes)
    if kind == "unigram":
        _use_generic_class(out)


def _default_src(codes: list[str]) -> str | None:
    return "eng_Latn" if "eng_Latn" in codes else (codes[0] if codes else None)


def _use_generic_class(out: Path) -> None:
    import json

    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "TokenizersBackend"
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_layout(tok, spm_bytes: bytes, codes: list[str]) -> None:
    """Assert the fairseq layout: specials 0–3, piece k → k + 1, the codes (and spare tokens),
    then ``<mask>``."""
    m = spm_pb2.ModelProto()
    m.ParseFromString(spm_bytes)
    n = len(m.pieces) + 1
    want = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": n + len(codes)}
    want.update({p.piece: k + 1 for k, p in enumerate(m.pieces) if k >= 3})
    want.update({c: n + j for j, c in enumerate(codes)})
    got = dict(zip(want, tok.convert_tokens_to_ids(list(want)), strict=True))
    wrong = [t for t in want if got[t] != want[t]]
    if wrong or len(tok) != n + len(codes) + 1:
        raise UserError(f"Transformers built a tokenizer with another layout ({len(wrong)} ids differ, e.g. "
                        f"{wrong[:3]}; {len(tok)} tokens where {n + len(codes) + 1} were expected); this "
                        f"Transformers version is not supported by nmt's exporter")
