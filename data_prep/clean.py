"""Cleaning of parallel text, with a count of what was dropped and why.

Checks run in this order and a pair is counted under the first one it fails:

==============  =========================================================================
``invalid_utf8``  a side was not valid UTF-8 (only seen when the reader skips such lines)
``empty``         a side is empty after whitespace normalisation
``too_long``      a side is longer than ``max_len`` length units (see :func:`seg_len`)
``ratio``         ``(long + 1) / (short + 1) > max_ratio`` in length units (the +1 keeps
                  one-word segments such as "Tab" / "Tabulator" from being dropped)
``duplicate``     the exact (source, target) pair was already kept
==============  =========================================================================

Whitespace is normalised on both sides (runs of spaces, tabs and Unicode separators become
one space; ends are stripped). Length units are whitespace-separated tokens, except for
languages written without spaces between words (Chinese, Japanese, Thai, …), where each run
of ASCII characters (a Latin word, a number, a placeholder) counts one and the other characters
are divided by a typical characters-per-word figure for the script, so that the ratio check
compares like with like. ``max_len`` / ``max_ratio`` of ``None`` (or 0) switch a check off.

Duplicate detection keeps a 16-byte digest per kept pair: memory grows with the number of
unique pairs (~100 bytes each), not with line length.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections.abc import Iterable, Iterator

DROP_REASONS = ("empty", "too_long", "ratio", "duplicate", "invalid_utf8")

# Characters per "word" for scripts written without spaces between words.
CHARS_PER_UNIT: dict[str, float] = {
    "Hans": 1.5, "Hant": 1.5, "Jpan": 2.0,
    "Thai": 4.0, "Laoo": 4.0, "Khmr": 4.0, "Mymr": 4.0, "Tibt": 4.0,
}
ASCII_RUN = re.compile(r"[\x21-\x7e]+")
DEFAULT_MAX_LEN = 250
DEFAULT_MAX_RATIO = 3.0


def normalize_space(text: str) -> str:
    """Collapse whitespace runs (incl. tabs and Unicode line separators) to one space."""
    return " ".join(text.split())


def seg_len(text: str, lang: str = "") -> int:
    """Length of ``text`` in word-like units (see the module docstring)."""
    per_unit = CHARS_PER_UNIT.get(lang.rpartition("_")[2])
    if per_unit is None:
        return len(text.split())
    ascii_runs = len(ASCII_RUN.findall(text))  # embedded Latin words, numbers, placeholders
    chars = sum(1 for ch in text if ord(ch) > 0x7F and not ch.isspace())
    return ascii_runs + math.ceil(chars / per_unit)


def drop_reason(src: str | None, tgt: str | None, src_lang: str = "", tgt_lang: str = "", *,
                max_len: int | None = DEFAULT_MAX_LEN,
                max_ratio: float | None = DEFAULT_MAX_RATIO) -> str | None:
    """Why the (already whitespace-normalised) pair must go, or ``None``; duplicates aside."""
    if src is None or tgt is None:
        return "invalid_utf8"
    if not src or not tgt:
        return "empty"
    a, b = seg_len(src, src_lang), seg_len(tgt, tgt_lang)
    if max_len and max(a, b) > max_len:
        return "too_long"
    if max_ratio and (max(a, b) + 1) / (min(a, b) + 1) > max_ratio:
        return "ratio"
    return None


def empty_counts() -> dict:
    """A cleaning record as stored in manifest.json: ``{"kept": 0, "dropped": {...}}``."""
    return {"kept": 0, "dropped": {r: 0 for r in DROP_REASONS}}


class PairFilter:
    """Streaming cleaner: ``for src, tgt in f.filter(pairs)``, then ``f.counts``."""

    def __init__(self, src_lang: str = "", tgt_lang: str = "", *,
                 max_len: int | None = DEFAULT_MAX_LEN,
                 max_ratio: float | None = DEFAULT_MAX_RATIO, dedup: bool = True) -> None:
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.max_len, self.max_ratio, self.dedup = max_len, max_ratio, dedup
        self.counts = empty_counts()
        self._seen: set[bytes] = set()

    def check(self, src: str | None, tgt: str | None) -> tuple[str, str] | None:
        """The normalised pair if it is kept, else ``None`` (and the reason is counted)."""
        if src is not None:
            src = normalize_space(src)
        if tgt is not None:
            tgt = normalize_space(tgt)
        reason = drop_reason(src, tgt, self.src_lang, self.tgt_lang,
                             max_len=self.max_len, max_ratio=self.max_ratio)
        if reason is None and self.dedup:
            key = hashlib.blake2b(f"{src}\t{tgt}".encode(), digest_size=16).digest()
            if key in self._seen:
                reason = "duplicate"
            else:
                self._seen.add(key)
        if reason is not None:
            self.counts["dropped"][reason] += 1
            return None
        self.counts["kept"] += 1
        return src, tgt  # type: ignore[return-value]

    def filter(self, pairs: Iterable[tuple[str | None, str | None]]) -> Iterator[tuple[str, str]]:
        """Yield the kept pairs of ``pairs``, counting the rest."""
        for src, tgt in pairs:
            kept = self.check(src, tgt)
            if kept is not None:
                yield kept


def clean(pairs: Iterable[tuple[str | None, str | None]], src_lang: str = "", tgt_lang: str = "",
          **options) -> tuple[list[tuple[str, str]], dict]:
    """Clean an in-memory list of pairs: ``(kept_pairs, counts)`` (options as for PairFilter)."""
    f = PairFilter(src_lang, tgt_lang, **options)
    kept = list(f.filter(pairs))
    return kept, f.counts


def format_report(rows: dict[str, dict]) -> str:
    """A small fixed-width table of cleaning records keyed by ``<split>/<pair>``."""
    head = ["split/pair", "kept", *DROP_REASONS]
    body = [[name, str(c["kept"]), *(str(c["dropped"].get(r, 0)) for r in DROP_REASONS)]
            for name, c in rows.items()]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                       enumerate(zip(r, widths, strict=True))) for r in [head, *body]]
    return "\n".join(lines)


# --- software-catalog strings (data_prep.demo_corpus) -----------------------------------------
#
# Placeholders (``%PRODUCTNAME``, ``$(ARG1)``, ``%1``, ``%(name)s``, ``{0}``) are kept verbatim:
# they are language-independent tokens a model learns to copy. A translation whose multiset of
# placeholders differs from the English one is dropped (a partial or reworded translation), and
# the normalised split key ignores them.

PLACEHOLDER = re.compile(
    r"%\([A-Za-z_]\w*\)[-+#0]*\d*(?:\.\d+)?[a-zA-Z]"  # %(name)s
    r"|%[A-Z][A-Z0-9_]*[A-Z0-9]"                      # %PRODUCTNAME
    r"|%\d+(?:\$[a-z])?"                              # %1, %1$s
    r"|%[-+#0]*\d*(?:\.\d+)?[sdiufxXeEgGc](?![A-Za-z])"  # %s, %.2f
    r"|\$\(\w+\)|\$[A-Z][A-Z0-9_]*\$?|\$\d+"          # $(ARG1), $NAME, $1
    r"|\{\w*\}"                                       # {0}, {name}
)
_SPLIT_PLACEHOLDERS = re.compile(f"({PLACEHOLDER.pattern})")
HTML_TAG = re.compile(r"</?(a|abbr|b|big|blockquote|br|cite|code|div|em|font|h[1-6]|hr|i|img|"
                      r"kbd|li|ol|p|pre|q|small|span|strong|sub|sup|tt|u|ul)\b[^<>]*>", re.I)
BLOCK_TAGS = {"blockquote", "br", "div", "hr", "li", "ol", "p", "pre", "ul",
              "h1", "h2", "h3", "h4", "h5", "h6"}
ACCEL_PARENS = re.compile(r"\s*[(（][~_&][^\s)）][)）]")  # Japanese/Chinese style "(_A)", "(~S)"
ACCEL_TILDE = re.compile(r"~(?=\S)")
ACCEL_UNDERSCORE = re.compile(r"(?<!_)_(?=\w)")
NON_WORD = re.compile(r"[^\w\u0300-\u036f\u0900-\u0dff]|_")  # keep letters, digits, Indic marks


def placeholders(text: str) -> list[str]:
    """The placeholders of ``text``, sorted (for multiset comparison)."""
    return sorted(PLACEHOLDER.findall(text))


def strip_accelerators(text: str) -> str:
    """Remove keyboard-accelerator markers: ``(_A)``, ``~`` and a single mnemonic ``_``.

    Placeholders are left alone. ``_`` is removed only when the string has exactly one
    ``_`` before a letter (``Ti_me``, ``_Save``); several are more likely an identifier.
    """
    if not any(ch in text for ch in "~_"):
        return text
    parts = _SPLIT_PLACEHOLDERS.split(text) if any(ch in text for ch in "%$") else [text]
    texts = [ACCEL_TILDE.sub("", ACCEL_PARENS.sub("", t)) for t in parts[0::2]]
    if sum(len(ACCEL_UNDERSCORE.findall(t)) for t in texts) == 1:
        texts = [ACCEL_UNDERSCORE.sub("", t) for t in texts]
    parts[0::2] = texts
    return "".join(parts)


def clean_ui_string(text: str, *, accelerators: bool = True) -> str:
    """One line of plain text from a UI message: tags out, entities decoded, markers out.

    Block tags (``<br>``, ``<p>``) become a space, inline ones (``<b>``, ``<a href>``) vanish.
    """
    if "<" in text:
        text = HTML_TAG.sub(lambda m: " " if m.group(1).lower() in BLOCK_TAGS else "", text)
    if "&" in text:
        text = html.unescape(text)
    if accelerators:
        text = strip_accelerators(text)
    return normalize_space(text)


def split_key(english: str) -> str:
    """Normalised English key for splitting: lower-case, no placeholders, no punctuation.

    ``"Save"``, ``"~Save..."`` and ``"Save %1."`` share the key ``"save"`` and so always
    land in the same split. An empty key means the string has no words (``"%1"``, ``"<="``).
    """
    return " ".join(NON_WORD.sub(" ", PLACEHOLDER.sub(" ", english).lower()).split())
