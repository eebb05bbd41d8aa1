"""Streaming readers for parallel text in the formats people actually have.

* Flores-200 directories: ``<dir>/{dev,devtest}/<code>.<split>``, line-aligned across languages.
* OPUS/Moses pair files: ``corpus.de-en.de`` + ``corpus.de-en.en`` (or any two paths).
* TSV: ``source<TAB>target`` per line.
* Compiled gettext catalogs (``.mo``): English msgid and translated msgstr.

Readers yield one item per input line and never hold a whole file in memory. Text is decoded
as strict UTF-8: a bad line is a :class:`~nmt.errors.UserError` naming ``file:line``, unless
the caller asked to skip such lines, in which case the side that failed is yielded as
``None`` (the cleaner counts it as dropped ``invalid_utf8``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from nmt.errors import UserError

FLORES_SPLITS = ("dev", "devtest")
UTF8_FIX = ("convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE) "
            "or pass --skip-invalid-utf8 to drop such lines")


def _open_checked(path: Path):
    """Open ``path`` for binary reading with a UserError for the usual mistakes."""
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a text file with one segment per line")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty; give a file with one segment per line")
    return path.open("rb")


def decode_line(raw: bytes, path: Path, lineno: int, skip_invalid: bool) -> str | None:
    """Decode one line (without its newline) as strict UTF-8; ``None`` if skipping bad lines."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if skip_invalid:
            return None
        raise UserError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                        f"{e.start + 1} of the line); {UTF8_FIX}") from None


def iter_lines(path: Path | str, *, skip_invalid: bool = False) -> Iterator[str | None]:
    """Yield the lines of ``path`` without line endings (``\\n`` or ``\\r\\n``); BOM removed."""
    path = Path(path)
    with _open_checked(path) as f:
        for lineno, raw in enumerate(f, 1):
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield decode_line(raw, path, lineno, skip_invalid)


def count_lines(path: Path) -> int:
    """Number of lines in ``path`` (a last line without a newline counts), read in chunks."""
    n, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def read_aligned(paths: Sequence[Path | str], *,
                 skip_invalid: bool = False) -> Iterator[tuple[str | None, ...]]:
    """Yield tuples of line ``i`` of every file; a UserError if the files differ in length."""
    files = [Path(p) for p in paths]
    iters = [iter_lines(p, skip_invalid=skip_invalid) for p in files]
    done = object()
    while True:
        row = [next(it, done) for it in iters]
        ended = [r is done for r in row]
        if all(ended):
            return
        if any(ended):
            counts = [count_lines(p) for p in files]
            detail = ", ".join(f"{p} has {c} lines" for p, c in zip(files, counts, strict=True))
            raise UserError(f"line counts differ: {detail}; the files must be line-aligned "
                            "(one segment per line, same order)")
        yield cast("tuple[str | None, ...]", tuple(row))  # no item is `done`: a file that ended raised above


def moses_paths(prefix: Path | str, src_suffix: str, tgt_suffix: str) -> tuple[Path, Path]:
    """``corpus.de-en`` + ``de`` / ``en`` -> ``corpus.de-en.de``, ``corpus.de-en.en``."""
    return Path(f"{prefix}.{src_suffix}"), Path(f"{prefix}.{tgt_suffix}")


def read_moses(src_path: Path | str, tgt_path: Path | str, *,
               skip_invalid: bool = False) -> Iterator[tuple[str | None, str | None]]:
    """Yield ``(src, tgt)`` from two line-aligned files (OPUS/Moses layout)."""
    # unpacking types the pair (`yield from` would yield tuple[str | None, ...]), hence the noqa
    for src, tgt in read_aligned([src_path, tgt_path], skip_invalid=skip_invalid):  # noqa: UP028
        yield src, tgt


