"""Keep freed host memory in the process for the next step (glibc's allocator).

PyTorch's CPU tensors come straight from ``malloc``. glibc serves every request above its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and gives it back to the kernel on ``free``, so
each training step faults in its large buffers (activations, gradients) page by page again. One
MoE layer with 64 experts of d 512 / FFN 2048 faulted ~700 MiB per step that way: 1.4 s a step,
0.96 s with the memory kept (bench/moe_layer.py, fp32, 2 threads, AVX2 CPU). This turns ``mmap``
off for ``malloc`` and raises the trim threshold, so freed blocks stay in the heap and are reused.

The cost: the process does not return memory to the kernel between steps (its resident set stays at
its peak, as a caching allocator's would) and the heap can fragment, which raised the one-step peak
of that layer by ~8% and a base-shape training step's peak RSS by 1.4%. The worst pattern seen: one
64 MiB tensor allocated and freed again and again is served from fresh heap for ~8 rounds (torch's
64-byte aligned requests leave remainders that keep the freed block from fitting until glibc
consolidates), so the heap holds ~450 MiB more before every round reuses it.
``trainer.reuse_memory=false`` keeps glibc's defaults. Nothing changes when the environment already
tunes glibc (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``) or another allocator is preloaded
(``LD_PRELOAD``, e.g. jemalloc or tcmalloc), or on a C library without ``mallopt`` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
_TRIM_BYTES = 2**31 - 1  # the largest value mallopt's int takes: freed memory stays unless 2 GiB lie free at the top
_USER_KEYS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def keep_freed_memory() -> str:
    """Switch glibc to keeping freed memory; returns what was done, for the log."""
    chosen = [k for k in _USER_KEYS if os.environ.get(k)]
    if chosen:
        return f"allocator left as the environment sets it ({', '.join(chosen)})"
    if not sys.platform.startswith("linux"):
        return "allocator left as is (not Linux)"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return "allocator left as is (no glibc mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, _TRIM_BYTES) != 1:
        return "allocator left as is (mallopt refused)"
    return "allocator keeps freed memory for reuse (mmap off, trim threshold 2 GiB)"
