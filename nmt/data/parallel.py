"""Binarized parallel data and batch collation (re-exported by ``nmt.data.loader``).

* :class:`ParallelData` opens ``<corpus>/bin/<split>/<a>-<b>.<lang>.{bin,idx}`` for a list of
  directions and skips (and counts) examples longer than the position limits.
* :func:`collate` builds a :class:`Batch` in the NLLB layout (see docs/architecture.md).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt.errors import UserError
from nmt.langs import FLORES200, parse_direction

PAD, EOS = 0, 3
TAG_OFFSET = 4  # id of __ace_Arab__; the tag of Flores code c is TAG_OFFSET + FLORES200.index(c)


@dataclass
class Batch:
    """One batch, right-padded with id 0. B sentences, S source and T target positions.

    ``src_tokens`` [B,S] ``__src__ x </s>``; ``prev_output_tokens`` [B,T] ``</s> __tgt__ y``;
    ``target`` [B,T] ``<pad> y </s>`` (the tag position is pad so the loss ignores it);
    ``src_lang`` / ``tgt_lang`` [B] Flores-200 indices; ``direction`` [B] index into the
    loader's ``directions``; ``index`` [B] example index in the binarized pair file.
    ``n_src_tokens``: non-pad source tokens; ``n_tgt_tokens``: non-pad target tokens (the
    ones the loss counts: y and eos).
    """

    src_tokens: torch.Tensor
    prev_output_tokens: torch.Tensor
    target: torch.Tensor
    src_lang: torch.Tensor
    tgt_lang: torch.Tensor
    direction: torch.Tensor
    index: torch.Tensor
    n_src_tokens: int
    n_tgt_tokens: int

    def __len__(self) -> int:
        return int(self.src_tokens.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor moved to ``device``."""
        moved: dict[str, Any] = {  # tensors and ints
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**moved)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(
    src: Sequence[np.ndarray],
    tgt: Sequence[np.ndarray],
    src_lang: Sequence[int],
    tgt_lang: Sequence[int],
    direction: Sequence[int] | np.ndarray,
    index: Sequence[int] | None = None,
    pad_to_multiple: int = 1,
) -> Batch:
    """Add tags and eos to the raw sentence-piece ids ``src[i]`` / ``tgt[i]`` and pad.

    ``src_lang`` / ``tgt_lang`` are Flores-200 indices (tag id = 4 + index). Widths are rounded
    up to ``pad_to_multiple`` (e.g. 8 for tensor cores).
    """
    b = len(src)
    if not (len(tgt) == len(src_lang) == len(tgt_lang) == len(direction) == b) or b == 0:
        raise ValueError("collate needs equally long, non-empty src/tgt/src_lang/tgt_lang/direction")
    s_len = np.fromiter((len(x) for x in src), dtype=np.int64, count=b)
    t_len = np.fromiter((len(y) for y in tgt), dtype=np.int64, count=b)
    width_s = _round_up(int(s_len.max()) + 2, pad_to_multiple)
    width_t = _round_up(int(t_len.max()) + 2, pad_to_multiple)
    src_tokens = np.full((b, width_s), PAD, dtype=np.int64)
    prev = np.full((b, width_t), PAD, dtype=np.int64)
    target = np.full((b, width_t), PAD, dtype=np.int64)
    for i in range(b):
        x, y, n, m = src[i], tgt[i], int(s_len[i]), int(t_len[i])
        src_tokens[i, 0] = TAG_OFFSET + int(src_lang[i])
        src_tokens[i, 1 : n + 1] = x
        src_tokens[i, n + 1] = EOS
        prev[i, 0] = EOS
        prev[i, 1] = TAG_OFFSET + int(tgt_lang[i])
        prev[i, 2 : m + 2] = y
        target[i, 1 : m + 1] = y
        target[i, m + 1] = EOS
    idx = np.full(b, -1, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    return Batch(
        src_tokens=torch.from_numpy(src_tokens),
        prev_output_tokens=torch.from_numpy(prev),
        target=torch.from_numpy(target),
        src_lang=torch.as_tensor(np.asarray(src_lang, dtype=np.int64)),
        tgt_lang=torch.as_tensor(np.asarray(tgt_lang, dtype=np.int64)),
        direction=torch.as_tensor(np.asarray(direction, dtype=np.int64)),
        index=torch.from_numpy(idx),
        n_src_tokens=int((s_len + 2).sum()),
        n_tgt_tokens=int((t_len + 1).sum()),
    )


def _pair_prefix(bin_dir: Path, src: str, tgt: str) -> Path:
    """``bin_dir/<a>-<b>`` holding both sides of ``src``-``tgt``, in either order."""
    for a, b in ((src, tgt), (tgt, src)):
        prefix = bin_dir / f"{a}-{b}"
        if all(Path(f"{prefix}.{lang}.{ext}").is_file() for lang in (src, tgt) for ext in ("bin", "idx")):
            return prefix
    a, b = sorted((src, tgt))
    prefix = bin_dir / f"{a}-{b}"
    missing = [f"{prefix}.{lang}.{ext}" for lang in (a, b) for ext in ("bin", "idx")]
    missing = [f for f in missing if not Path(f).is_file()]
    raise UserError(
        f"no binarized data for direction {src}-{tgt}: missing {', '.join(missing)}; run "
        f"`python -m data_prep.binarize` for the corpus {bin_dir.parent.parent} (it writes bin/<split>/)"
    )


def _check_positions(value: int | None, key: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 3):
        raise UserError(f"{key} must be an integer >= 3 (tag + eos + one token) or null, got {value!r}")


class ParallelData:
    """Per-direction access to binarized pairs, with over-long examples filtered out.

    ``datasets[direction] = (src_ds, tgt_ds)``, each with the IndexedDataset interface
    (``len``, ``sizes``, ``ds[i]``). Lengths count the added tokens (``len(x) + 2``); an example
    whose source exceeds ``max_source_positions`` or target exceeds ``max_target_positions`` is
    skipped (never truncated) and counted in ``filtered``. Use :meth:`open` for files on disk.
    """

    def __init__(
        self,
        directions: Sequence[str],
        datasets: Mapping[str, tuple[Any, Any]],
        *,
        max_source_positions: int | None = None,
        max_target_positions: int | None = None,
        subsample: Mapping[str, int] | None = None,
        subsample_seed: int = 0,
    ) -> None:
        _check_positions(max_source_positions, "model.max_positions (max_source_positions)")
        subsample = {"-".join(parse_direction(k, where="data.subsample")): int(n) for k, n in (subsample or {}).items()}
        unknown = sorted(set(subsample) - set(_canonical_directions(directions)))
        if unknown:
            raise UserError(f"config key data.subsample names {', '.join(unknown)}, which is not among the "
                            f"directions of this split ({', '.join(_canonical_directions(directions))})")
        _check_positions(max_target_positions, "model.max_positions (max_target_positions)")
        self.directions: list[str] = _canonical_directions(directions)
        self.langs: list[tuple[int, int]] = []
        self.filtered: dict[str, dict[str, int]] = {}
        self._ds: list[tuple[Any, Any]] = []
        self._kept: list[np.ndarray] = []
        self._src_len: list[np.ndarray] = []
        self._tgt_len: list[np.ndarray] = []
        for given, d in zip(directions, self.directions, strict=True):
            src_ds, tgt_ds = datasets[d] if d in datasets else datasets[given]
            if len(src_ds) != len(tgt_ds):
                raise UserError(
                    f"direction {d}: the two sides have {len(src_ds)} and {len(tgt_ds)} lines; "
                    "re-run data_prep.binarize for this pair"
                )
            s_len = np.asarray(src_ds.sizes, dtype=np.int64) + 2
            t_len = np.asarray(tgt_ds.sizes, dtype=np.int64) + 2
            too_src = s_len > max_source_positions if max_source_positions else np.zeros(len(s_len), bool)
            too_tgt = t_len > max_target_positions if max_target_positions else np.zeros(len(t_len), bool)
            keep = np.flatnonzero(~(too_src | too_tgt)).astype(np.int64)
            self.filtered[d] = {
                "total": len(s_len), "kept": len(keep), "skipped": len(s_len) - len(keep),
                "source_too_long": int(too_src.sum()), "target_too_long": int(too_tgt.sum()),
            }
            if d in subsample:
                keep = _subsample(keep, subsample[d], d, subsample_seed)
                self.filtered[d]["kept"] = len(keep)
            s, t = d.split("-")
            self.langs.append((FLORES200.index(s), FLORES200.index(t)))
            self._ds.append((src_ds, tgt_ds))
            self._kept.append(keep)
            self._src_len.append(s_len[keep])
            self._tgt_len.append(t_len[keep])

    @classmethod
    def open(
        cls,
        corpus: str | Path,
        split: str,
        directions: Sequence[str],
        *,
        max_source_positions: int | None = None,
        max_target_positions: int | None = None,
        opener: Callable[[str], Any] | None = None,
        subsample: Mapping[str, int] | None = None,
        subsample_seed: int = 0,
    ) -> ParallelData:
        """Open ``<corpus>/bin/<split>/`` (``opener`` defaults to IndexedDataset)."""
        if opener is None:
            from nmt.data.indexed import IndexedDataset  # lazy: only needed with real files

            opener = IndexedDataset
        bin_dir = Path(corpus) / "bin" / split
        if not bin_dir.is_dir():
            raise UserError(
                f"{bin_dir} does not exist: run `python -m data_prep.binarize` for the corpus {corpus} "
                f"(split {split!r})"
            )
        opened: dict[str, Any] = {}  # one dataset per file prefix: a-b and b-a share it

        def side(prefix: Path, lang: str) -> Any:
            key = f"{prefix}.{lang}"
            if key not in opened:
                opened[key] = opener(key)
            return opened[key]

        datasets = {}
        for d in _canonical_directions(directions):
            s, t = d.split("-")
            prefix = _pair_prefix(bin_dir, s, t)
            datasets[d] = (side(prefix, s), side(prefix, t))
        return cls(
            list(datasets), datasets,
            max_source_positions=max_source_positions, max_target_positions=max_target_positions,
            subsample=subsample, subsample_seed=subsample_seed,
        )

    def sizes(self) -> dict[str, int]:
        """Kept examples per direction (what the sampling probabilities should be based on)."""
        return {d: len(k) for d, k in zip(self.directions, self._kept, strict=True)}

    def lengths(self, direction: int) -> tuple[np.ndarray, np.ndarray]:
        """(src_len, tgt_len) of the kept examples of direction id ``direction``, tokens added."""
        return self._src_len[direction], self._tgt_len[direction]

    def kept(self, direction: int) -> np.ndarray:
        """Indices (in the pair files) of the kept examples of direction id ``direction``."""
        return self._kept[direction]

    def collate(self, direction: np.ndarray, local: np.ndarray, pad_to_multiple: int = 1) -> Batch:
        """Batch of kept examples ``local[i]`` (index among kept) of direction ids ``direction[i]``."""
        src, tgt, index = [], [], []
        for d, j in zip(direction.tolist(), local.tolist(), strict=True):
            i = int(self._kept[d][j])
            src_ds, tgt_ds = self._ds[d]
            src.append(src_ds[i])
            tgt.append(tgt_ds[i])
            index.append(i)
        langs = [self.langs[d] for d in direction.tolist()]
        return collate(
            src, tgt, [s for s, _ in langs], [t for _, t in langs], direction, index, pad_to_multiple
        )


def _subsample(keep: np.ndarray, n: int, direction: str, seed: int) -> np.ndarray:
    """The first ``n`` of a permutation of ``keep`` keyed on (seed, direction), in file order."""
    if n > len(keep):
        raise UserError(f"config key data.subsample asks for {n} pairs of {direction} but only {len(keep)} are "
                        f"usable (after the length filter); ask for at most {len(keep)}")
    key = np.random.SeedSequence([int(seed), zlib.crc32(direction.encode())])
    order = np.random.default_rng(key).permutation(len(keep))
    return np.sort(keep[order[:n]])


def _canonical_directions(directions: Sequence[str]) -> list[str]:
    out: list[str] = []
    for d in directions:
        s, t = parse_direction(d, where="data.directions")
        if s == t:
            raise UserError(f"data.directions: {d!r} translates a language into itself")
        name = f"{s}-{t}"
        if name in out:
            raise UserError(f"data.directions lists {name} twice")
        out.append(name)
    if not out:
        raise UserError("data.directions is empty: list at least one direction such as eng_Latn-fra_Latn")
    return out
