"""Checkpoint format contract of the MoE and CMR layers: parameter names and shapes.

The expected lists were written from the code before nmt/models/moe.py was split into the
nmt/models/moe/ package (``state_dict()`` of the models below, every ``.ffn.`` entry): a
checkpoint written before the split must load after it. They are a format contract, not a
computed result: change them only together with a checkpoint conversion.
"""

from __future__ import annotations

import pytest
import torch

from nmt.config import ModelConfig, MoEConfig
from nmt.models.build import build_model

MOE_FFN_KEYS = [
    ('encoder_layers.0.ffn.fc1.weight', (32, 16)),
    ('encoder_layers.0.ffn.fc1.bias', (32,)),
    ('encoder_layers.0.ffn.fc2.weight', (16, 32)),
    ('encoder_layers.0.ffn.fc2.bias', (16,)),
    ('encoder_layers.1.ffn.router.weight', (4, 16)),
    ('encoder_layers.1.ffn.experts.w1', (4, 16, 24)),
    ('encoder_layers.1.ffn.experts.b1', (4, 24)),
    ('encoder_layers.1.ffn.experts.w2', (4, 24, 16)),
    ('encoder_layers.1.ffn.experts.b2', (4, 16)),
    ('decoder_layers.0.ffn.fc1.weight', (32, 16)),
    ('decoder_layers.0.ffn.fc1.bias', (32,)),
    ('decoder_layers.0.ffn.fc2.weight', (16, 32)),
    ('decoder_layers.0.ffn.fc2.bias', (16,)),
    ('decoder_layers.1.ffn.router.weight', (4, 16)),
    ('decoder_layers.1.ffn.experts.w1', (4, 16, 24)),
    ('decoder_layers.1.ffn.experts.b1', (4, 24)),
    ('decoder_layers.1.ffn.experts.w2', (4, 24, 16)),
    ('decoder_layers.1.ffn.experts.b2', (4, 16)),
]

CMR_FFN_KEYS = [
    ('encoder_layers.0.ffn.fc1.weight', (32, 16)),
    ('encoder_layers.0.ffn.fc1.bias', (32,)),
    ('encoder_layers.0.ffn.fc2.weight', (16, 32)),
    ('encoder_layers.0.ffn.fc2.bias', (16,)),
    ('encoder_layers.1.ffn.gate.weight', (1, 16)),
    ('encoder_layers.1.ffn.gate.bias', (1,)),
    ('encoder_layers.1.ffn.dense.fc1.weight', (32, 16)),
    ('encoder_layers.1.ffn.dense.fc1.bias', (32,)),
    ('encoder_layers.1.ffn.dense.fc2.weight', (16, 32)),
    ('encoder_layers.1.ffn.dense.fc2.bias', (16,)),
    ('encoder_layers.1.ffn.moe.router.weight', (4, 16)),
    ('encoder_layers.1.ffn.moe.experts.w1', (4, 16, 24)),
    ('encoder_layers.1.ffn.moe.experts.b1', (4, 24)),
    ('encoder_layers.1.ffn.moe.experts.w2', (4, 24, 16)),
    ('encoder_layers.1.ffn.moe.experts.b2', (4, 16)),
    ('decoder_layers.0.ffn.fc1.weight', (32, 16)),
    ('decoder_layers.0.ffn.fc1.bias', (32,)),
    ('decoder_layers.0.ffn.fc2.weight', (16, 32)),
    ('decoder_layers.0.ffn.fc2.bias', (16,)),
    ('decoder_layers.1.ffn.gate.weight', (1, 16)),
    ('decoder_layers.1.ffn.gate.bias', (1,)),
    ('decoder_layers.1.ffn.dense.fc1.weight', (32, 16)),
    ('decoder_layers.1.ffn.dense.fc1.bias', (32,)),
    ('decoder_layers.1.ffn.dense.fc2.weight', (16, 32)),
    ('decoder_layers.1.ffn.dense.fc2.bias', (16,)),
    ('decoder_layers.1.ffn.moe.router.weight', (4, 16)),
    ('decoder_layers.1.ffn.moe.experts.w1', (4, 16, 24)),
    ('decoder_layers.1.ffn.moe.experts.b1', (4, 24)),
    ('decoder_layers.1.ffn.moe.experts.w2', (4, 24, 16)),
    ('decoder_layers.1.ffn.moe.experts.b2', (4, 16)),
]


def ffn_entries(cmr: bool) -> list[tuple[str, tuple[int, ...]]]:
    cfg = ModelConfig(d_model=16, encoder_layers=2, decoder_layers=2, heads=2, ffn_dim=32,
                      moe=MoEConfig(experts=4, encoder_freq=2, decoder_freq=2, expert_ffn_dim=24, cmr=cmr))
    model = build_model(cfg, 50)
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items() if ".ffn." in k]


@pytest.mark.parametrize("cmr", [False, True])
def test_state_dict_layout_is_unchanged(cmr: bool) -> None:
    assert ffn_entries(cmr) == (CMR_FFN_KEYS if cmr else MOE_FFN_KEYS)


def test_a_checkpoint_of_the_old_layout_loads_strictly() -> None:
    """A state dict holding exactly the contract's keys and shapes loads with strict=True."""
    cfg = ModelConfig(d_model=16, encoder_layers=2, decoder_layers=2, heads=2, ffn_dim=32,
                      moe=MoEConfig(experts=4, encoder_freq=2, decoder_freq=2, expert_ffn_dim=24, cmr=True))
    model = build_model(cfg, 50)
    state = model.state_dict()
    old = {k: torch.full(shape, 0.5) for k, shape in CMR_FFN_KEYS}
    state.update(old)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.encoder_layers[1].ffn.moe.experts.w1, old["encoder_layers.1.ffn.moe.experts.w1"])
