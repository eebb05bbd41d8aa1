"""resolve_device and the one logging set-up (rank filter)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from nmt.device import resolve_device
from nmt.errors import UserError
from nmt.logs import RankFilter


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="config key trainer.device=cuda .* use trainer.device=cpu or auto"):
            resolve_device("cuda", key="trainer.device")


def record(level, msg="m"):
    return logging.LogRecord("nmt.x", level, __file__, 1, msg, None, None)


def test_rank_filter():
    assert RankFilter(0).filter(record(logging.INFO))
    assert not RankFilter(1).filter(record(logging.INFO))
    warn = record(logging.WARNING, "disk full")
    assert RankFilter(1).filter(warn) and warn.getMessage() == "[rank 1] disk full"


SCRIPT = """
import logging
from nmt.logs import setup_logging
setup_logging({rank})
setup_logging({rank})  # idempotent
log = logging.getLogger("nmt.training.x")
log.info("hello")
log.warning("careful")
"""


@pytest.mark.parametrize("rank, expected", [(0, "hello\nwarning: careful\n"), (1, "warning: [rank 1] careful\n")])
def test_setup_logging_outside_hydra(rank, expected):
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(rank=rank)], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert proc.stdout == expected and proc.stderr == ""
