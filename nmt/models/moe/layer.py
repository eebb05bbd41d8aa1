"""The MoE feed-forward slot: router → dispatch → grouped experts → combine (fairseq ``nllb``
branch semantics: ``Top1Gate``/``Top2Gate``/``MOELayer``).

Shape suffixes: B batch, T tokens (real tokens only inside :meth:`MoELayer.forward_tokens`),
D model dim, E experts, N kept token→expert assignments.

* Padding never reaches the router (:func:`on_real_tokens`): it takes no slots and does not
  dilute the balancing loss. The ``exact`` capacity rule counts real tokens; ``fairseq`` counts
  the batch's tokens padding included, as fairseq does (nmt/models/moe/router.py).
* Losses ``loss/moe_balance`` and ``loss/moe_z`` (weighted, summed over layers) go to ``aux``
  (nmt/models/moe/aux_loss.py); statistics ``moe/<layer>/{balance,z,dropped,load,load_max}``.
* EOM drops single token→expert outputs, FOM a token's whole MoE output, with probability p in
  training; NLLB scales by ``1 - p`` at evaluation (``inverted_masking``: by ``1/(1 - p)`` in
  training instead). Masked assignments are not computed at all.
* Evaluation dispatch (``model.moe.inference``): ``capacity`` applies the evaluation capacity
  cut and computes only the routed rows; ``dynamic`` (dynamic gating, Huang et al.) has no
  capacity at all: every expert runs on exactly the tokens routed to it; ``static`` is GShard's
  and fairseq's evaluation: the same cut, then every expert computes all C slots of an
  ``[E, C, D]`` buffer, zero rows included (same outputs as ``capacity``; C is the busiest
  expert's row count when ``dropless``). Training always uses the training rule.
* ``recorder``: when set (``nmt.moe_tools.calibrate``), called with ``(name, routing)`` after
  every routing, to measure per-expert load and gate mass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.config import MoEConfig
from nmt.models.ffn import BatchContext
from nmt.models.moe.aux_loss import add_aux_loss
from nmt.models.moe.dispatch import TokenDispatcher, pad_to_capacity
from nmt.models.moe.experts import Experts
from nmt.models.moe.router import Routing, capacity, route


def on_real_tokens(fn: Callable[..., Tensor], x_BTD: Tensor, ctx: BatchContext) -> Tensor:
    """Apply ``fn(tokens [T, D], aux, aux_loss_scale=, batch_tokens=) -> [T, D]`` to the
    non-padding rows of ``x [B, T, D]``; padding rows come back as zeros."""
    shape = x_BTD.shape
    flat = x_BTD.reshape(-1, shape[-1])
    kw = {"aux_loss_scale": ctx.aux_loss_scale, "batch_tokens": flat.shape[0]}
    if ctx.pad_mask is None:
        return fn(flat, ctx.aux, **kw).view(shape)
    rows = (~ctx.pad_mask).reshape(-1).nonzero().squeeze(1)
    y = fn(flat.index_select(0, rows), ctx.aux, **kw)
    return flat.new_zeros(flat.shape).index_copy(0, rows, y).view(shape)


def _mask_outputs(r: Routing, cfg: MoEConfig, tokens: int, training: bool, aux: dict, name: str
                  ) -> tuple[Tensor, Tensor, Tensor, float]:
    """EOM/FOM: the assignments that survive masking and the output scale."""
    expert_N, token_N, gate_N = r.expert_N, r.token_N, r.gate_N
    if training and (cfg.eom > 0 or cfg.fom > 0) and token_N.numel():
        keep_N = torch.ones_like(token_N, dtype=torch.bool)
        if cfg.eom > 0:
            keep_N &= torch.rand(token_N.shape, device=token_N.device) >= cfg.eom
        if cfg.fom > 0:
            keep_N &= (torch.rand(tokens, device=token_N.device) >= cfg.fom)[token_N]
        aux[f"moe/{name}/masked"] = 1.0 - keep_N.float().mean()
        scale = 1.0 / ((1.0 - cfg.eom) * (1.0 - cfg.fom)) if cfg.inverted_masking else 1.0
        return expert_N[keep_N], token_N[keep_N], gate_N[keep_N], scale
    if not training and not cfg.inverted_masking:
        return expert_N, token_N, gate_N, (1.0 - cfg.eom) * (1.0 - cfg.fom)
    return expert_N, token_N, gate_N, 1.0


class MoELayer(nn.Module):
    """The MoE feed-forward slot: ``forward(x [B, T, D], ctx) -> [B, T, D]``."""

    def __init__(self, d_model: int, hidden: int, cfg: MoEConfig, name: str, activation: str = "relu",
                 activation_dropout: float = 0.0, group=None):
        super().__init__()
        self.cfg, self.name = cfg, name
        self.router = nn.Linear(d_model, cfg.experts, bias=False)
        self.experts = Experts(cfg.experts, d_model, hidden, activation, activation_dropout, group)
        self.dispatcher = TokenDispatcher(cfg.experts, self.experts.world, group)
        self.recorder: Callable[[str, Routing], None] | None = None

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        return on_real_tokens(self.forward_tokens, x, ctx)

    def forward_tokens(self, x_TD: Tensor, aux: dict[str, Tensor], aux_loss_scale: float = 1.0,
                       batch_tokens: int | None = None) -> Tensor:
        """MoE over real tokens ``[T, D]``; writes losses and statistics to ``aux``.
        ``aux_loss_scale``: the objective's weight on aux losses (their gradient under FSDP2);
        ``batch_tokens``: the batch's token count with padding (the fairseq capacity rule)."""
        cfg, t = self.cfg, x_TD.shape[0]
        if t == 0:  # nothing to route (e.g. a batch of padding only): no output, no statistics
            return x_TD.new_zeros(x_TD.shape)
        with torch.autocast(x_TD.device.type, enabled=False):
            dtype = torch.promote_types(x_TD.dtype, torch.float32)  # fp32 at least (fp64 in tests)
            logits_TE = F.linear(x_TD.to(dtype), self.router.weight.to(dtype))
        mode = "train" if self.training else cfg.inference
        cap = None if mode == "dynamic" else capacity(t, cfg.experts, cfg.top_k, cfg, self.training,
                                                      self._batch_tokens(batch_tokens))
        r = route(logits_TE, cfg, cap)
        if self.recorder is not None:
            self.recorder(self.name, r)
        expert_N, token_N, gate_N, scale = _mask_outputs(r, cfg, t, self.training, aux, self.name)
        rows_RD, counts, sent = self.dispatcher.dispatch(x_TD, token_N, expert_N)
        y_RD = self._static_experts(rows_RD, counts, cap) if mode == "static" else self.experts(rows_RD, counts)
        out_TD = self.dispatcher.combine(y_RD, sent, gate_N if scale == 1.0 else gate_N * scale, t)
        out_TD = add_aux_loss(self, aux, "loss/moe_balance", cfg.balance_loss_weight * r.balance, out_TD,
                              aux_loss_scale)
        if cfg.z_loss_weight > 0:
            out_TD = add_aux_loss(self, aux, "loss/moe_z", cfg.z_loss_weight * r.z, out_TD, aux_loss_scale)
        self._report(aux, r)
        return out_TD.to(x_TD.dtype)

    def _static_experts(self, rows_RD: Tensor, counts: list[int], cap: int | None) -> Tensor:
        """Every local expert computes all its slots, zero-padded (C per sending rank: each of W
        ranks sends up to C rows, fairseq's ``[W, C, D]``); the real rows' outputs return."""
        slots = cap * self.experts.world if cap is not None else max(counts, default=0)
        if self.experts.world > 1 and cap is None:  # dropless: the busiest expert over all ranks
            c = torch.tensor([slots], device=rows_RD.device)
            dist.all_reduce(c, op=dist.ReduceOp.MAX, group=self.experts.group)
            slots = int(c.item())
        padded_SD, slot_R = pad_to_capacity(rows_RD, counts, slots)
        return self.experts(padded_SD, [slots] * len(counts)).index_select(0, slot_R)

    def _batch_tokens(self, batch_tokens: int | None) -> int | None:
        """fairseq's S: this batch's tokens with padding, under ``--max-tokens`` the largest over
        the expert-parallel ranks (fairseq pads every worker's input to that count)."""
        if self.cfg.capacity_rule != "fairseq" or batch_tokens is None or self.experts.world == 1:
            return batch_tokens
        s = torch.tensor([batch_tokens], device=self.router.weight.device)
        dist.all_reduce(s, op=dist.ReduceOp.MAX, group=self.experts.group)
        return int(s.item())

    def _report(self, aux: dict[str, Tensor], r: Routing) -> None:
        cfg, name = self.cfg, self.name
        aux[f"moe/{name}/balance"] = r.balance.detach()
        aux[f"moe/{name}/z"] = r.z.detach()
        aux[f"moe/{name}/dropped"] = r.dropped
        aux[f"moe/{name}/load_max"] = r.load_E.max() * cfg.experts  # 1.0: perfectly balanced
        aux[f"moe/{name}/load"] = r.load_E
