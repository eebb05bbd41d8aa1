"""Language adapters and hyper-adapters: keys per direction, generated shapes and scaling,
closed-form parameter counts, and a frozen base that does not move while adapters train."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import run_module
from nmt.config import AdapterConfig, ModelConfig
from nmt.langs import FLORES200
from nmt.models.adapters import LanguageAdapters
from nmt.models.build import build_model, parameter_counts
from nmt.models.ffn import BatchContext
from test_trainer_step import make_trainer

ENG, FRA, DEU = (FLORES200.index(c) for c in ("eng_Latn", "fra_Latn", "deu_Latn"))
LANGS = ["deu_Latn", "eng_Latn", "fra_Latn"]
PAIRS = ["eng_Latn-fra_Latn", "fra_Latn-eng_Latn", "eng_Latn-deu_Latn"]


def model_cfg(**adapters) -> ModelConfig:
    return ModelConfig(d_model=16, ffn_dim=32, heads=2, encoder_layers=2, decoder_layers=3,
                       adapters=AdapterConfig(languages=LANGS, pairs=PAIRS, **adapters))


def test_parameter_counts_match_the_closed_form():
    d, b, vocab = 16, 8, 300
    base = parameter_counts(build_model(model_cfg(), vocab))["base"]
    lang = parameter_counts(build_model(model_cfg(kind="language", size=b, decoder_key="pair"), vocab))
    per = 2 * d * b + b + d + 2 * d  # W_down, b_down, W_up (b·d), b_up, LayerNorm scale and shift
    assert lang["base"] == base
    assert lang["adapters"] == 2 * len(LANGS) * per + 3 * len(PAIRS) * per  # enc keyed by src, dec by pair
    h, e, k = 12, 6, 2
    hyper = parameter_counts(build_model(model_cfg(kind="hyper", size=b, hyper_dim=h, hyper_embed_dim=e,
                                                   hyper_blocks=k, hyper_generate_ln=True), vocab))
    embeds = 2 * len(LANGS) * e + 5 * e
    trunk = 3 * e * h + h + k * (2 * h + 2 * (h * h + h))
    heads = (h + 1) * (d * b + b + b * d + d + 2 * d)
    assert hyper["hypernet"] == embeds + trunk + heads and hyper["adapters"] == 0 and hyper["base"] == base


def test_language_adapters_are_keyed_per_row_and_start_as_identity():
    torch.manual_seed(0)
    ad = LanguageAdapters(8, 4, LANGS, "src")
    x = torch.randn(2, 3, 8)
    ctx = BatchContext(src_lang=torch.tensor([ENG, FRA]), tgt_lang=torch.tensor([FRA, ENG]))
    assert torch.equal(ad(x, ctx), x)  # W_up = 0, b_up = 0: the identity
    with torch.no_grad():
        ad.w_up[LANGS.index("fra_Latn")].normal_()
    y = ad(x, ctx)
    assert torch.equal(y[0], x[0]) and not torch.allclose(y[1], x[1])  # only the French-source row moved
    alone = ad(x[1:], BatchContext(src_lang=torch.tensor([FRA]), tgt_lang=torch.tensor([ENG])))
    assert torch.allclose(y[1:], alone, atol=1e-6)
    with pytest.raises(ValueError, match="no src adapter"):
        ad(x, BatchContext(src_lang=torch.tensor([FLORES200.index("spa_Latn")] * 2), tgt_lang=torch.tensor([ENG] * 2)))


def test_hyper_network_shapes_scaling_and_one_direction_rule():
    torch.manual_seed(0)
    model = build_model(model_cfg(kind="hyper", size=4, hyper_dim=16, hyper_encoder_inputs=["src", "layer"]), 300)
    net = model.hypernet
    src, tgt = torch.tensor([ENG, ENG]), torch.tensor([FRA, FRA])
    gen = net(src, tgt, [2, 3, 4], "decoder")
    p = gen[3]
    assert p.w_down.shape == (16, 4) and p.b_down.shape == (4,) and p.w_up.shape == (4, 16) and p.b_up.shape == (16,)
    assert p.ln_scale is None and p.ln_shift is None
    net.rescale = False
    raw = net(src, tgt, [2, 3, 4], "decoder")
    assert torch.allclose(raw[3].w_down, gen[3].w_down * math.sqrt(16))  # generated tensors / sqrt(d_h)
    # A switched-off input is zeroed: the encoder ignores the target language.
    enc_fra = net(src, tgt, [0], "encoder")[0].w_down
    enc_deu = net(src, torch.tensor([DEU, DEU]), [0], "encoder")[0].w_down
    assert torch.equal(enc_fra, enc_deu)
    assert not torch.equal(net(src, tgt, [2], "decoder")[2].w_down,
                         net(src, torch.tensor([DEU, DEU]), [2], "decoder")[2].w_down)
    with pytest.raises(ValueError, match="one direction per batch"):
        net(torch.tensor([ENG, FRA]), tgt, [0], "encoder")
    tokens = torch.randint(4, 300, (2, 5))
    logits, _ = model(tokens, tokens, src, tgt)
    assert logits.shape == (2, 5, 300)


def test_generated_layer_norm_scale_is_one_plus_the_rescaled_head_output():
    model = build_model(model_cfg(kind="hyper", size=4, hyper_dim=16, hyper_generate_ln=True), 300)
    net = model.hypernet
    with torch.no_grad():
        for name in ("ln_w", "ln_b"):  # heads that output 0.5 whatever their input
            net.heads[name].weight.zero_()
            net.heads[name].bias.fill_(0.5)
    p = net(torch.tensor([ENG]), torch.tensor([FRA]), [1], "encoder")[1]
    # rescaled by 1/sqrt(d_h) = 1/4: γ = 1 + 0.5/4, β = 0.5/4
    assert torch.allclose(p.ln_scale, torch.full((16,), 1.125)) and torch.allclose(p.ln_shift, torch.full((16,), 0.125))


@pytest.mark.parametrize("kind", ["language", "hyper"])
def test_frozen_base_does_not_move(prepared_corpus, smoke_run, tmp_path, kind):
    t = make_trainer(prepared_corpus, tmp_path / kind, f"model.adapters.kind={kind}", "model.adapters.freeze_base=true",
                     f"trainer.init_from={smoke_run / 'checkpoints' / 'last.pt'}", "data.one_direction_per_batch=true")
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    smoke = torch.load(smoke_run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(before[k], smoke[k]) for k in smoke)  # initialised from the dense run
    for _ in range(3):
        t.train_step()
    after = t.model.state_dict()
    moved = {k for k in after if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("hypernet.") or ".adapter." in k for k in moved)
    assert set(smoke).isdisjoint(moved)


def test_params_cli_prints_counts(prepared_corpus):
    proc = run_module("nmt.params", "+recipe=smoke", f"data.corpus={prepared_corpus}", "model.adapters.kind=language",
                      "model.adapters.freeze_base=true")
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["languages"] == 3 and counts["adapters"] > 0 and counts["trainable"] == counts["adapters"]
    bad = run_module("nmt.params", "model.adapters.kind=hyperr", check=False)
    assert bad.returncode == 2 and "model.adapters.kind" in bad.stderr


def test_adapters_compose_with_moe():
    from nmt.config import MoEConfig

    cfg = model_cfg(kind="hyper", size=4)
    cfg.moe = MoEConfig(experts=4, top_k=2, encoder_freq=1, decoder_freq=1)
    model = build_model(cfg, 300)
    tokens = torch.randint(4, 300, (2, 5))
    logits, aux = model(tokens, tokens, torch.tensor([ENG, ENG]), torch.tensor([FRA, FRA]))
    (logits.logsumexp(-1).mean() + aux["loss/moe_balance"]).backward()
    assert model.hypernet.heads["w_down"].weight.grad is not None
    assert model.encoder_layers[0].ffn.experts.w1.grad is not None
