"""Checkpoints: atomic writes, safe loading (no code from the file ever runs).

A checkpoint is a ``torch.save`` of plain containers, tensors and numbers, read back with
``torch.load(weights_only=True)`` — PyTorch's restricted unpickler that refuses anything
that would import or call code. Writes go to ``<name>.tmp``, are fsynced, then renamed.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from nmt.errors import UserError

FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename, fsync the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}; free disk space or fix "
                        f"the directory's permissions (the previous checkpoint is untouched)") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; a bad file raises a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a .pt file under a run's checkpoints/")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"checkpoint {path} was refused: it holds objects that would run code when "
                        f"loaded ({str(e).splitlines()[0][:200]}); only load checkpoints written by nmt") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({str(e).splitlines()[0][:200]}); "
                        f"use another checkpoint (e.g. checkpoints/best.pt or an earlier step_N.pt)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise UserError(f"checkpoint {path} is not an nmt checkpoint (format {FORMAT} expected)")
    return state
