"""``CountOps``: a dispatch mode that counts the ATen calls made inside it, per op (``mm``) and per
overload (``mm.default`` allocates its result, ``mm.out`` writes into a buffer), and records
the shape and dtype of every tensor each op returns."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.results: list[tuple[str, tuple[int, ...], torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = str(func.overloadpacket.__name__)
        self.ops[name] += 1
        self.ops[f"{name}.{func._overloadname}"] += 1
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.results.append((name, tuple(out.shape), out.dtype))
        return out
