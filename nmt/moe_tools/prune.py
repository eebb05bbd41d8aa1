"""Per-language expert pruning (after Koishekenov et al., Naver: "Memory-efficient NLLB-200").

For the chosen directions, every MoE layer keeps the ``keep`` experts with the largest
importance on those directions' validation data (Flores layout) and drops the others:

* importance ``load``: the routed share, ``assignments_e / all assignments`` of the layer;
  ``gate``: the gate mass share, ``Σ gates routed to e / Σ all gates``; each direction's shares
  are summed (every direction weighs the same whatever its line count); ties: the lower id;
* the pruned export's router keeps only the rows of the kept experts (so its softmax and top-k
  choose among them), the expert tensors only their slices, ``model.moe.experts`` becomes
  ``keep`` and ``config.json`` records ``pruned.kept`` (original expert ids per layer, in order);
* a report (parameters, weight bytes and chrF++ of the unpruned and the pruned model on the
  evaluation split) is printed and written beside OUT as ``<OUT>.prune.md`` / ``.prune.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from nmt.errors import UserError
from nmt.langs import parse_direction
from nmt.moe_tools.calibrate import ExpertUsage, measure
from nmt.moe_tools.serving import moe_layers

EXPERT_PARAMS = ("w1", "b1", "w2", "b2")


def parse_keep(keep: str, experts: int, top_k: int) -> int:
    """``--keep``: a fraction in (0, 1) of the experts (rounded up) or a count."""
    try:
        value = float(keep)
    except ValueError:
        raise UserError(f"--keep {keep!r}: give a fraction in (0, 1) or an expert count") from None
    n = math.ceil(value * experts) if 0 < value < 1 else int(value)
    if value <= 0 or (value >= 1 and value != int(value)):
        raise UserError(f"--keep {keep}: give a fraction in (0, 1) or a whole expert count")
    if n < top_k:
        raise UserError(f"--keep {keep} leaves {n} experts per layer, fewer than the model's top_k={top_k}; "
                        f"keep at least {top_k}")
    if n > experts:
        raise UserError(f"--keep {keep}: the model has only {experts} experts per layer; keep at most {experts}")
    return n


def check_directions(spec: str, known: list[str], where: str) -> list[tuple[str, str]]:
    """Parse ``A-B,C-D`` and require each to be a direction the checkpoint trained."""
    dirs = [parse_direction(d.strip(), where="--directions") for d in spec.split(",") if d.strip()]
    if not dirs:
        raise UserError("--directions is empty: give e.g. eng_Latn-fra_Latn,fra_Latn-eng_Latn")
    for s, t in dirs:
        if known and f"{s}-{t}" not in known:
            raise UserError(f"direction {s}-{t} (--directions) is not one {where} was trained on; "
                            f"it knows {', '.join(known[:8])}{' …' if len(known) > 8 else ''}")
    return dirs


def importance(usages: list[ExpertUsage], by: str) -> dict[str, torch.Tensor]:
    """Per layer, the sum over directions of each expert's share of the layer's load or gate mass."""
    out: dict[str, torch.Tensor] = {}
    for u in usages:
        for name, v in u.by(by).items():
            share = v / v.sum() if v.sum() > 0 else v
            out[name] = out.get(name, torch.zeros_like(v)) + share
    return out


def choose(scores: dict[str, torch.Tensor], keep: int) -> dict[str, list[int]]:
    """The ``keep`` most important experts per layer (ties: lower id), in id order."""
    out = {}
    for name, s in scores.items():
        order = sorted(range(s.numel()), key=lambda i: (-float(s[i]), i))
        out[name] = sorted(order[:keep])
    return out


def pruned_state(state: dict[str, torch.Tensor], kept: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Router rows and expert slices of the kept experts; every other tensor unchanged."""
    out = dict(state)
    for name, ids in kept.items():
        idx = torch.tensor(ids, dtype=torch.long)
        out[f"{name}.router.weight"] = state[f"{name}.router.weight"].index_select(0, idx).contiguous()
        for p in EXPERT_PARAMS:
            out[f"{name}.experts.{p}"] = state[f"{name}.experts.{p}"].index_select(0, idx).contiguous()
    return out


def size(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Parameters and tensor bytes of a state dict."""
    return {"parameters": sum(t.numel() for t in state.values()),
            "bytes": sum(t.numel() * t.element_size() for t in state.values())}


def usage_per_direction(model, tokenizer, flores_dir: str, split: str, dirs: list[tuple[str, str]],
                        max_lines: int | None) -> list[ExpertUsage]:
    from nmt.eval import flores

    langs = flores.read_languages(flores_dir, split, list(dict.fromkeys(c for d in dirs for c in d)))
    return [measure(model, tokenizer, s, t, langs[s][:max_lines], langs[t][:max_lines]) for s, t in dirs]


def layer_names(model) -> list[str]:
    return [name for name, _ in moe_layers(model)]


def write_report(out: Path, report: dict) -> tuple[Path, Path]:
    """``<OUT>.prune.json`` and ``<OUT>.prune.md`` beside OUT."""
    rows = [("model", "experts/layer", "parameters", "weights MiB", "chrF++")]
    for key in ("unpruned", "pruned"):
        m = report[key]
        rows.append((key, str(m["experts"]), f"{m['parameters']:,}", f"{m['bytes'] / 2**20:.1f}",
                     f"{m['chrf++']:.2f}"))
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    per_dir = [f"- {d}: {a:.2f} → {b:.2f}" for d, (a, b) in report["chrf++_by_direction"].items()]
    text = "\n".join(lines) + "\n\nchrF++ by direction (unpruned → pruned):\n" + "\n".join(per_dir) + "\n"
    md, js = (out.parent / f"{out.name}.prune{ext}" for ext in (".md", ".json"))
    md.write_text(f"# Pruned {report['source']} → {out}\n\n" + text, encoding="utf-8")
    js.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(text, end="", flush=True)
    return md, js
