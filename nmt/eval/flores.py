"""Read a Flores-200 or Flores+ test set (layouts: nmt/eval/flores_layout.py).

Flores-200 layout (also ``<corpus>/flores/`` in docs/architecture.md)::

    <dir>/dev/<code>.dev            # e.g. <dir>/dev/eng_Latn.dev
    <dir>/devtest/<code>.devtest    # e.g. <dir>/devtest/fra_Latn.devtest

Flores+ (``<dir>/devtest/devtest.cmn_Hans``, or ``<code>.jsonl`` / ``<code>.parquet``) is read
the same way, its renamed codes mapped to Flores-200 codes, which every function here takes.
Every file of a split has the same number of lines: line ``i`` of each language is a
translation of line ``i`` of every other (multi-way parallel). Only files of a Flores-200
language (``nmt.langs.FLORES200``) count as languages; other files are ignored.
"""

from __future__ import annotations

from pathlib import Path

from nmt.errors import UserError
from nmt.eval.flores_layout import LAYOUTS, Layout, detect, read_rows

LAYOUT = LAYOUTS


def read_text_lines(path: str | Path, *, what: str = "file") -> list[str]:
    """Lines of a UTF-8 text file, without line terminators (``\\n`` or ``\\r\\n``).

    A final line without a newline counts; a trailing newline does not add an empty line.
    Invalid UTF-8 raises a UserError naming ``path:line``; a missing file names ``path``.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {p} is a directory; expected a text file") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{p}:{line}: invalid UTF-8 (byte {data[e.start]:#04x}); re-encode the file as UTF-8"
        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def split_dir(flores_dir: str | Path, split: str) -> Path:
    """``<flores_dir>/<split>``, or a UserError naming the expected path and the layout."""
    root = Path(flores_dir)
    if not root.is_dir():
        raise UserError(
            f"Flores directory {root} does not exist (flores.dir); the expected layout is {LAYOUT}"
        )
    d = root / split
    if not d.is_dir():
        have = sorted(x.name for x in root.iterdir() if x.is_dir())
        found = f"; found {', '.join(have)}" if have else ""
        raise UserError(
            f"Flores split directory {d} does not exist (split={split}){found}; "
            f"the expected layout is {LAYOUT}"
        )
    return d


def layout(flores_dir: str | Path, split: str) -> Layout:
    """Release, version and file layout of ``<dir>/<split>`` (UserError if it mixes layouts)."""
    return detect(flores_dir, split, split_dir(flores_dir, split))


def lang_path(flores_dir: str | Path, split: str, code: str) -> Path:
    """Path of the file of Flores-200 ``code``: ``<dir>/<split>/<code>.<split>`` for Flores-200,
    ``<dir>/<split>/<split>.<Flores+ code>`` (or .jsonl / .parquet) for Flores+."""
    d = Path(flores_dir) / split
    if not d.is_dir():
        return d / f"{code}.{split}"
    return d / layout(flores_dir, split).file_name(split, code)


def list_languages(flores_dir: str | Path, split: str) -> list[str]:
    """Sorted Flores-200 codes that have a file in ``<dir>/<split>`` (Flores+ codes mapped)."""
    d = split_dir(flores_dir, split)
    lay = layout(flores_dir, split)
    codes = [lay.code_of(split, f.name) for f in d.iterdir() if f.is_file()]
    return sorted(c for c in codes if c is not None)


def read_language(flores_dir: str | Path, split: str, code: str) -> list[str]:
    """All lines of one language; UserError if the file is missing, empty or not UTF-8."""
    d = split_dir(flores_dir, split)
    p = lang_path(flores_dir, split, code)
    if not p.is_file():
        have = list_languages(flores_dir, split)
        shown = ", ".join(have[:8]) + (" …" if len(have) > 8 else "")
        raise UserError(
            f"language file {p} does not exist: {d} has "
            f"{len(have)} language(s){': ' + shown if have else ''}; "
            f"the expected layout is {LAYOUT}"
        )
    kind = layout(flores_dir, split).kind
    lines = read_rows(p, kind) if kind in ("jsonl", "parquet") else read_text_lines(p, what="Flores file")
    if not lines:
        raise UserError(f"Flores file {p} is empty; every language file needs one sentence per line")
    return lines


def read_languages(
    flores_dir: str | Path, split: str, codes: list[str], *, max_lines: int | None = None
) -> dict[str, list[str]]:
    """Read several languages of a split and check they are line-aligned.

    Returns ``{code: lines}``; with ``max_lines`` only the first ``max_lines`` lines are kept
    (after the alignment check, which always uses the full files).
    """
    out: dict[str, list[str]] = {}
    first: str | None = None
    for code in dict.fromkeys(codes):
        lines = read_language(flores_dir, split, code)
        if first is None:
            first = code
        elif len(lines) != len(out[first]):
            raise UserError(
                f"Flores files are not line-aligned: {lang_path(flores_dir, split, code)} has "
                f"{len(lines)} lines but {lang_path(flores_dir, split, first)} has "
                f"{len(out[first])}; every language of a split must have the same lines"
            )
        out[code] = lines
    if max_lines is not None:
        out = {c: v[:max_lines] for c, v in out.items()}
    return out
