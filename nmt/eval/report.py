"""Write evaluation results: ``results.json``, ``results.md`` and a chrF++ bar chart.

``results.json``::

    {"signatures": {"chrf++": "...", "bleu": {"13a": "...", "zh": "..."}, "spbleu": "..."?},
     "directions": {"eng_Latn-fra_Latn": {"chrf++": x, "bleu": y, "spbleu": z?, "n": lines,
                                          "copy_baseline": {...}?, "retrieval_baseline": {...}?}},
     "averages": {"all": {"chrf++": .., "bleu": ..}, "en-xx": {...}, "xx-en": {...}, "xx-yy": null},
     "copy_baseline": <same shape as "averages">?, "retrieval_baseline": <same>?,
     "resource": {"corpus": .., "thresholds": {"low": .., "very_low": .., "source": ..},
                  "train_pairs": {direction: n}, "groups": {direction: group}}?,
     ...extra keys given by the caller ("model", "split", "notes", ...)}

Averages are plain means of the per-direction corpus scores; a group without directions is
``null``. With ``"resource"`` (the training corpus is known, nmt/eval/resource.py) the averages
also have the NLLB resource groups ``high-resource``, ``low-resource``, ``very-low-resource``
and ``zero-shot``, by each direction's training-pair count. A baseline's averages use the
directions where that baseline exists (the retrieval baseline needs training bitext for the
direction). All files are written as ``<name>.tmp`` and
renamed into place; existing files are kept unless ``overwrite`` is true.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

from nmt.errors import UserError
from nmt.eval.forgetting import format_forgetting
from nmt.eval.resource import RESOURCE_GROUPS
from nmt.fileio import atomic_write
from nmt.langs import direction_group

GROUPS = ("all", "en-xx", "xx-en", "xx-yy")
METRICS = ("chrf++", "bleu", "spbleu")
METRIC_LABELS = {"chrf++": "chrF++", "bleu": "BLEU", "spbleu": "spBLEU"}
BASELINES = {"copy_baseline": "copy", "retrieval_baseline": "retrieval"}
OUTPUT_FILES = ("results.json", "results.md", "chrf.png")
MAX_BARS = 100  # above this many directions the chart shows group averages instead


def _group_of(direction: str) -> str:
    src, tgt = direction.split("-")
    return direction_group(src, tgt)


def _in_group(direction: str, group: str, resource: dict[str, str] | None) -> bool:
    if group in RESOURCE_GROUPS:
        return resource is not None and resource.get(direction) == group
    return group == "all" or _group_of(direction) == group


def _groups(results: dict) -> list[str]:
    """The average groups of ``results``: GROUPS, then the resource groups when known."""
    return list(GROUPS) + (list(RESOURCE_GROUPS) if "resource" in results else [])


def averages(per_direction: Mapping[str, dict | None],
             resource: dict[str, str] | None = None) -> dict[str, dict | None]:
    """Mean of every metric by group: ``{"all": {...}, "en-xx": ..., "xx-en": ..., "xx-yy": ...}``,
    plus the :data:`~nmt.eval.resource.RESOURCE_GROUPS` when ``resource`` maps each direction to one.

    ``per_direction`` maps ``src-tgt`` to a score dict (or None: direction skipped). Only the
    metrics of :data:`METRICS` present in every scored direction are averaged.
    """
    scored = {d: s for d, s in per_direction.items() if s is not None}
    out: dict[str, dict | None] = {}
    for group in list(GROUPS) + (list(RESOURCE_GROUPS) if resource is not None else []):
        members = [s for d, s in scored.items() if _in_group(d, group, resource)]
        if not members:
            out[group] = None
            continue
        names = [m for m in METRICS if all(m in s for s in members)]
        out[group] = {m: sum(float(s[m]) for s in members) / len(members) for m in names}
    return out


def build_results(directions: dict[str, dict], signatures: dict, extra: dict | None = None,
                  resource: dict | None = None) -> dict:
    """Assemble the ``results.json`` object (see the module docstring).

    Baseline averages are added for every key of :data:`BASELINES` found in a direction entry;
    ``resource`` (:func:`nmt.eval.resource.resource_info`) adds the resource-group averages.
    """
    model = {d: {m: s[m] for m in METRICS if m in s} for d, s in directions.items()}
    groups = None if resource is None else resource["groups"]
    results: dict = {
        "signatures": signatures,
        "directions": directions,
        "averages": averages(model, groups),
    }
    if resource is not None:
        results["resource"] = resource
    for key in BASELINES:
        if any(key in s for s in directions.values()):
            results[key] = averages({d: s.get(key) for d, s in directions.items()}, groups)
    for key, value in (extra or {}).items():
        if key in results:
            raise ValueError(f"extra key {key!r} clashes with a results.json key")
        results[key] = value
    return results


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _systems(results: dict) -> list[tuple[str, str | None]]:
    """(label, key in a direction entry; None = the model itself) for every system present."""
    systems: list[tuple[str, str | None]] = [("model", None)]
    systems += [(label, key) for key, label in BASELINES.items() if key in results]
    return systems


def _metrics_present(results: dict) -> list[str]:
    present = [m for m in METRICS if any(m in s for s in results["directions"].values())]
    return present or ["chrf++", "bleu"]


def format_table(results: dict) -> str:
    """Markdown table: one row per direction, then one row per non-empty average group."""
    systems = _systems(results)
    metrics = _metrics_present(results)
    header = ["direction", "group", "n"] + [
        f"{METRIC_LABELS[m]} ({label})" for label, _ in systems for m in metrics
    ]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    resource = results["resource"]["groups"] if "resource" in results else None
    for d, s in results["directions"].items():
        group = _group_of(d) if resource is None else f"{_group_of(d)}, {resource.get(d, '?')}"
        cells = [d, group, str(s.get("n", ""))]
        for _, key in systems:
            entry = s if key is None else s.get(key)
            cells += [_fmt(None if entry is None else entry.get(m)) for m in metrics]
        rows.append("| " + " | ".join(cells) + " |")
    for group in _groups(results):
        if results["averages"].get(group) is None:
            continue
        n_dirs = sum(1 for d in results["directions"] if _in_group(d, group, resource))
        cells = [f"**average {group}**", group, f"{n_dirs} dir."]
        for _, key in systems:
            avg = results["averages"] if key is None else results[key]
            entry = avg.get(group)
            cells += [_fmt(None if entry is None else entry.get(m)) for m in metrics]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def format_signatures(results: dict) -> str:
    """sacrebleu signatures, one per line."""
    sig = results["signatures"]
    lines = [f"chrF++: {sig.get('chrf++')}"]
    for tok, s in sorted(sig.get("bleu", {}).items()):
        lines.append(f"BLEU (tok {tok}): {s}")
    if sig.get("spbleu"):
        lines.append(f"spBLEU: {sig['spbleu']}")
    return "\n".join(lines) + "\n"


def format_markdown(results: dict) -> str:
    """Full ``results.md``: title, signatures, notes and the table."""
    title = "Evaluation"
    if results.get("model"):
        title += f": {results['model']}"
    if results.get("split"):
        title += f" ({results['split']})"
    parts = [f"# {title}", "sacrebleu signatures:", "```\n" + format_signatures(results) + "```"]
    notes = results.get("notes", [])
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes))
    if "resource" in results:
        r = results["resource"]
        parts.append(f"Resource groups by training pairs of each direction's pair in {r['corpus']}: "
                     f"low < {r['thresholds']['low']:,}, very low < {r['thresholds']['very_low']:,} "
                     "(NLLB's definitions); zero-shot: no training pair.")
    parts.append(format_table(results))
    if results.get("forgetting"):
        parts.append(format_forgetting(results["forgetting"]))
    return "\n\n".join(parts)


def print_table(results: dict) -> None:
    """Print the signatures and the table to the terminal (stdout)."""
    print(format_signatures(results), flush=True)
    for note in results.get("notes", []):
        print(f"note: {note}")
    print(format_table(results), flush=True)
    if results.get("forgetting"):
        print(format_forgetting(results["forgetting"]), flush=True)


def chart_png(results: dict) -> bytes:
    """PNG bar chart of chrF++ per direction, baselines beside the model when present.

    With more than :data:`MAX_BARS` directions the bars show the group averages instead.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    systems = _systems(results)
    dirs = list(results["directions"])
    if len(dirs) <= MAX_BARS:
        labels = dirs
        values = []
        for _, key in systems:
            entries = [s if key is None else s.get(key) for s in results["directions"].values()]
            values.append([0.0 if e is None else float(e["chrf++"]) for e in entries])
        title = "chrF++ per direction"
    else:
        labels = [g for g in _groups(results) if results["averages"].get(g) is not None]
        values = []
        for _, key in systems:
            avg = results["averages"] if key is None else results[key]
            values.append([0.0 if avg.get(g) is None else float(avg[g]["chrf++"]) for g in labels])
        title = f"chrF++ averages ({len(dirs)} directions)"
    width = 0.8 / len(systems)
    fig = Figure(figsize=(min(40.0, max(6.0, 0.45 * len(labels) * len(systems) + 2)), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, ((label, _), vals) in enumerate(zip(systems, values, strict=True)):
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, vals, width=width, label=label)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("chrF++")
    ax.set_title(title)
    top = max((v for vals in values for v in vals), default=0.0)
    ax.set_ylim(0, max(1.0, top * 1.2))
    if len(systems) > 1:
        ax.legend(ncol=len(systems), loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def check_out_dir(out_dir: str | Path, *, overwrite: bool = False, key: str = "out_dir") -> Path:
    """Validate ``out_dir`` before any work: not a file, outputs absent unless ``overwrite``."""
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise UserError(f"{key}={d} is an existing file; give a directory path")
    if not overwrite:
        for name in OUTPUT_FILES:
            if (d / name).exists():
                raise UserError(
                    f"{d / name} already exists; choose another {key} or pass overwrite=true"
                )
    return d


def write_report(out_dir: str | Path, results: dict, *, overwrite: bool = False) -> dict[str, Path]:
    """Write results.json, results.md and chrf.png into ``out_dir``; returns their paths."""
    d = check_out_dir(out_dir, overwrite=overwrite)
    d.mkdir(parents=True, exist_ok=True)
    paths = {name: d / name for name in OUTPUT_FILES}
    # Render everything first so a failure leaves no partial set of outputs behind.
    payload: dict[str, str | bytes] = {
        "results.json": json.dumps(results, indent=2, ensure_ascii=False) + "\n",
        "results.md": format_markdown(results),
        "chrf.png": chart_png(results),
    }
    for name, data in payload.items():
        atomic_write(paths[name], data, overwrite=overwrite)
    return paths
