"""Why a run stops, decided once per update with one all-reduce over the ranks.

Conditions local to a rank but not necessarily equal on all of them (the wall clock, a signal
that reached some ranks first) are summed over ranks in ONE small all-reduce per update, so that
every rank stops at the same step. The others (step count, consecutive bad updates) are the same
on every rank by construction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import torch

from nmt.errors import UserError
from nmt.training.train_state import TrainState

log = logging.getLogger(__name__)


class StopReason(Enum):
    MAX_STEPS = "max_steps"
    MAX_TIME = "max_time_minutes"
    PREEMPTED = "preempted"  # USR1/USR2/TERM: save last, requeue, exit
    BAD_UPDATES = "max_bad_updates"  # too many non-finite updates in a row: stop without saving


class StopPolicy:
    """``poll`` after each update: the reason to stop now, or None to go on."""

    def __init__(self, max_steps: int, max_time_minutes: float, max_bad_updates: int,
                 all_sum: Callable[[torch.Tensor], torch.Tensor], signal: Callable[[], str | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_steps, self.max_time_minutes, self.max_bad_updates = max_steps, max_time_minutes, max_bad_updates
        self.all_sum, self.signal, self.clock = all_sum, signal, clock
        self.deadline = clock() + max_time_minutes * 60 if max_time_minutes > 0 else float("inf")

    def poll(self, state: TrainState) -> StopReason | None:
        out_of_time, signalled = self.all_sum(torch.tensor(
            [float(self.clock() >= self.deadline), float(self.signal() is not None)])).tolist()
        if state.bad_in_a_row >= self.max_bad_updates:
            return StopReason.BAD_UPDATES
        if signalled:
            log.info(f"{self.signal() or 'a signal'} received: saving at step {state.step}, then stopping")
            return StopReason.PREEMPTED
        if state.step >= self.max_steps:
            return StopReason.MAX_STEPS
        if out_of_time:
            log.info(f"trainer.max_time_minutes={self.max_time_minutes} reached at step {state.step}: stopping")
            return StopReason.MAX_TIME
        return None

    def bad_updates_error(self, state: TrainState, ckpt_dir: Path) -> UserError:
        limit = self.max_bad_updates
        return UserError(
            f"{limit} consecutive updates had a non-finite loss or gradient (trainer.max_bad_updates={limit}), "
            f"the last at step {state.step}; stopping without saving. The last good checkpoint is kept in "
            f"{ckpt_dir}; lower optim.lr, set optim.clip_norm, or use trainer.precision=fp32, "
            f"then resume with trainer.resume=true")
