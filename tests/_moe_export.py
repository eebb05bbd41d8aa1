"""A random (untrained) MoE or dense model written as an nmt export, for the MoE serving tests."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch

from nmt.config import ModelConfig, MoEConfig
from nmt.data.tokenizer import Tokenizer
from nmt.export import export_config, tensors_for_safetensors, write_export_dir
from nmt.models.build import build_model

DIRECTIONS = ["eng_Latn-fra_Latn", "fra_Latn-eng_Latn", "eng_Latn-deu_Latn", "deu_Latn-eng_Latn"]


def random_export(out: Path, spm: Path, experts: int = 4, top_k: int = 2, seed: int = 0) -> Path:
    """Write ``out`` (an export of a random tiny model; experts=0: dense); returns it."""
    torch.manual_seed(seed)
    moe = MoEConfig(experts=experts, top_k=top_k, encoder_freq=1 if experts else 0,
                    decoder_freq=1 if experts else 0, eval_capacity_token_fraction=1.0)
    cfg = ModelConfig(d_model=32, encoder_layers=2, decoder_layers=2, heads=4, ffn_dim=64, dropout=0.0, moe=moe)
    tok = Tokenizer(spm)
    model = build_model(cfg, tok.vocab_size).eval()
    with torch.no_grad():  # a spread-out router so that every expert gets tokens
        for name, p in model.named_parameters():
            if name.endswith("router.weight"):
                p.normal_(0, 1.0)
    state = tensors_for_safetensors(model.state_dict())
    ck = SimpleNamespace(info={"directions": DIRECTIONS, "tokenizer_sha256": tok.sha256, "step": 0},
                         model_config=asdict(cfg), tokenizer=tok, kind="pt",
                         languages=["deu_Latn", "eng_Latn", "fra_Latn"],
                         eval_config={"beam": 2, "lenpen": 1.0, "batch_size": 8, "max_len_a": 0.0, "max_len_b": 6})
    write_export_dir(out, state, export_config(ck, state, Path("random")), spm, what="random model")
    return out
