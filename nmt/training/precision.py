"""Choose the compute precision: ``fp32``, ``bf16`` (autocast), or ``auto`` (measure both).

bf16 is a large speed lever only where the hardware has bf16 matrix units (AVX512-BF16/AMX
CPUs, Ampere+ GPUs). On CPUs without them (AVX2-only), PyTorch's bf16 matmul is emulated and
can be 10-100x slower than fp32, so ``auto`` times one matmul of the model's own FFN shape in
each precision and picks the faster (bf16 must win by 20%).
"""

from __future__ import annotations

import time

import torch


def _time_matmul(dtype: torch.dtype, m: int, k: int, n: int, device: torch.device, reps: int = 3) -> float:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(n, k, device=device).to(dtype)
    torch.nn.functional.linear(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.nn.functional.linear(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def choose_precision(requested: str, d_model: int, ffn_dim: int, device: torch.device) -> tuple[str, str]:
    """Returns ``(precision, reason)``."""
    if requested != "auto":
        return requested, "set by trainer.precision"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ("bf16" if ok else "fp32"), ("GPU supports bf16" if ok else "GPU lacks bf16")
    m, k, n = 1024, max(d_model, 64), max(ffn_dim, 64)
    t32 = _time_matmul(torch.float32, m, k, n, device)
    t16 = _time_matmul(torch.bfloat16, m, k, n, device)
    choice = "bf16" if t16 * 1.2 < t32 else "fp32"
    return choice, f"measured {m}x{k}x{n} matmul: fp32 {t32 * 1e3:.2f} ms, bf16 {t16 * 1e3:.2f} ms"
