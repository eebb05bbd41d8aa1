"""Transformers' ``NllbMoeForConditionalGeneration`` as a peer of our MoE model, with its top-2
dispatch corrected, and the weight map that gives our model the peer's weights.

**What is patched, and why.** In Transformers 5.24 the router (``NllbMoeTop2Router``) is right:
it returns ``top_1_mask`` (one-hot ``[N, E]``, the first choices that survived the capacity cut)
and ``router_probs``, the ``[N, E]`` combine weights: each token's renormalised gates of its kept
first *and* second choice, zero elsewhere. The experts (``NllbMoeExperts.forward``) then one-hot
``top_1_mask`` a second time, so a 0/1 value becomes an "expert index": expert 0 runs on every
``(token, e)`` whose mask is 0 — E - 1 rows per token, nearly all with a zero weight — and
expert 1 on every token's first choice, whatever expert the router chose; experts 2… never run
(tests/test_interop_nllb_moe.py checks this on the installed version). :func:`top2_dispatch`
replaces ``NllbMoeExperts.forward`` only: expert e runs on the tokens whose combine weight for e
is non-zero (its kept first and second choices) and adds ``weight · expert_e(x)`` back, with
Transformers' own expert modules, token dropout (EOM) and evaluation scaling, in its own loop
over experts. Router, capacity rule and everything else stay Transformers' code. An assignment
whose weight is exactly 0 (a probability that underflows) is skipped: it adds nothing to the
output and, as d softmax/d logit carries that probability as a factor, nothing to the gradients.

**Same computation as ours** (checked by tests/test_moe_model_peer.py): our ``model.moe`` with
``top_k`` 2, ``capacity_rule=fairseq``, ``capacity_factor`` 1 (Transformers' ``2·ceil(S/E)``
with ``expert_capacity`` unset, which its 5.24 config refuses, so :func:`training_capacity`
clears it on the routers), ``second_expert_policy``, ``batch_prioritized`` and ``normalize_before_dropping``
as the peer's config. Differences that remain: Transformers applies ``activation_dropout`` (not
``dropout``) after the feed-forward slot, fairseq and we apply ``dropout``; its balancing loss is
Switch Transformer's over all layers' top-2 choices, ours NLLB's per layer; NllbMoe supports only
eager attention, ours uses SDPA.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor

from nmt.config import ModelConfig
from nmt.interop.state_map import NLLB_MOE_NAMES, hf_to_ours, moe_ffn_to_ours


def top2_dispatch(self: Any, hidden_states: Tensor, router_mask: Tensor, router_probs: Tensor) -> Tensor:
    """``NllbMoeExperts.forward`` with the dispatch corrected: token t reaches expert e iff
    ``router_probs[t, e] != 0`` (its kept top-2 choices), weighted by that gate. ``router_mask``
    (the top-1 mask) is not needed. Counts the rows computed in ``self.rows_computed``."""
    out = torch.zeros_like(hidden_states)
    routed_EN = router_probs.ne(0).T
    for e in routed_EN.any(dim=1).nonzero().flatten().tolist():
        rows = routed_EN[e].nonzero().flatten()
        y = self[f"expert_{e}"](hidden_states[rows]) * router_probs[rows, e, None]
        if self.moe_token_dropout > 0:
            y = self.token_dropout(y) if self.training else y * (1 - self.moe_token_dropout)
        out.index_add_(0, rows, y.to(hidden_states.dtype))
        self.rows_computed = getattr(self, "rows_computed", 0) + rows.numel()
    return out


def fix_dispatch(model: torch.nn.Module) -> int:
    """Bind :func:`top2_dispatch` as ``forward`` of every ``NllbMoeExperts`` of ``model`` (this
    model only; the class is left alone). Returns how many were patched."""
    from transformers.models.nllb_moe.modeling_nllb_moe import NllbMoeExperts

    experts = [m for m in model.modules() if isinstance(m, NllbMoeExperts)]
    for m in experts:
        m.forward = types.MethodType(top2_dispatch, m)
    return len(experts)


def rows_computed(model: torch.nn.Module, reset: bool = True) -> int:
    """Expert rows computed by the patched dispatch since the last reset, over all layers."""
    total = 0
    for m in model.modules():
        if hasattr(m, "rows_computed"):
            total += m.rows_computed
            if reset:
                m.rows_computed = 0
    return total


def peer_config(cfg: ModelConfig, vocab: int, **overrides: Any) -> Any:
    """NllbMoeConfig with our dimensions, dropout and MoE options (``overrides``: other
    NllbMoeConfig fields, e.g. ``init_std``). Token ids keep Transformers' defaults (pad 1, eos 2):
    with pad 1 its positions start at table row 2, our ``position_offset`` 2; our pad id is 0."""
    from transformers import NllbMoeConfig

    moe = cfg.moe
    return NllbMoeConfig(
        vocab_size=vocab, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim, max_position_embeddings=cfg.max_positions, dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
        activation_function=cfg.activation, scale_embedding=cfg.scale_embedding, encoder_layerdrop=0.0,
        decoder_layerdrop=0.0, num_experts=moe.experts, encoder_sparse_step=moe.encoder_freq,
        decoder_sparse_step=moe.decoder_freq, second_expert_policy=moe.second_expert_policy,
        batch_prioritized_routing=moe.batch_prioritized,
        normalize_router_prob_before_dropping=moe.normalize_before_dropping,
        moe_eval_capacity_token_fraction=moe.eval_capacity_token_fraction, moe_token_dropout=moe.eom,
        router_aux_loss_coef=moe.balance_loss_weight, router_z_loss_coef=moe.z_loss_weight,
        use_cache=False, tie_word_embeddings=True, **overrides)


def check_matches(cfg: ModelConfig) -> None:
    """The options for which :func:`peer_config` computes what our model computes."""
    moe = cfg.moe
    wrong = {k: v for k, v in (("top_k", moe.top_k != 2), ("capacity_rule", moe.capacity_rule != "fairseq"),
                               ("capacity_factor", moe.capacity_factor != 1.0), ("dropless", moe.dropless),
                               ("expert_ffn_dim", moe.expert_ffn_dim not in (0, cfg.ffn_dim)),
                               ("cmr", moe.cmr), ("fom", moe.fom > 0), ("inverted_masking", moe.inverted_masking),
                               ("position_offset", cfg.position_offset != 2)) if v}
    if wrong:
        raise ValueError(f"model options without an NllbMoe counterpart: {sorted(wrong)}")


def build_peer(cfg: ModelConfig, vocab: int, seed: int = 1, **overrides: Any) -> torch.nn.Module:
    """The peer in training mode, dispatch fixed, training capacity 2·ceil(S/E)."""
    from transformers import NllbMoeForConditionalGeneration

    check_matches(cfg)
    torch.manual_seed(seed)
    hf_cfg = peer_config(cfg, vocab, **overrides)
    model = NllbMoeForConditionalGeneration._from_config(hf_cfg, attn_implementation="eager")
    training_capacity(model)
    fix_dispatch(model)
    return model.train()


def training_capacity(model: torch.nn.Module) -> None:
    """Clear every router's ``expert_capacity``, so training uses Transformers' rule for an unset
    one, 2·ceil(tokens / E). Needed again after an evaluation forward, which leaves its evaluation
    capacity there (the router keeps it and training reuses a set value)."""
    from transformers.models.nllb_moe.modeling_nllb_moe import NllbMoeTop2Router

    for m in model.modules():
        if isinstance(m, NllbMoeTop2Router):
            m.expert_capacity = None


def ours_from_peer(tensors: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our state dict (or gradients) from the peer's ``state_dict()`` (or named gradients), with
    nmt.import_hf's map; token ids are the same on both sides, so no row permutation."""
    ffn_map = moe_ffn_to_ours(cfg.moe.encoder_freq, cfg.moe.decoder_freq)
    return hf_to_ours(tensors, cfg.encoder_layers, cfg.decoder_layers, "the peer", ffn_map, NLLB_MOE_NAMES)


def balance_loss(outputs: Any, experts: int, coef: float) -> Tensor:
    """The peer's own balancing term (what its forward adds with ``labels``): ``coef`` × Transformers'
    ``load_balancing_loss_func`` of the encoder's and the decoder's router logits."""
    from transformers.models.nllb_moe.modeling_nllb_moe import load_balancing_loss_func

    enc = load_balancing_loss_func(outputs.encoder_router_logits, experts, top_k=2)
    dec = load_balancing_loss_func(outputs.decoder_router_logits, experts, top_k=2)
    return coef * (enc + dec)
