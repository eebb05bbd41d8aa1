"""Training statistics: summed over the micro-batches of an update, over ranks, then over the
updates of a log interval, and turned into the ``train_log.jsonl`` record.

One :class:`StepStats` is filled per update (:meth:`add_micro_batch`, then :meth:`all_reduce`);
the log window is another one that sums updates (:meth:`add_update`) until :meth:`record`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nmt.training.aux_stats import AuxMeter, to_record


@dataclass
class StepStats:
    n_directions: int
    tokens: int = 0  # target tokens
    objective: float = 0.0  # the value whose gradient is taken (loss + aux losses): checked for finiteness
    loss_sum: float = 0.0  # label-smoothed loss, summed over tokens
    nll_sum: float = 0.0
    nll_dir: torch.Tensor = field(init=False)
    tok_dir: torch.Tensor = field(init=False)
    gnorm: float = 0.0  # one update's gradient norm; in a window, the sum over its updates
    lr: float = 0.0
    aux: AuxMeter = field(default_factory=AuxMeter)
    skipped: int = 0  # updates skipped (non-finite): 0 or 1 for one update
    updates: int = 0  # updates summed in (a window); skipped ones are only counted in ``skipped``
    started: float = field(default_factory=time.perf_counter)  # a window's start, for tokens/s

    def __post_init__(self) -> None:
        self.nll_dir = torch.zeros(self.n_directions)
        self.tok_dir = torch.zeros(self.n_directions)

    def add_micro_batch(self, out: Any, aux: dict[str, Any], objective: float) -> None:
        """One micro-batch: ``out`` is the loss output (ntokens, loss, nll and per-direction sums)."""
        self.aux.add(aux)
        self.objective += objective
        self.tokens += out.ntokens
        self.loss_sum += float(out.loss.detach())
        self.nll_sum += float(out.nll)
        self.nll_dir += out.nll_per_direction.cpu()
        self.tok_dir += out.tokens_per_direction.cpu()

    def all_reduce(self, all_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Totals over all ranks in one small all-reduce (``all_sum``: nmt.training.parallel.all_sum)."""
        n = self.n_directions
        totals = all_sum(torch.cat([torch.tensor([self.tokens, self.objective, self.loss_sum, self.nll_sum],
                                                 dtype=torch.float64), self.nll_dir.double(), self.tok_dir.double()]))
        self.tokens = int(totals[0])
        self.objective, self.loss_sum, self.nll_sum = (float(x) for x in totals[1:4])
        self.nll_dir, self.tok_dir = totals[4:4 + n].float(), totals[4 + n:].float()

    def finite(self) -> bool:
        return math.isfinite(self.objective) and math.isfinite(self.gnorm)

    def add_update(self, s: StepStats) -> None:
        """Sum one update into this window; a skipped update's loss is not finite: only counted."""
        self.lr = s.lr
        if s.skipped:
            self.skipped += 1
            return
        self.updates += 1
        self.tokens += s.tokens
        self.loss_sum += s.loss_sum
        self.nll_sum += s.nll_sum
        self.nll_dir += s.nll_dir
        self.tok_dir += s.tok_dir
        self.gnorm += s.gnorm
        self.aux.merge(s.aux)

    def record(self, step: int, elapsed: float, directions: list[str],
               context: dict[str, Any] | None = None) -> dict[str, Any]:
        """The log record of this window (``elapsed`` seconds); ``context`` (curriculum, sampling)
        goes before the aux statistics."""
        tokens = max(self.tokens, 1)
        record: dict[str, Any] = {
            "step": step,
            "train/loss": self.loss_sum / tokens,
            "train/nll": self.nll_sum / tokens,
            "train/ppl": math.exp(min(self.nll_sum / tokens, 50.0)),
            "lr": self.lr,
            "gnorm": self.gnorm / max(self.updates, 1),
            "skipped_updates": self.skipped,
            "tokens_per_s": self.tokens / max(elapsed, 1e-9),
        }
        for d, name in enumerate(directions):
            if self.tok_dir[d] > 0:
                record[f"train/loss/{name}"] = float(self.nll_dir[d] / self.tok_dir[d])
        record.update(context or {})
        record.update(to_record(self.aux.means()))
        return record
