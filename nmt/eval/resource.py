"""Resource groups of translation directions by training-pair count, for NLLB-style averages.

The NLLB paper (NLLB Team et al. 2022, "No Language Left Behind", §1 and §4) calls a language
low-resource when fewer than 1M publicly available bitext sentence pairs exist for it, and
very-low-resource below 100k. Here the count is per direction: the ``train`` lines of its pair
in the corpus manifest (pair ``a-b`` serves both ``a→b`` and ``b→a``), and the thresholds are
configurable (``resource.low``, ``resource.very_low`` of ``nmt.evaluate``):

* ``high-resource``: count >= low
* ``low-resource``: very_low <= count < low
* ``very-low-resource``: 0 < count < very_low
* ``zero-shot``: no training pair at all (not in the manifest's train pairs)
"""

from __future__ import annotations

from pathlib import Path

from nmt.data.corpus_manifest import load_manifest
from nmt.errors import UserError

LOW = 1_000_000  # NLLB: low-resource below 1M pairs
VERY_LOW = 100_000  # NLLB: very-low-resource below 100k pairs
RESOURCE_GROUPS = ("high-resource", "low-resource", "very-low-resource", "zero-shot")


def check_thresholds(low: int, very_low: int) -> None:
    """UserError unless ``0 < very_low <= low`` (both integers)."""
    for key, v in (("resource.low", low), ("resource.very_low", very_low)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise UserError(f"{key}={v!r} must be a positive number of training pairs")
    if very_low > low:
        raise UserError(f"resource.very_low={very_low} is above resource.low={low}: "
                        "very-low-resource must be the smaller threshold")


def train_pair_lines(corpus: str | Path) -> dict[str, int]:
    """``{pair: train lines}`` from ``<corpus>/manifest.json`` (UserError naming the file if bad)."""
    path = Path(corpus) / "manifest.json"
    out: dict[str, int] = {}
    for pair, info in load_manifest(corpus)["pairs"]["train"].items():
        lines = info.get("lines") if isinstance(info, dict) else None
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 0:
            raise UserError(f"{path}: pairs.train.{pair}.lines is {lines!r}, not a line count; "
                            "re-import the pair with python -m data_prep.import_corpus")
        out[pair] = lines
    return out


def direction_pairs(directions: list[str], pair_lines: dict[str, int]) -> dict[str, int]:
    """Training pairs of each ``src-tgt`` direction (0 when its pair has no training data)."""
    return {d: pair_lines.get("-".join(sorted(d.split("-"))), 0) for d in directions}


def resource_group(count: int, low: int = LOW, very_low: int = VERY_LOW) -> str:
    """The group of a direction with ``count`` training pairs (see the module docstring)."""
    if count <= 0:
        return "zero-shot"
    if count < very_low:
        return "very-low-resource"
    if count < low:
        return "low-resource"
    return "high-resource"


def resource_info(directions: list[str], corpus: str | Path, low: int = LOW, very_low: int = VERY_LOW) -> dict:
    """The ``results.json`` ``"resource"`` entry: thresholds, source and each direction's group."""
    check_thresholds(low, very_low)
    counts = direction_pairs(directions, train_pair_lines(corpus))
    return {
        "corpus": str(corpus),
        "thresholds": {"low": low, "very_low": very_low,
                       "source": "NLLB Team et al. 2022 (No Language Left Behind): low < 1M, very low < 100k pairs"},
        "train_pairs": counts,
        "groups": {d: resource_group(n, low, very_low) for d, n in counts.items()},
    }
