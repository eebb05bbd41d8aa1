"""The one place that turns a ``device`` setting (``auto`` | ``cpu`` | ``cuda``) into a torch device,
and that reads what the CPU can do (its flags; whether it has bf16 units)."""

from __future__ import annotations

import functools
from pathlib import Path

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


BF16_UNITS = ("amx_bf16", "avx512_bf16")  # CPU instruction sets that compute bf16 products natively


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read, e.g. not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (without them oneDNN emulates bf16, several times slower)."""
    return any(unit in cpu_flags() for unit in BF16_UNITS)
