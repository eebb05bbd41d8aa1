"""Checkpoints: atomic writes, safe loading (no code from the file ever runs).

A checkpoint is a ``torch.save`` of plain containers, tensors and numbers, read back with
``torch.load(weights_only=True)`` — PyTorch's restricted unpickler that refuses anything
that would import or call code. Writes go to ``<name>.tmp``, are fsynced, then renamed; then a
JSON manifest ``<name>.json`` (step, size, sha256) is written the same way. Loading checks the
file against its manifest, so a truncated or bit-flipped checkpoint is detected before use;
:func:`latest_good_checkpoint` falls back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nmt.errors import UserError
from nmt.fileio import sha256_file

FORMAT = 1


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(path.suffix)] + ".json" if path.suffix else path.name + ".json")


def _write_atomically(path: Path, write) -> None:  # noqa: ANN001
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}; free disk space or fix "
                        f"the directory's permissions (the previous checkpoint is untouched)") from None


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename, fsync the directory),
    then its manifest ``<name>.json`` (step, bytes, sha256)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the checkpoint directory {path.parent}: {e.strerror or e}") from None
    _write_atomically(path, lambda f: torch.save({"format": FORMAT, **state}, f))
    manifest = {"file": path.name, "step": int(state.get("step", 0)), "bytes": path.stat().st_size,
                "sha256": sha256_file(path)}
    _write_atomically(manifest_path(path), lambda f: f.write(json.dumps(manifest, indent=1).encode() + b"\n"))
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def verify_checkpoint(path: Path) -> str | None:
    """None when ``path`` matches its manifest (or has none: older checkpoints), else the reason."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    mpath = manifest_path(path)
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError):
        return f"its manifest {mpath.name} is unreadable"
    if path.stat().st_size != manifest.get("bytes"):
        return f"{path.stat().st_size} bytes where its manifest says {manifest.get('bytes')} (truncated?)"
    if sha256_file(path) != manifest.get("sha256"):
        return "its sha256 does not match its manifest (corrupt)"
    return None


SHARDED_MANIFEST = "nmt_manifest.json"  # inside a sharded <name>.dcp/ directory (nmt/training/sharded.py)


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint (``.pt`` file or ``.dcp`` directory) was written at, from its manifest."""
    manifest = path / SHARDED_MANIFEST if path.is_dir() else manifest_path(path)
    try:
        return int(json.loads(manifest.read_text()).get("step", -1))
    except (OSError, ValueError):
        return int(path.stem.split("_")[1]) if path.stem.startswith("step_") else -1


def latest_good_checkpoint(ckpt_dir: Path, load: Callable[[Path], dict[str, Any]] | None = None,
                           ) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest checkpoint in ``ckpt_dir`` that verifies and loads (``last`` first, then the
    others by step, newest first; ``.pt`` files and sharded ``.dcp`` directories), what ``load``
    returned for it (default :func:`load_checkpoint`), and a warning for each newer one that did not."""
    ckpt_dir = Path(ckpt_dir)
    load = load or load_checkpoint
    found = sorted((p for p in ckpt_dir.glob("*") if p.suffix in (".pt", ".dcp")), key=checkpoint_step, reverse=True)
    warnings: list[str] = []
    for cand in [p for p in found if p.stem == "last"] + [p for p in found if p.stem != "last"]:
        try:  # load checks the manifest first: each file is hashed once
            return cand, load(cand), warnings
        except UserError as e:
            warnings.append(f"checkpoint {cand} is unusable ({e})")
    return None, None, warnings


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    require_model: bool = True) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; a bad file raises a UserError.
    ``require_model=False``: the file may hold no ``model`` (``extra.pt`` of a sharded checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a .pt file under a run's checkpoints/")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise UserError(f"checkpoint {path} is truncated or corrupt: {problem}; use another checkpoint "
                        f"(e.g. checkpoints/best.pt or an earlier step_N.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"checkpoint {path} was refused: it holds objects that would run code when "
                        f"loaded ({str(e).splitlines()[0][:200]}); only load checkpoints written by nmt") from None
    except Exception as e:  # noqa: BLE001 - torch.load on an arbitrary file raises nearly anything (KeyError, ...)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is truncated or corrupt ({first}); "
                        f"use another checkpoint (e.g. checkpoints/best.pt or an earlier step_N.pt)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or (require_model and "model" not in state):
        raise UserError(f"checkpoint {path} is not an nmt checkpoint (format {FORMAT} expected)")
    return state
