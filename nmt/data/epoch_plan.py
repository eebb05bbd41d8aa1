"""One epoch's training plan: which examples, how they are batched, in which order.

Epoch ``e``'s plan is a pure function of the seed, ``e`` and the :class:`PlanSettings`
(:func:`build_epoch_plan`): per direction, ``epoch_counts`` examples are drawn uniformly (a
permutation prefix when the count fits, else whole permutations plus a prefix), everything is
batched by token budget, and the batch order is shuffled. :class:`~nmt.data.loader.TrainLoader`
walks the plans; nothing here holds state across epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch

from nmt.data.batching import Examples, batch_by_tokens
from nmt.data.sampling import epoch_counts
from nmt.errors import UserError


@dataclass(frozen=True)
class PlanSettings:
    """Everything besides (seed, epoch) that shapes an epoch plan; saved in the loader state."""

    directions: tuple[str, ...]
    probs: tuple[float, ...]
    sizes: tuple[int, ...]  # usable examples per direction (after all filtering)
    max_tokens: int
    max_sentences: int | None
    world_size: int
    epoch_size: int | None
    one_direction_per_batch: bool

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def changed(self, saved: Mapping) -> list[str]:
        """Names of the settings that differ from ``saved`` (a ``to_json`` dict)."""
        out = []
        for key, value in self.to_json().items():
            if key == "world_size":  # positions are kept in global batches: a new world size resumes too
                continue
            old = saved.get(key)
            if key == "probs":
                same = isinstance(old, list) and len(old) == len(value) and all(
                    math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(old, value, strict=True)
                )
            else:
                same = old == value
            if not same:
                out.append(key)
        return out


@dataclass(frozen=True)
class Pool:
    """Usable examples of one direction: ``local`` indexes the direction's kept examples."""

    direction_id: int
    local: np.ndarray
    src_len: np.ndarray
    tgt_len: np.ndarray


@dataclass
class EpochPlan:
    """One epoch: ``batches`` (positions into ``examples``) in global order, tail dropped."""

    epoch: int
    examples: Examples  # direction = id in ParallelData.directions, index = local kept index
    batches: list[np.ndarray]
    counts: dict[str, int]
    world_size: int
    dropped_batches: int

    @property
    def steps(self) -> int:
        """Batches per rank."""
        return len(self.batches) // self.world_size

    def step_batches(self, step: int) -> list[np.ndarray]:
        """The ``world_size`` batches of one step; rank r gets element r."""
        w = self.world_size
        return self.batches[step * w : (step + 1) * w]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch.Generator keyed on (seed, epoch) only."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 32 | int(state[1])) >> 1)


def _draw(n: int, count: int, g: torch.Generator) -> np.ndarray:
    """``count`` indices in [0, n): a permutation prefix, or whole permutations plus a prefix."""
    reps, rem = divmod(count, n)
    parts = []
    if reps == 1:
        parts.append(torch.randperm(n, generator=g))
    elif reps > 1:  # one call for all whole permutations (rows of argsort of iid uniforms)
        parts.append(torch.argsort(torch.rand(reps, n, generator=g, dtype=torch.float64), dim=1).flatten())
    if rem:
        parts.append(torch.randperm(n, generator=g)[:rem])
    return torch.cat(parts).numpy() if parts else np.zeros(0, dtype=np.int64)


def build_epoch_plan(seed: int, epoch: int, settings: PlanSettings, pools: Mapping[str, Pool]) -> EpochPlan:
    """The plan of epoch ``epoch``: a pure function of its arguments."""
    g = epoch_generator(seed, epoch)
    sizes = dict(zip(settings.directions, settings.sizes, strict=True))
    counts = epoch_counts(dict(zip(settings.directions, settings.probs, strict=True)), sizes, settings.epoch_size, g)
    parts = []
    for d in settings.directions:
        pool, c = pools[d], counts[d]
        if c == 0:
            continue
        pick = _draw(len(pool.local), c, g)
        ids = np.full(c, pool.direction_id, dtype=np.int64)
        parts.append(Examples(ids, pool.local[pick], pool.src_len[pick], pool.tgt_len[pick]))
    examples = Examples.concat(parts)
    batches = batch_by_tokens(
        examples, settings.max_tokens, settings.max_sentences,
        one_direction_per_batch=settings.one_direction_per_batch, generator=g,
    )
    w = settings.world_size
    steps = len(batches) // w
    if steps == 0:
        raise UserError(
            f"an epoch has only {len(batches)} batches, fewer than world_size={w}: raise data.epoch_size "
            "or lower data.max_tokens"
        )
    return EpochPlan(epoch, examples, batches[: steps * w], counts, w, len(batches) - steps * w)
