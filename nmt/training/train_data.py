"""The data side of a run: the training stream (sampler, curriculum stage) and the validation split.

Every rank plans the same global batch stream and takes every world-th batch of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nmt.config import Config
from nmt.curriculum import check_stages, stage_at
from nmt.data.loader import ParallelData, TrainLoader
from nmt.data.sampling import probs_for_run
from nmt.errors import UserError
from nmt.langs import parse_direction
from nmt.training.train_state import TrainState

log = logging.getLogger(__name__)


class TrainData:
    def __init__(self, cfg: Config, corpus: Path, directions: list[str], valid_directions: list[str],
                 rank: int = 0, world: int = 1) -> None:
        self.cfg, self.directions, self.valid_directions, self.world = cfg, directions, valid_directions, world
        max_pos = cfg.model.max_positions
        self.train = ParallelData.open(corpus, "train", directions, max_source_positions=max_pos,
                                       max_target_positions=max_pos, subsample=dict(cfg.data.subsample),
                                       subsample_seed=cfg.data.subsample_seed)
        self.stages = check_stages(cfg.curriculum.stages, directions)
        self.probs = self.probs_for(self.stages[0][1] if self.stages else directions)
        d = cfg.data
        self.loader = TrainLoader(self.train, self.probs, max_tokens=d.max_tokens,
                                  max_sentences=d.max_sentences or None, seed=cfg.trainer.seed,
                                  one_direction_per_batch=d.one_direction_per_batch,
                                  epoch_size=d.epoch_size or None, rank=rank, world_size=world)
        self.valid = (ParallelData.open(corpus, "valid", valid_directions, max_source_positions=max_pos,
                                        max_target_positions=max_pos) if valid_directions else None)
        if self.valid is not None and sum(self.valid.sizes().values()) == 0:
            raise UserError(f"the valid split of {corpus} has no usable segments for {', '.join(valid_directions)}; "
                            f"import a valid split or train without validation (data.valid_directions=[none])")

    def probs_for(self, directions: list[str]) -> dict[str, float]:
        """Sampling probabilities over ``directions`` (a curriculum stage, or all of them)."""
        sizes = {d: n for d, n in self.train.sizes().items() if d in directions}
        weights = {k: v for k, v in self.cfg.sampling.weights.items() if "-".join(parse_direction(k)) in sizes}
        return probs_for_run(self.cfg, sizes, weights, self.train, self.world)

    def follow_curriculum(self, state: TrainState) -> None:
        """Enter the curriculum stage of ``state.step`` if it is not the current one."""
        if not self.stages or stage_at(self.stages, state.step) == state.stage:
            return
        state.stage = stage_at(self.stages, state.step)
        start, directions = self.stages[state.stage]
        self.probs = self.probs_for(directions)
        self.loader.set_directions(directions, self.probs)
        log.info(f"curriculum: stage {state.stage} from step {start}: {len(directions)} directions "
                 f"({', '.join(directions)})")

    def record(self, stage: int) -> dict[str, Any]:
        """Curriculum stage and target/realised sampling shares, for the training log."""
        record: dict[str, Any] = {}
        if self.stages:
            record["curriculum/stage"] = stage
            record["curriculum/active_directions"] = len(self.stages[stage][1])
        realised = self.loader.realised()
        for name in self.directions:
            record[f"sampling/target/{name}"] = self.probs.get(name, 0.0)
            record[f"sampling/realised/{name}"] = realised.get(name, 0.0)
        return record
