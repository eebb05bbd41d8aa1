"""Decoder state for incremental decoding: per layer, attention keys and values already computed.

Shape suffixes (tensor names end with their shape, one letter per dimension):

* ``N``: rows of the decoder batch (sentences × beams in beam search),
* ``H``: attention heads,
* ``T``: target positions decoded so far (grows by one per step),
* ``S``: source positions (encoder output length, fixed),
* ``D``: channels per head.

Self-attention keys/values grow along ``T`` as positions are decoded; cross-attention
keys/values are projected from the encoder output once, on the first step, and only read after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LayerKV:
    """One decoder layer's keys and values: ``self_kv`` (``[N, H, T, D]`` each) and ``cross_kv``
    (``[N, H, S, D]`` each); None until the first decoding step fills them."""

    self_kv: tuple[Tensor, Tensor] | None = None
    cross_kv: tuple[Tensor, Tensor] | None = None

    def append_self(self, k_NHTD: Tensor, v_NHTD: Tensor) -> tuple[Tensor, Tensor]:
        """Adds the keys/values of the new positions; returns those of every position so far."""
        if self.self_kv is not None:
            old_k_NHTD, old_v_NHTD = self.self_kv
            if old_k_NHTD.shape[:2] != k_NHTD.shape[:2]:
                raise ValueError(f"cache rows/heads {tuple(old_k_NHTD.shape[:2])} do not match the new "
                                 f"keys' {tuple(k_NHTD.shape[:2])}: reorder the cache with the batch")
            k_NHTD = torch.cat([old_k_NHTD, k_NHTD], dim=2)
            v_NHTD = torch.cat([old_v_NHTD, v_NHTD], dim=2)
        self.self_kv = (k_NHTD, v_NHTD)
        return self.self_kv

    def reorder(self, rows_N: Tensor, cross: bool) -> None:
        """See :meth:`KVCache.reorder`."""
        if self.self_kv is not None:
            self.self_kv = _select(self.self_kv, rows_N)
        if cross and self.cross_kv is not None:
            self.cross_kv = _select(self.cross_kv, rows_N)


def _select(kv: tuple[Tensor, Tensor], rows_N: Tensor) -> tuple[Tensor, Tensor]:
    return kv[0].index_select(0, rows_N), kv[1].index_select(0, rows_N)


class KVCache:
    """The state of an incremental decode, one :class:`LayerKV` per decoder layer.

    Built empty by ``Transformer.new_cache()`` and filled by ``Transformer.decode``; the caller
    keeps its rows aligned with the decoder batch through :meth:`reorder`.
    """

    def __init__(self, n_layers: int):
        self.layers = [LayerKV() for _ in range(n_layers)]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer: int) -> LayerKV:
        return self.layers[layer]

    def reorder(self, rows_N: Tensor, *, cross: bool = True) -> None:
        """Row ``i`` of every cached tensor becomes old row ``rows_N[i]`` (``index_select`` on
        dim 0): beams reordered, rows of finished sentences dropped, rows repeated.

        ``cross=False`` leaves the cross-attention keys/values as they are: a caller that only
        moves rows among the beams of the same sentence (which share the source, hence their
        cross-attention keys/values) skips copying them every step.
        """
        for layer in self.layers:
            layer.reorder(rows_N, cross)
