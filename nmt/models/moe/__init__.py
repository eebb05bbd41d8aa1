"""Mixture-of-Experts feed-forward layers (GShard/NLLB semantics), one unit per file:

* ``router.py``: top-k choice, capacity rules, slot order and capacity cut, balance/z losses;
* ``dispatch.py``: :class:`TokenDispatcher` — ``dispatch()`` token rows to their experts (with
  the expert-parallel ``all_to_all``) and ``combine()`` the gate-weighted outputs back;
* ``experts.py``: :class:`Experts`, the grouped ``[E, ...]`` expert FFNs (fused ReLU kernel);
* ``layer.py``: :class:`MoELayer`, the feed-forward slot (router → dispatch → experts → combine);
* ``cmr.py``: :class:`CMRLayer` (conditional MoE routing) and its budget loss;
* ``aux_loss.py``: how auxiliary losses reach the objective (``aux`` or the layer output).
"""

from nmt.models.moe.aux_loss import AuxLossThroughOutput, add_aux_loss
from nmt.models.moe.cmr import CMRLayer, finish_global_budget
from nmt.models.moe.dispatch import TokenDispatcher
from nmt.models.moe.experts import Experts
from nmt.models.moe.layer import MoELayer, on_real_tokens
from nmt.models.moe.router import Routing, capacity, route

__all__ = ["AuxLossThroughOutput", "CMRLayer", "Experts", "MoELayer", "Routing", "TokenDispatcher",
           "add_aux_loss", "capacity", "finish_global_budget", "on_real_tokens", "route"]
