"""Training and validation loaders over :class:`~nmt.data.parallel.ParallelData`.

Training data come in epochs. Epoch ``e``'s plan (which examples, how they are batched, the
batch order) is a pure function of the seed, ``e`` and the :class:`PlanSettings`
(:func:`build_epoch_plan`): per direction, ``epoch_counts`` examples are drawn uniformly (a
permutation prefix when the count fits, else whole permutations plus a prefix), everything is
batched by token budget, and the batch order is shuffled. With ``world_size`` W, rank r takes
batches r, r+W, r+2W, ... and the last ``len(batches) % W`` batches are dropped, so every rank
has the same number of steps per epoch.

Resume: ``state_dict()`` is {epoch, batch_in_epoch, seed, settings, realised counts}; loading it
into a loader with the same settings makes the next batch exactly the one an uninterrupted run
would have produced. A different world size resumes at the same global position
(``global_batch``, the batches of the epoch all ranks drew), so W ranks × update_freq u and
W' ranks × u' with W·u = W'·u' see the same batches (within an epoch: its dropped tail depends
on W). When a plan-shaping setting differs (seed, directions, probabilities, max_tokens,
max_sentences, epoch_size, one_direction_per_batch, or the filtered data sizes) the loader
warns, naming the settings, and continues at the start of the next epoch with the new settings
(at the saved epoch itself when it had not started): no half-epoch is replayed under a
different plan. For curriculum runs call ``set_directions`` for the resumed
stage BEFORE ``load_state_dict``.

``Batch``, ``collate`` and ``ParallelData`` live in ``nmt.data.parallel``, the epoch plan in
``nmt.data.epoch_plan``; both are re-exported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from nmt.data.batching import Examples, batch_by_tokens, check_budget
from nmt.data.epoch_plan import EpochPlan, PlanSettings, Pool, build_epoch_plan
from nmt.data.parallel import Batch, ParallelData, collate
from nmt.errors import UserError
from nmt.langs import parse_direction

__all__ = [
    "Batch", "collate", "ParallelData", "PlanSettings", "Pool", "EpochPlan", "build_epoch_plan",
    "TrainLoader", "ValidLoader", "valid_batches",
]
STATE_FORMAT = 1


def _check_int(value: object, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UserError(f"{key} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_rank(rank: int, world_size: int) -> None:
    _check_int(world_size, "world_size", 1)
    if _check_int(rank, "rank", 0) >= world_size:
        raise UserError(f"rank {rank} is not below world_size {world_size}")


class TrainLoader:
    """Infinite iterator of training :class:`Batch` es for one data-parallel rank.

    ``probs`` maps each active direction (a subset of ``data.directions``) to its sampling
    probability (e.g. from :func:`nmt.data.sampling.direction_probs`); ``Batch.direction``
    indexes ``data.directions``, stable across :meth:`set_directions`. Examples whose
    max(src_len, tgt_len) exceeds ``max_tokens`` cannot fit a batch: they are skipped, counted
    in ``skipped_over_max_tokens`` and reported with a warning.
    """

    def __init__(
        self,
        data: ParallelData,
        probs: Mapping[str, float],
        *,
        max_tokens: int,
        max_sentences: int | None = None,
        seed: int = 0,
        epoch_size: int | None = None,
        one_direction_per_batch: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pad_to_multiple: int = 1,
    ) -> None:
        check_budget(max_tokens, max_sentences)
        _check_rank(rank, world_size)
        if epoch_size is not None:
            _check_int(epoch_size, "data.epoch_size", 1)
        self.data = data
        self.directions = list(data.directions)
        self.seed = _check_int(seed, "seed", 0)
        self.rank, self.world_size = int(rank), int(world_size)
        self.max_tokens, self.max_sentences = int(max_tokens), max_sentences
        self.epoch_size, self.one_direction_per_batch = epoch_size, bool(one_direction_per_batch)
        self.pad_to_multiple = pad_to_multiple
        self.pools: dict[str, Pool] = {}
        self.skipped_over_max_tokens: dict[str, int] = {}
        for i, d in enumerate(self.directions):
            s_len, t_len = data.lengths(i)
            ok = np.flatnonzero(np.maximum(s_len, t_len) <= self.max_tokens).astype(np.int64)
            self.pools[d] = Pool(i, ok, s_len[ok], t_len[ok])
            self.skipped_over_max_tokens[d] = len(s_len) - len(ok)
        skipped = {d: n for d, n in self.skipped_over_max_tokens.items() if n}
        if skipped:
            warnings.warn(
                f"skipping examples longer than data.max_tokens={max_tokens}: {skipped}; set "
                "model.max_positions (max_source/target_positions) <= data.max_tokens to filter them "
                "up front", stacklevel=2,
            )
        self.epoch = 0
        self.batch_in_epoch = 0
        self._plan: EpochPlan | None = None
        self._set_active(probs)

    # -- directions and settings -------------------------------------------------------------
    def _set_active(self, probs: Mapping[str, float]) -> None:
        given = {}
        for d, p in probs.items():
            s, t = parse_direction(d, where="sampling probabilities")
            name = f"{s}-{t}"
            if name not in self.pools:
                raise UserError(f"direction {name} is not in data.directions ({', '.join(self.directions)})")
            if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not (
                math.isfinite(float(p)) and float(p) >= 0
            ):
                raise UserError(f"sampling probability of {name} must be a finite number >= 0, got {p!r}")
            if p > 0 and len(self.pools[name].local) == 0:
                raise UserError(f"direction {name} has no usable examples; remove it or relax the length limits")
            given[name] = float(p)
        total = sum(given.values())
        if not given or total <= 0:
            raise UserError("no active direction has a positive sampling probability")
        active = tuple(d for d in self.directions if d in given)  # canonical (data) order
        self.active = active
        self.probs = {d: given[d] / total for d in active}
        self._sent = np.zeros(len(self.directions), dtype=np.int64)
        self._tok = np.zeros(len(self.directions), dtype=np.int64)

    def set_directions(self, directions: Sequence[str], probs: Mapping[str, float]) -> None:
        """Switch the active directions (curriculum stage). A fresh epoch plan starts (the
        current epoch number is kept when no batch of it was drawn yet); realised counts restart.
        """
        names = {"-".join(parse_direction(d, where="curriculum directions")) for d in directions}
        keys = {"-".join(parse_direction(d, where="sampling probabilities")) for d in probs}
        if names != keys:
            raise UserError(
                f"set_directions: the probabilities cover {sorted(keys)} but the directions are {sorted(names)}"
            )
        self._set_active(probs)
        if self.batch_in_epoch > 0:
            self.epoch += 1
        self.batch_in_epoch = 0
        self._plan = None

    @property
    def settings(self) -> PlanSettings:
        return PlanSettings(
            directions=self.active,
            probs=tuple(self.probs[d] for d in self.active),
            sizes=tuple(len(self.pools[d].local) for d in self.active),
            max_tokens=self.max_tokens,
            max_sentences=self.max_sentences,
            world_size=self.world_size,
            epoch_size=self.epoch_size,
            one_direction_per_batch=self.one_direction_per_batch,
        )

    # -- iteration ---------------------------------------------------------------------------
    def plan(self) -> EpochPlan:
        """The plan of the current epoch (built on first use, then cached)."""
        if self._plan is None or self._plan.epoch != self.epoch:
            self._plan = build_epoch_plan(self.seed, self.epoch, self.settings, self.pools)
        return self._plan

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        plan = self.plan()
        while self.batch_in_epoch >= plan.steps:  # only after a hand-edited state
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            plan = self.plan()
        step = plan.step_batches(self.batch_in_epoch)
        ex = plan.examples
        # Realised counts cover every rank's batch of this step: identical on all ranks.
        everything = np.concatenate(step)
        dirs = ex.direction[everything]
        n = len(self.directions)
        self._sent += np.bincount(dirs, minlength=n)
        self._tok += np.bincount(dirs, weights=ex.tgt_len[everything] - 1, minlength=n).astype(np.int64)
        mine = step[self.rank]
        self.batch_in_epoch += 1
        if self.batch_in_epoch == plan.steps:
            self.epoch += 1
            self.batch_in_epoch = 0
        return self.data.collate(ex.direction[mine], ex.index[mine], self.pad_to_multiple)

    def realised(self, unit: str = "sentences") -> dict[str, float]:
        """Fraction of drawn ``sentences`` (or target ``tokens``) per active direction, over all
        ranks, since construction or the last change of directions/probabilities."""
        if unit not in ("sentences", "tokens"):
            raise ValueError("unit must be 'sentences' or 'tokens'")
        counts = self._sent if unit == "sentences" else self._tok
        total = int(counts.sum())
        ids = [self.pools[d].direction_id for d in self.active]
        return {d: (int(counts[i]) / total if total else 0.0) for d, i in zip(self.active, ids, strict=True)}

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Small JSON-able state; rank-independent (any rank's state resumes every rank)."""
        ids = [(d, self.pools[d].direction_id) for d in self.active]
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_batch": self.batch_in_epoch * self.world_size,  # batches of this epoch drawn by all ranks
            "seed": self.seed,
            "settings": self.settings.to_json(),
            "realised": {
                "sentences": {d: int(self._sent[i]) for d, i in ids},
                "tokens": {d: int(self._tok[i]) for d, i in ids},
            },
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a ``state_dict``; see the module docstring for what happens on changes."""
        try:
            if state["format"] != STATE_FORMAT:
                raise ValueError(f"format {state['format']!r}")
            epoch, batch = int(state["epoch"]), int(state["batch_in_epoch"])
            saved, seed, realised = state["settings"], int(state["seed"]), state["realised"]
            sent, tok = dict(realised["sentences"]), dict(realised["tokens"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"the data loader state in the checkpoint is not understood ({e})") from None
        changed = self.settings.changed(saved)
        if seed != self.seed:
            changed.insert(0, "seed")
        self._plan = None
        self._sent[:] = 0
        self._tok[:] = 0
        if changed:
            self.epoch = epoch + 1 if batch > 0 else epoch
            self.batch_in_epoch = 0
            warnings.warn(
                f"data loader settings changed since the checkpoint ({', '.join(changed)}): not "
                f"resuming mid-epoch; continuing at the start of epoch {self.epoch} with the new settings",
                stacklevel=2,
            )
            if "directions" in changed or "probs" in changed:
                return  # realised counts restart with the new probabilities
        else:
            saved_world = int(saved.get("world_size", self.world_size))
            if saved_world != self.world_size:  # the same global position, in steps of this world size
                drawn = int(state.get("global_batch", batch * saved_world))
                batch = -(-drawn // self.world_size)
                if drawn % self.world_size:
                    warnings.warn(f"the checkpoint stopped after {drawn} batches of epoch {epoch} on "
                                  f"{saved_world} ranks; with {self.world_size} ranks training continues at "
                                  f"batch {batch * self.world_size}", stacklevel=2)
            self.epoch, self.batch_in_epoch = epoch, batch
        for d in self.active:
            i = self.pools[d].direction_id
            self._sent[i], self._tok[i] = int(sent.get(d, 0)), int(tok.get(d, 0))


class ValidLoader:
    """Deterministic pass over a split: per direction (in ``data.directions`` order), examples
    sorted by length and packed by token budget, no sampling, nothing skipped (an example
    longer than ``max_tokens`` gets a batch of its own). Every batch holds one direction.
    Rank r of W takes batches r, r+W, ...: ranks may get different numbers of batches.
    ``max_per_direction`` keeps only the first N examples of each direction (a fixed subset).
    """

    def __init__(
        self,
        data: ParallelData,
        *,
        max_tokens: int,
        max_sentences: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad_to_multiple: int = 1,
        max_per_direction: int | None = None,
    ) -> None:
        check_budget(max_tokens, max_sentences)
        _check_rank(rank, world_size)
        self.data, self.pad_to_multiple = data, pad_to_multiple
        self.directions = list(data.directions)
        self._batches: list[tuple[int, np.ndarray]] = []
        for i in range(len(self.directions)):
            s_len, t_len = data.lengths(i)
            n = len(s_len) if max_per_direction is None else min(len(s_len), max_per_direction)
            local = np.arange(n, dtype=np.int64)
            ex = Examples(np.full(n, i, dtype=np.int64), local, s_len[:n], t_len[:n])
            self._batches += [(i, b) for b in batch_by_tokens(ex, max_tokens, max_sentences)]
        self._batches = self._batches[rank::world_size]

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[Batch]:
        for d, local in self._batches:
            yield self.data.collate(np.full(len(local), d, dtype=np.int64), local, self.pad_to_multiple)


def valid_batches(data: ParallelData, max_tokens: int, max_sentences: int | None = None, *,
                  rank: int = 0, world_size: int = 1, max_per_direction: int | None = None) -> Iterator[Batch]:
    """One deterministic pass over ``data`` (see :class:`ValidLoader`)."""
    return iter(ValidLoader(data, max_tokens=max_tokens, max_sentences=max_sentences, rank=rank,
                            world_size=world_size, max_per_direction=max_per_direction))