def read_tsv(path: Path | str, *,
             skip_invalid: bool = False) -> Iterator[tuple[str | None, str | None]]:
    """Yield ``(src, tgt)`` from ``src<TAB>tgt`` lines.

    A blank line yields ``("", "")`` (the cleaner drops it as empty); any other line must have
    exactly two tab-separated fields.
    """
    path = Path(path)
    for lineno, line in enumerate(iter_lines(path, skip_invalid=skip_invalid), 1):
        if line is None:
            yield None, None
            continue
        if not line.strip():
            yield "", ""
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise UserError(f"{path}:{lineno}: expected 2 tab-separated fields (source<TAB>target), "
                            f"found {len(fields)}; write each line as source<TAB>target (no other tabs)")
        yield fields[0], fields[1]


def flores_path(flores_dir: Path | str, split: str, code: str) -> Path:
    """``<dir>/<split>/<code>.<split>``, e.g. ``flores200_dataset/dev/deu_Latn.dev``."""
    return Path(flores_dir) / split / f"{code}.{split}"


def read_flores(flores_dir: Path | str, split: str, codes: Sequence[str], *,
                skip_invalid: bool = False) -> Iterator[tuple[str | None, ...]]:
    """Yield one tuple per sentence with the text of each language in ``codes`` order."""
    if split not in FLORES_SPLITS:
        raise UserError(f"unknown Flores split {split!r}: use one of {', '.join(FLORES_SPLITS)}")
    paths = [flores_path(flores_dir, split, c) for c in codes]
    for p in paths:
        if not p.is_file():
            have = sorted(q.name for q in p.parent.glob(f"*.{split}"))[:6] if p.parent.is_dir() else []
            seen = f" (found e.g. {', '.join(have)})" if have else f" ({p.parent} has no *.{split} files)"
            raise UserError(f"{p}: missing Flores-200 file{seen}; expected the layout "
                            f"<dir>/{split}/<code>.{split} with Flores-200 codes such as eng_Latn")
    yield from read_aligned(paths, skip_invalid=skip_invalid)


# --- gettext catalogs -------------------------------------------------------------------------

MO_MAGIC = 0x950412DE


@dataclass(frozen=True)
class CatalogEntry:
    """One translated message of a compiled catalog (plural forms in ``msgstr`` order)."""

    context: str | None
    msgid: str
    msgid_plural: str | None
    msgstr: tuple[str, ...]


def _charset(header: str) -> str:
    for line in header.splitlines():
        if line.lower().startswith("content-type:") and "charset=" in line:
            return line.split("charset=", 1)[1].strip() or "utf-8"
    return "utf-8"


def read_mo(path: Path | str) -> Iterator[CatalogEntry]:
    """Yield the translated messages of a GNU ``.mo`` file (the header entry is skipped).

    Compiled catalogs hold no fuzzy or untranslated messages (``msgfmt`` leaves them out);
    empty translations are skipped here as well. Entries that do not decode are skipped.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 20:
        raise UserError(f"{path}: too short to be a .mo catalog; rebuild it with msgfmt")
    for order in "<>":
        if struct.unpack(order + "I", data[:4])[0] == MO_MAGIC:
            break
    else:
        raise UserError(f"{path}: not a GNU .mo catalog (bad magic number); rebuild it with msgfmt")
    _rev, count, orig_at, trans_at = struct.unpack(order + "4I", data[4:20])

    def string(table: int, i: int) -> bytes:
        length, offset = struct.unpack_from(order + "2I", data, table + 8 * i)
        if offset + length > len(data):
            raise UserError(f"{path}: truncated .mo catalog (entry {i}); rebuild it with msgfmt")
        return data[offset:offset + length]

    charset = "utf-8"
    for i in range(count):
        key, value = string(orig_at, i), string(trans_at, i)
        if not key:
            charset = _charset(value.decode("ascii", "replace"))
            continue
        try:
            key_s, value_s = key.decode(charset), value.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
        context, sep, ids = key_s.rpartition("\x04")
        msgid, _, plural = ids.partition("\x00")
        forms = tuple(value_s.split("\x00"))
        if not any(forms):
            continue
        yield CatalogEntry(context if sep else None, msgid, plural or None, forms)
