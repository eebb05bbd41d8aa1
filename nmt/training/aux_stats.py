"""Statistics that the model reports in ``aux`` (MoE load, dropped tokens, CMR gate share, …).

The trainer averages every non-loss entry (scalar or vector) over micro-batches and log
intervals without knowing what produced it. At validation, where every batch holds one
direction, the same entries are averaged per direction; from those come the per-language CMR
shares (encoder layers by source language, decoder layers by target language) and the expert
load heatmap by layer and language pair.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch


class AuxMeter:
    """Running sums of aux statistics (``loss/`` entries included), averaged on read."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, aux: dict[str, Any]) -> None:
        for key, value in aux.items():
            v = torch.as_tensor(value).detach().double().cpu()
            self.sums[key] = self.sums[key] + v if key in self.sums else v.clone()
            self.counts[key] += 1

    def merge(self, other: AuxMeter) -> None:
        for key, value in other.sums.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
            self.counts[key] += other.counts[key]

    def means(self) -> dict[str, torch.Tensor]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}


def to_record(means: dict[str, torch.Tensor], prefix: str = "") -> dict[str, Any]:
    """Scalars as floats, vectors (e.g. per-expert load) as lists of rounded floats."""
    out: dict[str, Any] = {}
    for key, v in sorted(means.items()):
        out[prefix + key] = float(v) if v.dim() == 0 else [round(float(x), 5) for x in v]
    return out


def validation_record(per_direction: dict[str, AuxMeter]) -> dict[str, Any]:
    """Scalar statistics overall, and CMR gate shares per language and side."""
    total = AuxMeter()
    for meter in per_direction.values():
        total.merge(meter)
    record = {k: v for k, v in to_record(total.means(), "valid/").items()
              if not k.startswith("valid/loss/") and not isinstance(v, list)}
    shares: dict[str, list[float]] = defaultdict(list)
    for direction, meter in per_direction.items():
        src, tgt = direction.split("-")
        for key, v in meter.means().items():
            if key.startswith("cmr/") and key.endswith("/share"):
                side = "encoder" if key.split("/")[1].startswith("enc") else "decoder"
                shares[f"valid/cmr_share/{side}/{src if side == 'encoder' else tgt}"].append(float(v))
    record.update({k: sum(v) / len(v) for k, v in sorted(shares.items())})
    return record


def expert_load_table(per_direction: dict[str, AuxMeter]) -> dict[str, dict[str, list[float]]]:
    """``{layer: {direction: [share of assignments per expert]}}`` for every MoE layer."""
    table: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for direction, meter in per_direction.items():
        for key, v in meter.means().items():
            if key.startswith("moe/") and key.endswith("/load"):
                table[key.split("/")[1]][direction] = [float(x) for x in v]
    return dict(table)


def plot_expert_load(table: dict[str, dict[str, list[float]]], path: Path, title: str) -> None:
    """One heatmap per MoE layer: rows are language pairs, columns experts, colour the load."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = sorted(table, key=lambda n: (not n.startswith("enc"), int(n[3:])))  # enc0, enc1, …, dec0, …
    directions = sorted({d for rows in table.values() for d in rows})
    n_exp = max(len(v) for rows in table.values() for v in rows.values())
    fig = Figure(figsize=(min(3 + 0.25 * n_exp, 14) * len(layers), 1.5 + 0.3 * len(directions)))
    FigureCanvasAgg(fig)
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(1, len(layers), i + 1)
        grid = [table[layer].get(d, [float("nan")] * n_exp) for d in directions]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(directions)))
        ax.set_yticklabels(directions if i == 0 else [""] * len(directions), fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
