"""Forgetting report: per-direction change against a reference evaluation (``reference_results=``).

``nmt.evaluate ... reference_results=REF/results.json`` compares this evaluation with an earlier
one of the reference model (the model before adaptation), scored on the same split and lines
with the same sacrebleu signatures. A direction is *new* when one of its languages is outside
the reference model's languages (``model_languages`` in its results.json; a reference without
that record counts the directions it did not score as new); the others are *untouched*.

``results.json`` gains::

    "forgetting": {"reference": PATH,
                   "directions": {"eng_Latn-fra_Latn": {"new": false, "chrf++": x, "ref_chrf++": r,
                                                        "delta_chrf++": x - r, "bleu": .., "ref_bleu": ..,
                                                        "delta_bleu": ..}},
                   "untouched": {"directions": k, "delta_chrf++": mean, "delta_bleu": mean} | null,
                   "new": {"directions": k, "scored_by_reference": j, "chrf++": mean, "bleu": mean,
                           "delta_chrf++": mean over j | null, "delta_bleu": ...} | null}

The gain on a new direction is its delta when the reference was scored there too (evaluate the
reference with ``allow_untrained_lang=true`` on those directions), else only its score is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nmt.errors import UserError

DELTA_METRICS = ("chrf++", "bleu")


def load_reference(path: str | Path) -> dict[str, Any]:
    """A reference ``results.json`` (or the directory holding it), checked for its shape."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        ref = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"reference_results={path}: {p} does not exist; evaluate the reference model first "
                        f"(python -m nmt.evaluate ckpt=REFERENCE ...) and pass its results.json") from None
    except (OSError, ValueError) as e:
        raise UserError(f"reference_results={path}: {p} is unreadable or not JSON ({str(e)[:120]})") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("directions"), dict):
        raise UserError(f"reference_results={path}: {p} is not an nmt.evaluate results.json (no \"directions\")")
    ref["_path"] = str(p)
    return ref


def check_comparable(ref: dict, split: str, lines: dict[str, int]) -> None:
    """Deltas need the same split and the same lines (``lines``: direction -> lines scored).
    Called before any translation, so a mismatch costs nothing."""
    where = f"reference_results={ref['_path']}"
    if ref.get("split") != split:
        raise UserError(f"{where} scored split {ref.get('split')!r}, this evaluation {split!r}; "
                        f"compare evaluations of the same split")
    for d, n in lines.items():
        r = ref["directions"].get(d)
        if isinstance(r, dict) and r.get("n") != n:
            raise UserError(f"{where} scored {r.get('n')} lines of {d} where this evaluation scores {n}; "
                            f"use the same max_lines for both")


def _check_signature(results: dict, ref: dict) -> None:
    theirs, ours = ref.get("signatures", {}).get("chrf++"), results["signatures"].get("chrf++")
    if theirs != ours:
        raise UserError(f"reference_results={ref['_path']} was scored with another chrF++ signature ({theirs}, "
                        f"here {ours}); re-evaluate the reference with this sacrebleu version")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _summary(rows: dict[str, dict], keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"directions": len(rows)}
    for key in keys:
        out[key] = _mean([r[key] for r in rows.values() if r.get(key) is not None])
    return out


def _row(score: dict, ref: dict | None, is_new: bool) -> dict[str, Any]:
    """One direction: its scores, the reference's and the change (None where either is missing)."""
    row: dict[str, Any] = {"new": is_new}
    for m in DELTA_METRICS:
        row[m] = score.get(m)
        row[f"ref_{m}"] = None if ref is None else ref.get(m)
        both = row[m] is not None and row[f"ref_{m}"] is not None
        row[f"delta_{m}"] = float(row[m]) - float(row[f"ref_{m}"]) if both else None
    return row


def compare(results: dict, ref: dict) -> dict[str, Any]:
    """The ``forgetting`` section of results.json (see the module docstring)."""
    _check_signature(results, ref)
    ref_langs = ref.get("model_languages")
    rows: dict[str, dict] = {}
    for d, s in results["directions"].items():
        r = ref["directions"].get(d)
        is_new = any(c not in ref_langs for c in d.split("-")) if isinstance(ref_langs, list) else r is None
        rows[d] = _row(s, r, is_new)
    deltas = tuple(f"delta_{m}" for m in DELTA_METRICS)
    untouched = {d: r for d, r in rows.items() if not r["new"]}
    new = {d: r for d, r in rows.items() if r["new"]}
    new_summary = None
    if new:
        new_summary = _summary(new, DELTA_METRICS + deltas)
        new_summary["scored_by_reference"] = sum(1 for r in new.values() if r["delta_chrf++"] is not None)
    return {"reference": ref["_path"], "reference_model": ref.get("model"),
            "reference_languages": ref_langs, "directions": rows,
            "untouched": _summary(untouched, deltas) if untouched else None, "new": new_summary}


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def format_forgetting(section: dict) -> str:
    """Markdown: the per-direction delta table and the untouched / new summary rows."""
    head = ["direction", "new", "chrF++", "ref chrF++", "Δ chrF++", "BLEU", "ref BLEU", "Δ BLEU"]
    lines = [f"## Change against the reference ({section['reference']})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d, r in section["directions"].items():
        cells = [d, "yes" if r["new"] else "", _fmt(r["chrf++"]), _fmt(r["ref_chrf++"]), _fmt(r["delta_chrf++"], True),
                 _fmt(r["bleu"]), _fmt(r["ref_bleu"]), _fmt(r["delta_bleu"], True)]
        lines.append("| " + " | ".join(cells) + " |")
    for name, label in (("untouched", "mean Δ, untouched directions"), ("new", "new directions")):
        s = section.get(name)
        if s is None:
            continue
        cells = [f"**{label}** ({s['directions']})", "yes" if name == "new" else "", _fmt(s.get("chrf++")), "",
                 _fmt(s["delta_chrf++"], True), _fmt(s.get("bleu")), "", _fmt(s["delta_bleu"], True)]
        lines.append("| " + " | ".join(cells) + " |")
    new = section.get("new")
    if new and new["scored_by_reference"] < new["directions"]:
        missing = new["directions"] - new["scored_by_reference"]
        lines += ["", (f"The reference was not scored on {missing} new direction(s): evaluate it there with "
                       f"allow_untrained_lang=true to get their gain.")]
    return "\n".join(lines) + "\n"
