"""What the benchmarks record about the machine and the work: the CPU and its bf16 units, the
measured matmul peak (for MFU), peak memory, and the matmul FLOPs of one training step."""

from __future__ import annotations

import inspect
import os
import resource
import sys
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nmt.config import ModelConfig
from nmt.device import BF16_UNITS, cpu_flags
from nmt.malloc import keep_freed_memory
from nmt.training.precision import bf16_matmul_emulated


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ FLOPs
def train_flops(batch: int, src_len: int, tgt_len: int, cfg: ModelConfig, vocab: int) -> float:
    """Matmul FLOPs of one training step (2 FLOPs per multiply-add; backward = 2 × forward).

    B sentences, S source and T target positions, width d, FFN width f, vocabulary V:

        encoder layer   B·S·(8d² + 4df)         QKV (3d²), output projection (d²), FFN (2df)
                      + 4·B·S²·d                scores QKᵀ and context AV
        decoder layer   B·T·(12d² + 4df)        self QKV+out (4d²), cross Q+out (2d²), FFN (2df)
                      + 4·B·S·d²                cross-attention K and V of the encoder output
                      + 4·B·T²·d + 4·B·T·S·d    self and cross scores + context
        output layer    2·B·T·d·V               tied embedding as the output projection

        step = 3 · (Le·encoder + Ld·decoder + output layer)

    i.e. 6·(matmul weights)·(tokens) plus the attention terms. Causal attention is counted in
    full (the kernels compute the whole square); layer norms, softmax, the loss, embedding
    look-ups and the optimizer are not counted. Base shape (64×64+64, d 512, f 2048, 6+6, 32k):
    1.514 TFLOP per step.
    """
    b, s, t, d, f, v = batch, src_len, tgt_len, cfg.d_model, cfg.ffn_dim, vocab
    enc = b * s * (8 * d * d + 4 * d * f) + 4 * b * s * s * d
    dec = b * t * (12 * d * d + 4 * d * f) + 4 * b * s * d * d + 4 * b * t * t * d + 4 * b * t * s * d
    out = 2 * b * t * d * v
    return 3.0 * (cfg.encoder_layers * enc + cfg.decoder_layers * dec + out)


def flops_formula() -> str:
    lines = inspect.cleandoc(train_flops.__doc__ or "").splitlines()
    first = next(i for i, line in enumerate(lines) if "encoder layer" in line)
    last = next(i for i, line in enumerate(lines) if "step = 3" in line)
    return textwrap.dedent("\n".join(lines[first: last + 1]))


# ------------------------------------------------------------------------------ environment
def matmul_peak(dtype: torch.dtype, n_max: int, repeats: int = 4, min_seconds: float = 1.0) -> dict:
    """Best square matmul rate, over ``torch.mm`` and ``F.linear`` (the model's path; on CPU they
    can take different kernels: for bf16 without hardware support F.linear was ~5× faster than mm
    here). Grows the size up to ``n_max`` but stops at the size where one product takes over 1/8 s
    (bf16 without hardware support can be ~100× slower than fp32); at that size it keeps timing
    products for at least ``min_seconds`` (a short best-of-4 read 220 GFLOP/s where 420 was the
    rate a second later: threads and clocks still ramping up) and takes the best."""
    n = 256
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        best = float("inf")
        last = n >= n_max
        t_size = time.perf_counter()
        while True:
            for product in (torch.mm, F.linear):
                product(a, b)
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    product(a, b)
                    best = min(best, time.perf_counter() - t0)
            if best * 8 > 1.0:
                last = True
            if not last or time.perf_counter() - t_size >= min_seconds:
                break
        if last:
            return {"gflops": 2 * n ** 3 / best / 1e9, "n": n}
        n *= 2


def cpu_info() -> dict:
    info: dict = {"model": None, "bf16_hardware": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    info["model"] = next((line.partition(":")[2].strip() for line in text.splitlines()
                          if line.partition(":")[0].strip() == "model name"), None)
    flags = cpu_flags()
    if flags:
        info["bf16_hardware"] = sorted(flags & {*BF16_UNITS, "avx_ne_convert"})
        info["avx512"] = "avx512f" in flags
    return info


def cores() -> dict:
    """The cores this process may use, the machine's count, and torch's intra-op threads."""
    return {"affinity": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def allocator(system: bool) -> str:
    """Set the process's host allocator as the trainer does (``trainer.reuse_memory``, nmt/malloc.py),
    or leave glibc's defaults with ``system``; returns what was done, for the record. Both systems of a
    benchmark share the process, so both run under the same allocator."""
    return "glibc defaults (--system-malloc)" if system else keep_freed_memory()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def bf16_skip_reason(precision: str, force: bool) -> str | None:
    """Why a benchmark skips ``precision`` on this machine (a bf16 matmul is emulated, ≥ 3× slower
    than fp32), or None to run it; ``force`` (``--force-bf16``) runs it anyway."""
    if precision != "bf16" or force:
        return None
    emulated, why = bf16_matmul_emulated()
    return f"bf16 matmul is emulated on this CPU ({why}); --force-bf16 runs it anyway" if emulated else None
