"""Config → model. The one place that decides what fills each layer's feed-forward slot."""

from __future__ import annotations

from nmt.config import ModelConfig
from nmt.models.transformer import Transformer


def build_model(cfg: ModelConfig, vocab_size: int) -> Transformer:
    return Transformer(cfg, vocab_size)
