"""The one place that turns a ``device`` setting (``auto`` | ``cpu`` | ``cuda``) into a torch device."""

from __future__ import annotations

import torch

from nmt.errors import UserError


def resolve_device(requested: str, key: str = "device") -> torch.device:
    """``auto``: the current CUDA device when one is visible, else the CPU; ``cuda`` without a
    visible GPU is a UserError naming the config key ``key``."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(f"config key {key}=cuda but no CUDA device is visible; use {key}=cpu or auto")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested in ("auto", "cpu"):
        return torch.device("cpu")
    return torch.device(requested)
