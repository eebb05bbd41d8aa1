"""Choose the compute precision: ``fp32``, ``bf16`` (autocast), or ``auto`` (measure both).

``auto`` times the configured model's own training step (forward, loss, backward, optimizer) on
the training loader's first batch in each precision (nmt/training/precision_trial.py) and keeps
bf16 only when its step is at least ``MARGIN`` faster: one matmul is a poor proxy (a CPU whose
bf16 matmul is 4x faster can run the whole step 1.8x slower, from casts and bf16 elementwise
work). On a CPU whose bf16 matmul is emulated (``EMULATED`` times slower than fp32, e.g.
AVX2-only) bf16 cannot win and no bf16 step is run; a GPU without bf16 support gets fp32.

The choice and both figures go to ``<run_dir>/precision.json``; a resumed run reuses the
recorded choice without measuring again, so it continues bit for bit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nmt.device import cpu_flags
from nmt.fileio import atomic_write
from nmt.training.precision_trial import reduce_max, time_both

MARGIN = 1.2  # bf16 must be this much faster than fp32 (its numerics cost something too)
EMULATED = 3.0  # a bf16 matmul this much slower than fp32: no bf16 hardware, skip the step trial
BUDGET_S = 6.0  # wall time of the step trial, both precisions (at least one warm-up + one timed step each)
MAX_TIMED_STEPS = 3  # per precision
RECORD = "precision.json"


def _time_matmul(dtype: torch.dtype, m: int, k: int, n: int, device: torch.device, reps: int = 3) -> float:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(n, k, device=device).to(dtype)
    torch.nn.functional.linear(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.nn.functional.linear(a, b)
        best = min(best, time.perf_counter() - t)
    return best


def bf16_matmul_emulated(m: int = 256, k: int = 256, n: int = 1024) -> tuple[bool, str]:
    """Whether a CPU bf16 ``m×k×n`` matmul is ``EMULATED`` times slower than fp32 (no bf16
    hardware; small, so an emulated one costs a fraction of a second). Agreed over ranks; the
    global RNG stream is not touched."""
    with torch.random.fork_rng(devices=[]):
        t32 = _time_matmul(torch.float32, m, k, n, torch.device("cpu"))
        t16 = _time_matmul(torch.bfloat16, m, k, n, torch.device("cpu"))
    emulated = reduce_max([float(t16 > EMULATED * t32)], torch.device("cpu"))[0] > 0
    return emulated, f"{m}x{k}x{n} matmul: fp32 {t32 * 1e3:.2f} ms, bf16 {t16 * 1e3:.2f} ms"


def decide(step_s: dict[str, float]) -> str:
    """bf16 when its step is at least ``MARGIN`` times faster than fp32's."""
    return "bf16" if step_s["bf16"] * MARGIN < step_s["fp32"] else "fp32"


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _recorded(run_dir: Path, device: torch.device) -> dict[str, Any] | None:
    try:
        record = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("precision") not in ("fp32", "bf16"):
        return None
    return record if record.get("device") == device.type else None


def _cpu_flags() -> list[str]:
    return sorted(f for f in cpu_flags() if "bf16" in f or "amx" in f)


def _measure(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any, label_smoothing: float,
             device: torch.device) -> dict[str, Any]:
    """Decide ``auto``: the record to write (``precision``, ``reason`` and the figures)."""
    record: dict[str, Any] = {"requested": "auto", "device": device.type}
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return {**record, "precision": "fp32", "reason": "GPU lacks bf16"}
    if device.type == "cpu":
        record["cpu_flags"] = _cpu_flags()
        emulated, why = bf16_matmul_emulated()
        if emulated:
            return {**record, "precision": "fp32", "reason": f"bf16 matmul emulated on this CPU ({why})"}
    trial = time_both(model, optimizer, loader, label_smoothing, device, BUDGET_S, MAX_TIMED_STEPS)
    choice = decide(trial.step_s)
    reason = (f"measured this model's training step on the first batch ({trial.tokens} target tokens), median of "
              f"{trial.timed_steps}: fp32 {trial.step_s['fp32'] * 1e3:.0f} ms ({trial.tok_s('fp32'):.0f} tok/s), "
              f"bf16 {trial.step_s['bf16'] * 1e3:.0f} ms ({trial.tok_s('bf16'):.0f} tok/s); "
              f"decided in {trial.seconds:.1f} s")
    return {**record, "precision": choice, "reason": reason, "batch": "first training batch",
            "tokens": trial.tokens, "sentences": trial.sentences, "timed_steps": trial.timed_steps,
            "warmup_steps": 1, "step_s": {p: round(s, 6) for p, s in trial.step_s.items()},
            "tok_s": {p: round(trial.tok_s(p), 1) for p in trial.step_s}, "seconds": round(trial.seconds, 3)}


def choose_precision(requested: str, device: torch.device, run_dir: Path, resume: bool, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, loader: Any, label_smoothing: float) -> tuple[str, str]:
    """``(precision, reason)``. ``auto`` measures (or, on resume, reuses ``run_dir/precision.json``);
    the decision is written there by rank 0. Every rank must call it (the trial's steps are collective)."""
    if requested != "auto":
        return requested, "set by trainer.precision"
    run_dir = Path(run_dir)
    if resume:
        old = _recorded(run_dir, device)
        if old is not None:
            return old["precision"], f"recorded in {run_dir / RECORD} when the run started: {old['reason']}"
    record = _measure(model, optimizer, loader, label_smoothing, device)
    if _is_main():
        atomic_write(run_dir / RECORD, json.dumps(record, indent=2) + "\n", overwrite=True)
    return record["precision"], record["reason"]
