"""Tensor names and shapes: Transformers' M2M100 state dict ↔ ours (one table, both directions).

Attention: Transformers keeps ``q_proj``/``k_proj``/``v_proj`` apart; we fuse self-attention
into ``qkv_proj`` ([q; k; v] rows) and cross-attention keys/values into ``kv_proj``. The
shared embedding (= the tied output projection) is permuted by :mod:`nmt.interop.vocab_layout`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nmt.errors import UserError

# Transformers' per-layer names: M2M100 (NLLB-200 dense) and NllbMoe differ only in these
M2M100_NAMES = {"ffn_ln": "final_layer_norm", "cross": "encoder_attn", "cross_ln": "encoder_attn_layer_norm",
                "fc": ""}
NLLB_MOE_NAMES = {"ffn_ln": "ff_layer_norm", "cross": "cross_attention", "cross_ln": "cross_attention_layer_norm",
                  "fc": "ffn."}


def _pairs(side: str, n: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """(ours, theirs) per layer, for tensors that map one to one (with .weight and .bias)."""
    enc = (("self_attn_ln", "self_attn_layer_norm"), ("self_attn.out_proj", "self_attn.out_proj"),
           ("ffn_ln", n["ffn_ln"]))
    if side == "encoder":
        return enc
    return enc + (("cross_attn_ln", n["cross_ln"]), ("cross_attn.q_proj", f"{n['cross']}.q_proj"),
                  ("cross_attn.out_proj", f"{n['cross']}.out_proj"))


def _fused(side: str, n: dict[str, str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    out: dict[str, tuple[str, tuple[str, ...]]] = {"self_attn.qkv_proj": ("self_attn", ("q_proj", "k_proj", "v_proj"))}
    if side == "decoder":
        out["cross_attn.kv_proj"] = (n["cross"], ("k_proj", "v_proj"))
    return out


def _take(hf: dict[str, Tensor], key: str, where: str) -> Tensor:
    if key not in hf:
        raise UserError(f"{where} lacks the tensor {key}; the checkpoint is incomplete or of another architecture")
    return hf.pop(key)


def _layer_keys(enc_layers: int, dec_layers: int, names: dict[str, str]):
    """(our key, [their keys]) for every attention and LayerNorm tensor: one key is a plain copy,
    several are fused rows ([q; k; v] or [k; v])."""
    for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        for i in range(n):
            ours, theirs = f"{side}_layers.{i}.", f"model.{side}.layers.{i}."
            for p in ("weight", "bias"):
                for a, b in _pairs(side, names):
                    yield f"{ours}{a}.{p}", [f"{theirs}{b}.{p}"]
                for a, (mod, parts) in _fused(side, names).items():
                    yield f"{ours}{a}.{p}", [f"{theirs}{mod}.{q}.{p}" for q in parts]
        for p in ("weight", "bias"):
            yield f"{side}_ln.{p}", [f"model.{side}.layer_norm.{p}"]


def _ffn_slots(enc_layers: int, dec_layers: int, names: dict[str, str]):
    """(side, layer, our prefix, their prefix) of every feed-forward slot."""
    for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        for i in range(n):
            yield side, i, f"{side}_layers.{i}.", f"model.{side}.layers.{i}.{names['fc']}"


def hf_to_ours(hf: dict[str, Tensor], enc_layers: int, dec_layers: int, where: str,
               ffn_map=None, names: dict[str, str] = M2M100_NAMES) -> dict[str, Tensor]:
    """Our state dict (embedding still in fairseq row order, under ``embed.weight``) from
    Transformers' one; ``ffn_map(side, i, prefix_ours, prefix_theirs, hf, out, where)`` maps a
    layer's feed-forward slot (default: a dense FFN). Leftover tensors are an error naming them."""
    hf = dict(hf)
    out: dict[str, Tensor] = {}
    for key, theirs in _layer_keys(enc_layers, dec_layers, names):
        out[key] = torch.cat([_take(hf, k, where) for k in theirs]) if len(theirs) > 1 else _take(hf, theirs[0], where)
    for side, i, ours, prefix in _ffn_slots(enc_layers, dec_layers, names):
        (ffn_map or dense_ffn_to_ours)(side, i, ours, prefix, hf, out, where)
    out["embed.weight"] = _shared_embedding(hf, where)
    hf.pop("model.encoder.embed_positions.weights", None)  # sinusoidal: recomputed, never trained
    hf.pop("model.decoder.embed_positions.weights", None)
    if hf:
        listed = ", ".join(sorted(hf)[:4])
        raise UserError(f"{where} holds {len(hf)} tensors this converter does not map ({listed}); the checkpoint "
                        f"has parts (e.g. layernorm_embedding) that would change the computation")
    return out


