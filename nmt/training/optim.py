"""Adam and NLLB's inverse-square-root learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from nmt.config import OptimConfig


def inverse_sqrt_lr(step: int, cfg: OptimConfig) -> float:
    """Learning rate for update ``step`` (1-based).

    Linear warm-up from ``warmup_init_lr`` to ``lr`` over ``warmup_steps`` updates, then
    ``lr · sqrt(warmup_steps / step)`` (fairseq's ``inverse_sqrt``).
    """
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * step / cfg.warmup_steps
    return cfg.lr * math.sqrt(max(cfg.warmup_steps, 1) / max(step, 1))


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (= Adam when weight_decay is 0, NLLB's setting) over trainable parameters only."""
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=cfg.warmup_init_lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused kernels unavailable for this device/dtype
        return torch.optim.AdamW(params, foreach=True, **kwargs)
