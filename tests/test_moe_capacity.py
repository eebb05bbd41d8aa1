"""Capacity rules on hand-computed values: ``exact`` (real tokens) and ``fairseq`` (padding counted).

fairseq (nllb branch, fairseq/modules/moe/top2gate.py / top1gate.py): top-2 ``2·ceil(S/E)``,
top-1 ``int(cf·ceil(S/E))``, S = the rows given to the gate (padding included); ours under
``capacity_rule=fairseq``: ``int(cf·k·ceil(S/E))``, which is both at cf = 1.
"""

from __future__ import annotations

import pytest
import torch

from nmt.config import ModelConfig, MoEConfig
from nmt.config_checks import validate_moe
from nmt.errors import UserError
from nmt.models.ffn import BatchContext
from nmt.models.moe import MoELayer, capacity


def test_exact_rule_counts_real_tokens_only() -> None:
    cfg = MoEConfig(experts=8, top_k=2, capacity_factor=1.0)
    assert capacity(13, 8, 2, cfg, training=True, batch_tokens=40) == 4  # ceil(2·13/8) = ceil(3.25)
    assert capacity(13, 8, 1, cfg, training=True, batch_tokens=40) == 2  # ceil(13/8)


def test_fairseq_rule_counts_padding_and_rounds_per_expert_first() -> None:
    cfg = MoEConfig(experts=8, top_k=2, capacity_factor=1.0, capacity_rule="fairseq")
    assert capacity(13, 8, 2, cfg, training=True, batch_tokens=40) == 10  # 2·ceil(40/8)
    assert capacity(13, 8, 2, cfg, training=True, batch_tokens=41) == 12  # 2·ceil(41/8) = 2·6
    assert capacity(13, 8, 1, cfg, training=True, batch_tokens=41) == 6  # int(1·ceil(41/8))
    cfg.capacity_factor = 1.5
    assert capacity(13, 8, 1, cfg, training=True, batch_tokens=41) == 9  # int(1.5·6)
    assert capacity(13, 8, 1, cfg, training=True, batch_tokens=33) == 7  # int(1.5·5) = int(7.5)
    assert capacity(13, 8, 2, cfg, training=True) == 6  # no batch count given: S = real tokens, int(3·2)


def test_eval_fraction_uses_the_rule_s() -> None:
    cfg = MoEConfig(experts=8, top_k=2, eval_capacity_token_fraction=0.25)
    assert capacity(13, 8, 2, cfg, training=False, batch_tokens=40) == 4  # ceil(0.25·13)
    cfg.capacity_rule = "fairseq"
    assert capacity(13, 8, 2, cfg, training=False, batch_tokens=40) == 10  # ceil(0.25·40)
    cfg.dropless = True
    assert capacity(13, 8, 2, cfg, training=True, batch_tokens=40) is None


def test_the_layer_passes_the_padded_batch_count() -> None:
    """4 real tokens in a [2, 4] batch (8 positions), E = 4, top-1, every token prefers expert 0:
    exact C = ceil(4/4) = 1 (3 of 4 assignments dropped), fairseq C = ceil(8/4) = 2 (2 dropped)."""
    torch.manual_seed(0)
    x = torch.zeros(2, 4, 8)
    x[..., 0] = 1.0
    pad = torch.tensor([[False, False, True, True], [False, False, True, True]])
    for rule, dropped in (("exact", 3 / 4), ("fairseq", 2 / 4)):
        layer = MoELayer(8, 16, MoEConfig(experts=4, top_k=1, encoder_freq=1, capacity_rule=rule), "enc0")
        with torch.no_grad():
            layer.router.weight.zero_()
            layer.router.weight[0, 0] = 5.0  # every token prefers expert 0
        aux: dict = {}
        layer(x, BatchContext(pad_mask=pad, aux=aux))
        assert float(aux["moe/enc0/dropped"]) == pytest.approx(dropped)


def test_unknown_rule_is_a_user_error() -> None:
    with pytest.raises(UserError, match="model.moe.capacity_rule"):
        validate_moe(MoEConfig(experts=2, encoder_freq=1, capacity_rule="gshard"), ModelConfig())
