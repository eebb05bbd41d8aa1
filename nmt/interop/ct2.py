"""A Transformers (M2M100, NLLB id layout) export → a self-contained CTranslate2 directory.

``python -m nmt.export CKPT OUT --format ct2 [--quantization int8]`` writes the Transformers
export into a temporary directory (:func:`nmt.interop.hf_export.export_hf`), then converts it
with ``ctranslate2.converters.TransformersConverter``. OUT holds what CTranslate2 needs plus
what :class:`nmt.interop.ct2_translate.Ct2Translator` needs to translate on its own:

- ``model.bin`` and ``shared_vocabulary.json`` (written by the converter);
- ``sentencepiece.bpe.model``: the SentencePiece model (piece strings are the vocabulary);
- ``config.json``: CTranslate2's own keys, plus ours: ``"format": "ct2"``, ``quantization``,
  ``languages`` (the languages the model was trained on), ``language_tokens`` (Flores code →
  vocabulary token), ``source_convention`` (``lang_first``: ``[src] x </s>``; ``lang_last``:
  ``x </s> [src]``, the Transformers tokenizer's ``legacy_behaviour``), ``max_source_positions``,
  ``suppress_tokens`` (never generated), ``eval`` (decoding defaults) and the tokenizer's sha256.

The directory appears complete or not at all; an existing OUT is replaced only with
``--overwrite`` and only when it is an earlier ct2 export (or empty). See docs/export.md.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nmt import __version__
from nmt.errors import UserError
from nmt.fileio import atomic_dir, read_json_object, sha256_file
from nmt.langs import FLORES200

CT2_FORMAT = "ct2"
CT2_VERSION = 1
CONFIG = "config.json"
SPM = "sentencepiece.bpe.model"
VOCAB = "shared_vocabulary.json"
QUANTIZATIONS = ("none", "int8", "int8_float32", "float16")
# Tokens the model must never generate (as nmt's torch search bans <s>, <pad> and the tags).
_NEVER = ("<s>", "<pad>", "<mask>")
_TAG_PIECE = re.compile(r"^__[A-Za-z0-9_]+__$")  # nmt's own tag pieces (__eng_Latn__, __spare0__)


def check_quantization(quantization: str | None) -> str | None:
    """``None`` for no quantization, else the CTranslate2 name; UserError for anything else."""
    if quantization in (None, "", "none"):
        return None
    if quantization not in QUANTIZATIONS:
        raise UserError(f"--quantization {quantization!r} is not supported; use one of "
                        f"{', '.join(QUANTIZATIONS)} (none: float32 weights)")
    return quantization


def read_ct2_config(ct2_dir: Path) -> dict[str, Any]:
    """``config.json`` of a ct2 export, checked; UserError naming the file otherwise."""
    path = ct2_dir / CONFIG
    fix = f"convert it again with python -m nmt.export CKPT {ct2_dir} --format ct2 --overwrite"
    meta = read_json_object(path, missing=f", so {ct2_dir} is not a ct2 export", fix=fix)
    if meta.get("format") != CT2_FORMAT:
        raise UserError(f"{path} is not an nmt ct2 export config (\"format\": \"{CT2_FORMAT}\" expected); "
                        f"backend=ct2 takes a directory written by python -m nmt.export CKPT OUT --format ct2")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > CT2_VERSION:
        raise UserError(f"{path} has ct2 export format_version {meta.get('format_version')!r}, newer than this "
                        f"nmt reads ({CT2_VERSION}); upgrade nmt or {fix}")
    for key in ("language_tokens", "suppress_tokens", "tokenizer"):
        if key not in meta:
            raise UserError(f"{path} lacks {key!r}; {fix}")
    return meta


_M2M_REFUSED = ("{what} has an M2M-100 tokenizer (vocab.json, __xx__ codes), which the ct2 export does not "
                "convert yet; translate an M2M-100 import with backend=torch")


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if out.is_file():
        raise UserError(f"OUT_DIR {out} is a file; give a directory path (it is created)")
    if not overwrite:
        raise UserError(f"OUT_DIR {out} already exists; pass --overwrite to replace it, or choose another directory")
    try:
        read_ct2_config(out)
    except UserError:
        raise UserError(f"OUT_DIR {out} is not an earlier ct2 export; --overwrite replaces only one: "
                        f"choose another (or an empty) directory") from None


def _read_hf_dir(hf_dir: Path) -> tuple[dict, dict]:
    """The Transformers export's config.json and tokenizer_config.json, checked."""
    fix = "pass a directory written by python -m nmt.export CKPT OUT --format hf"
    out = []
    for name in ("config.json", "tokenizer_config.json"):
        try:
            out.append(json.loads((hf_dir / name).read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise UserError(f"{hf_dir / name} is missing or not JSON ({str(e)[:100]}); {fix}") from None
    cfg, tok_cfg = out
    if cfg.get("model_type") != "m2m_100":
        raise UserError(f"{hf_dir / 'config.json'} has model_type {cfg.get('model_type')!r}; only m2m_100 "
                        f"(NLLB dense) converts to ct2 here; {fix}")
    if not (hf_dir / SPM).is_file():
        raise UserError(f"{hf_dir / SPM} is missing: the ct2 export needs the SentencePiece model; {fix}")
    if tok_cfg.get("tokenizer_class") == "M2M100Tokenizer":
        raise UserError(_M2M_REFUSED.format(what=hf_dir))
    return cfg, tok_cfg


def _ct2_meta(out: Path, hf_cfg: dict, tok_cfg: dict, quantization: str | None,
              languages: list[str] | None, eval_defaults: dict | None) -> dict[str, Any]:
    """Our keys of the ct2 config.json, from the converted vocabulary and the HF configs."""
    vocab = json.loads((out / VOCAB).read_text(encoding="utf-8"))
    present = set(vocab)
    lang_tokens = {c: c for c in FLORES200 if c in present}
    if not lang_tokens:
        raise UserError(f"the vocabulary of {out.name} holds no Flores-200 language code tokens (eng_Latn, ...); "
                        f"the Transformers export must add them as special tokens")
    langs = sorted(languages) if languages else sorted(lang_tokens)
    missing = [c for c in langs if c not in lang_tokens]
    if missing:
        raise UserError(f"languages {', '.join(missing)} have no token in the converted vocabulary; "
                        f"re-export the Transformers directory with their language codes")
    suppress = sorted({t for t in vocab if t in _NEVER or t in lang_tokens.values() or _TAG_PIECE.match(t)
                       or t.startswith("madeupword")})
    return {
        "format": CT2_FORMAT,
        "format_version": CT2_VERSION,
        "nmt_version": __version__,
        "quantization": quantization or "none",
        "languages": langs,
        "language_tokens": lang_tokens,
        "source_convention": "lang_last" if tok_cfg.get("legacy_behaviour") else "lang_first",
        "max_source_positions": int(hf_cfg.get("max_position_embeddings") or 1024),
        "suppress_tokens": suppress,
        "eval": dict(eval_defaults or {}),
        "tokenizer": {"file": SPM, "sha256": sha256_file(out / SPM)},
    }


def convert_hf_dir(hf_dir: str | Path, out_dir: str | Path, quantization: str | None = None,
                   overwrite: bool = False, languages: list[str] | None = None,
                   eval_defaults: dict | None = None) -> dict[str, Any]:
    """Convert a Transformers M2M100 export to a self-contained ct2 directory; returns its config."""
    import ctranslate2  # type: ignore[import-untyped]

    hf, out = Path(hf_dir), Path(out_dir)
    quant = check_quantization(quantization)
    _check_out(out, overwrite)
    hf_cfg, tok_cfg = _read_hf_dir(hf)
    try:
        with atomic_dir(out, overwrite=True) as tmp:  # _check_out decided what may be replaced
            try:
                ctranslate2.converters.TransformersConverter(str(hf)).convert(str(tmp), quantization=quant,
                                                                               force=True)
            except (ValueError, NotImplementedError, KeyError) as e:
                raise UserError(f"CTranslate2 cannot convert {hf} ({str(e).splitlines()[0][:200]}); "
                                f"check that it is an M2M100/NLLB Transformers export") from None
            shutil.copyfile(hf / SPM, tmp / SPM)
            config = json.loads((tmp / CONFIG).read_text(encoding="utf-8"))
            config.update(_ct2_meta(tmp, hf_cfg, tok_cfg, quant, languages, eval_defaults))
            config["source"] = {"hf_dir": str(hf.resolve()), "ctranslate2_version": ctranslate2.__version__}
            (tmp / CONFIG).write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write the ct2 export {out}: {e.strerror or e}; free disk space or choose another "
                        f"OUT_DIR (nothing was written there)") from None
    return config


def export_ct2(ckpt: str | Path, out_dir: str | Path, quantization: str | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    """``python -m nmt.export CKPT OUT --format ct2``: the HF export in a temp dir, then converted."""
    from nmt.inference import load_inference_checkpoint
    from nmt.interop.hf_export import export_hf

    out = Path(out_dir)
    quant = check_quantization(quantization)
    _check_out(out, overwrite)  # before the (possibly long) export
    ck = load_inference_checkpoint(ckpt)
    if ((ck.info.get("source") or {}).get("hf") or {}).get("tokenizer") == "m2m100":
        raise UserError(_M2M_REFUSED.format(what=ckpt))
    directions = ck.info.get("directions") or []
    languages = sorted({c for d in directions for c in str(d).split("-")}) or None
    eval_defaults = dict(ck.eval_config)
    del ck
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.hf-", dir=out.parent) as tmp:
        export_hf(ckpt, Path(tmp) / "hf")
        config = convert_hf_dir(Path(tmp) / "hf", out, quant, overwrite, languages, eval_defaults)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out}/ (CTranslate2, quantization {config['quantization']}, {size / 2**20:.1f} MiB); use it "
          f"with: python -m nmt.translate backend=ct2 ckpt={out} src_lang=... tgt_lang=...", flush=True)
    return config
