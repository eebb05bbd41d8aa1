"""Load-balanced expert placement for expert-parallel inference (Huang et al., §expert load balancing).

Given one layer's per-expert load (assignments measured on a calibration set), experts go to W
ranks with an equal number of slots each, ``ceil((E + R) / W)`` with R replicas:

* training's placement (the baseline): contiguous blocks, rank r holds experts
  ``r·E/W … (r+1)·E/W - 1``;
* greedy largest-first (LPT): the R hottest experts get a second copy (a replica serves half its
  load), then every copy, heaviest first, goes to the least-loaded rank with a free slot (ties:
  the lowest rank) — never two copies of one expert on one rank.

A rank's load is the sum of the loads it serves; the figure of merit is max/mean rank load
(1.0: perfectly balanced). Training's placement is not changed by any of this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Placement:
    ranks: list[list[int]]  # expert ids on each rank
    rank_load: list[float]  # load each rank serves

    @property
    def imbalance(self) -> float:
        """max/mean rank load (1.0: balanced); 1.0 for no load at all."""
        mean = sum(self.rank_load) / len(self.rank_load)
        return max(self.rank_load) / mean if mean > 0 else 1.0


def contiguous(load: list[float], ranks: int) -> Placement:
    """Training's expert-parallel placement: equal contiguous blocks."""
    e = len(load)
    if e % ranks:
        raise ValueError(f"{e} experts do not split evenly over {ranks} ranks")
    per = e // ranks
    blocks = [list(range(r * per, (r + 1) * per)) for r in range(ranks)]
    return Placement(blocks, [sum(load[i] for i in b) for b in blocks])


def greedy(load: list[float], ranks: int, replicate: int = 0) -> Placement:
    """Largest-first onto the least-loaded rank with a free slot; the ``replicate`` hottest
    experts get two copies, each serving half their load."""
    e = len(load)
    if not 0 <= replicate <= e or (replicate and ranks < 2):
        raise ValueError(f"replicate={replicate}: use 0..{e} with at least 2 ranks")
    hottest = sorted(range(e), key=lambda i: (-load[i], i))[:replicate]
    copies = [(load[i] / (2 if i in hottest else 1), i) for i in range(e)] + [(load[i] / 2, i) for i in hottest]
    copies.sort(key=lambda c: (-c[0], c[1]))
    slots = math.ceil(len(copies) / ranks)
    held: list[list[int]] = [[] for _ in range(ranks)]
    rank_load = [0.0] * ranks
    for share, i in copies:
        free = [r for r in range(ranks) if len(held[r]) < slots and i not in held[r]]
        free = free or [r for r in range(ranks) if len(held[r]) < slots]  # only its own rank is left
        r = min(free, key=lambda r: (rank_load[r], r))
        held[r].append(i)
        rank_load[r] += share
    return Placement([sorted(h) for h in held], rank_load)


def place_layers(loads: dict[str, list[float]], ranks: int, replicate: int = 0) -> dict[str, dict]:
    """Before (contiguous) and after (greedy) for every layer: placements and max/mean rank load."""
    out = {}
    for name, load in loads.items():
        before, after = contiguous(load, ranks), greedy(load, ranks, replicate)
        out[name] = {"load": load, "before": {"ranks": before.ranks, "rank_load": before.rank_load,
                                              "max_over_mean": before.imbalance},
                     "after": {"ranks": after.ranks, "rank_load": after.rank_load,
                               "max_over_mean": after.imbalance}}
    return out
