"""Progress: a bar on a terminal, periodic log lines when stdout is a pipe or a file."""

from __future__ import annotations

import re

import pytest

from conftest import run_module
from nmt.training.progress import Progress, format_duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_eta_from_the_pace_and_capped_by_the_time_limit():
    clock = Clock()
    p = Progress(100, 20, 0.0, enabled=True, use_bar=False, clock=clock)
    assert p.eta(20) is None
    clock.now = 40.0
    assert p.eta(40) == pytest.approx(120.0)  # 20 steps in 40 s, 60 left
    limited = Progress(100, 0, 1.0, enabled=True, use_bar=False, clock=clock)
    clock.now += 10
    assert limited.eta(10) == pytest.approx(50.0)  # 900 s at this pace, but the limit is in 50 s


def test_duration_format():
    assert [format_duration(s) for s in (0, 59.6, 61, 3720)] == ["0s", "1m00s", "1m01s", "1h02m"]


def test_a_log_line_per_report_without_a_bar(caplog):
    caplog.set_level("INFO")
    clock = Clock()
    p = Progress(60, 0, 0.0, enabled=True, use_bar=False, clock=clock)
    clock.now = 30.0
    p.report({"step": 10, "train/nll": 3.14159, "tokens_per_s": 1234.4, "lr": 0.0003})
    p.write("step 10: valid loss 3.000 (best 3.000)")
    p.close()
    assert caplog.messages == ["step 10/60: loss 3.142, 1234 tok/s, lr 0.0003, ETA 2m30s",
                               "step 10: valid loss 3.000 (best 3.000)"]
    quiet = Progress(60, 0, 0.0, enabled=False, use_bar=False)
    quiet.report({"step": 10, "train/nll": 1.0, "tokens_per_s": 1.0, "lr": 1.0})
    assert len(caplog.messages) == 2


def test_a_run_with_stdout_to_a_pipe_writes_progress_lines_not_a_bar(prepared_corpus, tmp_path):
    proc = run_module("nmt.train", "+recipe=smoke", "trainer.progress=true", "trainer.precision=fp32",
                      "trainer.threads=1", "trainer.max_steps=20", f"data.corpus={prepared_corpus}",
                      f"hydra.run.dir={tmp_path / 'run'}")
    lines = [line for line in proc.stdout.splitlines() if re.search(r"step \d+/20: loss", line)]
    assert len(lines) == 2, proc.stdout[-3000:]
    for step, line in zip((10, 20), lines, strict=True):
        assert re.search(rf"step {step}/20: loss \d+\.\d{{3}}, \d+ tok/s, lr [0-9.e-]+, ETA (\d+m)?\d+s$", line), line
    assert "\r" not in proc.stdout + proc.stderr  # no carriage-return bar updates
    assert max(len(line) for line in (proc.stdout + proc.stderr).splitlines()) < 1000
