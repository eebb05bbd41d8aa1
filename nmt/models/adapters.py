"""Language adapters (Bapna & Firat 2019) and hyper-adapters (Baziotis et al. 2022).

Both apply a bottleneck adapter to the output of every encoder and decoder layer::

    y = x + W_up · relu(W_down · LN(x) + b_down) + b_up

* :class:`LanguageAdapters` (one per layer) holds one adapter per key: the source language in the
  encoder and the target language in the decoder by default (``src`` | ``tgt`` | ``pair`` per
  side). Keys are the languages / directions of the training data, fixed when the model is built
  (``model.adapters.languages`` / ``pairs``, filled in by the trainer and saved with the run).
  ``W_up`` and ``b_up`` start at zero, so a fresh adapter is the identity.
* :class:`HyperNetwork` (one per model) generates every layer's adapter from
  ``[E_src(s); E_tgt(t); E_layer(l)]`` (an input switched off for a side is zeroed, not
  removed): a linear projection to ``d_h``, ReLU and dropout, ``K`` pre-LN residual MLP blocks of
  width ``d_h``, and linear heads for ``W_down``, ``b_down``, ``W_up``, ``b_up`` (optionally the
  adapter LayerNorm's ``γ = 1 + γ̂`` and ``β``). Every generated tensor is divided by
  ``sqrt(d_h)`` (the paper's rescaling fix; ``hyper_rescale=false`` for the ablation). Layer ids
  are distinct across the stack: encoder layer i is i, decoder layer i is ``L_enc + i``.
  Adapters are generated once per batch, so every batch must hold one direction.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.langs import FLORES200, all_tag_tokens
from nmt.models.dropout import dropout
from nmt.models.ffn import BatchContext

N_LANGS = len(all_tag_tokens())  # language index = tag slot: Flores-200, then the spare slots (added languages)


def _key_table(keys: list[str], key_by: str) -> Tensor:
    """Lookup from Flores indices to adapter slots (-1: no adapter for that language / pair)."""
    if key_by == "pair":
        table = torch.full((N_LANGS, N_LANGS), -1, dtype=torch.long)
        for slot, pair in enumerate(keys):
            s, t = pair.split("-")
            table[FLORES200.index(s), FLORES200.index(t)] = slot
        return table
    table = torch.full((N_LANGS,), -1, dtype=torch.long)
    for slot, lang in enumerate(keys):
        table[FLORES200.index(lang)] = slot
    return table


def _slots(table: Tensor, key_by: str, ctx: BatchContext) -> Tensor:
    if ctx.src_lang is None or ctx.tgt_lang is None:
        raise ValueError("language adapters need the batch's src_lang and tgt_lang")
    if key_by == "pair":
        slots = table[ctx.src_lang, ctx.tgt_lang]
    else:
        slots = table[ctx.src_lang if key_by == "src" else ctx.tgt_lang]
    if bool((slots < 0).any()):
        raise ValueError(f"no {key_by} adapter for a language of this batch: the model was built for "
                         f"other languages (model.adapters.languages / pairs)")
    return slots


class AdapterParams(NamedTuple):
    """One generated bottleneck adapter (for the batch's single direction), as :func:`bottleneck` takes it."""

    w_down: Tensor  # [d_model, size]
    b_down: Tensor  # [size]
    w_up: Tensor  # [size, d_model]
    b_up: Tensor  # [d_model]
    ln_scale: Tensor | None  # [d_model]: the adapter LayerNorm's γ = 1 + γ̂ (None: not generated, γ = 1)
    ln_shift: Tensor | None  # [d_model]: its β (None: not generated, β = 0)


def bottleneck(x: Tensor, w_down: Tensor, b_down: Tensor, w_up: Tensor, b_up: Tensor,
               ln_scale: Tensor | None = None, ln_shift: Tensor | None = None) -> Tensor:
    """``x + up(relu(down(LN(x))))`` with per-row parameters (leading dim B) or shared ones."""
    h = F.layer_norm(x, x.shape[-1:])
    if ln_scale is not None:
        h = h * (ln_scale if ln_scale.dim() == 1 else ln_scale[:, None, :])
    if ln_shift is not None:
        h = h + (ln_shift if ln_shift.dim() == 1 else ln_shift[:, None, :])
    if w_down.dim() == 2:
        return x + F.linear(F.relu(F.linear(h, w_down.t(), b_down)), w_up.t(), b_up)
    z = F.relu(torch.bmm(h, w_down) + b_down[:, None, :])
    return x + torch.bmm(z, w_up) + b_up[:, None, :]


class LanguageAdapters(nn.Module):
    """One layer's adapters, one per key."""

    table: Tensor  # buffer: Flores index (or index pair) -> adapter slot

    def __init__(self, d_model: int, size: int, keys: list[str], key_by: str, ln_affine: bool = True):
        super().__init__()
        if not keys:
            raise ValueError("language adapters need at least one key (model.adapters.languages / pairs)")
        self.key_by = key_by
        k = len(keys)
        self.register_buffer("table", _key_table(keys, key_by), persistent=False)
        self.w_down = nn.Parameter(torch.empty(k, d_model, size))
        self.b_down = nn.Parameter(torch.zeros(k, size))
        self.w_up = nn.Parameter(torch.zeros(k, size, d_model))
        self.b_up = nn.Parameter(torch.zeros(k, d_model))
        self.ln_w = nn.Parameter(torch.ones(k, d_model)) if ln_affine else None
        self.ln_b = nn.Parameter(torch.zeros(k, d_model)) if ln_affine else None
        bound = math.sqrt(6.0 / (d_model + size))
        nn.init.uniform_(self.w_down, -bound, bound)

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        slots = _slots(self.table, self.key_by, ctx)
        # one direction: shared 2-D weights; several: per-row 3-D weights
        at: int | Tensor = int(slots[0]) if bool((slots == slots[0]).all()) else slots
        return bottleneck(x, self.w_down[at], self.b_down[at], self.w_up[at], self.b_up[at],
                          None if self.ln_w is None else self.ln_w[at], None if self.ln_b is None else self.ln_b[at])


class GeneratedAdapter(nn.Module):
    """Applies the adapter that the model's hyper-network generated for this layer (``ctx.generated``)."""

    def __init__(self, layer_id: int):
        super().__init__()
        self.layer_id = layer_id

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        if ctx.generated is None:
            raise ValueError("hyper-adapter layer called without generated adapters")
        p: AdapterParams = ctx.generated[self.layer_id]
        return bottleneck(x, p.w_down, p.b_down, p.w_up, p.b_up, p.ln_scale, p.ln_shift)


class ResidualMLP(nn.Module):
    """A pre-LN residual block of the hyper-network: ``h + fc2(relu(fc1(LN(h))))``."""

    def __init__(self, width: int):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.fc2(F.relu(self.fc1(self.ln(h))))


class HyperNetwork(nn.Module):
    table: Tensor  # buffer: Flores index -> language embedding row

    def __init__(self, d_model: int, size: int, languages: list[str], n_layers: int, *, hidden: int = 128,
                 embed_dim: int = 64, blocks: int = 2, dropout: float = 0.0,
                 encoder_inputs: tuple[str, ...] = ("src", "tgt", "layer"),
                 decoder_inputs: tuple[str, ...] = ("src", "tgt", "layer"),
                 generate_ln: bool = False, rescale: bool = True):
        super().__init__()
        if not languages:
            raise ValueError("hyper-adapters need the language list (model.adapters.languages)")
        self.d, self.size, self.hidden, self.rescale, self.dropout = d_model, size, hidden, rescale, dropout
        self.register_buffer("table", _key_table(languages, "src"), persistent=False)
        self.src_embed = nn.Embedding(len(languages), embed_dim)
        self.tgt_embed = nn.Embedding(len(languages), embed_dim)
        self.layer_embed = nn.Embedding(n_layers, embed_dim)
        self.masks = {"encoder": [n in encoder_inputs for n in ("src", "tgt", "layer")],
                      "decoder": [n in decoder_inputs for n in ("src", "tgt", "layer")]}
        self.input = nn.Linear(3 * embed_dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLP(hidden) for _ in range(blocks))
        shapes = {"w_down": d_model * size, "b_down": size, "w_up": size * d_model, "b_up": d_model}
        if generate_ln:
            shapes.update({"ln_w": d_model, "ln_b": d_model})
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in shapes.items()})

    def forward(self, src_lang: Tensor | None, tgt_lang: Tensor | None, layer_ids: list[int],
                side: str) -> dict[int, AdapterParams]:
        """Adapters for ``layer_ids`` of ``side`` for the batch's (single) direction."""
        if src_lang is None or tgt_lang is None:
            raise ValueError("hyper-adapters need the batch's src_lang and tgt_lang")
        if bool((src_lang != src_lang[0]).any() or (tgt_lang != tgt_lang[0]).any()):
            raise ValueError("hyper-adapters need one direction per batch: set data.one_direction_per_batch=true")
        s, t = self.table[src_lang[:1]], self.table[tgt_lang[:1]]
        if bool((s < 0).any() or (t < 0).any()):
            raise ValueError("no hyper-adapter embedding for a language of this batch (model.adapters.languages)")
        n = len(layer_ids)
        ids = torch.tensor(layer_ids, device=src_lang.device)
        parts = [self.src_embed(s).expand(n, -1), self.tgt_embed(t).expand(n, -1), self.layer_embed(ids)]
        on = self.masks[side]
        z = torch.cat([p if on[i] else torch.zeros_like(p) for i, p in enumerate(parts)], dim=-1)
        h = dropout(F.relu(self.input(z)), self.dropout, self.training)
        for block in self.blocks:
            h = block(h)
        scale = 1.0 / math.sqrt(self.hidden) if self.rescale else 1.0
        out = {name: head(h) * scale for name, head in self.heads.items()}
        gen = {}
        for j, lid in enumerate(layer_ids):
            gen[lid] = AdapterParams(
                w_down=out["w_down"][j].view(self.d, self.size), b_down=out["b_down"][j],
                w_up=out["w_up"][j].view(self.size, self.d), b_up=out["b_up"][j],
                ln_scale=1.0 + out["ln_w"][j] if "ln_w" in out else None,
                ln_shift=out["ln_b"][j] if "ln_b" in out else None)
        return gen
