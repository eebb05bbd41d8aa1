"""Bad inputs of ``nmt.import_hf`` / ``nmt.export --format hf`` and the position_offset rule for
old checkpoints: one ``error:`` line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from _fixtures_hf import build_m2m100
from nmt.config import ModelConfig, saved_model_config
from nmt.export import main as export_main
from nmt.import_hf import main as import_main
from nmt.inference import _dataclass_from
from nmt.models.build import build_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return build_m2m100(tmp_path_factory.mktemp("bad"))


def _refused(capsys, main, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def _copy(hf_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(hf_dir, tmp_path / "in"))


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _other_architecture(d: Path) -> None:
    _edit_json(d / "config.json", lambda c: c.update(model_type="bart", architectures=["BartForConditionalGeneration"]))


def _no_tokenizer(d: Path) -> None:
    (d / "sentencepiece.bpe.model").unlink()


def _fewer_rows(d: Path) -> None:
    state = load_file(d / "model.safetensors")
    state = {k: (v[:300].clone() if v.shape[0] > 400 and v.dim() == 2 else v) for k, v in state.items()}
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})


def _unknown_code(d: Path) -> None:
    def rename(tj):
        for t in tj["added_tokens"]:
            if t["content"] == "zul_Latn":
                t["content"] = "xyz_Latn"
    _edit_json(d / "tokenizer.json", rename)


def _layernorm_embedding(d: Path) -> None:
    state = load_file(d / "model.safetensors")
    state["model.encoder.layernorm_embedding.weight"] = torch.ones(64)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("break_it, expect", [
    (_other_architecture, "model_type 'bart'"),
    (_no_tokenizer, "sentencepiece.bpe.model is missing"),
    (_fewer_rows, "the embedding has 300 rows but the tokenizer has 454 ids"),
    (_unknown_code, "xyz_Latn are not Flores-200 codes"),
    (_layernorm_embedding, "layernorm_embedding"),
])
def test_bad_checkpoints_are_refused_and_nothing_is_written(hf_dir, tmp_path, capsys, break_it, expect):
    d = _copy(hf_dir, tmp_path)
    break_it(d)
    err = _refused(capsys, import_main, d, tmp_path / "out")
    assert expect in err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.fixture(scope="module")
def m2m_dir(tmp_path_factory) -> Path:
    return build_m2m100(tmp_path_factory.mktemp("bad_m2m"), tokenizer="m2m100")


def _vocab_list(d: Path) -> None:
    (d / "vocab.json").write_text(json.dumps(list(json.loads((d / "vocab.json").read_text()))))


def _vocab_without_unk(d: Path) -> None:
    _edit_json(d / "vocab.json", lambda v: v.pop("<unk>"))


def _vocab_too_large(d: Path) -> None:
    _edit_json(d / "config.json", lambda c: c.update(vocab_size=300))


def _vocab_gap(d: Path) -> None:
    _edit_json(d / "vocab.json", lambda v: v.update({"▁zzz": len(v) + 5}))


@pytest.mark.parametrize("break_it, expect", [
    (_vocab_list, "vocab.json is not a JSON object"),
    (_vocab_without_unk, "<unk> has id None where fairseq's layout has 3 (it lacks <unk>)"),
    (_vocab_too_large, "246 tokens and 100 language codes need 346 ids but config.json has vocab_size=300"),
    (_vocab_gap, "the ids are not 0 … 246, each once"),
])
def test_bad_m2m_tokenizers_are_refused_and_nothing_is_written(m2m_dir, tmp_path, capsys, break_it, expect):
    d = _copy(m2m_dir, tmp_path)
    break_it(d)
    err = _refused(capsys, import_main, d, tmp_path / "out")
    assert expect in err and "vocab" in err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_an_existing_output_directory_is_kept(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "already exists" in _refused(capsys, import_main, hf_dir, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def _old_export(tmp_path: Path, spm: Path) -> Path:
    """An nmt export whose config was written before model.position_offset existed."""
    from nmt.data.tokenizer import Tokenizer
    from nmt.export import tensors_for_safetensors, write_export_dir
    from nmt.inference import EXPORT_FORMAT

    tok = Tokenizer(spm)
    mcfg = {k: v for k, v in ModelConfig(d_model=32, heads=2, ffn_dim=64).__dict__.items() if k != "position_offset"}
    mcfg["moe"], mcfg["adapters"] = mcfg["moe"].__dict__, mcfg["adapters"].__dict__
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=32, heads=2, ffn_dim=64, position_offset=0), tok.vocab_size).eval()
    config = {"format": EXPORT_FORMAT, "format_version": 1, "model": mcfg, "vocab_size": tok.vocab_size,
              "tokenizer": {"file": "spm.model", "sha256": tok.sha256}, "weights": {"file": "model.safetensors"}}
    out = tmp_path / "old"
    write_export_dir(out, tensors_for_safetensors(model.state_dict()), config, spm, what="test")
    return out, model


def test_a_config_without_position_offset_loads_as_0_and_keeps_its_outputs(prepared_corpus, tmp_path, capsys):
    from nmt.inference import load_inference_checkpoint

    old_dir, reference = _old_export(tmp_path, prepared_corpus / "spm.model")
    ck = load_inference_checkpoint(old_dir)
    assert "position_offset" not in ck.model_config
    assert _dataclass_from(ModelConfig, saved_model_config(ck.model_config)).position_offset == 0
    assert ModelConfig().position_offset == 2  # new runs
    src, prev = torch.tensor([[10, 300, 301, 3]]), torch.tensor([[3, 10, 302]])
    with torch.no_grad():
        assert torch.equal(ck.build_model()(src, prev)[0], reference(src, prev)[0])
    err = _refused(capsys, export_main, old_dir, tmp_path / "hf", "--format", "hf")
    assert "position_offset=0" in err and not (tmp_path / "hf").exists()


def test_positions_match_m2m100_sinusoids():
    """Our table row p equals Transformers' M2M100 sinusoid for position p (rows past the pad row)."""
    from transformers.models.m2m_100.modeling_m2m_100 import (
        M2M100SinusoidalPositionalEmbedding,
    )

    from nmt.models.transformer import sinusoidal_table

    theirs = M2M100SinusoidalPositionalEmbedding.get_embedding(40, 64, padding_idx=1)
    ours = sinusoidal_table(40, 64)
    assert torch.allclose(ours[2:], theirs[2:], atol=1e-6) and theirs[1].abs().sum() == 0


