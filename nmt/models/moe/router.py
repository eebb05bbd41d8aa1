"""The router: top-k expert choice, capacity, slot order and the capacity cut (GShard/NLLB).

Shape suffixes: T tokens (real tokens of the batch), E experts, A assignments before the cut
(T first choices, then the kept second choices), N kept assignments, K top-k.

* Logits are fp32 (or wider): ``probs_TE = softmax(logits_TE)``. The first expert is the argmax;
  the second (top-2) is the best other expert (``all``), the best after Gumbel noise on the logits
  (``sampling``), or the best other one kept only when ``2·g2 > U(0, 1)`` (``random``).
* Capacity per expert (:func:`capacity`): ``exact`` ``ceil(cf·k·T/E)`` over real tokens, or
  ``fairseq`` ``int(cf·k·ceil(S/E))`` with S the batch's token count padding included (fairseq's
  ``top2gating`` is ``2·ceil(S/E)``, its ``top1gating`` ``int(cf·ceil(S/E))``); in evaluation
  ``ceil(eval_capacity_token_fraction·tokens)``; none when dropless.
* Slots of an expert fill with every first choice before any second choice, in token order or,
  with ``batch_prioritized``, by router confidence; assignments past the capacity are dropped.
* Top-2 gates are renormalised over the surviving assignments (NLLB), or before the cut
  (``normalize_before_dropping``); top-1 keeps the raw probability.
* Losses: balance ``E · Σ_e mean_t(probs_TE) · frac_t(top1 == e)``, z-loss ``mean_t(logsumexp²)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.config import MoEConfig


@dataclass
class Routing:
    """Kept assignments in expert-major order (what the experts compute)."""

    expert_N: Tensor  # expert of each kept assignment (non-decreasing)
    token_N: Tensor  # row of the token it came from
    gate_N: Tensor  # combine weight (differentiable w.r.t. the router)
    balance: Tensor  # load-balancing loss (scalar)
    z: Tensor  # router z-loss (scalar)
    load_E: Tensor  # share of routed assignments per expert, before the capacity cut
    dropped: Tensor  # share of routed assignments dropped by the capacity cut (scalar)


@dataclass
class _Assignments:
    """Every token→expert assignment before the capacity cut, first choices first."""

    expert_A: Tensor
    token_A: Tensor
    slot_A: Tensor  # 0: first choice, 1: second choice
    gate_A: Tensor


def capacity(tokens: int, experts: int, k: int, cfg: MoEConfig, training: bool,
             batch_tokens: int | None = None) -> int | None:
    """Slots per expert, or None for no limit. ``tokens``: real tokens routed; ``batch_tokens``:
    the batch's token count with padding (the fairseq rule's S; defaults to ``tokens``)."""
    if cfg.dropless:
        return None
    s = tokens if cfg.capacity_rule == "exact" or batch_tokens is None else batch_tokens
    if not training and cfg.eval_capacity_token_fraction > 0:
        return math.ceil(cfg.eval_capacity_token_fraction * s)
    if cfg.capacity_rule == "fairseq":
        return int(cfg.capacity_factor * k * math.ceil(s / experts))
    return math.ceil(cfg.capacity_factor * k * tokens / experts)


def _choose(logits_TE: Tensor, probs_TE: Tensor, cfg: MoEConfig) -> _Assignments:
    """First (and second) expert of every token with its gate, before the capacity cut."""
    token_T = torch.arange(logits_TE.shape[0], device=logits_TE.device)
    top1_T = probs_TE.argmax(dim=-1)
    gate1_T = probs_TE[token_T, top1_T]
    parts = [(top1_T, token_T, torch.zeros_like(top1_T), gate1_T)]
    if cfg.top_k == 2:
        scores_TE = logits_TE.detach()
        if cfg.second_expert_policy == "sampling":
            u_TE = torch.rand_like(scores_TE).clamp_(min=1e-20)
            scores_TE = scores_TE - torch.log(-torch.log(u_TE))  # Gumbel noise
        top2_T = scores_TE.scatter(1, top1_T[:, None], float("-inf")).argmax(dim=-1)
        gate2_T = probs_TE[token_T, top2_T]
        if cfg.normalize_before_dropping:
            denom_T = (gate1_T + gate2_T).clamp(min=torch.finfo(probs_TE.dtype).eps)
            gate1_T, gate2_T = gate1_T / denom_T, gate2_T / denom_T
            parts[0] = (top1_T, token_T, parts[0][2], gate1_T)
        use2_T = torch.ones_like(top2_T, dtype=torch.bool)
        if cfg.second_expert_policy == "random":
            use2_T = 2 * gate2_T.detach() > torch.rand_like(gate2_T)
        parts.append((top2_T[use2_T], token_T[use2_T], torch.ones_like(top2_T[use2_T]), gate2_T[use2_T]))
    expert_A, token_A, slot_A, gate_A = (torch.cat(x) for x in zip(*parts, strict=True))
    return _Assignments(expert_A, token_A, slot_A, gate_A)


def _slot_order(a: _Assignments, probs_TE: Tensor, batch_prioritized: bool) -> Tensor:
    """Permutation of the assignments into expert-major slot order: within an expert, first
    choices before second choices, then token order (or router confidence)."""
    t = probs_TE.shape[0]
    token_T = torch.arange(t, device=probs_TE.device)
    if batch_prioritized:
        rank_T = torch.empty_like(token_T)
        rank_T[torch.sort(-probs_TE.detach().max(dim=-1).values, stable=True).indices] = token_T
    else:
        rank_T = token_T
    key_A = a.expert_A * (2 * t) + a.slot_A * t + rank_T[a.token_A]
    return torch.sort(key_A, stable=True).indices


def _capacity_cut(expert_sorted_A: Tensor, counts_E: Tensor, cap: int | None) -> Tensor:
    """Keep mask over the sorted assignments: the first ``cap`` of every expert."""
    n = expert_sorted_A.numel()
    if cap is None:
        return torch.ones(n, dtype=torch.bool, device=expert_sorted_A.device)
    starts_E = torch.cumsum(counts_E, 0) - counts_E
    position_A = torch.arange(n, device=expert_sorted_A.device) - starts_E[expert_sorted_A]
    return position_A < cap


def _renormalise(a: _Assignments, keep_A: Tensor, t: int, dtype: torch.dtype) -> Tensor:
    """NLLB: each token's gates divided by their sum over its surviving assignments."""
    kept_gate_A = a.gate_A * keep_A
    denom_T = torch.zeros(t, dtype=dtype, device=keep_A.device).index_add(0, a.token_A, kept_gate_A)
    return a.gate_A / denom_T.clamp(min=torch.finfo(dtype).eps)[a.token_A]


