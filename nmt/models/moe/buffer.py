"""Expert buffering (Huang et al., "Towards MoE Deployment"): at most K experts per layer in
the fast tier, the others fetched on demand from a slow tier.

Shape suffixes: R rows grouped by expert (``counts[e]`` rows for expert e), D model dim,
H expert hidden dim.

* :class:`BufferedExperts` replaces a layer's :class:`~nmt.models.moe.experts.Experts` at
  inference (same ``forward(x_RD, counts)``). Experts run one at a time, in expert order; an
  expert that is not resident is loaded first, evicting one when K are already resident.
  Each expert computes exactly what :class:`Experts` computes for its slice (``addmm``, the
  activation, ``addmm``), so the outputs are bit-identical to all experts resident.
* Eviction policy: ``lru`` evicts the least recently used expert; ``lifo`` evicts the expert
  loaded last (the paper's LIFO: a hit does not reorder the buffer).
* Slow tiers: :class:`SafetensorsTier` (an export's ``model.safetensors``: one expert's rows
  are read from the file per load, with ``preadv`` and no memory map, so the process holds only
  the resident experts) and :class:`TensorTier` (whole ``[E, ...]`` tensors
  already in memory: a .pt/.dcp checkpoint, or pinned CPU memory feeding a GPU, where a load is
  a non-blocking host→device copy; the GPU path is written but untested here: no GPU).
* :class:`BufferStats`: hits, loads (misses), evictions and bytes moved, per layer.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.config import BUFFER_POLICIES

PARAMS = ("w1", "b1", "w2", "b2")


@dataclass
class BufferStats:
    hits: int = 0
    loads: int = 0
    evictions: int = 0
    bytes_moved: int = 0

    def add(self, other: BufferStats) -> None:
        for k in ("hits", "loads", "evictions", "bytes_moved"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_dict(self) -> dict:
        uses = self.hits + self.loads
        return {"hits": self.hits, "loads": self.loads, "evictions": self.evictions,
                "bytes_moved": self.bytes_moved, "hit_rate": self.hits / uses if uses else None}


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class SafetensorsTier:
    """Experts of one layer read from a safetensors file (``prefix`` + w1/b1/w2/b2, ``[E, ...]``).

    A load reads one expert's rows with ``os.preadv`` into fresh tensors: the file is never
    memory-mapped, so the process holds only what the buffer keeps (safetensors' ``safe_open``
    returns tensors backed by the mapped file, whose touched pages stayed in the process's RSS
    after eviction: K = E/4 then held as much as K = E)."""

    def __init__(self, path: str | Path, prefix: str, device: torch.device):
        self.path, self.prefix, self.device = str(path), prefix, device
        with open(self.path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        self.rows = {n: _row_layout(header[prefix + n], 8 + size) for n in PARAMS}
        self.sizes = {n: int(header[prefix + n]["shape"][0]) for n in PARAMS}
        self.fd = os.open(self.path, os.O_RDONLY)

    def fetch(self, e: int) -> tuple[Tensor, ...]:
        out = []
        for n in PARAMS:
            dtype, shape, offset, nbytes = self.rows[n]
            t = torch.empty(shape, dtype=dtype)
            if os.preadv(self.fd, [_bytes_of(t)], offset + e * nbytes) != nbytes:
                raise OSError(f"{self.path}: short read of {self.prefix + n}[{e}]")
            out.append(t if self.device.type == "cpu" else t.to(self.device))
        return tuple(out)

    def whole(self, n: str) -> Tensor:
        """All experts' ``n`` (``[E, ...]``) in one read: an all-resident load with no second copy."""
        dtype, shape, offset, nbytes = self.rows[n]
        t = torch.empty(self.sizes[n], *shape, dtype=dtype)
        if os.preadv(self.fd, [_bytes_of(t)], offset) != t.numel() * t.element_size():
            raise OSError(f"{self.path}: short read of {self.prefix + n}")
        return t

    def __del__(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)


def _bytes_of(t: Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor (``preadv`` fills it in place)."""
    return t.reshape(-1).view(torch.uint8).numpy().data


def _row_layout(meta: dict, data_start: int) -> tuple[torch.dtype, list[int], int, int]:
    """(dtype, shape of one row, file offset of row 0, bytes per row) of a ``[E, ...]`` tensor."""
    begin, end = meta["data_offsets"]
    shape = meta["shape"]
    return SAFETENSORS_DTYPES[meta["dtype"]], shape[1:], data_start + begin, (end - begin) // shape[0]


class TensorTier:
    """Experts of one layer held as whole ``[E, ...]`` tensors (pinned when feeding a GPU)."""

    def __init__(self, tensors: dict[str, Tensor], device: torch.device):
        pin = device.type == "cuda"
        self.tensors = {n: (t.pin_memory() if pin else t) for n, t in tensors.items()}
        self.device = device

    def fetch(self, e: int) -> tuple[Tensor, ...]:
        if self.device.type == "cpu":  # a copy: the buffer owns what it holds, as on a GPU
            return tuple(self.tensors[n][e].clone() for n in PARAMS)
        return tuple(self.tensors[n][e].to(self.device, non_blocking=True) for n in PARAMS)


class BufferedExperts(nn.Module):
    """``forward(x_RD, counts)`` like :class:`Experts`, with at most ``resident`` experts held
    (one process holds every expert: no expert parallelism)."""

    world, group = 1, None  # what MoELayer reads of Experts

    def __init__(self, tier: SafetensorsTier | TensorTier, experts: int, resident: int, policy: str,
                 activation=F.relu):
        super().__init__()
        if policy not in BUFFER_POLICIES:
            raise ValueError(f"buffer policy {policy!r}: use one of {BUFFER_POLICIES}")
        self.tier, self.experts, self.resident, self.policy = tier, experts, resident, policy
        self.act = activation
        self.cache: OrderedDict[int, tuple[Tensor, ...]] = OrderedDict()
        self.stats = BufferStats()

    def _get(self, e: int) -> tuple[Tensor, ...]:
        if e in self.cache:
            self.stats.hits += 1
            if self.policy == "lru":
                self.cache.move_to_end(e)
            return self.cache[e]
        if len(self.cache) >= self.resident:
            self.cache.popitem(last=self.policy == "lifo")  # lru: the oldest use; lifo: the last loaded
            self.stats.evictions += 1
        weights = self.tier.fetch(e)
        self.stats.loads += 1
        self.stats.bytes_moved += sum(t.numel() * t.element_size() for t in weights)
        self.cache[e] = weights
        return weights

    def forward(self, x_RD: Tensor, counts: list[int]) -> Tensor:
        outs, start = [], 0
        for e, rows in enumerate(counts):
            if rows == 0:
                continue
            w1, b1, w2, b2 = self._get(e)
            h = torch.addmm(b1, x_RD[start:start + rows], w1)
            h = h.clamp_(min=0) if self.act is F.relu else self.act(h)
            outs.append(torch.addmm(b2, h, w2))
            start += rows
        return torch.cat(outs) if outs else x_RD.new_zeros((0, x_RD.shape[1]))

    def resident_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for ws in self.cache.values() for t in ws)
