"""MoE layer: routing against hand-computed cases and a GShard one-hot einsum reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nmt.config import ModelConfig, MoEConfig
from nmt.models.build import build_model, is_moe_layer
from nmt.models.ffn import BatchContext
from nmt.models.moe import CMRLayer, MoELayer, capacity, route


@pytest.fixture(autouse=True)
def _fp64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def gshard_reference(layer: MoELayer, x: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GShard/fairseq top-k MoE written the one-hot way: [S, E, C] dispatch and combine tensors."""
    cfg, ex = layer.cfg, layer.experts
    s, e = x.shape[0], cfg.experts
    logits = x @ layer.router.weight.t()
    probs = F.softmax(logits, dim=-1)
    i1 = probs.argmax(-1)
    m1 = F.one_hot(i1, e)
    loc1 = torch.cumsum(m1, 0) - 1
    masks, locs = [m1], [loc1]
    if cfg.top_k == 2:
        i2 = logits.masked_fill(m1.bool(), float("-inf")).argmax(-1)
        m2 = F.one_hot(i2, e)
        loc2 = torch.cumsum(m2, 0) - 1 + m1.sum(0, keepdim=True)
        masks.append(m2)
        locs.append(loc2)
    me, ce = probs.mean(0), m1.double().mean(0)
    balance = e * e * (me * ce).mean()
    masks = [m * (loc < cap) for m, loc in zip(masks, locs, strict=True)]
    gates = [(probs * m).sum(-1) for m in masks]
    if cfg.top_k == 2:
        denom = (gates[0] + gates[1]).clamp(min=torch.finfo(probs.dtype).eps)
        gates = [g / denom for g in gates]
    combine = torch.zeros(s, e, cap)
    for m, loc, g in zip(masks, locs, gates, strict=True):
        slot = F.one_hot((loc * m).sum(-1), cap)
        combine = combine + g[:, None, None] * m[:, :, None] * slot[:, None, :]
    dispatch = combine.bool().double()
    xin = torch.einsum("sec,sm->ecm", dispatch, x)
    h = torch.relu(torch.einsum("ecm,emh->ech", xin, ex.w1) + ex.b1[:, None, :])
    out = torch.einsum("ech,ehm->ecm", h, ex.w2) + ex.b2[:, None, :]
    return torch.einsum("sec,ecm->sm", combine, out), balance


def make_layer(**kw) -> MoELayer:
    torch.manual_seed(0)
    cfg = MoEConfig(**{"experts": 4, "top_k": 2, "encoder_freq": 1, **kw})
    layer = MoELayer(8, 16, cfg, "enc0")
    with torch.no_grad():  # a sharper router so that some experts overflow
        layer.router.weight.mul_(4.0)
    return layer


def grads(layer: MoELayer, x: torch.Tensor, y: torch.Tensor, extra: torch.Tensor | None = None):
    layer.zero_grad()
    x.grad = None
    w = torch.linspace(-1, 1, y.numel()).view_as(y)
    ((y * w).sum() + (0 if extra is None else extra)).backward()
    return [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]


@pytest.mark.parametrize("top_k", [1, 2])
def test_matches_gshard_einsum_reference_in_capacity_mode(top_k: int) -> None:
    layer = make_layer(top_k=top_k)
    x = torch.randn(40, 8, requires_grad=True)
    cap = capacity(40, 4, top_k, layer.cfg, training=True)
    assert cap == math.ceil(top_k * 40 / 4)
    aux: dict[str, torch.Tensor] = {}
    y = layer.forward_tokens(x, aux)
    assert float(aux["moe/enc0/dropped"]) > 0  # the test must exercise the capacity cut
    g_ours = grads(layer, x, y, aux["loss/moe_balance"])
    y_ref, balance = gshard_reference(layer, x, cap)
    assert torch.allclose(y, y_ref, atol=1e-12)
    assert torch.allclose(aux["moe/enc0/balance"], balance, atol=1e-12)
    g_ref = grads(layer, x, y_ref, layer.cfg.balance_loss_weight * balance)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_dropless_equals_capacity_mode_when_nothing_overflows() -> None:
    layer = make_layer(capacity_factor=4.0)  # C = 2·S: no expert can overflow
    x = torch.randn(30, 8, requires_grad=True)
    aux: dict[str, torch.Tensor] = {}
    y_cap = layer.forward_tokens(x, aux)
    assert float(aux["moe/enc0/dropped"]) == 0.0
    g_cap = grads(layer, x, y_cap)
    layer.cfg.dropless = True
    y_free = layer.forward_tokens(x, {})
    assert torch.equal(y_cap, y_free)
    for a, b in zip(g_cap, grads(layer, x, y_free), strict=True):
        assert torch.allclose(a, b, atol=1e-14)