def route(logits_TE: Tensor, cfg: MoEConfig, cap: int | None) -> Routing:
    """Top-k routing of ``[T, E]`` fp32 logits with GShard's slot order and capacity cut."""
    t, e = logits_TE.shape
    probs_TE = F.softmax(logits_TE, dim=-1)
    a = _choose(logits_TE, probs_TE, cfg)
    order_A = _slot_order(a, probs_TE, cfg.batch_prioritized)
    counts_E = torch.bincount(a.expert_A, minlength=e)
    n = a.expert_A.numel()
    keep_sorted_A = _capacity_cut(a.expert_A[order_A], counts_E, cap)
    keep_A = torch.empty_like(keep_sorted_A)
    keep_A[order_A] = keep_sorted_A
    gate_A = a.gate_A
    if cfg.top_k == 2 and not cfg.normalize_before_dropping:
        gate_A = _renormalise(a, keep_A, t, probs_TE.dtype)

    kept_N = order_A[keep_sorted_A]
    mean_prob_E = probs_TE.mean(dim=0)
    top1_share_E = torch.bincount(a.expert_A[:t], minlength=e).to(probs_TE.dtype) / max(t, 1)
    balance = e * (mean_prob_E * top1_share_E).sum()
    z = torch.logsumexp(logits_TE, dim=-1).pow(2).mean()
    dropped = (1.0 - keep_sorted_A.float().mean()).detach() if n else probs_TE.new_zeros(())
    return Routing(expert_N=a.expert_A[kept_N], token_N=a.token_A[kept_N], gate_N=gate_A[kept_N],
                   balance=balance, z=z, load_E=counts_E.to(probs_TE.dtype).detach() / max(n, 1),
                   dropped=dropped)
