"""nmt/malloc.py: freed host memory is kept for the next step (no page faults on reuse), the
environment's own allocator settings are left alone, and the trainer logs the choice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nmt.malloc import _USER_KEYS

ROOT = Path(__file__).resolve().parents[1]

# Rounds of "allocate 64 MiB, write it, free it"; prints the page faults of the last round. With
# the memory kept, glibc reuses the freed block for the same request only after ~8 rounds (torch's
# 64-byte aligned allocations leave remainders that block it until a consolidation); from then on
# no round faults.
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from nmt.malloc import keep_freed_memory
    if sys.argv[1] == "keep":
        print(keep_freed_memory())
    def round_():
        t = torch.empty(16 * 2**20)
        t.fill_(1.0)
        del t
    for _ in range(16):
        round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    round_()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _probe(mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in _USER_KEYS}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**clean, **env})
    return out.stdout.strip().splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_without_page_faults():
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert int(_probe("system")[-1]) > pages // 2  # glibc's default: a fresh mmap, every page faulted again
    said, faults = _probe("keep")
    assert "keeps freed memory" in said
    assert int(faults) < pages // 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_environments_allocator_settings_are_left_alone():
    said, faults = _probe("keep", MALLOC_TRIM_THRESHOLD_="0")
    assert said == "allocator left as the environment sets it (MALLOC_TRIM_THRESHOLD_)"
    assert int(faults) > 64 * 2**20 // os.sysconf("SC_PAGE_SIZE") // 2
