"""nmt/omp_wait.py: OpenMP's wait policy follows the machine's load at start, and what the
environment sets is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nmt import omp_wait


def test_environment_settings_are_left_alone(monkeypatch):
    monkeypatch.setattr(omp_wait, "idle_cores", lambda cpus: pytest.fail("measured although the environment decides"))
    for env in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5"}):
        before = dict(env)
        assert "left as the environment sets it" in omp_wait.choose_wait(env)
        assert env == before


def test_idle_cores_spin_briefly_and_busy_cores_sleep(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(omp_wait, "idle_cores", lambda cpus: float(len(cpus)) - 0.2)
    env: dict[str, str] = {}
    assert "spin briefly" in omp_wait.choose_wait(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": omp_wait.QUIET_SPINCOUNT}
    monkeypatch.setattr(omp_wait, "idle_cores", lambda cpus: float(len(cpus)) - 1.0)
    env = {}
    message = omp_wait.choose_wait(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert f"{cores - 1:.1f} of {cores} cores idle" in message and "shared with other work" in message


def test_several_ranks_sleep_without_measuring(monkeypatch):
    monkeypatch.setattr(omp_wait, "idle_cores", lambda cpus: pytest.fail("measured under several ranks"))
    for env in ({"WORLD_SIZE": "2"}, {"SLURM_NTASKS": "4"}):
        assert "several ranks" in omp_wait.choose_wait(env)
        assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in env


def test_unreadable_rank_counts_count_as_one(monkeypatch):
    monkeypatch.setattr(omp_wait, "idle_cores", lambda cpus: None)
    for env in ({"WORLD_SIZE": ""}, {"SLURM_NTASKS": "2(x2)"}, {"WORLD_SIZE": "1"}):
        assert "CPU load unknown" in omp_wait.choose_wait(env)  # measured, not taken for several ranks


def test_idle_cores_sees_a_busy_process():
    """/proc/stat's idle time over the sample: a process spinning on one of our cores takes about
    one core away (bounds wide enough for a noisy machine)."""
    cpus = {sorted(os.sched_getaffinity(0))[0]}
    quiet = omp_wait.idle_cores(cpus, 0.3)
    assert quiet is not None and 0.0 <= quiet <= 1.0 + 1e-9
    code = f"import os, time\nos.sched_setaffinity(0, {cpus!r})\nt = time.time()\nwhile time.time() - t < 3: pass"
    spin = subprocess.Popen([sys.executable, "-c", code])
    try:
        busy = omp_wait.idle_cores(cpus, 0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and busy < 0.3
