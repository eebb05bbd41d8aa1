"""Progress of a training run: a tqdm bar on a terminal, periodic log lines elsewhere.

In a non-interactive run (stdout or stderr not a terminal: a Slurm log, ``make demo > log``) a
bar's carriage-return updates would pile up into one huge line, so progress is instead one log
line per logged window (every ``trainer.log_interval`` updates): step, loss, tokens/s, learning
rate and the estimated time left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)


def interactive() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


def format_duration(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    def __init__(self, max_steps: int, start_step: int, max_time_minutes: float, enabled: bool,
                 use_bar: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_steps, self.start_step, self.enabled = max_steps, start_step, enabled
        self.use_bar = interactive() if use_bar is None else use_bar
        self.clock, self.t0 = clock, clock()
        self.deadline = self.t0 + max_time_minutes * 60 if max_time_minutes > 0 else None
        desc = f"train (stops after {max_time_minutes:g} min)" if max_time_minutes > 0 else "train"
        # With a time limit the step count at the end is unknown: no total, so no misleading ETA.
        self.bar = tqdm(total=None if max_time_minutes > 0 else max_steps, initial=start_step,
                        disable=not (enabled and self.use_bar), desc=desc, dynamic_ncols=True)

    def update(self) -> None:
        self.bar.update(1)

    def eta(self, step: int) -> float | None:
        """Seconds left: from the pace since the start, capped by the time limit."""
        done = step - self.start_step
        if done <= 0:
            return None
        now = self.clock()
        left = (self.max_steps - step) * (now - self.t0) / done
        return min(left, self.deadline - now) if self.deadline is not None else left

    def report(self, record: dict[str, Any]) -> None:
        """A logged window's record (``step``, ``train/nll``, ``tokens_per_s``, ``lr``)."""
        if not self.enabled:
            return
        if self.use_bar:
            self.bar.set_postfix(loss=f"{record['train/nll']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            return
        step, eta = int(record["step"]), self.eta(int(record["step"]))
        log.info(f"step {step}/{self.max_steps}: loss {record['train/nll']:.3f}, {record['tokens_per_s']:.0f} tok/s, "
                 f"lr {record['lr']:.3g}, ETA {format_duration(eta) if eta is not None else '?'}")

    def write(self, message: str) -> None:
        """A message that must not break the bar."""
        if self.use_bar and self.enabled:
            self.bar.write(message)
        else:
            log.info(message)

    def close(self) -> None:
        self.bar.close()
