"""One logging set-up for the entry points: modules log with ``logging.getLogger(__name__)``.

:func:`setup_logging` is called once by an entry point (``nmt.train``, ``nmt.export``, ...). Under
Hydra (``nmt.train``), Hydra has already attached its console and ``<job>.log`` handlers to the
root logger (``console=False``); elsewhere a plain ``message`` handler on stdout is added. Either way every handler
gets a :class:`RankFilter`: with several ranks only rank 0 logs information, the others log
warnings and errors only (with their rank in front), so a torchrun log is not N copies.
"""

from __future__ import annotations

import logging
import sys


class RankFilter(logging.Filter):
    """Let rank 0 through; on other ranks keep warnings and errors only, marked with the rank."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank == 0:
            return True
        if record.levelno < logging.WARNING:
            return False
        if not str(record.msg).startswith("[rank "):
            record.msg = f"[rank {self.rank}] {record.msg}"
        return True


class _LevelPrefix(logging.Formatter):
    """``message`` for information, ``warning: message`` / ``error: message`` above it."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


class _Console(logging.StreamHandler):
    """A handler on whatever ``sys.stdout`` is when a record is written (a redirection, a capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(_LevelPrefix("%(message)s"))

    @property
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def setup_logging(rank: int = 0, console: bool = True) -> None:
    """Configure the root logger for this process; idempotent. ``console=False`` where another
    set-up (Hydra's) already writes to the console: only the rank filter is added."""
    root = logging.getLogger()
    if console and not any(isinstance(h, _Console) for h in root.handlers):
        root.addHandler(_Console())
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, RankFilter)]:
            handler.removeFilter(old)
        handler.addFilter(RankFilter(rank))
