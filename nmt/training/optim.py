"""Adam and the learning-rate schedules (pure functions of the step): NLLB's inverse square
root, and cosine / linear decay to ``min_lr`` at ``trainer.max_steps`` for fixed-length runs."""

from __future__ import annotations

import math
from typing import Any

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


def scheduled_lr(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """``optim.schedule``: the same linear warm-up, then inverse_sqrt, or a cosine / linear decay
    from ``lr`` to ``min_lr`` over the remaining updates up to ``max_steps``."""
    if cfg.schedule == "inverse_sqrt" or (cfg.warmup_steps > 0 and step < cfg.warmup_steps):
        return inverse_sqrt_lr(step, cfg)
    frac = min(max(step - cfg.warmup_steps, 0) / max(max_steps - cfg.warmup_steps, 1), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else 1.0 - frac
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * shape


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    lr_scale: dict[int, float] | None = None) -> torch.optim.Optimizer:
    """AdamW (= Adam when weight_decay is 0, NLLB's setting) over trainable parameters only.
    ``lr_scale`` (``id(param) → multiplier``) puts those parameters in groups whose ``lr_scale``
    the trainer multiplies the scheduled learning rate by."""
    params = [p for p in model.parameters() if p.requires_grad]
    scale = lr_scale or {}
    # FSDP2 parameters are DTensors, expert-parallel ones plain tensors: one group each, because a
    # fused/foreach step cannot mix the two (each group is stepped on its own).
    keys = sorted({(hasattr(p, "to_local"), scale.get(id(p), 1.0)) for p in params}, reverse=True)
    groups = [{"params": [p for p in params if (hasattr(p, "to_local"), scale.get(id(p), 1.0)) == key],
               **({"lr_scale": key[1]} if key[1] != 1.0 else {})} for key in keys]
    kwargs: dict[str, Any] = dict(lr=cfg.warmup_init_lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    arg: list[dict[str, Any]] | list[nn.Parameter] = groups if len(groups) > 1 or scale else params
    try:
        return torch.optim.AdamW(arg, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused kernels unavailable for this device/dtype
        return torch.optim.AdamW(arg, foreach=True, **kwargs)
