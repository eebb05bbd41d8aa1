"""What a run has done so far, and the non-tensor part of a checkpoint.

:class:`TrainState` holds the counters the loop changes (step, best validation loss, bad
updates, curriculum stage). :class:`ExtraState` is everything a checkpoint stores beside the
model and optimizer tensors; its keys are declared here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    step: int = 0  # updates done (skipped ones included)
    best_valid: float | None = None  # the selection loss of best.pt
    best_step: int | None = None
    skipped_updates: int = 0  # updates skipped for a non-finite loss or gradient, in total
    bad_in_a_row: int = 0  # consecutive skipped updates (not saved: a resumed run starts at 0)
    stage: int = 0  # curriculum stage (not saved: it follows from the step)

    SAVED = ("step", "best_valid", "best_step", "skipped_updates")

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.SAVED}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.best_valid = state.get("best_valid")
        self.best_step = state.get("best_step")
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self.bad_in_a_row = 0

    def record_update(self, skipped: bool) -> None:
        """Count one update (``skipped``: its loss or gradient was not finite)."""
        self.step += 1
        if skipped:
            self.bad_in_a_row += 1
            self.skipped_updates += 1
        else:
            self.bad_in_a_row = 0

    def improves(self, selection: float) -> bool:
        """Whether ``selection`` beats best.pt; if so it becomes the best (at this step)."""
        if self.best_valid is not None and selection >= self.best_valid:
            return False
        self.best_valid, self.best_step = selection, self.step
        return True


@dataclass
class ExtraState:
    """A checkpoint's non-tensor state: identical on every rank, except the RNG (one per rank)."""

    train: TrainState
    loader: dict[str, Any]
    rng_per_rank: list[dict[str, Any]]
    config: dict[str, Any]
    directions: list[str]
    languages: list[str] = field(default_factory=list)  # every language the model knows (inference reads it)
    tokenizer: dict[str, str] = field(default_factory=dict)  # path, sha256

    def state_dict(self) -> dict[str, Any]:
        return {**self.train.state_dict(), "loader": self.loader, "rng": self.rng_per_rank[0],
                "rng_per_rank": self.rng_per_rank, "world_size": len(self.rng_per_rank),
                "config": self.config, "directions": list(self.directions), "languages": list(self.languages),
                "tokenizer": dict(self.tokenizer)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ExtraState:
        """Read back :meth:`state_dict` (older checkpoints: one ``rng`` and no ``rng_per_rank``)."""
        train = TrainState()
        train.load_state_dict(state)
        return cls(train=train, loader=state["loader"], rng_per_rank=state.get("rng_per_rank") or [state["rng"]],
                   config=state.get("config", {}), directions=list(state.get("directions", [])),
                   languages=list(state.get("languages", [])), tokenizer=dict(state.get("tokenizer", {})))

