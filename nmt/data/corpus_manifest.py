"""Reading a corpus directory's ``manifest.json`` (its shape: docs/architecture.md).

The one reader of the corpus format, below both ``data_prep`` (which writes corpora:
data_prep/manifest.py) and ``nmt`` (which reads training-pair counts from them).
"""

from __future__ import annotations

import json
from pathlib import Path

from nmt.errors import UserError

FORMAT = 1
SPLITS = ("train", "valid", "test")
FLORES_SPLITS = ("dev", "devtest")
MANIFEST = "manifest.json"
CREATE_HINT = ("create it with python -m data_prep.import_corpus --out DIR ... "
               "or python -m data_prep.demo_corpus --out DIR")


def new_manifest() -> dict:
    """An empty manifest with every top-level key present."""
    return {"format": FORMAT, "pairs": {s: {} for s in SPLITS}, "languages": [], "inputs": [],
            "cleaning": {}, "flores": {s: [] for s in FLORES_SPLITS}}


def load_manifest(corpus_dir: Path | str) -> dict:
    """Read ``<corpus_dir>/manifest.json``; a UserError naming the path when missing or bad."""
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: no manifest (not a corpus directory); {CREATE_HINT}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: corrupt manifest ({e.msg}); {CREATE_HINT} "
                        "(with --overwrite)") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: corrupt manifest (not UTF-8); {CREATE_HINT} (with --overwrite)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("pairs"), dict):
        raise UserError(f"{path}: not a format-{FORMAT} corpus manifest; {CREATE_HINT} (with --overwrite)")
    full = new_manifest()
    full.update(manifest)
    for split in SPLITS:
        full["pairs"].setdefault(split, {})
    return full
