"""Against a real Slurm (``.ci/run`` starts a local one with ../shared/slurm/start-local-slurm.sh):
training submitted through Hydra's submitit launcher with our ``slurm`` preset, a 2-node
rendezvous, and preemption -> requeue -> automatic resume. Skipped where no ``sinfo`` answers.

Every test submits under a unique job name into its own sweep directory under tmp_path (job ids
restart at 1 when the local cluster is rebuilt), and cancels its jobs when it ends. Every wait
has a timeout: without accounting (sacct) submitit cannot see a job that died early.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from conftest import REPO, SMOKE, train_smoke

SCRIPT = Path(__file__).parent / "distributed" / "dist_env_allreduce.py"


def _sinfo() -> tuple[str | None, str]:
    """(default partition, why not) from ``sinfo``."""
    if shutil.which("sinfo") is None:
        return None, "no sinfo on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=15,
                              check=False)
    except subprocess.TimeoutExpired:
        return None, "sinfo did not answer within 15 s"
    if proc.returncode != 0:
        return None, f"sinfo failed: {proc.stderr.strip()[:200]}"
    partitions = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    up = [p for p, avail in partitions if avail == "up"]
    if not up:
        return None, "sinfo lists no partition that is up"
    return next((p for p in up if p.endswith("*")), up[0]).rstrip("*"), ""


PARTITION, WHY = _sinfo()
pytestmark = pytest.mark.skipif(PARTITION is None, reason=f"no Slurm cluster answers ({WHY}); CI starts one with "
                                                          f"../shared/slurm/start-local-slurm.sh")


def _nodes() -> int:
    out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%D"], capture_output=True, text=True,
                         timeout=15, check=False)
    return sum(int(n) for n in out.stdout.split() if n.isdigit())


@pytest.fixture
def job_name():
    """A unique Slurm job name; every job of the test is cancelled afterwards."""
    name = f"nmt-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30, check=False)


def launcher_overrides(sweep: Path, name: str, *extra: str) -> list[str]:
    return ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}", "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", f"hydra.launcher.name={name}",
            f"hydra.sweep.dir={sweep}", *extra]


def submit(corpus: Path, sweep: Path, name: str, *overrides: str,
           env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m nmt.train -m`` (a smoke run) through the slurm preset; the launcher waits for the job."""
    args = [sys.executable, "-m", "nmt.train", "-m", *SMOKE, f"data.corpus={corpus}",
            *launcher_overrides(sweep, name), *overrides]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def finish(proc: subprocess.Popen, sweep: Path, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(
            f"the launcher did not return within {timeout} s:\n{out[-3000:]}\n{job_logs(sweep)}") from None
    assert proc.returncode == 0, f"launcher failed ({proc.returncode}):\n{out[-3000:]}\n{job_logs(sweep)}"
    return out


def job_logs(sweep: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(sweep.glob("slurm/*/*_log.*")))


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def squeue(name: str) -> list[tuple[str, str, str]]:
    """(job id, state, reason) of the jobs called ``name``."""
    out = subprocess.run(["squeue", "-h", f"--name={name}", "-o", "%i %T %r"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    return [tuple(line.split(maxsplit=2)) for line in out.splitlines() if line.strip()]


def model_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def test_smoke_sweep_through_the_slurm_launcher_is_a_job_array(prepared_corpus, tmp_path, job_name):
    sweep = tmp_path / "sweep"
    out = finish(submit(prepared_corpus, sweep, job_name, "optim.lr=3e-3,1e-3", "trainer.max_steps=30"), sweep)
    for n in ("0", "1"):
        run = sweep / n
        assert (run / "checkpoints" / "last.pt").exists(), out[-2000:]
        assert json.loads((run / "summary.json").read_text())["step"] == 30
    tasks = sorted(p.name for p in sweep.glob("slurm/*_*") if p.is_dir())
    assert len(tasks) == 2 and tasks[0].split("_")[0] == tasks[1].split("_")[0], tasks  # <array id>_<index>
    assert {t.split("_")[1] for t in tasks} == {"0", "1"}
    assert list(sweep.glob("slurm/*/*_submission.sh")), "no sbatch script under <sweep>/slurm"


def test_two_nodes_rendezvous_from_slurm_variables():
    """distributed.detect()/init() on 2 Slurm "nodes" (srun, one task each), gloo over loopback."""
    if _nodes() < 2:
        pytest.skip("the partition has one node; start the local cluster with SLURM_LOCAL_NODES=2")
    name = f"nmt-test-{uuid.uuid4().hex[:8]}"
    first = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-N", "-o", "%N"], capture_output=True, text=True,
                           timeout=15, check=False).stdout.split()[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    try:
        socket.gethostbyname(first)
    except OSError:  # emulated nodes (vm-1, vm-2) are not host names: rank 0 listens on loopback
        env["MASTER_ADDR"] = "127.0.0.1"
    try:
        proc = subprocess.run(["srun", f"--job-name={name}", "-p", PARTITION, "-N2", "--ntasks-per-node=1", "-t", "5",
                               sys.executable, str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=180,
                              env=env, check=False)
    finally:
        subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(re.findall(r"OK slurm \d/\d \d", proc.stdout)) == ["OK slurm 0/2 3", "OK slurm 1/2 3"], \
        proc.stdout[-2000:]


@pytest.mark.parametrize("how", ["usr1", "requeue"])
def test_preempted_job_resumes_and_matches_an_uninterrupted_run(how, prepared_corpus, tmp_path, job_name):
    """USR1 (the trainer saves and requeues itself) or ``scontrol requeue`` (Slurm TERMs the job and
    requeues it): the job runs again, resumes from its run directory, and ends bit-identical."""
    steps = ["trainer.max_steps=200", "trainer.log_interval=5", "trainer.valid_interval=100"]
    reference = tmp_path / "reference"
    train_smoke(prepared_corpus, reference, *steps)

    sweep = tmp_path / "sweep"
    proc = submit(prepared_corpus, sweep, job_name, *steps)
    log = sweep / "0" / "train_log.jsonl"

    def mid_run() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the launcher ended before the job was preempted:\n{proc.stdout.read()[-3000:]}")
        return log.exists() and len(log.read_text().splitlines()) >= 2  # step 10 is done
    wait_for(mid_run, 240, "the job to pass step 10")
    (job_id, _, _), = squeue(job_name)
    signal_job = ["scancel", "--signal=USR1", job_id] if how == "usr1" else ["scontrol", "requeue", job_id]
    subprocess.run(signal_job, check=True, capture_output=True, timeout=30)
    # A requeued job waits ~2 min (Slurm's credential lifetime) before it may start again: release it now.
    wait_for(lambda: any(state == "PENDING" for _, state, _ in squeue(job_name)), 120, "the job to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, capture_output=True,
                   timeout=30)
    finish(proc, sweep, timeout=300)

    run = sweep / "0"
    starts = sum(p.read_text().count("Starting with JobEnvironment") for p in sweep.glob("slurm/*/*_log.out"))
    assert starts == 2, f"the job ran {starts} times (expected: preempted once, then resumed)\n{job_logs(sweep)}"
    assert json.loads((run / "summary.json").read_text())["step"] == 200
    ref, got = model_weights(reference), model_weights(run)
    assert ref.keys() == got.keys()
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not different, f"weights differ after preemption + resume: {different[:5]}"


def test_two_node_job_trains_with_two_ranks(prepared_corpus, tmp_path, job_name):
    if _nodes() < 2:
        pytest.skip("the partition has one node; start the local cluster with SLURM_LOCAL_NODES=2")
    sweep = tmp_path / "sweep"
    env = {"MASTER_ADDR": "127.0.0.1"}  # the emulated nodes' names (vm-1, vm-2) do not resolve
    proc = submit(prepared_corpus, sweep, job_name, "trainer.max_steps=20", "hydra.launcher.nodes=2",
                  "hydra.launcher.tasks_per_node=1", env=env)
    finish(proc, sweep)
    run = sweep / "0"
    summary = json.loads((run / "summary.json").read_text())
    log_text = "".join(p.read_text(errors="replace") for p in [run / "train.log", *sweep.glob("slurm/*/*_log.out")]
                       if p.exists())
    assert summary.get("world_size") == 2 or "world_size=2" in log_text, f"{summary}\n{log_text[-2000:]}"
    assert list(run.glob("checkpoints/last*")), "no last checkpoint (last.pt or sharded last.*)"
