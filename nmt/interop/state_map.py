"""Tensor names and shapes: Transformers' M2M100 state dict ↔ ours (one table, both directions).

Attention: Transformers keeps ``q_proj``/``k_proj``/``v_proj`` apart; we fuse self-attention
into ``qkv_proj`` ([q; k; v] rows) and cross-attention keys/values into ``kv_proj``. The
shared embedding (= the tied output projection) is permuted by :mod:`nmt.interop.vocab_layout`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nmt.errors import UserError

# (ours, theirs) per layer, for tensors that map one to one (with .weight and .bias)
_ENC = (("self_attn_ln", "self_attn_layer_norm"), ("self_attn.out_proj", "self_attn.out_proj"),
        ("ffn_ln", "final_layer_norm"))
_DEC = _ENC + (("cross_attn_ln", "encoder_attn_layer_norm"), ("cross_attn.q_proj", "encoder_attn.q_proj"),
               ("cross_attn.out_proj", "encoder_attn.out_proj"))
_FUSED = {"self_attn.qkv_proj": ("self_attn", ("q_proj", "k_proj", "v_proj")),
          "cross_attn.kv_proj": ("encoder_attn", ("k_proj", "v_proj"))}
DENSE_FFN = (("ffn.fc1", "fc1"), ("ffn.fc2", "fc2"))


def _take(hf: dict[str, Tensor], key: str, where: str) -> Tensor:
    if key not in hf:
        raise UserError(f"{where} lacks the tensor {key}; the checkpoint is incomplete or of another architecture")
    return hf.pop(key)


def hf_to_ours(hf: dict[str, Tensor], enc_layers: int, dec_layers: int, where: str,
               ffn_map=None) -> dict[str, Tensor]:
    """Our state dict (embedding still in fairseq row order, under ``embed.weight``) from
    Transformers' one; ``ffn_map(side, i, prefix_ours, prefix_theirs, hf)`` maps a layer's
    feed-forward slot (default: a dense FFN). Leftover tensors are an error naming them."""
    hf = dict(hf)
    out: dict[str, Tensor] = {}
    for side, n, pairs in (("encoder", enc_layers, _ENC), ("decoder", dec_layers, _DEC)):
        for i in range(n):
            ours, theirs = f"{side}_layers.{i}.", f"model.{side}.layers.{i}."
            for a, b in pairs:
                for p in ("weight", "bias"):
                    out[f"{ours}{a}.{p}"] = _take(hf, f"{theirs}{b}.{p}", where)
            for a, (mod, parts) in _FUSED.items():
                if side == "encoder" and a.startswith("cross"):
                    continue
                for p in ("weight", "bias"):
                    out[f"{ours}{a}.{p}"] = torch.cat([_take(hf, f"{theirs}{mod}.{q}.{p}", where) for q in parts])
            (ffn_map or dense_ffn_to_ours)(side, i, ours, theirs, hf, out, where)
        for p in ("weight", "bias"):
            out[f"{side}_ln.{p}"] = _take(hf, f"model.{side}.layer_norm.{p}", where)
    out["embed.weight"] = _shared_embedding(hf, where)
    hf.pop("model.encoder.embed_positions.weights", None)  # sinusoidal: recomputed, never trained
    hf.pop("model.decoder.embed_positions.weights", None)
    if hf:
        names = ", ".join(sorted(hf)[:4])
        raise UserError(f"{where} holds {len(hf)} tensors this converter does not map ({names}); the checkpoint "
                        f"has parts (e.g. layernorm_embedding) that would change the computation")
    return out


def dense_ffn_to_ours(side: str, i: int, ours: str, theirs: str, hf: dict[str, Tensor],
                      out: dict[str, Tensor], where: str) -> None:
    for a, b in DENSE_FFN:
        for p in ("weight", "bias"):
            out[f"{ours}{a}.{p}"] = _take(hf, f"{theirs}{b}.{p}", where)


def _shared_embedding(hf: dict[str, Tensor], where: str) -> Tensor:
    """``model.shared.weight``; every copy of it (encoder/decoder embed_tokens, lm_head) must equal it."""
    names = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
             "lm_head.weight")
    present = [n for n in names if n in hf]
    if not present:
        raise UserError(f"{where} has no shared embedding (model.shared.weight); not an M2M100/NLLB checkpoint")
    shared = hf[present[0]]
    for n in present:
        if not torch.equal(hf.pop(n), shared):
            raise UserError(f"{where}: {n} differs from {present[0]}: untied embeddings are not supported "
                            f"(nmt ties the input and output embeddings, as NLLB does)")
    return shared


def ours_to_hf(state: dict[str, Tensor], enc_layers: int, dec_layers: int, ffn_map=None) -> dict[str, Tensor]:
    """Transformers' state dict from ours (embedding already in fairseq row order under
    ``embed.weight``); the inverse of :func:`hf_to_ours`. Tied copies are left to Transformers."""
    out: dict[str, Tensor] = {}
    for side, n, pairs in (("encoder", enc_layers, _ENC), ("decoder", dec_layers, _DEC)):
        for i in range(n):
            ours, theirs = f"{side}_layers.{i}.", f"model.{side}.layers.{i}."
            for a, b in pairs:
                for p in ("weight", "bias"):
                    out[f"{theirs}{b}.{p}"] = state[f"{ours}{a}.{p}"]
            for a, (mod, parts) in _FUSED.items():
                if side == "encoder" and a.startswith("cross"):
                    continue
                for p in ("weight", "bias"):
                    for q, t in zip(parts, state[f"{ours}{a}.{p}"].chunk(len(parts))):
                        out[f"{theirs}{mod}.{q}.{p}"] = t.contiguous()
            (ffn_map or dense_ffn_to_hf)(side, i, ours, theirs, state, out)
        for p in ("weight", "bias"):
            out[f"model.{side}.layer_norm.{p}"] = state[f"{side}_ln.{p}"]
    out["model.shared.weight"] = state["embed.weight"]
    return out


def dense_ffn_to_hf(side: str, i: int, ours: str, theirs: str, state: dict[str, Tensor],
                    out: dict[str, Tensor]) -> None:
    for a, b in DENSE_FFN:
        for p in ("weight", "bias"):
            out[f"{theirs}{b}.{p}"] = state[f"{ours}{a}.{p}"]