def test_init_from_an_import_with_another_vocabulary_is_refused(hf_dir, prepared_corpus, tmp_path):
    from conftest import train_smoke

    import_main([str(hf_dir), str(tmp_path / "imported")])
    proc = train_smoke(prepared_corpus, tmp_path / "run", f"trainer.init_from={tmp_path / 'imported'}", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: ") and "vocabulary" in last \
        and "binarize" in last, proc.stderr[-500:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_training_refuses_the_legacy_source_convention(prepared_corpus, tmp_path):
    from conftest import train_smoke

    proc = train_smoke(prepared_corpus, tmp_path / "run", "model.source_convention=legacy", check=False)
    assert proc.returncode == 2 and "model.source_convention" in proc.stderr.strip().splitlines()[-1]


def test_a_run_started_before_position_offset_resumes_only_with_offset_0(tmp_path):
    import yaml

    from nmt.errors import UserError
    from nmt.training.run_setup import prepare_run_dir

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"d_model": 64}}))
    (tmp_path / "spm.model").write_bytes(b"not read: the run has no spm.model yet, so it is copied")
    for mode in ("auto", "true"):
        with pytest.raises(UserError, match="model.position_offset=0"):
            prepare_run_dir(run, tmp_path / "spm.model", "x", {"model": {"d_model": 64, "position_offset": 2}}, mode)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
    old = {"d_model": 64, "position_offset": 0, "source_convention": "tag_first", "absent_ids": []}
    assert prepare_run_dir(run, tmp_path / "spm.model", "x", {"model": old}, "auto")  # resumes


def test_bad_absent_ids_and_length_convention_are_refused(tmp_path):
    from conftest import run_module
    from nmt.errors import UserError

    with pytest.raises(UserError, match="model.absent_ids"):  # a record of another vocabulary
        build_model(ModelConfig(d_model=16, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=32,
                                absent_ids=[5, 300]), 40)
    proc = run_module("nmt.translate", "ckpt=unused", "src_lang=eng_Latn", "tgt_lang=fra_Latn",
                      "length_convention=fairseq", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: ") and "length_convention" in last, proc.stderr[-500:]
    proc = run_module("nmt.translate", "ckpt=unused", "src_lang=eng_Latn", "tgt_lang=fra_Latn", "backend=ct2",
                      "length_convention=hf", check=False)  # CTranslate2 has its own rule
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "backend=torch" in last, proc.stderr[-500:]
