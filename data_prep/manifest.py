"""``manifest.json`` of a corpus directory, sha256 helpers and atomic outputs.

The manifest's shape is fixed by docs/architecture.md::

    {"format": 1,
     "pairs": {"train": {"deu_Latn-eng_Latn": {"lines": N, "sha256": {"deu_Latn": "…", …}}},
               "valid": {}, "test": {}},
     "languages": [...], "inputs": [{"path": "…", "sha256": "…"}],
     "cleaning": {"<split>/<pair>": {"kept": N, "dropped": {...}}},
     "flores": {"dev": [...], "devtest": [...]}}

Outputs are built under a temporary name and renamed into place when complete
(:func:`atomic_file`, :func:`atomic_dir`), so an interrupted step never leaves a half-written
file under the final name, and an existing output is replaced only when asked to.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from nmt.data.corpus_manifest import (  # noqa: F401  (re-exported: the corpus format's constants and reader)
    CREATE_HINT,
    FLORES_SPLITS,
    FORMAT,
    MANIFEST,
    SPLITS,
    load_manifest,
    new_manifest,
)
from nmt.fileio import atomic_dir, atomic_file, check_writable, sha256_file  # noqa: F401  (re-exported)


def pair_name(a: str, b: str) -> str:
    """The name of the pair of languages ``a`` and ``b``: codes in sorted order."""
    return "-".join(sorted((a, b)))


class LineWriter:
    """Write UTF-8 lines to a file while counting them and hashing the bytes written."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._f = self.path.open("wb")
        self._sha = hashlib.sha256()
        self.lines = 0

    def write(self, line: str) -> None:
        data = line.encode("utf-8") + b"\n"
        self._f.write(data)
        self._sha.update(data)
        self.lines += 1

    def close(self) -> str:
        """Close the file and return its sha256."""
        self._f.close()
        return self._sha.hexdigest()


def add_pair(manifest: dict, split: str, pair: str, lines: int, sha256: dict[str, str],
             cleaning: dict | None = None) -> None:
    """Record one written pair (and its cleaning counts) and update ``languages``."""
    manifest["pairs"].setdefault(split, {})[pair] = {"lines": lines, "sha256": dict(sorted(sha256.items()))}
    if cleaning is not None:
        manifest["cleaning"][f"{split}/{pair}"] = cleaning
    manifest["languages"] = sorted(set(manifest["languages"]) | set(sha256))


def add_input(manifest: dict, path: Path | str, sha256: str | None = None) -> None:
    """Record an input file (by absolute path) with its sha256, once."""
    path = str(Path(path).resolve())
    entry = {"path": path, "sha256": sha256 or sha256_file(path)}
    if entry not in manifest["inputs"]:
        manifest["inputs"].append(entry)


def write_manifest(corpus_dir: Path | str, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (pairs sorted by name) and return its path."""
    path = Path(corpus_dir) / MANIFEST
    manifest = dict(manifest)
    manifest["pairs"] = {s: dict(sorted(p.items())) for s, p in manifest["pairs"].items()}
    manifest["cleaning"] = dict(sorted(manifest["cleaning"].items()))
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