def test_route_hand_computed_slots_and_gates() -> None:
    # 4 tokens, 2 experts, top-2 ('all'), capacity 3. Every token picks both experts.
    p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    logits = p.log()
    cfg = MoEConfig(experts=2, top_k=2, encoder_freq=1)
    r = route(logits, cfg, cap=3)
    # expert 0: first choices of tokens 0, 1, 3 fill its 3 slots; the second choice of token 2 is dropped.
    # expert 1: first choice of token 2, then second choices of tokens 0 and 1; token 3's is dropped.
    assert r.expert_N.tolist() == [0, 0, 0, 1, 1, 1]
    assert r.token_N.tolist() == [0, 1, 3, 2, 0, 1]
    # Renormalised over survivors: tokens 2 and 3 keep one expert each, so their gate is 1.
    assert torch.allclose(r.gate_N, torch.tensor([0.9, 0.8, 1.0, 1.0, 0.1, 0.2]))
    assert float(r.dropped) == pytest.approx(2 / 8)
    # balance = E · Σ_e me_e · ce_e with me = mean probs, ce = share of first choices.
    me = p.mean(0)
    ce = torch.tensor([3 / 4, 1 / 4])
    assert float(r.balance) == pytest.approx(float(2 * (me * ce).sum()))
    assert r.load_E.tolist() == [0.5, 0.5]


def test_batch_prioritized_routing_fills_slots_by_confidence() -> None:
    p = torch.tensor([[0.6, 0.4], [0.95, 0.05], [0.7, 0.3]])
    cfg = MoEConfig(experts=2, top_k=1, encoder_freq=1, batch_prioritized=True)
    r = route(p.log(), cfg, cap=2)  # three first choices for expert 0, two slots
    assert sorted(r.token_N.tolist()) == [1, 2]  # the least confident token (0) is dropped
    cfg.batch_prioritized = False
    assert route(p.log(), cfg, cap=2).token_N.tolist() == [0, 1]  # token order drops token 2


def test_normalize_before_dropping_keeps_pre_cut_gates() -> None:
    p = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.1, 0.3]])
    cfg = MoEConfig(experts=3, top_k=2, encoder_freq=1, normalize_before_dropping=True)
    r = route(p.log(), cfg, cap=1)  # expert 0 keeps token 0 only; token 1 keeps its 2nd choice (2) only
    got = {(int(t), int(e)): float(g) for t, e, g in zip(r.token_N, r.expert_N, r.gate_N, strict=True)}
    assert got == pytest.approx({(0, 0): 0.5 / 0.8, (0, 1): 0.3 / 0.8, (1, 2): 0.3 / 0.9})
    cfg.normalize_before_dropping = False
    r = route(p.log(), cfg, cap=1)
    got = {(int(t), int(e)): float(g) for t, e, g in zip(r.token_N, r.expert_N, r.gate_N, strict=True)}
    assert got == pytest.approx({(0, 0): 0.5 / 0.8, (0, 1): 0.3 / 0.8, (1, 2): 1.0})


def test_second_expert_policies() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2000, 4)
    probs = logits.softmax(-1)
    top2 = probs.topk(2, dim=-1).indices[:, 1]
    base = dict(experts=4, top_k=2, encoder_freq=1)
    r_all = route(logits, MoEConfig(**base), cap=None)
    assert r_all.expert_N.numel() == 4000
    second = r_all.token_N.numel() - 2000
    assert second == 2000
    r_rand = route(logits, MoEConfig(**base, second_expert_policy="random"), cap=None)
    g2 = probs.gather(1, top2[:, None]).squeeze(1)
    expected = float(torch.clamp(2 * g2, max=1).sum())  # P(keep) = min(1, 2·g2)
    kept = r_rand.token_N.numel() - 2000
    assert abs(kept - expected) < 4 * math.sqrt(expected)
    r_samp = route(logits, MoEConfig(**base, second_expert_policy="sampling"), cap=None)
    second_samp = torch.zeros(2000, dtype=torch.long)
    first = probs.argmax(-1)
    for e, t in zip(r_samp.expert_N.tolist(), r_samp.token_N.tolist(), strict=True):
        if e != int(first[t]):
            second_samp[t] = e
    assert (second_samp != first).all()
    assert 0.3 < float((second_samp != top2).double().mean()) < 0.9  # noise changes many second picks


