"""The trainer on 2 CPU ranks (torchrun, gloo): DDP equals one process accumulating the same
batches, FSDP2 follows DDP, MoE experts are expert-parallel, and sharded checkpoints resume at
another world size (2 → 1 and 1 → 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, SMOKE, train_smoke
from nmt.training.sharded import load_model_tensors

pytestmark = pytest.mark.slow

# No dropout: dropout streams differ by rank. fp32 for exact arithmetic semantics.
COMMON = ["model.dropout=0.0", "trainer.max_steps=6", "optim.warmup_steps=2", "trainer.valid_interval=3",
          "trainer.log_interval=1", "trainer.precision=fp32"]
MOE = ["model.moe.experts=4", "model.moe.encoder_freq=1", "model.moe.decoder_freq=1", "model.moe.top_k=2"]
# Summation order differs (gradients summed over ranks vs accumulated in one process): fp32 noise,
# amplified a little by Adam's normalisation over 6 updates.
ATOL = 2e-5


def torchrun(corpus: Path, run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "nmt.train",
           *SMOKE, f"data.corpus={corpus}", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def weights(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    ckpt = run_dir / "checkpoints"
    if (ckpt / f"{name}.dcp").is_dir():
        return load_model_tensors(ckpt / f"{name}.dcp")
    return torch.load(ckpt / f"{name}.pt", weights_only=True)["model"]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < ATOL, f"largest difference {worst}"


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["train/loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_two_ranks_equal_one_process_accumulating_the_same_batches(prepared_corpus, tmp_path, kind):
    extra = MOE if kind == "moe" else []
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train_smoke(prepared_corpus, single, *COMMON, *extra, "trainer.update_freq=2")
    proc = torchrun(prepared_corpus, ddp, *COMMON, *extra)
    assert "2 rank(s) (torchrun, trainer.parallel=ddp)" in proc.stdout
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2
    assert (ddp / "checkpoints" / "last.dcp").is_dir() and not (ddp / "checkpoints" / "last.pt").exists()
    assert_close(weights(single), weights(ddp))
    assert losses(single) == pytest.approx(losses(ddp), rel=1e-5)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_fsdp_follows_ddp(prepared_corpus, tmp_path, kind):
    """FSDP2 shards the dense parameters; MoE experts stay expert-parallel outside FSDP."""
    extra = MOE if kind == "moe" else []
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    torchrun(prepared_corpus, ddp, *COMMON, *extra)
    torchrun(prepared_corpus, fsdp, *COMMON, *extra, "trainer.parallel=fsdp")
    assert losses(ddp) == pytest.approx(losses(fsdp), rel=1e-5)
    assert_close(weights(ddp), weights(fsdp))


def test_sharded_checkpoints_resume_at_another_world_size(prepared_corpus, tmp_path):
    """MoE model (experts sharded over ranks): 2 ranks → 1 process, and 1 process → 2 ranks,
    each resumed at step 3 of 6, equal the uninterrupted single-process run."""
    full = tmp_path / "full"
    train_smoke(prepared_corpus, full, *COMMON, *MOE, "trainer.update_freq=2")
    # 2 → 1
    two_one = tmp_path / "two_one"
    torchrun(prepared_corpus, two_one, *COMMON, *MOE, "trainer.max_steps=3")
    manifest = json.loads((two_one / "checkpoints" / "last.dcp" / "nmt_manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["step"] == 3
    proc = train_smoke(prepared_corpus, two_one, *COMMON, *MOE, "trainer.update_freq=2", "trainer.resume=true",
                       "trainer.checkpoint_format=dcp")
    assert "resumed from" in proc.stdout and "at step 3" in proc.stdout
    assert_close(weights(full), weights(two_one))
    # 1 → 2
    one_two = tmp_path / "one_two"
    train_smoke(prepared_corpus, one_two, *COMMON, *MOE, "trainer.update_freq=2", "trainer.max_steps=3",
                "trainer.checkpoint_format=dcp")
    proc = torchrun(prepared_corpus, one_two, *COMMON, *MOE, "trainer.resume=true")
    assert "at step 3" in proc.stdout
    assert_close(weights(full), weights(one_two))


def test_accumulation_steps_do_not_all_reduce():
    script = Path(__file__).parent / "distributed" / "grad_sync_count.py"
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
                           str(script)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("OK") == 2
