"""Checkpoints of a training run behind one object: save (``last``/``best``/``step_N``), keep the
newest ``keep_last`` step_N, pick the latest good one to resume from, restore the RNG.

The files themselves are written and verified by nmt/training/checkpoint.py (single ``.pt``
files with manifests) and nmt/training/sharded.py (``.dcp`` directories, one shard per rank).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from nmt.errors import UserError
from nmt.training import distributed
from nmt.training.checkpoint import (
    latest_good_checkpoint,
    load_checkpoint,
    manifest_path,
    save_checkpoint,
)
from nmt.training.sharded import is_sharded, load_sharded, read_extra, save_sharded
from nmt.training.train_state import ExtraState

log = logging.getLogger(__name__)


class CheckpointManager:
    def __init__(self, ckpt_dir: Path, *, sharded: bool, keep_last: int, model: torch.nn.Module,
                 wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0, world: int = 1,
                 device_type: str = "cpu", single_file_resumable: bool = True) -> None:
        """``model``: this rank's module; ``wrapped``: the same under DDP/FSDP (or ``model``).
        ``single_file_resumable``: whether a ``.pt`` checkpoint can resume this run (not on several
        ranks with MoE or FSDP: those need the sharded layout)."""
        self.dir, self.sharded, self.keep_last = Path(ckpt_dir), sharded, keep_last
        self.model, self.wrapped, self.optimizer = model, wrapped, optimizer
        self.rank, self.world, self.main = rank, world, rank == 0
        self.device_type, self.single_file_resumable = device_type, single_file_resumable

    # ------------------------------------------------------------ save
    def save(self, names: list[str], extra: ExtraState) -> None:
        """Write ``names`` (``last``, ``best``, ``step_N``): single files from rank 0, or sharded
        directories written by every rank (a collective call), then prune old step_N."""
        state = extra.state_dict()
        if self.sharded:
            for name in names:
                save_sharded(self.dir / f"{name}.dcp", self.wrapped, self.optimizer, state)
        elif self.main:
            state = {**state, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
            for name in names:  # each file written atomically on its own
                save_checkpoint(state, self.dir / f"{name}.pt")
        if self.main:
            self.prune()
        distributed.barrier()

    def prune(self) -> None:
        """Delete all but the newest ``keep_last`` step_N checkpoints (and their manifests)."""
        suffix = ".dcp" if self.sharded else ".pt"
        steps = sorted(self.dir.glob(f"step_*{suffix}"), key=lambda p: int(p.stem.split("_")[1]))
        for old in steps[: -self.keep_last]:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
                manifest_path(old).unlink(missing_ok=True)

    # ------------------------------------------------------------ resume
    def read_candidate(self, path: Path) -> dict[str, Any]:
        """A checkpoint's state (its non-tensor part for a sharded one), if this run can resume from it."""
        if is_sharded(path):
            return read_extra(path)
        state = load_checkpoint(path)
        if not self.single_file_resumable:
            raise UserError("a single-file checkpoint resumes on several ranks only with a dense model and "
                            "trainer.parallel=ddp; convert it by resuming it in one process with "
                            "trainer.checkpoint_format=dcp for a step")
        return state

    def load_latest(self) -> ExtraState | None:
        """Load the newest usable checkpoint's tensors into the model and optimizer and return its
        non-tensor state; None when there is none yet; UserError when none of several is usable."""
        chosen, state, problems = latest_good_checkpoint(self.dir, self.read_candidate)
        for problem in problems:
            log.warning(problem)
        if chosen is None or state is None:
            if problems:
                raise UserError(f"trainer.resume: no checkpoint in {self.dir} is usable; start a new run "
                                f"in another directory (hydra.run.dir=...)")
            log.info(f"trainer.resume=true but {self.dir} holds no checkpoint: starting from scratch")
            return None
        if problems:
            log.warning(f"resuming from the previous good checkpoint {chosen} instead")
        self._load_tensors(chosen, state)
        log.info(f"resumed from {chosen} at step {int(state['step'])}")
        return ExtraState.from_state_dict(state)

    def _load_tensors(self, chosen: Path, state: dict[str, Any]) -> None:
        if is_sharded(chosen):
            load_sharded(chosen, self.wrapped, self.optimizer)
            return
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(f"checkpoint {chosen} does not fit this config's model ({str(e).splitlines()[0][:160]}); "
                            f"resume with the config the run was started with") from None
        self.optimizer.load_state_dict(state["optimizer"])

    # ------------------------------------------------------------ RNG
    def gather_rng(self) -> list[dict[str, Any]]:
        """Every rank's RNG state (a collective call with several ranks)."""
        rng = {"torch": torch.get_rng_state(),
               **({"cuda": torch.cuda.get_rng_state()} if self.device_type == "cuda" else {})}
        per_rank: list[Any] = [rng]
        if self.world > 1:
            per_rank = [None] * self.world
            torch.distributed.all_gather_object(per_rank, rng)
        return per_rank

    def restore_rng(self, per_rank: list[dict[str, Any]], seed: int, step: int) -> None:
        """This rank's saved RNG; written by another number of ranks, ranks > 0 reseed instead."""
        if len(per_rank) == self.world:
            rng = per_rank[self.rank]
        elif self.rank == 0:
            rng = per_rank[0]
            log.info(f"note: the checkpoint was written by {len(per_rank)} rank(s), this run has {self.world}: "
                     f"ranks > 0 reseed their dropout streams")
        else:  # another world size: this rank's dropout stream starts afresh (deterministically)
            torch.manual_seed(seed + 1_000_003 * self.rank + step)
            return
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device_type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])

