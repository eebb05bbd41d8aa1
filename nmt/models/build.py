"""Config → model. The one place that decides what fills each layer's feed-forward slot."""

from __future__ import annotations

from torch import nn

from nmt.config import ModelConfig
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

    return Transformer(cfg, vocab_size, ffn_factory)