def dense_ffn_to_ours(side: str, i: int, ours: str, theirs: str, hf: dict[str, Tensor],
                      out: dict[str, Tensor], where: str) -> None:
    for fc in ("fc1", "fc2"):
        for p in ("weight", "bias"):
            out[f"{ours}ffn.{fc}.{p}"] = _take(hf, f"{theirs}{fc}.{p}", where)


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


def ours_to_hf(state: dict[str, Tensor], enc_layers: int, dec_layers: int, ffn_map=None,
               names: dict[str, str] = M2M100_NAMES) -> dict[str, Tensor]:
    """Transformers' state dict from ours (embedding already in fairseq row order under
    ``embed.weight``); the inverse of :func:`hf_to_ours`. Tied copies are left to Transformers."""
    out: dict[str, Tensor] = {}
    for key, theirs in _layer_keys(enc_layers, dec_layers, names):
        for k, t in zip(theirs, state[key].chunk(len(theirs)), strict=True):
            out[k] = t.contiguous()
    for side, i, ours, prefix in _ffn_slots(enc_layers, dec_layers, names):
        (ffn_map or dense_ffn_to_hf)(side, i, ours, prefix, state, out)
    out["model.shared.weight"] = state["embed.weight"]
    return out


def dense_ffn_to_hf(side: str, i: int, ours: str, theirs: str, state: dict[str, Tensor],
                    out: dict[str, Tensor]) -> None:
    for fc in ("fc1", "fc2"):
        for p in ("weight", "bias"):
            out[f"{theirs}{fc}.{p}"] = state[f"{ours}ffn.{fc}.{p}"]


def moe_ffn_to_ours(encoder_freq: int, decoder_freq: int):
    """ffn_map for NllbMoe: layer i is sparse when ``(i + 1) % step == 0`` (as in both codes);
    a sparse layer's router and experts become ``ffn.router.weight`` and ``ffn.experts.{w1,b1,w2,b2}``
    (``[E, ...]``, ``w1[e]`` = ``fc1.weight.T``); the others are dense."""
    def ffn_map(side, i, ours, theirs, hf, out, where):
        freq = encoder_freq if side == "encoder" else decoder_freq
        if not (freq and (i + 1) % freq == 0):
            return dense_ffn_to_ours(side, i, ours, theirs, hf, out, where)
        out[f"{ours}ffn.router.weight"] = _take(hf, f"{theirs}router.classifier.weight", where)
        experts = sorted({k[len(theirs) + len("experts."):].split(".")[0] for k in hf
                          if k.startswith(f"{theirs}experts.")}, key=lambda e: int(e.split("_")[1]))
        grab = {n: [_take(hf, f"{theirs}experts.{e}.{n}", where) for e in experts]
                for n in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}
        out[f"{ours}ffn.experts.w1"] = torch.stack([w.t() for w in grab["fc1.weight"]]).contiguous()
        out[f"{ours}ffn.experts.b1"] = torch.stack(grab["fc1.bias"])
        out[f"{ours}ffn.experts.w2"] = torch.stack([w.t() for w in grab["fc2.weight"]]).contiguous()
        out[f"{ours}ffn.experts.b2"] = torch.stack(grab["fc2.bias"])
    return ffn_map


def moe_ffn_to_hf(encoder_freq: int, decoder_freq: int):
    """The inverse of :func:`moe_ffn_to_ours` (expert e's ``fc1.weight`` = ``w1[e].T``)."""
    def ffn_map(side, i, ours, theirs, state, out):
        freq = encoder_freq if side == "encoder" else decoder_freq
        if not (freq and (i + 1) % freq == 0):
            return dense_ffn_to_hf(side, i, ours, theirs, state, out)
        out[f"{theirs}router.classifier.weight"] = state[f"{ours}ffn.router.weight"]
        w1, b1, w2, b2 = (state[f"{ours}ffn.experts.{n}"] for n in ("w1", "b1", "w2", "b2"))
        for e in range(w1.shape[0]):
            out[f"{theirs}experts.expert_{e}.fc1.weight"] = w1[e].t().contiguous()
            out[f"{theirs}experts.expert_{e}.fc1.bias"] = b1[e].clone()
            out[f"{theirs}experts.expert_{e}.fc2.weight"] = w2[e].t().contiguous()
            out[f"{theirs}experts.expert_{e}.fc2.bias"] = b2[e].clone()
    return ffn_map
