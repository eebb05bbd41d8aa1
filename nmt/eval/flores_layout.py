"""Which Flores release a directory holds, and where one language's file of a split is.

Layouts of one split directory ``<dir>/<split>/`` (``split`` is ``dev`` or ``devtest``):

* Flores-200 (NLLB Team 2022): ``<code>.<split>`` text files, e.g. ``devtest/eng_Latn.devtest``.
* Flores+ text release (OLDI, github.com/openlanguagedata/flores, ``floresp-v2.x`` zip):
  ``<split>.<code>`` text files, e.g. ``devtest/devtest.cmn_Hans``.
* Flores+ on Hugging Face (``openlanguagedata/flores_plus``): ``<code>.jsonl`` (one JSON
  object per line with a ``text`` field, ordered by ``id``) or ``<code>.parquet`` (a ``text``
  column; needs pyarrow).

Flores+ renamed some codes (``nmt.langs.FLORES200_TO_PLUS``) and suffixes some with a
glottocode (``apc_Arab_sout3123``); callers always use Flores-200 codes, mapped here.

The release and version come from ``<dir>/testset.json`` (``{"dataset": "flores+",
"version": "2.0-rc.3"}``, written by ``data_prep.import_corpus`` into ``<corpus>/flores/``),
else from the layout and a ``floresp-v<version>`` directory name; scores of two releases are
not comparable (:func:`check_comparable`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from nmt.errors import UserError
from nmt.langs import from_flores_plus, is_flores, to_flores_plus

FLORES200, FLORES_PLUS = "flores200", "flores+"
TESTSET_FILE = "testset.json"
KINDS = {"flores200-text": "<code>.<split>", "text": "<split>.<code>", "jsonl": "<code>.jsonl",
         "parquet": "<code>.parquet"}
LAYOUTS = ("Flores-200 <dir>/<split>/<code>.<split> (e.g. devtest/eng_Latn.devtest) or Flores+ "
           "<dir>/<split>/<split>.<code>, <code>.jsonl or <code>.parquet (e.g. devtest/devtest.cmn_Hans)")


@dataclass(frozen=True)
class Layout:
    dataset: str  # flores200 | flores+
    kind: str  # flores200-text | text | jsonl | parquet
    version: str  # e.g. "2.0-rc.3"; "" when unknown

    def file_name(self, split: str, code: str) -> str:
        """File name of Flores-200 ``code`` in ``split``."""
        if self.kind == "flores200-text":
            return f"{code}.{split}"
        plus = to_flores_plus(code)
        return f"{split}.{plus}" if self.kind == "text" else f"{plus}.{self.kind}"

    def code_of(self, split: str, name: str) -> str | None:
        """Flores-200 code of a file name of this layout, or None (another file, or a language
        Flores-200 lacks)."""
        patterns = {"flores200-text": rf"(.+)\.{re.escape(split)}", "text": rf"{re.escape(split)}\.(.+)",
                    "jsonl": r"(.+)\.jsonl", "parquet": r"(.+)\.parquet"}
        m = re.fullmatch(patterns[self.kind], name)
        if not m:
            return None
        code = m.group(1) if self.kind == "flores200-text" else from_flores_plus(m.group(1))
        return code if is_flores(code) else None

    def describe(self) -> dict[str, str]:
        """The ``results.json`` ``"testset"`` entry."""
        return {"dataset": self.dataset, "version": self.version or "unknown", "layout": KINDS[self.kind]}


def _kinds_present(split_dir: Path, split: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in sorted(split_dir.iterdir()):
        if not f.is_file():
            continue
        n = f.name
        if n.endswith(f".{split}") and is_flores(n[: -len(split) - 1]):
            found.setdefault("flores200-text", []).append(n)
        elif n.startswith(f"{split}."):
            found.setdefault("text", []).append(n)
        elif n.endswith((".jsonl", ".parquet")):
            found.setdefault(n.rsplit(".", 1)[1], []).append(n)
    return found


def _declared(root: Path) -> dict[str, str]:
    path = root / TESTSET_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not JSON; write {{\"dataset\": \"flores+\", \"version\": \"2.0-rc.3\"}} "
                        "or remove it") from None
    if not isinstance(meta, dict) or meta.get("dataset") not in (FLORES200, FLORES_PLUS):
        raise UserError(f"{path}: \"dataset\" must be {FLORES200!r} or {FLORES_PLUS!r}")
    return {"dataset": meta["dataset"], "version": str(meta.get("version") or "")}


def _version_from_path(root: Path) -> str:
    for part in reversed(root.absolute().parts):
        m = re.fullmatch(r"floresp?[-_]v?(\d[\w.\-]*)", part, flags=re.IGNORECASE)
        if m:
            return m.group(1)
    return ""


def detect(root: str | Path, split: str, split_dir: Path) -> Layout:
    """The layout of ``split_dir`` (``<root>/<split>``); UserError if it mixes two layouts."""
    root = Path(root)
    found = _kinds_present(split_dir, split)
    if len(found) > 1:
        shown = "; ".join(f"{KINDS[k]}: {', '.join(v[:2])}" for k, v in found.items())
        raise UserError(f"{split_dir} mixes Flores file layouts ({shown}): keep one release per directory, "
                        "Flores-200 and Flores+ scores are not comparable")
    kind = next(iter(found), "flores200-text")
    declared = _declared(root)
    dataset = FLORES200 if kind == "flores200-text" else FLORES_PLUS
    dataset = declared.get("dataset", dataset)
    version = declared.get("version") or (_version_from_path(root) if dataset == FLORES_PLUS else "")
    return Layout(dataset, kind, version)


def read_rows(path: Path, kind: str) -> list[str]:
    """The sentences of a jsonl or parquet language file, in ``id`` order when every row has a
    numeric id, else in file order."""
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq  # a dependency; the message below covers an install without it
        except ImportError:
            raise UserError(f"{path}: reading Flores+ parquet files needs pyarrow (pip install pyarrow); "
                            "or use the Flores+ text release (<split>/<split>.<code>) or the jsonl files") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow's errors have no common base class to name here
            raise UserError(f"{path}: not a readable parquet file ({str(e)[:200]}); re-download it") from None
    else:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise UserError(f"{path}:{n}: not a JSON object; a Flores+ jsonl line is "
                                    "{\"id\": .., \"text\": ..}") from None
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not isinstance(r.get("text"), str):
            raise UserError(f"{path}: row {n} has no \"text\" string; expected Flores+ rows with id and text")
    if all(str(r.get("id", "")).isdigit() for r in rows):  # numeric ids: "10" after "9"
        rows = sorted(rows, key=lambda r: int(r["id"]))
    return [r["text"].replace("\n", " ") for r in rows]


def check_comparable(a: dict | None, b: dict | None, what: str) -> None:
    """UserError unless two ``results.json`` ``"testset"`` entries are the same release
    (Flores+ scores compare within a major version, per its CHANGELOG)."""
    a = a or {"dataset": FLORES200, "version": "unknown"}
    b = b or {"dataset": FLORES200, "version": "unknown"}
    major = [str(x.get("version", "")).split(".")[0] for x in (a, b)]
    if a.get("dataset") != b.get("dataset") or (a.get("dataset") == FLORES_PLUS and major[0] != major[1]
                                                and "unknown" not in major):
        raise UserError(f"{what}: scores on {a.get('dataset')} {a.get('version')} and {b.get('dataset')} "
                        f"{b.get('version')} are not comparable (Flores+ changed codes and repaired sentences); "
                        "evaluate both on the same test set")
