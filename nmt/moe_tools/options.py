"""``moe.*`` options of ``nmt.translate`` and ``nmt.evaluate`` (kept free of torch imports).

* ``moe.inference``: the evaluation dispatch (``capacity | dynamic | static``, see
  nmt/models/moe/layer.py); empty: the checkpoint's ``model.moe.inference``.
* ``moe.resident_experts=K``: expert buffering, at most K experts per MoE layer in memory
  (0: all); ``moe.buffer_policy=lru|lifo``: which resident expert a load evicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nmt.config import BUFFER_POLICIES, INFERENCE_MODES
from nmt.errors import UserError


@dataclass
class MoEServeConfig:
    inference: str = ""  # "": the checkpoint's model.moe.inference
    resident_experts: int = 0  # K per layer; 0: every expert resident
    buffer_policy: str = "lru"  # lru | lifo

    def validate(self) -> None:
        if self.inference and self.inference not in INFERENCE_MODES:
            raise UserError(f"moe.inference={self.inference!r}: use one of {', '.join(INFERENCE_MODES)} "
                            f"(or leave it unset for the checkpoint's)")
        if self.buffer_policy not in BUFFER_POLICIES:
            raise UserError(f"moe.buffer_policy={self.buffer_policy!r}: use lru or lifo")
        if self.resident_experts < 0:
            raise UserError(f"moe.resident_experts={self.resident_experts}: use 0 (all experts) or a count >= top_k")

    @property
    def active(self) -> bool:
        return bool(self.inference) or self.resident_experts > 0

    def check_model(self, model_config: dict[str, Any], where: str) -> None:
        """Against the checkpoint's model config: K within [top_k, E], a MoE model for buffering."""
        moe = model_config.get("moe") or {}
        experts, top_k = int(moe.get("experts") or 0), int(moe.get("top_k", 2))
        if not self.active:
            return
        if experts == 0:
            raise UserError(f"moe.* options need a MoE model, but {where} is dense (model.moe.experts=0); "
                            f"drop the moe.* options")
        k = self.resident_experts
        if k and k < top_k:
            raise UserError(f"moe.resident_experts={k} is below the model's top_k={top_k}: a token needs its "
                            f"{top_k} experts resident; use {top_k}..{experts}")
        if k > experts:
            raise UserError(f"moe.resident_experts={k} exceeds the {experts} experts per layer of {where}; "
                            f"use {top_k}..{experts} (or 0: all resident)")
        if moe.get("impl", "native") != "native":
            raise UserError(f"moe.* options need model.moe.impl=native ({where} uses {moe.get('impl')}); "
                            f"drop the moe.* options")
