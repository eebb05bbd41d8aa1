"""Conditional MoE routing (NLLB-200 §6.2.3): ``y = (1 - g)·dense(x) + g·moe(x)``, ``g = sigmoid(w·x + b)``.

Shape suffixes: B batch, T positions, D model dim.

Gate dropout is ordinary (inverted) dropout on g; padding gets g = 0. ``cmr/<layer>/share`` is
the layer's mean gate over real tokens (the share of each token sent to the MoE branch).

Budget loss ``loss/cmr_budget`` (``model.moe.cmr_budget_loss``):

* ``global`` (fairseq's MoE criterion): ONE term over all CMR layers of the forward,
  ``w·|Σ_l used_l / Σ_l total_l − p|``, with ``used_l`` the sum of layer l's gates over real
  tokens and ``total_l`` its real-token count. The layers add their sums to ``aux``
  (``cmr_budget/used``, ``cmr_budget/total``); :func:`finish_global_budget`, called at the end of
  the model's forward, forms the term. Under FSDP2 (``attach_aux``) each layer's ``used_l``
  travels with its output and gets the gradient ``scale·w·sign(U/N − p)/N`` from a coefficient
  tensor that :func:`finish_global_budget` fills once every layer has run (backward comes later).
* ``per_layer``: ``w·|used_l/total_l − p|`` for every CMR layer, summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.config import MoEConfig
from nmt.models.dropout import dropout
from nmt.models.ffn import BatchContext
from nmt.models.moe.aux_loss import AuxLossThroughOutput, add_aux_loss

USED, TOTAL, COEF = "cmr_budget/used", "cmr_budget/total", "cmr_budget/coef"


class CMRLayer(nn.Module):
    def __init__(self, d_model: int, dense: nn.Module, moe: nn.Module, cfg: MoEConfig, name: str):
        super().__init__()
        self.cfg, self.name = cfg, name
        self.gate = nn.Linear(d_model, 1)
        self.dense, self.moe = dense, moe

    def _gates(self, x_BTD: Tensor, pad_mask_BT: Tensor | None) -> tuple[Tensor, Tensor]:
        """Gates ``g [B, T]`` (fp32 at least, 0 at padding) and the real-token count."""
        with torch.autocast(x_BTD.device.type, enabled=False):
            dtype = torch.promote_types(x_BTD.dtype, torch.float32)
            logit_BT = F.linear(x_BTD.to(dtype), self.gate.weight.to(dtype), self.gate.bias.to(dtype)).squeeze(-1)
        g_BT = dropout(torch.sigmoid(logit_BT), self.cfg.cmr_gate_dropout, self.training)
        if pad_mask_BT is None:
            return g_BT, torch.tensor(g_BT.numel(), device=g_BT.device)
        return g_BT.masked_fill(pad_mask_BT, 0.0), (~pad_mask_BT).sum()

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        g_BT, n = self._gates(x, ctx.pad_mask)
        used = g_BT.sum()
        ctx.aux[f"cmr/{self.name}/share"] = (used / n.clamp(min=1)).detach()
        g = g_BT[..., None].to(x.dtype)
        out = (1 - g) * self.dense(x, ctx) + g * self.moe(x, ctx)
        if self.cfg.cmr_budget_loss == "per_layer":
            budget = self.cfg.cmr_loss_weight * (used / n.clamp(min=1) - self.cfg.cmr_budget).abs()
            return add_aux_loss(self, ctx.aux, "loss/cmr_budget", budget, out, ctx.aux_loss_scale)
        return self._report_sums(ctx.aux, used, n, out)

    def _report_sums(self, aux: dict, used: Tensor, n: Tensor, out: Tensor) -> Tensor:
        """Global budget: add this layer's gate sum and token count to the forward's totals."""
        aux[TOTAL] = aux.get(TOTAL, 0) + n
        if not getattr(self, "attach_aux", False):
            aux[USED] = aux.get(USED, 0.0) + used
            return out
        aux[USED] = aux.get(USED, 0.0) + used.detach()
        if COEF not in aux:
            aux[COEF] = torch.zeros((), dtype=used.dtype, device=used.device)
        return AuxLossThroughOutput.apply(out, used, aux[COEF])


def finish_global_budget(aux: dict, cfg: MoEConfig, aux_loss_scale: float = 1.0) -> None:
    """Replace the CMR layers' sums in ``aux`` by the one budget term ``loss/cmr_budget`` (and
    the overall share ``cmr_share``); under FSDP2 also fill the gradient coefficient."""
    if USED not in aux:
        return
    used, total = aux.pop(USED), aux.pop(TOTAL).clamp(min=1)
    share = used / total
    term = cfg.cmr_loss_weight * (share - cfg.cmr_budget).abs()
    aux["cmr_share"] = share.detach()  # all CMR layers (not "cmr/...": those are per layer)
    coef = aux.pop(COEF, None)
    if coef is not None:  # d(scale·term)/d(used_l), the same for every layer
        coef.fill_(float(aux_loss_scale * cfg.cmr_loss_weight * torch.sign(share - cfg.cmr_budget) / total))
        term = term.detach()
    aux["loss/cmr_budget"] = aux.get("loss/cmr_budget", 0.0) + term
