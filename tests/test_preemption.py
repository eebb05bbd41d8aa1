"""nmt.training.preemption: signals only set a flag (the step finishes), and requeue_self runs the
right ``scontrol requeue`` inside a Slurm job (array-aware) and nothing elsewhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nmt.training import preemption


@pytest.fixture(autouse=True)
def fresh_state():
    preemption.install()  # clears a request left by another test
    preemption.uninstall()
    yield
    preemption.uninstall()


def test_no_signal_no_request():
    preemption.install()
    assert preemption.requested() is None


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_signal_is_recorded_and_the_process_goes_on(sig):
    preemption.install()
    os.kill(os.getpid(), sig)
    assert preemption.requested() == sig.name


def test_first_signal_wins_and_install_clears():
    preemption.install()
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)  # Slurm's TERM before the kill must not hide the USR1
    assert preemption.requested() == "SIGUSR1"
    preemption.install()
    assert preemption.requested() is None


def test_uninstall_restores_previous_handlers():
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    try:
        preemption.install()
        assert signal.getsignal(signal.SIGUSR1) is not previous
        preemption.uninstall()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


TRAIN_LOOP = textwrap.dedent("""
    import sys, time
    from nmt.training import preemption
    preemption.install()
    print("ready", flush=True)
    for step in range(1, 10_000):
        time.sleep(0.02)  # a step: a signal arriving now must not cut it short
        if preemption.requested():
            print(f"saved after step {step} on {preemption.requested()}", flush=True)
            sys.exit(0)
    sys.exit(3)
""")


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_training_loop_stops_cleanly_on_a_real_signal(sig):
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_LOOP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.startswith("saved after step ") and out.strip().endswith(f"on {sig.name}")


class FakeRun:
    def __init__(self, returncode: int = 0, stderr: str = ""):
        self.calls: list[list[str]] = []
        self.returncode, self.stderr = returncode, stderr

    def __call__(self, command, **kwargs):
        assert kwargs.get("timeout")  # never wait on scontrol forever
        self.calls.append(command)
        return subprocess.CompletedProcess(command, self.returncode, stdout="", stderr=self.stderr)


def test_requeue_outside_slurm_does_nothing():
    run = FakeRun()
    assert preemption.requeue_self({}, run=run) is False
    assert run.calls == []


@pytest.mark.parametrize("environ, job", [
    ({"SLURM_JOB_ID": "4242"}, "4242"),
    ({"SLURM_JOB_ID": "4243", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "3"}, "4240_3"),
])
def test_requeue_runs_scontrol_with_the_job_id(environ, job):
    preemption.install()
    os.kill(os.getpid(), signal.SIGUSR1)
    run = FakeRun()
    assert preemption.requeue_self(environ, run=run) is True
    assert run.calls == [["scontrol", "requeue", job]]


def test_requeue_refused_by_slurm_returns_false(caplog):
    run = FakeRun(returncode=1, stderr="scontrol: error: Requested operation is presently disabled")
    assert preemption.requeue_self({"SLURM_JOB_ID": "7"}, run=run) is False
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "presently disabled" in caplog.text


def test_no_requeue_after_sigterm():
    """SIGTERM means Slurm ends the job itself (scancel, requeue, preemption): a cancelled job stays cancelled."""
    preemption.install()
    os.kill(os.getpid(), signal.SIGTERM)
    run = FakeRun()
    assert preemption.requeue_self({"SLURM_JOB_ID": "7"}, run=run) is False
    assert run.calls == []


def test_missing_scontrol_returns_false(caplog):
    def run(command, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", command[0])

    assert preemption.requeue_self({"SLURM_JOB_ID": "7"}, run=run) is False
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "could not requeue" in caplog.text
