"""Graceful preemption and time limits on Slurm: note the signal, finish the step, save, requeue.

Slurm warns a job before it ends it: ``--signal=USR1@90`` (or submitit's default, USR2) some
seconds before the time limit, ``scancel --signal=USR1`` from an admin or a test, and SIGTERM
when the job is cancelled, preempted or requeued (SIGKILL follows after the cluster's KillWait).
:func:`install` makes these signals only set a flag, which the trainer polls after each step
with :func:`requested`; it then saves ``last.pt``, calls :func:`requeue_self` on rank 0 and
exits. The requeued job starts the same command again and resumes from the run directory.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)

_requested: str | None = None
_previous: dict[signal.Signals, Any] = {}


def _record(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested is None:  # keep the first one (Slurm sends TERM again before it kills)
        _requested = signal.Signals(signum).name


def install(signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
    """Replace the handlers of ``signals`` (from the main thread) by one that records the first
    signal and returns; clears an earlier request. Also replaces submitit's own handlers."""
    global _requested
    _requested = None
    for sig in signals:
        previous = signal.signal(sig, _record)
        _previous.setdefault(sig, previous)


def uninstall() -> None:
    """Put back the handlers that :func:`install` replaced."""
    for sig, previous in _previous.items():
        signal.signal(sig, previous)
    _previous.clear()


def requested() -> str | None:
    """Name of the first signal received since :func:`install` (``"SIGUSR1"``...), else None."""
    return _requested


def slurm_job_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """The id ``scontrol`` knows this job by: ``<array job>_<task>`` in a job array."""
    array_job, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return environ.get("SLURM_JOB_ID") or None


def requeue_command(environ: Mapping[str, str] = os.environ) -> list[str] | None:
    job = slurm_job_id(environ)
    return ["scontrol", "requeue", job] if job else None


def requeue_self(environ: Mapping[str, str] = os.environ,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> bool:
    """Inside a Slurm job, put it back in the queue (call it once, from rank 0, after saving):
    Slurm then stops every task of the job (SIGTERM, SIGKILL after KillWait) and starts the
    batch script again after its requeue delay. Returns False outside Slurm, when Slurm
    refuses, and after a SIGTERM: Slurm sends that when it ends the job itself (``scancel``, a
    preemption that requeues on its own, ``scontrol requeue``), and a cancelled job must stay so."""
    command = requeue_command(environ)
    if command is None:
        return False
    if _requested == "SIGTERM":
        log.info("SIGTERM: Slurm is ending this job itself; not requeueing it")
        return False
    try:
        proc = run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning(f"could not requeue the job: {' '.join(command)}: {e}")
        return False
    if proc.returncode != 0:
        log.warning(f"{' '.join(command)} failed: {(proc.stderr or proc.stdout).strip()}")
        return False
    log.info(f"requeued Slurm job {command[-1]}")
    return True
