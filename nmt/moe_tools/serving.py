"""Load a model under the ``moe.*`` inference options (used by :class:`nmt.inference.Translator`).

``moe.inference`` sets the dispatch mode of every MoE layer (they share the model's MoEConfig).

With ``moe.resident_experts=K`` no MoE layer holds its experts: each gets a
:class:`~nmt.models.moe.buffer.BufferedExperts` fed by a slow tier. For an export the expert
tensors (``*.experts.{w1,b1,w2,b2}``) are never read into memory on a CPU: they stay in
``model.safetensors`` and one expert's slice is read per load. For a .pt/.dcp checkpoint the
whole state is in memory anyway: the tier is those tensors. On a GPU the tier is every expert in
pinned CPU memory (export or not) and a load is a host→device copy: that path is untested here
(no GPU). The model is built with experts of hidden width 1
(placeholders, replaced at once), so building it allocates no expert memory either.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmt.errors import UserError
from nmt.models.moe.buffer import PARAMS, BufferedExperts, BufferStats, SafetensorsTier, TensorTier
from nmt.models.moe.layer import MoELayer
from nmt.moe_tools.options import MoEServeConfig

EXPERT_KEY = re.compile(r"\.experts\.(w1|b1|w2|b2)$")


def is_expert_key(key: str) -> bool:
    return EXPERT_KEY.search(key) is not None


def moe_layers(model: nn.Module) -> list[tuple[str, MoELayer]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoELayer)]


def _tiers(ckpt: Any, kind: str, where: Path, device: torch.device) -> dict[str, SafetensorsTier | TensorTier]:
    """One slow tier per MoE layer, keyed by the experts' state-dict prefix (``....experts.``)."""
    from nmt.inference import WEIGHTS

    if kind == "export":
        from safetensors import safe_open

        with safe_open(str(where / WEIGHTS), framework="pt", device="cpu") as f:
            prefixes = sorted({k[: -len("w1")] for k in f.keys() if k.endswith(".experts.w1")})
            if device.type == "cuda":  # the paper's setting: every expert in pinned CPU memory, K on the GPU
                return {pre: TensorTier({p: f.get_tensor(pre + p) for p in PARAMS}, device) for pre in prefixes}
        return {pre: SafetensorsTier(where / WEIGHTS, pre, device) for pre in prefixes}
    in_memory = sorted({k[: -len("w1")] for k in ckpt.state if k.endswith(".experts.w1")})
    return {pre: TensorTier({p: ckpt.state.pop(pre + p) for p in PARAMS}, device) for pre in in_memory}


def buffer_experts(model: nn.Module, tiers: dict, resident: int, policy: str, where: str) -> None:
    """Replace every MoE layer's experts by a ``resident``-expert buffer over its tier
    (``tiers``: by state-dict prefix ``<layer>.experts.``)."""
    for name, layer in moe_layers(model):
        tier = tiers.get(f"{name}.experts.")
        if tier is None:
            raise UserError(f"{where} holds no experts for MoE layer {name}; re-export it")
        old = layer.experts
        layer.experts = BufferedExperts(  # type: ignore[assignment]  # same forward as Experts
            tier, old.experts, resident, policy, old.act)


def load_served(path: str | Path, opts: MoEServeConfig, device: torch.device):
    """``(InferenceCheckpoint, model)`` with the dispatch mode set and, with buffering, every
    MoE layer's experts behind a K-expert buffer."""
    from nmt.inference import checkpoint_kind, load_inference_checkpoint

    kind, where = checkpoint_kind(path)
    buffered = opts.resident_experts > 0
    ckpt = load_inference_checkpoint(path, is_expert_key if buffered and kind == "export" else None)
    opts.check_model(ckpt.model_config, str(path))
    if not buffered:
        model = ckpt.build_model()
    else:
        tiers = _tiers(ckpt, kind, where, device)
        config = ckpt.model_config
        ckpt.model_config = {**config, "moe": {**config["moe"], "expert_ffn_dim": 1}}  # placeholder experts
        try:
            model = ckpt.build_model(is_expert_key)
        finally:
            ckpt.model_config = config
        model.cfg.moe.expert_ffn_dim = config["moe"].get("expert_ffn_dim", 0)
        buffer_experts(model, tiers, opts.resident_experts, opts.buffer_policy, str(path))
    if opts.inference:
        model.cfg.moe.inference = opts.inference  # the layers share this MoEConfig
    return ckpt, model


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
