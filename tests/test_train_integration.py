"""End to end: the smoke recipe trains (loss falls), writes its run directory, and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import train_smoke as train


def weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture
def full_run(smoke_run):
    return smoke_run


def test_smoke_run_learns_and_writes_its_run_directory(full_run):
    records = [json.loads(line) for line in (full_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert records[-1]["train/nll"] < records[0]["train/nll"] - 1.0
    last = records[-1]
    for d in ("eng_Latn-fra_Latn", "fra_Latn-eng_Latn", "deu_Latn-eng_Latn", "eng_Latn-deu_Latn"):
        assert f"train/loss/{d}" in last
        assert last[f"sampling/target/{d}"] == pytest.approx(0.25)
        assert abs(last[f"sampling/realised/{d}"] - 0.25) < 0.1
    assert last["tokens_per_s"] > 0 and last["lr"] > 0
    valid = [json.loads(line) for line in (full_run / "valid_log.jsonl").read_text().splitlines()]
    assert [v["step"] for v in valid] == [30, 60]
    assert "valid/loss/eng_Latn-fra_Latn" in valid[-1]
    assert (full_run / "config.yaml").read_text().count("max_steps: 60") == 1
    assert (full_run / "checkpoints" / "last.pt").is_file() and (full_run / "checkpoints" / "best.pt").is_file()
    assert list((full_run / "tb").glob("events.out.tfevents.*"))
    assert (full_run / "spm.model").is_file()


def test_resume_continues_exactly_from_the_checkpoint(prepared_corpus, full_run, tmp_path):
    run_dir = tmp_path / "resumed"
    train(prepared_corpus, run_dir, "trainer.max_steps=30")
    first = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert first[-1]["step"] == 30
    proc = train(prepared_corpus, run_dir, "trainer.resume=true")
    assert "resumed from" in proc.stdout and "at step 30" in proc.stdout
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    # The interrupted + resumed run ends bit-identical to the uninterrupted one.
    a, b = weights(full_run / "checkpoints" / "last.pt"), weights(run_dir / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten(prepared_corpus, full_run):
    before = (full_run / "checkpoints" / "last.pt").read_bytes()
    summary = (full_run / "summary.json").read_bytes()
    # the same command again (trainer.resume=auto): the run is complete, nothing changes
    proc = train(prepared_corpus, full_run)
    assert "resuming it (trainer.resume=auto)" in proc.stdout and "is complete" in proc.stdout
    # another config: refused, naming the difference
    proc = train(prepared_corpus, full_run, "optim.lr=0.01", check=False)
    assert proc.returncode == 2
    assert "optim.lr" in proc.stderr and "trainer.resume=true" in proc.stderr and "Traceback" not in proc.stderr
    assert (full_run / "checkpoints" / "last.pt").read_bytes() == before
    assert (full_run / "summary.json").read_bytes() == summary


def test_sigterm_saves_stops_and_the_same_command_resumes_exactly(prepared_corpus, full_run, tmp_path):
    """TERM (or USR1/USR2, what Slurm and submitit send before a limit) mid-run: the step ends, last.pt
    is saved, the process exits 0 without summary.json; the same command then continues the run
    (trainer.resume=auto) and ends bit-identical to the uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, SMOKE

    run = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "nmt.train", *SMOKE, f"data.corpus={prepared_corpus}", f"hydra.run.dir={run}",
           "trainer.log_interval=1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = run / "train_log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 12):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "SIGTERM received: saving at step" in out
    stopped_at = json.loads((run / "checkpoints" / "last.json").read_text())["step"]
    assert 12 <= stopped_at < 60 and not (run / "summary.json").exists()
    proc = train(prepared_corpus, run, "trainer.log_interval=1")
    assert f"at step {stopped_at}" in proc.stdout
    a, b = weights(full_run / "checkpoints" / "last.pt"), weights(run / "checkpoints" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("override, key", [
    ("sampling.temperature=0", "sampling.temperature"),
    ("optim.warmup_steps=1000", "optim.warmup_steps"),
    ("model.heads=3", "model.heads"),
    ("model.dropout=-0.1", "model.dropout"),
    ("model.moe.encoder_freq=2", "model.moe.experts"),
    ("model.moe.experts=4 model.moe.top_k=3", "model.moe.top_k"),
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("data.directions=[eng_Latn-spa_Latn]", "data.directions"),
    ("data.directions=[en-xx_Latn]", "xx_Latn"),
    ("data.corpus=/nonexistent", "data.corpus"),
])
def test_bad_config_values_exit_2_naming_the_key(prepared_corpus, tmp_path, override, key):
    proc = train(prepared_corpus, tmp_path / "run", *override.split(), check=False)
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_run_without_validation_still_writes_best(prepared_corpus, tmp_path):
    run_dir = tmp_path / "novalid"
    train(prepared_corpus, run_dir, "data.valid_directions=[none]", "trainer.max_steps=12")
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    assert not (run_dir / "valid_log.jsonl").exists()


def test_sigkilled_run_resumes_bit_identically(prepared_corpus, full_run, tmp_path):
    """Kill a real training process with SIGKILL at random steps (possibly mid-checkpoint) three
    times, resume each time; the final weights equal the uninterrupted run's bit for bit."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, SMOKE

    run = tmp_path / "killed"
    base = [sys.executable, "-m", "nmt.train", *SMOKE, f"data.corpus={prepared_corpus}", f"hydra.run.dir={run}",
            "trainer.save_interval=5", "trainer.keep_last=1"]
    manifest = run / "checkpoints" / "last.json"
    rng = random.Random(0)
    kills = 0
    for attempt in range(3):
        step = json.loads(manifest.read_text())["step"] if manifest.exists() else 0
        target = step + rng.randint(2, 12)
        proc = subprocess.Popen(base + (["trainer.resume=true"] if attempt else []), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if json.loads(manifest.read_text())["step"] >= target:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2
    train(prepared_corpus, run, "trainer.save_interval=5", "trainer.keep_last=1", "trainer.resume=true")
    a, b = weights(full_run / "checkpoints" / "last.pt"), weights(run / "checkpoints" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
