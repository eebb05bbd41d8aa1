"""Token-budget batching.

A batch's padded cost is ``n_sentences * max(max src_len, max tgt_len)``, where lengths count
the added tokens (``__src__ x </s>`` has ``len(x) + 2``; ``</s> __tgt__ y`` has ``len(y) + 2``).
Examples are sorted by their own cost length ``k = max(src_len, tgt_len)`` (equal lengths in a
random order when a generator is given) and packed greedily: a batch takes the next examples
while ``n * k_last <= max_tokens`` and ``n <= max_sentences``. Because the examples are
sorted, ``k_last`` is the batch's maximum, so the budget holds exactly.

Oversized examples (``k > max_tokens``) each get a batch of their own: the batcher never drops
data, so every example is in exactly one batch. The training loader skips (and counts) such
examples before batching, so in training no batch exceeds the budget.

With ``one_direction_per_batch`` the examples are grouped by direction first and batches never
mix directions (needed by per-direction adapters / hyper-adapters).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from nmt.errors import UserError


@dataclass(frozen=True)
class Examples:
    """Parallel arrays (one entry per example) that the batcher reads.

    ``direction``: direction id; ``index``: example index within its direction; ``src_len`` /
    ``tgt_len``: lengths including the added tag / eos tokens.
    """

    direction: np.ndarray
    index: np.ndarray
    src_len: np.ndarray
    tgt_len: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.direction)
        if not (len(self.index) == len(self.src_len) == len(self.tgt_len) == n):
            raise ValueError("Examples arrays must have the same length")

    def __len__(self) -> int:
        return len(self.direction)

    @property
    def cost_len(self) -> np.ndarray:
        """Per-example length that the batch cost uses: max(src_len, tgt_len)."""
        return np.maximum(self.src_len, self.tgt_len)

    def take(self, positions: np.ndarray) -> Examples:
        return Examples(
            self.direction[positions], self.index[positions], self.src_len[positions], self.tgt_len[positions]
        )

    @staticmethod
    def concat(parts: list[Examples]) -> Examples:
        if not parts:
            e = np.zeros(0, dtype=np.int64)
            return Examples(e, e, e, e)
        columns = ("direction", "index", "src_len", "tgt_len")
        return Examples(*(np.concatenate([getattr(p, f) for p in parts]) for f in columns))


def check_budget(max_tokens: int, max_sentences: int | None) -> None:
    """UserError unless ``max_tokens`` is a positive int and ``max_sentences`` None or positive."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens <= 0:
        raise UserError(f"data.max_tokens must be a positive integer, got {max_tokens!r}")
    if max_sentences is not None and (
        isinstance(max_sentences, bool) or not isinstance(max_sentences, (int, np.integer)) or max_sentences <= 0
    ):
        raise UserError(f"data.max_sentences must be a positive integer or null, got {max_sentences!r}")


def batch_cost(examples: Examples, positions: np.ndarray) -> int:
    """Padded cost of one batch: n_sentences * max(max src_len, max tgt_len)."""
    if len(positions) == 0:
        return 0
    return int(len(positions) * examples.cost_len[positions].max())


def _pack_sorted(keys: np.ndarray, max_tokens: int, max_sentences: int | None) -> np.ndarray:
    """Batch start offsets (plus the end) for ascending ``keys``, packed greedily.

    For a batch starting at ``s`` the cost of ending at ``e`` is ``(e - s + 1) * keys[e]``,
    non-decreasing in ``e``, so the end is found by ``searchsorted`` on a window that grows
    geometrically: one vectorised step per batch, never one Python step per example.
    """
    n = len(keys)
    limit = n if max_sentences is None else int(max_sentences)
    bounds = [0]
    s = 0
    while s < n:
        k = max(int(keys[s]), 1)
        cap = min(limit, n - s, max_tokens // k)
        if cap <= 1:
            s += 1  # a single example (possibly oversized) per batch
            bounds.append(s)
            continue
        w = min(cap, 64)
        while True:
            cost = np.maximum(keys[s : s + w], 1) * np.arange(1, w + 1, dtype=np.int64)
            m = int(np.searchsorted(cost, max_tokens, side="right"))
            if m < w or w == cap:
                break
            w = min(cap, 4 * w)
        s += max(m, 1)
        bounds.append(s)
    return np.asarray(bounds, dtype=np.int64)


def batch_by_tokens(
    examples: Examples,
    max_tokens: int,
    max_sentences: int | None = None,
    *,
    one_direction_per_batch: bool = False,
    generator: torch.Generator | None = None,
) -> list[np.ndarray]:
    """Split ``examples`` into batches; each batch is an array of positions into ``examples``.

    Without ``generator`` the result is deterministic: examples in ascending length order
    (stable), batches in that order. With ``generator``, equal-length examples are ordered
    randomly and the batch order is shuffled, both drawn from ``generator`` only.
    """
    check_budget(max_tokens, max_sentences)
    n = len(examples)
    if n == 0:
        return []
    keys = examples.cost_len.astype(np.int64)
    if generator is not None:
        base = torch.randperm(n, generator=generator).numpy()
    else:
        base = np.arange(n, dtype=np.int64)
    if one_direction_per_batch:
        order = base[np.lexsort((keys[base], examples.direction[base]))]
        dirs = examples.direction[order]
        cuts = np.flatnonzero(np.diff(dirs)) + 1
        groups = np.concatenate([[0], cuts, [n]]).astype(np.int64)
    else:
        order = base[np.argsort(keys[base], kind="stable")]
        groups = np.array([0, n], dtype=np.int64)
    sorted_keys = keys[order]
    bounds = [np.array([0], dtype=np.int64)]
    for g0, g1 in itertools.pairwise(groups):
        b = _pack_sorted(sorted_keys[g0:g1], int(max_tokens), max_sentences)
        bounds.append(b[1:] + g0)
    offsets = np.concatenate(bounds)
    batches = np.split(order, offsets[1:-1])
    if generator is not None:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


def source_sequence(pieces: list[int], tag: int, eos: int, convention: str = "tag_first") -> list[int]:
    """Encoder input for one sentence: ``[tag] x </s>`` (``tag_first``: NLLB, Transformers' default)
    or ``x </s> [tag]`` (``legacy``: Transformers' ``legacy_behaviour=True``); see model.source_convention."""
    if convention == "tag_first":
        return [tag, *pieces, eos]
    if convention == "legacy":
        return [*pieces, eos, tag]
    raise UserError(f"model.source_convention={convention!r} is unknown; use tag_first or legacy")