def test_capacity_rules() -> None:
    cfg = MoEConfig(experts=8, top_k=2, capacity_factor=1.0, eval_capacity_token_fraction=0.25)
    assert capacity(100, 8, 2, cfg, training=True) == 25  # ceil(2·100/8)
    assert capacity(100, 8, 2, cfg, training=False) == 25  # ceil(0.25·100)
    cfg.eval_capacity_token_fraction = -1
    assert capacity(100, 8, 2, cfg, training=False) == 25
    cfg.capacity_factor = 1.5
    assert capacity(100, 8, 1, cfg, training=True) == 19  # ceil(1.5·100/8)
    cfg.dropless = True
    assert capacity(100, 8, 2, cfg, training=True) is None


def test_padding_never_reaches_the_router() -> None:
    layer = make_layer(dropless=True)
    x = torch.randn(2, 5, 8)
    pad = torch.tensor([[False] * 5, [False, False, True, True, True]])
    aux: dict[str, torch.Tensor] = {}
    y = layer(x, BatchContext(pad_mask=pad, aux=aux))
    assert torch.equal(y[1, 2:], torch.zeros(3, 8))
    y_real = layer.forward_tokens(x[~pad], {})
    assert torch.allclose(y[~pad], y_real)


def test_eom_fom_masking_and_eval_scaling() -> None:
    layer = make_layer(dropless=True, eom=0.5)
    x = torch.randn(400, 8)
    layer.eval()
    full = MoELayer(8, 16, MoEConfig(experts=4, top_k=2, encoder_freq=1, dropless=True), "enc0")
    full.load_state_dict(layer.state_dict())
    full.eval()
    assert torch.allclose(layer.forward_tokens(x, {}), 0.5 * full.forward_tokens(x, {}))  # NLLB: (1-p) at eval
    layer.train()
    aux: dict[str, torch.Tensor] = {}
    torch.manual_seed(3)
    y = layer.forward_tokens(x, aux)
    assert 0.4 < float(aux["moe/enc0/masked"]) < 0.6
    # Each surviving token output is a sum of a subset of its gate-weighted expert outputs.
    none_kept = (y.abs().sum(-1) == 0).double().mean()
    assert 0.15 < float(none_kept) < 0.35  # both of a token's two outputs dropped: p² = 0.25
    layer.cfg.eom, layer.cfg.fom = 0.0, 0.3
    y = layer.forward_tokens(x, {})
    assert 0.2 < float((y.abs().sum(-1) == 0).double().mean()) < 0.4
    layer.cfg.inverted_masking = True
    layer.eval()
    assert torch.allclose(layer.forward_tokens(x, {}), full.forward_tokens(x, {}))


def test_cmr_mixes_dense_and_moe_and_reports_budget() -> None:
    cfg = MoEConfig(experts=4, top_k=2, encoder_freq=1, cmr=True, cmr_budget=0.8, cmr_loss_weight=0.1,
                    cmr_budget_loss="per_layer")
    model_cfg = ModelConfig(d_model=8, ffn_dim=16, encoder_layers=1, decoder_layers=1, heads=2, moe=cfg)
    torch.manual_seed(0)
    model = build_model(model_cfg, 300)
    cmr = model.encoder_layers[0].ffn
    assert isinstance(cmr, CMRLayer)
    x = torch.randn(2, 3, 8)
    pad = torch.tensor([[False, False, False], [False, True, True]])
    aux: dict[str, torch.Tensor] = {}
    y = cmr(x, BatchContext(pad_mask=pad, aux=aux))
    g = torch.sigmoid(cmr.gate(x)).squeeze(-1).masked_fill(pad, 0)
    dense = cmr.dense(x, BatchContext())
    moe = cmr.moe(x, BatchContext(pad_mask=pad))
    assert torch.allclose(y, (1 - g)[..., None] * dense + g[..., None] * moe)
    share = g.sum() / 4
    assert torch.allclose(aux["cmr/enc0/share"], share)
    assert torch.allclose(aux["loss/cmr_budget"], 0.1 * (share - 0.8).abs())


