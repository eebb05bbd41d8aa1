"""Per-expert usage on calibration data: routed assignments and gate mass per MoE layer.

The model reads each direction's validation pairs with teacher forcing (source
``[src_tag] + ids + [eos]``, decoder input ``[eos, tgt_tag] + target ids``, as beam search
starts), under dynamic gating (no capacity: every routed assignment counts). A recorder on
every :class:`~nmt.models.moe.layer.MoELayer` adds, per expert, the number of token→expert
assignments (``load``) and the sum of their gates (``gate``). Padding never reaches the router.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from nmt.models.moe.router import Routing
from nmt.models.transformer import PAD, Transformer
from nmt.moe_tools.serving import moe_layers


@dataclass
class ExpertUsage:
    """Per MoE layer (by module name): ``[E]`` assignment counts and gate sums."""

    load: dict[str, Tensor] = field(default_factory=dict)
    gate: dict[str, Tensor] = field(default_factory=dict)

    def record(self, name: str, r: Routing) -> None:
        e = r.load_E.numel()
        counts = torch.bincount(r.expert_N, minlength=e).double().cpu()
        mass = torch.zeros(e, dtype=torch.float64).index_add_(0, r.expert_N.cpu(), r.gate_N.detach().double().cpu())
        self.load[name] = self.load.get(name, torch.zeros(e, dtype=torch.float64)) + counts
        self.gate[name] = self.gate.get(name, torch.zeros(e, dtype=torch.float64)) + mass

    def add(self, other: ExpertUsage) -> None:
        for mine, theirs in ((self.load, other.load), (self.gate, other.gate)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, torch.zeros_like(v)) + v

    def by(self, what: str) -> dict[str, Tensor]:
        return self.load if what == "load" else self.gate


def _batch(rows: list[list[int]]) -> Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


@torch.no_grad()
def measure(model: Transformer, tokenizer, src_lang: str, tgt_lang: str, src: list[str], tgt: list[str],
            batch_size: int = 32) -> ExpertUsage:
    """Usage of every expert while the model reads ``src → tgt`` (teacher forcing)."""
    from nmt.langs import FLORES200

    usage = ExpertUsage()
    layers = moe_layers(model)
    saved = model.cfg.moe.inference
    model.cfg.moe.inference = "dynamic"
    for path, layer in layers:  # keyed by module path (the state dict's prefix), not the layer's short name
        layer.recorder = lambda _name, r, path=path: usage.record(path, r)
    try:
        tok, max_len = tokenizer, model.cfg.max_positions - 2
        s_ids, t_ids = tok.encode_batch(src), tok.encode_batch(tgt)
        s_tag, t_tag = tok.lang_id(src_lang), tok.lang_id(tgt_lang)
        s_idx, t_idx = FLORES200.index(src_lang), FLORES200.index(tgt_lang)
        device = next(model.parameters()).device
        for i in range(0, len(src), batch_size):
            s = _batch([[s_tag] + x[:max_len] + [tok.eos_id] for x in s_ids[i:i + batch_size]]).to(device)
            p = _batch([[tok.eos_id, t_tag] + x[:max_len - 1] for x in t_ids[i:i + batch_size]]).to(device)
            n = s.shape[0]
            model(s, p, torch.full((n,), s_idx, device=device), torch.full((n,), t_idx, device=device))
    finally:
        model.cfg.moe.inference = saved
        for _, layer in layers:
            layer.recorder = None
    return usage
