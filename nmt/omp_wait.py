"""How OpenMP's idle worker threads wait between parallel regions, chosen before torch loads.

libgomp (PyTorch's OpenMP on Linux) reads ``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` once, when
torch loads it, so :func:`choose_wait` runs in ``nmt/train.py`` before any import that loads
torch. Spinning wins when the cores are ours and loses badly when another job shares them
(measured on 2 cores, demo recipe, 2026-12-03, target tok/s):

| | quiet, bf16 | quiet, fp32 | 2 busy processes on the 2 cores, bf16 |
|---|---|---|---|
| ``PASSIVE`` (sleep at once) | 6.2k, 7.3k | 5.6k | 5.9k, 6.8k |
| ``PASSIVE`` + ``GOMP_SPINCOUNT=10000`` (spin briefly, then sleep) | 11.6k, 11.7k | 7.6k | 3.8k, 4.1k |
| ``ACTIVE`` (spin) | 9.7k, 12.1k | 7.3k | 2.6k |

So the choice follows the machine at start: when every core this process may use was idle over
:data:`SAMPLE_S`, workers spin briefly (``GOMP_SPINCOUNT``) and then sleep; otherwise, and under
``torchrun`` (several ranks share the machine), they sleep at once. Anything the environment
sets (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) is left as it is. The choice changes no result.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from pathlib import Path

SAMPLE_S = 0.2
QUIET_SPINCOUNT = "10000"
IDLE_SLACK = 0.5  # cores: background daemons may use this much of an otherwise idle machine


def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """(idle, total) jiffies summed over ``cpus`` from /proc/stat; None where it cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    idle = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [float(v) for v in fields[:8]]
            idle += values[3] + values[4]  # idle + iowait
            total += sum(values)
    return (idle, total) if total else None


def idle_cores(cpus: set[int], sample_s: float = SAMPLE_S) -> float | None:
    """How many of ``cpus`` were idle, on average, over ``sample_s`` seconds."""
    before = _cpu_times(cpus)
    time.sleep(sample_s)
    after = _cpu_times(cpus)
    if before is None or after is None or after[1] <= before[1]:
        return None
    return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])


def _count(value: str | None) -> int:
    """A rank count from the environment; 1 when unset or not a plain number (runs at import:
    never raise)."""
    return int(value) if value and value.strip().isdigit() else 1


def choose_wait(environ: MutableMapping[str, str] = os.environ) -> str:
    """Set the wait policy in ``environ`` unless it is set already; return what was done and why."""
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return "OpenMP wait policy left as the environment sets it"
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if any(_count(environ.get(k)) > 1 for k in ("WORLD_SIZE", "SLURM_NTASKS")):
        return "OpenMP workers sleep when idle (OMP_WAIT_POLICY=PASSIVE): several ranks share this machine"
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    idle = idle_cores(cpus)
    if idle is None:
        return "OpenMP workers sleep when idle (OMP_WAIT_POLICY=PASSIVE): CPU load unknown"
    seen = f"{idle:.1f} of {len(cpus)} cores idle over {SAMPLE_S:.1f} s"
    if idle >= len(cpus) - IDLE_SLACK:
        environ["GOMP_SPINCOUNT"] = QUIET_SPINCOUNT
        return f"OpenMP workers spin briefly, then sleep (GOMP_SPINCOUNT={QUIET_SPINCOUNT}): {seen}"
    return f"OpenMP workers sleep when idle (OMP_WAIT_POLICY=PASSIVE): {seen}, shared with other work"
