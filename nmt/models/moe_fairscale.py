"""``model.moe.impl=fairscale``: fairscale's GShard ``MOELayer`` + ``Top2Gate`` in the MoE slot.

A reference backend (``pip install -e '.[bench]'``), for comparisons and benchmarks only. fairscale
fixes the routing to top-2 with Gumbel sampling of the second expert and capacity ``2·S/E``, and
requires E to divide the token count: the real tokens are padded with zero rows up to a multiple
of E (those rows take part in routing, as padding does in fairseq). Its balancing loss is
``mean_e(me·ce)``; it is reported here as ``E² · mean_e(me·ce)`` to match the native layer.
"""

from __future__ import annotations

import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.config import MoEConfig
from nmt.errors import UserError
from nmt.models.ffn import BatchContext, DenseFFN
from nmt.models.moe import on_real_tokens


def ensure_process_group() -> None:
    """fairscale's MOELayer asks for a process group; give a single process a 1-rank gloo one."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


class _Expert(nn.Module):
    def __init__(self, d_model: int, hidden: int, activation: str):
        super().__init__()
        self.ffn = DenseFFN(d_model, hidden, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn(x, BatchContext())


class FairscaleMoE(nn.Module):
    def __init__(self, d_model: int, hidden: int, cfg: MoEConfig, name: str, activation: str = "relu",
                 group=None):
        super().__init__()
        try:
            from fairscale.nn.moe import MOELayer, Top2Gate
        except ImportError:
            raise UserError("model.moe.impl=fairscale needs fairscale: pip install -e '.[bench]'") from None
        ensure_process_group()
        self.cfg, self.name = cfg, name
        world = dist.get_world_size(group) if group is not None else 1
        experts = nn.ModuleList(_Expert(d_model, hidden, activation) for _ in range(cfg.experts // world))
        self.layer = MOELayer(Top2Gate(d_model, cfg.experts), experts, group)

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        return on_real_tokens(self.forward_tokens, x, ctx)

    def forward_tokens(self, x: Tensor, aux: dict[str, Tensor], aux_loss_scale: float = 1.0,
                       batch_tokens: int | None = None) -> Tensor:
        """fairscale's gate loss always goes to ``aux`` (single process: no FSDP2, no scale needed)."""
        e = self.cfg.experts
        s = x.shape[0]
        padded = F.pad(x, (0, 0, 0, (-s) % e))
        y = self.layer(padded[:, None, :])[:s, 0]
        balance = self.layer.l_aux * e * e
        aux["loss/moe_balance"] = aux.get("loss/moe_balance", 0.0) + self.cfg.balance_loss_weight * balance
        aux[f"moe/{self.name}/balance"] = balance.detach()
        return y.to(x.dtype)
