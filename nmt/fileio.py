"""Atomic outputs: a file or directory appears under its final name only when complete,
and an existing output is replaced only when the caller says so (``overwrite``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from nmt.errors import UserError


def check_writable(path: Path, overwrite: bool, *, is_dir: bool, hint: str = "pass --overwrite") -> None:
    """UserError if ``path`` exists (and is not an empty directory) and ``overwrite`` is off."""
    if not path.exists():
        return
    if is_dir and path.is_file():
        raise UserError(f"{path}: is a file, but an output directory is needed here; "
                        "give another path or remove the file")
    if not is_dir and path.is_dir():
        raise UserError(f"{path}: is a directory, but an output file is needed here; give another path")
    if is_dir and not any(path.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{path}: already exists; {hint} to replace it")


@contextlib.contextmanager
def atomic_file(path: Path | str, *, overwrite: bool = False, hint: str = "pass --overwrite") -> Iterator[Path]:
    """Yield ``<path>.tmp`` to write; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    check_writable(path, overwrite, is_dir=False, hint=hint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it becomes ``path``.

    An existing ``path`` is replaced only with ``overwrite`` (an empty directory always is);
    on error the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    check_writable(path, overwrite, is_dir=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: str | Path, data: bytes | str, *, overwrite: bool = False,
                 hint: str = "pass overwrite=true") -> None:
    """Write ``data`` to ``path`` through ``<path>.tmp`` (fsynced) and a rename.

    An existing ``path`` is refused unless ``overwrite``; a write failure (full disk, no
    permission) is a UserError and leaves nothing behind."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with atomic_file(path, overwrite=overwrite, hint=hint) as tmp:
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def read_json_object(path: Path, *, missing: str, fix: str) -> dict:
    """The JSON object in ``path``; one UserError naming the file otherwise (``missing``: what a
    missing file means, ``fix``: what to do about any of these)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing{missing}; {fix}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable or not JSON ({str(e)[:120]}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; {fix}")
    return data
