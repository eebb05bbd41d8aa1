"""``<corpus>/bin/meta.json``: which vocabulary a binarized corpus was made with.

Written by ``data_prep.binarize``; read by it (to skip or redo work) and by the trainer (to refuse
a corpus binarized with another SentencePiece model).
"""

from __future__ import annotations

import json
from pathlib import Path

from nmt.data.tokenizer import Tokenizer
from nmt.errors import UserError

META_FORMAT = 1
REDO = "re-run python -m data_prep.binarize --corpus CORPUS --overwrite"


def read_meta(bin_dir: Path) -> dict | None:
    """``bin/meta.json`` or None when absent; UserError when unreadable."""
    path = Path(bin_dir) / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); {REDO}") from None
    if not isinstance(meta, dict) or "spm_sha256" not in meta:
        raise UserError(f"{path}: has no spm_sha256; {REDO}")
    return meta


def check_bin_matches(bin_dir: str | Path, tokenizer: Tokenizer) -> dict:
    """UserError unless ``bin_dir`` was binarized with ``tokenizer``'s model; returns meta.json."""
    meta = read_meta(Path(bin_dir))
    if meta is None:
        raise UserError(f"{Path(bin_dir) / 'meta.json'}: not found; run python -m data_prep.binarize "
                        "--corpus CORPUS first")
    if meta["spm_sha256"] != tokenizer.sha256 or meta.get("vocab_size") != tokenizer.vocab_size:
        raise UserError(
            f"{bin_dir} was binarized with a different vocabulary (spm_sha256 "
            f"{str(meta['spm_sha256'])[:12]}…, {tokenizer.path} is {tokenizer.sha256[:12]}…): {REDO}"
        )
    return meta
