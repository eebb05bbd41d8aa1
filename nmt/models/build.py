"""Config → model. The one place that decides what fills each layer's feed-forward slot."""

from __future__ import annotations

from torch import nn

from nmt.config import ModelConfig
from nmt.models.adapters import GeneratedAdapter, HyperNetwork, LanguageAdapters
from nmt.models.ffn import DenseFFN
from nmt.models.moe import CMRLayer, MoELayer
from nmt.models.transformer import Transformer


def is_moe_layer(cfg: ModelConfig, side: str, layer: int) -> bool:
    """NLLB's ``moe_freq``: layer i (0-based) is MoE when ``(i + 1) % freq == 0``."""
    freq = cfg.moe.encoder_freq if side == "encoder" else cfg.moe.decoder_freq
    return cfg.moe.experts > 0 and freq > 0 and (layer + 1) % freq == 0


def build_model(cfg: ModelConfig, vocab_size: int, expert_group=None) -> Transformer:
    """``expert_group``: the expert-parallel process group (None: every expert on this process)."""
    moe = cfg.moe

    def ffn_factory(side: str, layer: int) -> nn.Module:
        if not is_moe_layer(cfg, side, layer):
            return DenseFFN(cfg.d_model, cfg.ffn_dim, cfg.activation, cfg.activation_dropout)
        name = f"{side[:3]}{layer}"
        hidden = moe.expert_ffn_dim or cfg.ffn_dim
        if moe.impl == "fairscale":
            from nmt.models.moe_fairscale import FairscaleMoE

            layer_moe: nn.Module = FairscaleMoE(cfg.d_model, hidden, moe, name, cfg.activation, expert_group)
        else:
            layer_moe = MoELayer(cfg.d_model, hidden, moe, name, cfg.activation, cfg.activation_dropout, expert_group)
        if not moe.cmr:
            return layer_moe
        dense = DenseFFN(cfg.d_model, cfg.ffn_dim, cfg.activation, cfg.activation_dropout)
        return CMRLayer(cfg.d_model, dense, layer_moe, moe, name)

    a = cfg.adapters
    adapter_factory, hypernet = None, None
    if a.kind == "language":
        def adapter_factory(side: str, layer: int) -> nn.Module:
            key_by = a.encoder_key if side == "encoder" else a.decoder_key
            return LanguageAdapters(cfg.d_model, a.size, list(a.pairs if key_by == "pair" else a.languages),
                                    key_by, a.ln_affine)
    elif a.kind == "hyper":
        first_decoder = cfg.encoder_layers

        def adapter_factory(side: str, layer: int) -> nn.Module:
            return GeneratedAdapter(layer if side == "encoder" else first_decoder + layer)

        hypernet = HyperNetwork(cfg.d_model, a.size, list(a.languages), cfg.encoder_layers + cfg.decoder_layers,
                                hidden=a.hyper_dim, embed_dim=a.hyper_embed_dim, blocks=a.hyper_blocks,
                                dropout=a.hyper_dropout, encoder_inputs=tuple(a.hyper_encoder_inputs),
                                decoder_inputs=tuple(a.hyper_decoder_inputs), generate_ln=a.hyper_generate_ln,
                                rescale=a.hyper_rescale)
    return Transformer(cfg, vocab_size, ffn_factory, adapter_factory, hypernet)


def is_adapter_parameter(name: str) -> bool:
    """Parameters that belong to language adapters or the hyper-network (trained when the base is frozen)."""
    return name.startswith("hypernet.") or ".adapter." in name


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of the base model, the language adapters and the hyper-network (and trainable)."""
    counts = {"base": 0, "adapters": 0, "hypernet": 0, "trainable": 0}
    for name, p in model.named_parameters():
        part = "hypernet" if name.startswith("hypernet.") else "adapters" if ".adapter." in name else "base"
        counts[part] += p.numel()
        counts["trainable"] += p.numel() if p.requires_grad else 0
    counts["total"] = counts["base"] + counts["adapters"] + counts["hypernet"]
    return counts


def parameter_report(model: nn.Module) -> str:
    c = parameter_counts(model)
    return (f"parameters: base {c['base']:,}, language adapters {c['adapters']:,}, hyper-network {c['hypernet']:,}; "
            f"total {c['total']:,}, trainable {c['trainable']:,}")
