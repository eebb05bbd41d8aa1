"""Run logs: one JSON object per line in ``train_log.jsonl`` and the same values in TensorBoard
(scalars as scalars; vectors such as per-expert load as one scalar per entry, or a histogram
beyond 32 entries)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "train_log.jsonl"
        self.valid_path = run_dir / "valid_log.jsonl"
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def _write(self, path: Path, record: dict[str, Any]) -> None:
        if not self.enabled or self._tb is None:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
            elif isinstance(value, list) and value:  # a vector statistic, e.g. per-expert load
                if len(value) <= 32:
                    for i, v in enumerate(value):
                        self._tb.add_scalar(f"{key}/{i}", v, step)
                else:
                    self._tb.add_histogram(key, torch.tensor(value), step)
        self._tb.flush()

    def train(self, record: dict[str, Any]) -> None:
        self._write(self.path, record)

    def valid(self, record: dict[str, Any]) -> None:
        self._write(self.valid_path, record)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
