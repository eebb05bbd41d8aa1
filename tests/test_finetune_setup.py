"""Fine-tuning set-up (nmt/training/finetune.py): model=from_init, trainer.freeze, trainer.init_lr_scale,
binarize --spm adopting another vocabulary, and their bad inputs (one error line, exit 2)."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict

import pytest
import torch

from conftest import run_module, train_smoke
from nmt.config import AdapterConfig, Config, ModelConfig, MoEConfig
from nmt.config_checks import validate
from nmt.errors import UserError
from nmt.models.build import build_model
from nmt.training import finetune
from nmt.training.optim import build_optimizer

MOE = ModelConfig(preset="hf-import", d_model=64, encoder_layers=2, decoder_layers=2, heads=4, ffn_dim=128,
                  dropout=0.3, max_positions=128,
                  moe=MoEConfig(experts=4, encoder_freq=2, decoder_freq=2, capacity_rule="fairseq", eom=0.2))


def _from_init(monkeypatch, *, init_from: str = "EXPORT", **model) -> tuple[Config, dict]:
    monkeypatch.setattr(finetune, "init_model_config", lambda path: asdict(MOE))
    cfg = Config(model=ModelConfig(preset=finetune.FROM_INIT, **model))
    cfg.trainer.init_from = init_from
    resolved = {"model": asdict(cfg.model)}
    finetune.take_architecture_from_init(cfg, resolved)
    return cfg, resolved


def test_from_init_takes_the_architecture_and_keeps_the_runs_training_keys(monkeypatch):
    cfg, resolved = _from_init(monkeypatch, dropout=0.1)
    m = cfg.model
    assert (m.d_model, m.encoder_layers, m.ffn_dim, m.max_positions) == (64, 2, 128, 128)
    assert (m.moe.experts, m.moe.encoder_freq, m.moe.capacity_rule) == (4, 2, "fairseq")
    assert m.dropout == 0.1 and m.moe.eom == 0.0  # the run's regularisation, not the checkpoint's
    assert m.preset == finetune.FROM_INIT
    assert resolved["model"]["d_model"] == 64 and resolved["model"]["moe"]["experts"] == 4  # what the run records
    cfg.trainer.max_steps = cfg.optim.warmup_steps
    validate(cfg)  # the merged model config is a valid one


def test_from_init_accepts_an_override_equal_to_the_checkpoint(monkeypatch):
    cfg, _ = _from_init(monkeypatch, d_model=64)
    assert cfg.model.d_model == 64


def test_from_init_refuses_a_conflicting_override(monkeypatch):
    with pytest.raises(UserError, match=r"model\.d_model=512 conflicts with trainer\.init_from=EXPORT.*64"):
        _from_init(monkeypatch, d_model=512)


def test_from_init_needs_init_from(monkeypatch):
    with pytest.raises(UserError, match="set trainer.init_from="):
        _from_init(monkeypatch, init_from="")


def test_freeze_groups_stop_exactly_their_parameters():
    model = build_model(MOE, 300)
    n = finetune.freeze_parameters(model, ["embeddings", "encoder", "experts"])
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert len(frozen) == n
    assert "embed.weight" in frozen and "encoder_ln.weight" in frozen
    assert all(k in frozen for k, _ in model.named_parameters() if k.startswith("encoder_layers."))
    assert "decoder_layers.1.ffn.experts.w1" in frozen and "decoder_layers.1.ffn.router.weight" not in frozen
    assert not any(k.startswith("decoder_layers.0.") for k in frozen)  # a dense decoder layer trains


def test_freezing_experts_of_a_dense_model_is_refused():
    with pytest.raises(UserError, match=r"trainer.freeze=\['experts'\] matches no parameter"):
        finetune.freeze_parameters(build_model(ModelConfig(), 300), ["experts"])


def test_init_lr_scale_scales_loaded_parameters_only():
    """Adapters (not in the checkpoint) keep optim.lr; the base gets lr × 0.1 at every step."""
    cfg = ModelConfig(adapters=AdapterConfig(kind="language", languages=["eng_Latn", "fra_Latn"]))
    model = build_model(cfg, 300)
    scales = finetune.lr_scales(model, "EXPORT", 0.1)
    opt = build_optimizer(model, Config().optim, scales)
    by_scale = {g.get("lr_scale", 1.0): g["params"] for g in opt.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    assert set(by_scale) == {0.1, 1.0}
    assert all(".adapter." in names[id(p)] for p in by_scale[1.0])
    assert not any(".adapter." in names[id(p)] for p in by_scale[0.1])
    assert len(by_scale[0.1]) + len(by_scale[1.0]) == len(list(model.parameters()))
    assert finetune.lr_scales(model, "", 0.1) == {} and finetune.lr_scales(model, "EXPORT", 1.0) == {}


def test_a_run_steps_loaded_parameters_at_the_scaled_rate(prepared_corpus, smoke_run, tmp_path):
    """3 updates from the smoke run with language adapters and init_lr_scale=0.1: the saved optimizer's
    groups hold lr(3) = 3e-3 · sqrt(2/3) (inverse_sqrt, 2 warm-up steps) and a tenth of it for the base."""
    run = tmp_path / "run"
    train_smoke(prepared_corpus, run,
                f"trainer.init_from={smoke_run / 'checkpoints' / 'best.pt'}", "model.adapters.kind=language",
                "trainer.init_lr_scale=0.1", "trainer.max_steps=3", "optim.warmup_steps=2", "optim.lr=3e-3",
                "trainer.valid_interval=3")
    groups = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    want = 3e-3 * (2 / 3) ** 0.5
    assert sorted(g["lr"] for g in groups) == pytest.approx([want * 0.1, want])
    assert sorted(g.get("lr_scale", 1.0) for g in groups) == [0.1, 1.0]


def test_one_group_without_scales_as_before():
    model = build_model(ModelConfig(), 300)
    assert len(build_optimizer(model, Config().optim).param_groups) == 1
    only_base = build_optimizer(model, Config().optim, finetune.lr_scales(model, "EXPORT", 0.5))
    assert [g["lr_scale"] for g in only_base.param_groups] == [0.5]


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("freeze", ["embeddings", "everything"], "trainer.freeze"),
    ("freeze", ["encoder", "encoder"], "each once"),
    ("init_lr_scale", 0.0, "(0, 1]"),
    ("init_lr_scale", 0.5, "set trainer.init_from"),
])
def test_validate_refuses_bad_finetune_keys(key, value, needle):
    cfg = Config()
    cfg.trainer.max_steps = cfg.optim.warmup_steps
    validate(cfg)
    setattr(cfg.trainer, key, value)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace("]", r"\]").replace("[", r"\[")):
        validate(cfg)


def _one_error_line(r, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_recipe_without_init_from_is_one_error_line(prepared_corpus, tmp_path):
    r = run_module("nmt.train", "+recipe=nllb_finetune", f"data.corpus={prepared_corpus}",
                   f"hydra.run.dir={tmp_path / 'run'}", check=False)
    _one_error_line(r, "trainer.init_from=")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_binarize_spm_adopts_another_vocabulary_and_init_from_refuses_the_old_one(corpus_copy, smoke_run, tmp_path):
    """binarize --spm OTHER: refused without --overwrite (nothing changed); with it, OTHER becomes the
    corpus vocabulary and the old one is kept. A model of the old vocabulary is then refused by the
    recipe (the existing init_from check, on the recipe path)."""
    from nmt.data.bin_meta import check_bin_matches
    from nmt.data.tokenizer import Tokenizer

    other = tmp_path / "other"
    shutil.copytree(corpus_copy, other)
    run_module("data_prep.train_spm", "--corpus", other, "--vocab-size", "350", "--character-coverage", "1.0",
               "--overwrite")
    old = (corpus_copy / "spm.model").read_bytes()
    meta = (corpus_copy / "bin" / "meta.json").read_bytes()
    args = ["--corpus", corpus_copy, "--spm", other / "spm.model", "--workers", "1"]
    _one_error_line(run_module("data_prep.binarize", *args, check=False), "--overwrite", "spm.")
    assert (corpus_copy / "spm.model").read_bytes() == old and (corpus_copy / "bin" / "meta.json").read_bytes() == meta

    run_module("data_prep.binarize", *args, "--overwrite")
    assert (corpus_copy / "spm.model").read_bytes() == (other / "spm.model").read_bytes()
    kept = corpus_copy / f"spm.{hashlib.sha256(old).hexdigest()[:12]}.model"
    assert kept.read_bytes() == old
    check_bin_matches(corpus_copy / "bin", Tokenizer(corpus_copy / "spm.model"))

    ckpt = smoke_run / "checkpoints" / "best.pt"
    r = run_module("nmt.train", "+recipe=nllb_finetune", f"trainer.init_from={ckpt}", f"data.corpus={corpus_copy}",
                   f"hydra.run.dir={tmp_path / 'run'}", check=False)
    _one_error_line(r, f"trainer.init_from={ckpt}", "re-binarize")