def test_moe_freq_places_layers() -> None:
    cfg = ModelConfig(encoder_layers=4, decoder_layers=4, moe=MoEConfig(experts=4, encoder_freq=2, decoder_freq=4))
    assert [is_moe_layer(cfg, "encoder", i) for i in range(4)] == [False, True, False, True]
    assert [is_moe_layer(cfg, "decoder", i) for i in range(4)] == [False, False, False, True]
    model = build_model(ModelConfig(d_model=8, ffn_dim=16, heads=2, encoder_layers=4, decoder_layers=4,
                                    moe=cfg.moe), 300)
    assert [type(layer.ffn).__name__ for layer in model.encoder_layers] == ["DenseFFN", "MoELayer"] * 2
    tokens = torch.randint(300, 400, (2, 5)) % 300 + 1
    logits, aux = model(tokens, tokens, torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert logits.shape == (2, 5, 300)
    assert {"loss/moe_balance", "moe/enc1/load", "moe/enc3/load", "moe/dec3/load"} <= set(aux)
    assert "moe/dec1/load" not in aux


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_expert_kernel_gradients_match_finite_differences(p: float) -> None:
    from nmt.models.dropout import keep_mask
    from nmt.models.moe.experts import _ReluExperts

    torch.manual_seed(0)
    x = torch.randn(9, 3, requires_grad=True)
    w1, b1 = torch.randn(3, 3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    w2, b2 = torch.randn(3, 5, 3, requires_grad=True), torch.randn(3, 3, requires_grad=True)
    counts = [4, 0, 5]  # an empty expert gets zero gradients

    def fn(*args):
        torch.manual_seed(7)  # the same dropout mask at every evaluation
        return _ReluExperts.apply(*args, counts, p, 0.5)

    # scale 0.5 halves the parameter gradients only: check against a reference with that rule.
    y = fn(x, w1, b1, w2, b2)
    y.backward(torch.ones_like(y))
    grads = [t.grad.clone() for t in (x, w1, b1, w2, b2)]
    for t in (x, w1, b1, w2, b2):
        t.grad = None
    torch.manual_seed(7)
    ref = []
    start = 0
    for i, c in enumerate(counts):
        if c:
            h = torch.relu(x[start:start + c] @ w1[i] + b1[i])
            if p > 0:
                h = h * keep_mask(h.shape, p, h.device) / (1 - p)
            ref.append(h @ w2[i] + b2[i])
            start += c
    y_ref = torch.cat(ref)
    assert torch.allclose(y, y_ref)
    y_ref.backward(torch.ones_like(y_ref))
    assert torch.allclose(grads[0], x.grad)
    for got, t in zip(grads[1:], (w1, b1, w2, b2), strict=True):
        assert torch.allclose(got, 0.5 * t.grad)
    assert torch.equal(grads[1][1], torch.zeros(3, 5))
    assert torch.autograd.gradcheck(lambda *a: _ReluExperts.apply(*a, counts, 0.0, 1.0),
                                    (x, w1, b1, w2, b2))


def test_no_tokens_gives_an_empty_output_and_no_nan():
    layer = make_layer()
    aux: dict[str, torch.Tensor] = {}
    y = layer.forward_tokens(torch.zeros(0, 8), aux)
    assert y.shape == (0, 8) and "loss/moe_balance" not in aux


def test_aux_loss_attached_to_the_output_gives_the_same_gradients() -> None:
    """FSDP2 mode (attach_aux): the balance/z losses' gradient travels with the layer output,
    scaled by the ``aux_loss_scale`` passed down the call; equal to adding scale × loss."""
    x = torch.randn(30, 8, requires_grad=True)
    plain, attached = make_layer(z_loss_weight=0.01), make_layer(z_loss_weight=0.01)
    attached.attach_aux = True
    aux_p, aux_a = {}, {}
    y_p, y_a = plain.forward_tokens(x, aux_p), attached.forward_tokens(x, aux_a, aux_loss_scale=7.0)
    assert torch.equal(y_p, y_a)
    extra = 7.0 * (aux_p["loss/moe_balance"] + aux_p["loss/moe_z"])
    expected = grads(plain, x, y_p, extra)
    assert not aux_a["loss/moe_balance"].requires_grad  # logged only
    assert torch.allclose(aux_a["loss/moe_balance"], aux_p["loss/moe_balance"])
    got = grads(attached, x, y_a)
    for a, b in zip(expected, got, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
