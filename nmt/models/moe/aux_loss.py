"""Auxiliary losses (balance, z-loss, CMR budget): recorded in ``aux`` or carried by the output.

The trainer adds every ``aux`` entry named ``loss/...`` (times the number of target tokens: aux
losses are per-token means) to its objective. Under FSDP2 a layer's parameters are gathered for
backward only when its output's gradient arrives, so a loss that leaves the layer on the side
would lose its gradient: layers with ``attach_aux`` instead tie the loss to their output with
:class:`AuxLossThroughOutput`, and only a detached copy goes to ``aux`` (logged).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AuxLossThroughOutput(torch.autograd.Function):
    """``forward(out, loss, scale) = out``; backward also gives ``loss`` the gradient ``scale``.

    ``scale`` is d(objective)/d(loss): a float (the number of target tokens, passed down the
    call as ``aux_loss_scale``), or a 0-dim tensor read at backward time (filled once the whole
    forward has run: the global CMR budget's coefficient, nmt/models/moe/cmr.py)."""

    @staticmethod
    def forward(ctx, out: Tensor, loss: Tensor, scale: float | Tensor) -> Tensor:
        ctx.loss_shape, ctx.loss_dtype, ctx.scale = loss.shape, loss.dtype, scale
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        scale = ctx.scale
        if torch.is_tensor(scale):
            loss_grad = scale.detach().to(device=grad.device, dtype=ctx.loss_dtype).expand(ctx.loss_shape).clone()
        else:
            loss_grad = torch.full(ctx.loss_shape, scale, dtype=ctx.loss_dtype, device=grad.device)
        return grad, loss_grad, None


def add_aux_loss(module: nn.Module, aux: dict, key: str, term: Tensor, out: Tensor, scale: float = 1.0) -> Tensor:
    """Record ``term`` under ``aux[key]`` (summed over layers) and return ``out``; with the
    module's ``attach_aux`` (FSDP2) the value is only logged and its gradient (``scale``, the
    objective's weight on aux losses) travels with ``out``."""
    if getattr(module, "attach_aux", False):
        aux[key] = aux.get(key, 0.0) + term.detach()
        return AuxLossThroughOutput.apply(out, term, scale)
    aux[key] = aux.get(key, 0.0) + term
    return out
