"""CMR budget loss: the global form (fairseq's criterion) and the per-layer form, on hand-computed values.

Two CMR layers with constant gates (gate weight 0, bias b: g = sigmoid(b) on every real token):
layer A g = 0.5 on 4 real tokens (used 2.0 of 4), layer B g = 0.9 on 2 real tokens (used 1.8 of 2);
p = 0.8, w = 0.1. dg/db = g(1 - g): 0.25 for A, 0.09 for B.

* global: share = 3.8 / 6, loss = 0.1 · |3.8/6 − 0.8| = 0.1/6 = 0.01666…;
  d loss/d b_A = 0.1 · (−1)/6 · 4 · 0.25 = −1/60, d loss/d b_B = 0.1 · (−1)/6 · 2 · 0.09 = −0.003.
* per_layer: loss = 0.1 · 0.3 + 0.1 · 0.1 = 0.04;
  d/d b_A = 0.1 · (−1)/4 · 4 · 0.25 = −0.025, d/d b_B = 0.1 · (+1)/2 · 2 · 0.09 = +0.009.
"""

from __future__ import annotations

import math

import pytest
import torch

from nmt.config import ModelConfig, MoEConfig
from nmt.config_checks import validate_moe
from nmt.errors import UserError
from nmt.models.build import build_model
from nmt.models.ffn import BatchContext, DenseFFN
from nmt.models.moe import CMRLayer, finish_global_budget


@pytest.fixture(autouse=True)
def _fp64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def cmr_layer(cfg: MoEConfig, g: float, name: str) -> CMRLayer:
    torch.manual_seed(0)
    layer = CMRLayer(4, DenseFFN(4, 8), DenseFFN(4, 8), cfg, name)
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.bias.fill_(math.log(g / (1 - g)))
    return layer


def run_two_layers(mode: str, attach: bool = False, scale: float = 1.0):
    cfg = MoEConfig(experts=2, encoder_freq=1, cmr=True, cmr_budget=0.8, cmr_loss_weight=0.1, cmr_budget_loss=mode)
    a, b = cmr_layer(cfg, 0.5, "encA"), cmr_layer(cfg, 0.9, "decB")
    a.attach_aux = b.attach_aux = attach
    aux: dict = {}
    x_a = torch.randn(2, 3, 4)  # 4 real tokens
    pad_a = torch.tensor([[False, False, False], [False, True, True]])
    x_b = torch.randn(1, 3, 4)  # 2 real tokens
    pad_b = torch.tensor([[False, False, True]])
    out_a = a(x_a, BatchContext(pad_mask=pad_a, aux=aux, aux_loss_scale=scale))
    out_b = b(x_b, BatchContext(pad_mask=pad_b, aux=aux, aux_loss_scale=scale))
    if mode == "global":
        finish_global_budget(aux, cfg, scale)
    return a, b, out_a, out_b, aux


def test_global_budget_is_one_term_over_all_layers() -> None:
    a, b, _, _, aux = run_two_layers("global")
    assert float(aux["loss/cmr_budget"].detach()) == pytest.approx(0.1 / 6, abs=1e-12)
    assert float(aux["cmr_share"]) == pytest.approx(3.8 / 6, abs=1e-12)
    assert float(aux["cmr/encA/share"]) == pytest.approx(0.5) and float(aux["cmr/decB/share"]) == pytest.approx(0.9)
    assert not any(k.startswith("cmr_budget/") for k in aux)  # the partial sums are consumed
    aux["loss/cmr_budget"].backward()
    assert float(a.gate.bias.grad) == pytest.approx(-1 / 60, abs=1e-12)
    assert float(b.gate.bias.grad) == pytest.approx(-0.003, abs=1e-12)


def test_per_layer_budget_sums_one_term_per_layer() -> None:
    a, b, _, _, aux = run_two_layers("per_layer")
    assert float(aux["loss/cmr_budget"].detach()) == pytest.approx(0.04, abs=1e-12)
    aux["loss/cmr_budget"].backward()
    assert float(a.gate.bias.grad) == pytest.approx(-0.025, abs=1e-12)
    assert float(b.gate.bias.grad) == pytest.approx(0.009, abs=1e-12)


@pytest.mark.parametrize("mode", ["global", "per_layer"])
def test_attached_budget_gives_the_same_gradients(mode: str) -> None:
    """FSDP2 (attach_aux): the budget's gradient travels with the layer outputs; the global
    term's coefficient is filled after both layers ran. Same gradients as scale × loss added."""
    weights = [torch.linspace(-1, 1, 24).view(2, 3, 4), torch.linspace(1, 2, 12).view(1, 3, 4)]
    a, b, out_a, out_b, aux = run_two_layers(mode)
    ((out_a * weights[0]).sum() + (out_b * weights[1]).sum() + 5.0 * aux["loss/cmr_budget"]).backward()
    expected = [p.grad.clone() for p in (*a.parameters(), *b.parameters())]
    a2, b2, out_a2, out_b2, aux2 = run_two_layers(mode, attach=True, scale=5.0)
    assert not aux2["loss/cmr_budget"].requires_grad  # logged only
    assert float(aux2["loss/cmr_budget"]) == pytest.approx(float(aux["loss/cmr_budget"].detach()), abs=1e-12)
    ((out_a2 * weights[0]).sum() + (out_b2 * weights[1]).sum()).backward()
    got = [p.grad for p in (*a2.parameters(), *b2.parameters())]
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-12)


def test_model_forms_the_global_term_at_the_end_of_forward() -> None:
    moe = MoEConfig(experts=2, encoder_freq=1, decoder_freq=1, cmr=True, cmr_budget=0.8, cmr_loss_weight=0.1)
    model = build_model(ModelConfig(d_model=8, ffn_dim=16, heads=2, encoder_layers=1, decoder_layers=1, moe=moe), 60)
    src = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])  # 7 real tokens
    prev = torch.tensor([[5, 6, 0], [7, 8, 9]])  # 5 real tokens
    _, aux = model(src, prev)
    used = float(aux["cmr/enc0/share"]) * 7 + float(aux["cmr/dec0/share"]) * 5
    assert float(aux["cmr_share"]) == pytest.approx(used / 12, abs=1e-12)
    assert float(aux["loss/cmr_budget"].detach()) == pytest.approx(0.1 * abs(used / 12 - 0.8), abs=1e-12)
    assert aux["loss/cmr_budget"].requires_grad


def test_unknown_budget_form_is_a_user_error() -> None:
    m = ModelConfig()
    with pytest.raises(UserError, match="model.moe.cmr_budget_loss"):
        validate_moe(MoEConfig(experts=2, encoder_freq=1, cmr=True, cmr_budget_loss="layerwise"), m)
