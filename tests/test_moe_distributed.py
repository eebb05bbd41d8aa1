"""Expert parallelism on 2 CPU ranks (gloo) equals one process holding every expert."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_expert_parallel_matches_single_process_fp64():
    torchrun = Path(sys.executable).parent / "torchrun"
    path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))  # this checkout's nmt
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2",
                           str(HERE / "distributed" / "moe_expert_parallel.py")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
