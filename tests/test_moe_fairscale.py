"""The optional fairscale backend (``model.moe.impl=fairscale``) against the native layer."""

from __future__ import annotations

import pytest
import torch

from nmt.config import ModelConfig, MoEConfig
from nmt.models.build import build_model
from nmt.models.ffn import BatchContext
from nmt.models.moe import MoELayer
from nmt.models.moe_fairscale import FairscaleMoE  # imports fairscale only when a layer is built

top2gate = pytest.importorskip("fairscale.nn.moe.top2gate")


def test_fairscale_gshard_equals_native_layer_without_gumbel_noise(monkeypatch):
    # fairscale samples the second expert with Gumbel noise; without it, it is the `all` policy.
    monkeypatch.setattr(top2gate, "gumbel_rsample", lambda shape, device: torch.zeros(shape, device=device))
    torch.manual_seed(0)
    cfg = MoEConfig(experts=4, top_k=2, encoder_freq=1, second_expert_policy="sampling")
    fs = FairscaleMoE(8, 16, cfg, "enc0")  # fairscale dispatches in fp32 only
    native = MoELayer(8, 16, MoEConfig(experts=4, top_k=2, encoder_freq=1), "enc0")
    with torch.no_grad():
        fs.layer.gate.wg.weight.mul_(4.0)  # sharp router: the capacity cut is exercised
        native.router.weight.copy_(fs.layer.gate.wg.weight)
        for i, expert in enumerate(fs.layer.experts):
            native.experts.w1[i].copy_(expert.ffn.fc1.weight.t())
            native.experts.b1[i].copy_(expert.ffn.fc1.bias)
            native.experts.w2[i].copy_(expert.ffn.fc2.weight.t())
            native.experts.b2[i].copy_(expert.ffn.fc2.bias)
    x = torch.randn(40, 8, dtype=torch.float32)  # 40 tokens: fairscale needs E | S
    w = torch.randn(40, 8, dtype=torch.float32)
    outs = []
    for layer in (fs, native):
        xi = x.clone().requires_grad_()
        aux: dict[str, torch.Tensor] = {}
        y = layer.forward_tokens(xi, aux)
        ((y * w).sum() + aux["loss/moe_balance"]).backward()
        outs.append((y.detach(), aux["moe/enc0/balance"].detach(), xi.grad))
    assert float(aux["moe/enc0/dropped"]) > 0  # the native layer's report: some assignments were cut
    for a, b in zip(*outs, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(fs.layer.gate.wg.weight.grad, native.router.weight.grad, atol=1e-5)
    assert torch.allclose(fs.layer.experts[1].ffn.fc1.weight.grad.t(), native.experts.w1.grad[1], atol=1e-5)


def test_fairscale_backend_runs_in_the_model():
    moe = MoEConfig(experts=4, top_k=2, encoder_freq=1, decoder_freq=1, second_expert_policy="sampling",
                    impl="fairscale")
    model = build_model(ModelConfig(d_model=16, ffn_dim=32, heads=2, encoder_layers=1, decoder_layers=1, moe=moe), 300)
    assert isinstance(model.encoder_layers[0].ffn, FairscaleMoE)
    tokens = torch.randint(1, 300, (3, 7))
    tokens[1, 5:] = 0  # padding is removed before routing and zero-padded to a multiple of E
    logits, aux = model(tokens, tokens, torch.tensor([0, 1, 2]), torch.tensor([1, 0, 2]))
    (logits.float().logsumexp(-1).mean() + aux["loss/moe_balance"]).backward()
    assert torch.isfinite(logits).all() and aux["moe/enc0/balance"] > 0
    assert model.encoder_layers[0].ffn.layer.gate.wg.weight.grad is not None
    out = model.encoder_layers[0].ffn(torch.randn(3, 7, 16), BatchContext(pad_mask=tokens.eq(0)))
    assert torch.equal(out[1, 5:], torch.zeros(2, 16))
