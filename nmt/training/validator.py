"""Validation: when it runs, the loss per direction, and whether it makes a new best.pt."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from nmt.errors import UserError
from nmt.langs import parse_direction
from nmt.training.aux_stats import (
    AuxMeter,
    expert_load_table,
    plot_expert_load,
    validation_record,
)
from nmt.training.train_state import TrainState

# forward(batch, n_directions) -> (loss, loss output with nll/tokens per direction, aux statistics)
Forward = Callable[[Any, int], tuple[torch.Tensor, Any, dict[str, Any]]]


def check_best_by(best_by: list[str], valid_directions: list[str]) -> list[str]:
    """``trainer.best_by`` normalised (``src-tgt``); UserError for a direction that is not validated."""
    names = ["-".join(parse_direction(d, where="trainer.best_by")) for d in best_by]
    outside = [d for d in names if d not in valid_directions]
    if outside:
        raise UserError(f"config key trainer.best_by names {', '.join(outside)}, which is not validated "
                        f"(validation directions: {', '.join(valid_directions) or 'none'})")
    return names


class Validator:
    def __init__(self, data: Any, directions: list[str], best_by: list[str], interval: int,
                 max_sentences: int | None, batches: Callable[..., Iterable[Any]],
                 forward: Forward, model: torch.nn.Module, plots_dir: Path) -> None:
        """``best_by``: checked by :func:`check_best_by`; ``batches(data, max_per_direction=...)``
        iterates a split; ``forward`` is the trainer's model call."""
        self.data, self.directions, self.best_by, self.interval = data, directions, best_by, interval
        self.max_sentences = max_sentences
        self.batches, self.forward, self.model, self.plots_dir = batches, forward, model, plots_dir

    @property
    def enabled(self) -> bool:
        return self.data is not None

    def due(self, step: int, final: bool) -> bool:
        return self.enabled and (step % self.interval == 0 or final)

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, Any]:
        record = self.split_loss(self.data, self.directions, "valid", step, self.max_sentences)
        record["valid/ppl"] = math.exp(min(record["valid/loss"], 50.0))
        return record

    @torch.no_grad()
    def split_loss(self, data: Any, directions: list[str], prefix: str, step: int,
                   limit: int | None = None) -> dict[str, Any]:
        """Token-level NLL on ``data`` overall and per direction (``<prefix>/loss[/<direction>]``),
        plus MoE statistics by direction when the model reports them."""
        self.model.eval()
        nll, tok = torch.zeros(len(directions)), torch.zeros(len(directions))
        aux_by_direction: dict[str, AuxMeter] = {}
        for batch in self.batches(data, max_per_direction=limit):
            _, out, aux = self.forward(batch, len(directions))
            nll += out.nll_per_direction.cpu()
            tok += out.tokens_per_direction.cpu()
            if aux:  # every validation batch holds one direction
                aux_by_direction.setdefault(directions[int(batch.direction[0])], AuxMeter()).add(aux)
        record: dict[str, Any] = validation_record(aux_by_direction) if prefix == "valid" else {}
        loads = expert_load_table(aux_by_direction)
        if loads and prefix == "valid":
            plot_expert_load(loads, self.plots_dir / f"expert_load_step{step}.png",
                             f"expert load by layer and language pair, step {step}")
        for d, name in enumerate(directions):
            if tok[d] > 0:
                record[f"{prefix}/loss/{name}"] = float(nll[d] / tok[d])
        record[f"{prefix}/loss"] = float(nll.sum() / tok.sum().clamp(min=1))
        return record

    def selection_loss(self, record: dict[str, Any]) -> float:
        """The validation loss that picks best.pt: over ``trainer.best_by`` directions, or all."""
        if not self.best_by:
            return record["valid/loss"]
        return sum(record[f"valid/loss/{d}"] for d in self.best_by) / len(self.best_by)

    def checkpoint_names(self, record: dict[str, Any], state: TrainState, save_interval: int) -> list[str]:
        """The checkpoints to write after validating: last, best when it improved, step_N on the interval."""
        names = ["last"]
        if state.improves(self.selection_loss(record)):
            names.append("best")
        if save_interval and state.step % save_interval == 0:
            names.append(f"step_{state.step}")
        return names
