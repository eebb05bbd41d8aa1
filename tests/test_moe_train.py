"""MoE recipes end to end: training logs the MoE statistics, validation writes the load heatmap."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO, run_module
from nmt.config import register
from nmt.config_checks import validate
from nmt.inference import Translator
from nmt.models.moe import MoELayer

SMALL = ["trainer.progress=false", "trainer.precision=fp32", "trainer.threads=1", "model.d_model=64",
         "model.ffn_dim=128", "model.encoder_layers=2", "model.decoder_layers=2", "model.moe.experts=4",
         "data.max_tokens=1024", "optim.warmup_steps=10", "trainer.max_steps=40", "trainer.log_interval=10",
         "trainer.valid_interval=20", "trainer.valid_max_sentences=20"]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("recipe", ["nllb_moe", "nllb_moe_eom", "nllb_moe_fom", "nllb_moe_cmr"])
def test_recipes_compose_and_validate(recipe):
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=[f"+recipe={recipe}"]))
    validate(cfg)
    assert cfg.model.moe.experts > 0 and cfg.model.moe.top_k == 2 and cfg.model.moe.second_expert_policy == "all"


def test_moe_run_logs_load_and_writes_heatmap(prepared_corpus, tmp_path):
    run = tmp_path / "moe"
    run_module("nmt.train", "+recipe=nllb_moe", f"data.corpus={prepared_corpus}", f"hydra.run.dir={run}", *SMALL)
    train = records(run / "train_log.jsonl")
    assert train[-1]["train/loss"] < train[0]["train/loss"]
    last = train[-1]
    for layer in ("enc1", "dec1"):
        load = last[f"moe/{layer}/load"]
        assert len(load) == 4 and sum(load) == pytest.approx(1.0, abs=1e-3)
        assert 0.0 <= last[f"moe/{layer}/dropped"] < 1.0
        assert last[f"moe/{layer}/load_max"] >= 1.0
    assert "moe/enc0/load" not in last  # moe_freq 2: layers 1 and 3 (0-based 1) only
    assert last["loss/moe_balance"] > 0
    valid = records(run / "valid_log.jsonl")
    assert "valid/moe/enc1/dropped" in valid[-1]
    assert (run / "plots" / "expert_load_step20.png").stat().st_size > 1000
    assert (run / "plots" / "expert_load_step40.png").exists()
    # The checkpoint rebuilds the MoE model (nested model.moe config) for inference.
    tr = Translator.from_checkpoint(run / "checkpoints" / "best.pt")
    assert isinstance(tr.model.encoder_layers[1].ffn, MoELayer)
    assert len(tr.translate(["a b", ""], "eng_Latn", "deu_Latn")) == 2


def test_cmr_run_logs_gate_share_per_language(prepared_corpus, tmp_path):
    run = tmp_path / "cmr"
    run_module("nmt.train", "+recipe=nllb_moe_cmr", f"data.corpus={prepared_corpus}", f"hydra.run.dir={run}",
               *SMALL, "trainer.max_steps=20", "trainer.valid_interval=20")
    last = records(run / "train_log.jsonl")[-1]
    assert 0.0 < last["cmr/enc1/share"] < 1.5 and "loss/cmr_budget" in last
    assert 0.0 < last["moe/enc1/masked"] if "moe/enc1/masked" in last else True
    valid = records(run / "valid_log.jsonl")[-1]
    shares = {k: v for k, v in valid.items() if k.startswith("valid/cmr_share/")}
    assert any(k.startswith("valid/cmr_share/encoder/") for k in shares)
    assert any(k.startswith("valid/cmr_share/decoder/") for k in shares)
    assert all(0.0 <= v <= 1.0 for v in shares.values())  # eval: no gate dropout
