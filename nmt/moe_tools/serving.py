"""Apply ``moe.*`` inference options to a loaded model (used by :class:`nmt.inference.Translator`).

With ``moe.resident_experts=K`` the loader leaves the expert tensors (``*.experts.{w1,b1,w2,b2}``)
out of memory when the checkpoint is an export: they stay in ``model.safetensors`` and each
layer's :class:`~nmt.models.moe.buffer.BufferedExperts` reads one expert's slice at a time. For a
.pt/.dcp checkpoint the whole state is in memory anyway: the tier is those tensors (pinned CPU
memory when the model runs on a GPU; that path is untested here).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from nmt.models.moe.buffer import PARAMS, BufferedExperts, BufferStats, SafetensorsTier, TensorTier
from nmt.models.moe.layer import MoELayer
from nmt.moe_tools.options import MoEServeConfig

EXPERT_KEY = re.compile(r"\.experts\.(w1|b1|w2|b2)$")


def lazy_expert_keys(opts: MoEServeConfig | None, kind: str):
    """The predicate of state-dict keys the loader may leave on disk (None: load everything)."""
    if opts is None or opts.resident_experts == 0 or kind != "export":
        return None
    return lambda key: EXPERT_KEY.search(key) is not None


def moe_layers(model: nn.Module) -> list[tuple[str, MoELayer]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoELayer)]


def apply_serving(model: nn.Module, opts: MoEServeConfig, ckpt: Any, device: torch.device) -> None:
    """Set the dispatch mode and replace every MoE layer's experts by a buffered copy.
    ``ckpt``: the :class:`~nmt.inference.InferenceCheckpoint` the model came from."""
    if opts.inference:
        model.cfg.moe.inference = opts.inference  # the layers share this MoEConfig
    if opts.resident_experts == 0:
        return
    from nmt.inference import WEIGHTS, checkpoint_kind

    _, where = checkpoint_kind(ckpt.path)
    for name, layer in moe_layers(model):
        prefix = f"{name}.experts."
        if ckpt.kind == "export":
            tier: SafetensorsTier | TensorTier = SafetensorsTier(where / WEIGHTS, prefix, device)
        else:
            tier = TensorTier({p: ckpt.state[prefix + p] for p in PARAMS}, device)
            for p in PARAMS:  # the tier holds them now; the loaded state keeps no second reference
                ckpt.state.pop(prefix + p, None)
        old = layer.experts
        layer.experts = BufferedExperts(tier, old.experts, opts.resident_experts, opts.buffer_policy, old.act)
        del old


def buffer_stats(model: nn.Module) -> dict[str, Any] | None:
    """Hits, loads, evictions and bytes moved, per MoE layer and in all (None: not buffered)."""
    layers = {name: m.experts for name, m in moe_layers(model) if isinstance(m.experts, BufferedExperts)}
    if not layers:
        return None
    total = BufferStats()
    for b in layers.values():
        total.add(b.stats)
    first = next(iter(layers.values()))
    return {"resident_experts": first.resident, "experts": first.experts, "policy": first.policy,
            **total.as_dict(), "layers": {n: b.stats.as_dict() for n, b in layers.items()}}


def describe(stats: dict[str, Any]) -> str:
    """One log line for translate/evaluate."""
    rate = stats["hit_rate"]
    return (f"moe buffer: K={stats['resident_experts']}/{stats['experts']} per layer ({stats['policy']}), "
            f"hit rate {'n/a' if rate is None else f'{rate:.3f}'}, {stats['loads']} loads, "
            f"{stats['evictions']} evictions, {stats['bytes_moved'] / 2**20:.1f} MiB moved")
