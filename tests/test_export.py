"""python -m nmt.export: a .pt or .dcp training checkpoint → model.safetensors + config.json + spm.model,
loaded by nmt.translate / nmt.evaluate exactly like the checkpoint it came from."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import run_module, train_smoke
from nmt.evaluate import main as evaluate_main
from nmt.export import main as export_main
from nmt.inference import Translator, load_inference_checkpoint
from nmt.training.checkpoint import load_checkpoint, save_checkpoint
from nmt.training.sharded import load_model_tensors
from nmt.translate import main as translate_main

LINES = ["time year people", "", "water room book", "the child and the mother", "word"]


def _export(capsys, *argv: str) -> str:
    export_main([str(a) for a in argv])
    return capsys.readouterr().out


def _refused(capsys, *argv: str) -> str:
    """The export exits 2 with exactly one ``error:`` line on stderr; returns it."""
    with pytest.raises(SystemExit) as e:
        export_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def other_spm(tmp_path_factory):
    """A valid SentencePiece model that is not the run's vocabulary."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("other_spm")
    (d / "text.txt").write_text("".join(f"{w} {w[::-1]} {i}\n" for i, w in enumerate(LINES * 40)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(d / "text.txt"), model_prefix=str(d / "other"), vocab_size=40,
                                   hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
    return d / "other.model"


@pytest.fixture(scope="module")
def moe_dcp_run(prepared_corpus, tmp_path_factory):
    """A 10-step single-process MoE run with sharded (.dcp) checkpoints."""
    run = tmp_path_factory.mktemp("moe_dcp")
    train_smoke(prepared_corpus, run, "trainer.checkpoint_format=dcp", "model.moe.experts=4",
                "model.moe.encoder_freq=1", "model.moe.decoder_freq=1", "trainer.max_steps=10")
    return run


def test_export_of_a_pt_checkpoint_translates_and_evaluates_identically(smoke_run, prepared_corpus, tmp_path, capsys):
    ckpt = smoke_run / "checkpoints" / "best.pt"
    out = tmp_path / "export"
    printed = _export(capsys, ckpt, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "spm.model"]
    assert "parameters" in printed and str(out) in printed
    assert not list(tmp_path.glob(".export*"))  # no temporary directory left behind

    state = load_checkpoint(ckpt)
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert cfg["format"] == "nmt-inference" and cfg["format_version"] == 1 and cfg["nmt_version"]
    assert cfg["model"] == state["config"]["model"] and cfg["eval"] == state["config"]["eval"]
    assert cfg["directions"] == state["directions"]
    assert set(cfg["languages"]) == {"eng_Latn", "fra_Latn", "deu_Latn"}
    assert cfg["tokenizer"]["sha256"] == state["tokenizer"]["sha256"]
    assert cfg["source"]["step"] == state["step"] and cfg["source"]["checkpoint"] == str(ckpt.resolve())
    assert (out / "spm.model").read_bytes() == (smoke_run / "spm.model").read_bytes()

    # the full model, every tensor contiguous and equal; no optimizer or training state
    tensors = load_file(out / "model.safetensors")
    assert tensors.keys() == state["model"].keys()
    for k, v in tensors.items():
        assert v.is_contiguous() and torch.equal(v, state["model"][k]), k
    assert not [k for k in tensors if "optim" in k or "exp_avg" in k]
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata()["format"] == "nmt-inference"
    assert cfg["weights"]["parameters"] == sum(v.numel() for v in tensors.values())

    # translate: the export, its model.safetensors and the .pt give exactly the same hypotheses
    src = tmp_path / "in.txt"
    src.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
    outs = {}
    for name, path in [("pt", ckpt), ("export", out), ("weights", out / "model.safetensors")]:
        translate_main([f"ckpt={path}", "src_lang=eng_Latn", "tgt_lang=fra_Latn", f"input={src}", "beam=2",
                        f"output={tmp_path / name}.txt"])  # in-process: the CLI is run as a subprocess below
        outs[name] = (tmp_path / f"{name}.txt").read_text(encoding="utf-8")
    assert outs["pt"] == outs["export"] == outs["weights"] and len(outs["pt"].splitlines()) == len(LINES)

    # evaluate: same hypotheses and scores
    results = {}
    for name, path in [("pt", ckpt), ("export", out)]:
        evaluate_main([f"ckpt={path}", f"flores.dir={prepared_corpus / 'flores'}", "beam=2", "max_lines=5",
                       "directions=[eng_Latn-fra_Latn,deu_Latn-eng_Latn]", f"out_dir={tmp_path / 'ev' / name}"])
        results[name] = json.loads((tmp_path / "ev" / name / "results.json").read_text(encoding="utf-8"))
        for d in ("eng_Latn-fra_Latn", "deu_Latn-eng_Latn"):
            results[name][d] = (tmp_path / "ev" / name / "hyp" / f"{d}.hyp").read_text(encoding="utf-8")
    for key in ("directions", "eng_Latn-fra_Latn", "deu_Latn-eng_Latn"):
        assert results["pt"][key] == results["export"][key]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_export_of_a_sharded_moe_checkpoint(moe_dcp_run, tmp_path, capsys):
    dcp = moe_dcp_run / "checkpoints" / "best.dcp"
    assert dcp.is_dir()
    out = tmp_path / "moe_export"
    _export(capsys, dcp, out)
    tensors = load_file(out / "model.safetensors")
    full = load_model_tensors(dcp)
    assert tensors.keys() == full.keys()
    for k, v in full.items():
        assert torch.equal(tensors[k], v), k
    experts = [k for k in tensors if ".experts." in k]
    assert experts and all(tensors[k].shape[0] == 4 for k in experts)  # whole [E, ...] tensors
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert cfg["source"]["kind"] == "dcp" and cfg["source"]["step"] == 10 and cfg["model"]["moe"]["experts"] == 4

    # a sharded checkpoint whose save was interrupted (no manifest) is refused, nothing written
    broken = tmp_path / "broken.dcp"
    shutil.copytree(dcp, broken)
    (broken / "nmt_manifest.json").unlink()
    assert "nmt_manifest.json" in _refused(capsys, broken, tmp_path / "never")
    assert not (tmp_path / "never").exists()

    # the export and the .dcp directory itself translate the same
    lines = [line for line in LINES if line]
    hyps = {p: Translator.from_checkpoint(p).translate(lines, "eng_Latn", "deu_Latn", beam_size=2) for p in (out, dcp)}
    assert hyps[out] == hyps[dcp] and len(hyps[out]) == len(lines)


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(smoke_run, other_spm, tmp_path, capsys):
    ckpt = smoke_run / "checkpoints" / "best.pt"
    out = tmp_path / "out"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:4000])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all\n")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    # a run directory without its spm.model (and whose checkpoint records a path that is gone too)
    norun = tmp_path / "norun"
    state = load_checkpoint(ckpt)
    state["tokenizer"] = {**state["tokenizer"], "path": str(tmp_path / "gone" / "spm.model")}
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, norun / "checkpoints" / "best.pt")
    for argv, needle in [
        ([tmp_path / "none.pt", out], "none.pt"),
        ([truncated, out], "truncated.pt"),
        ([junk, out], "junk.pt"),
        ([foreign, out], "not an nmt checkpoint"),
        ([tmp_path, out], "not an nmt checkpoint"),
        ([smoke_run, out], "best.pt"),  # a run directory: the message names the checkpoint to pass
        ([ckpt], "usage"),
        ([ckpt, out, "--bogus"], "usage"),
    ]:
        err = _refused(capsys, *argv)
        assert needle in err, (argv, err)
        assert not out.exists() and not list(tmp_path.glob(".out*"))

    err = _refused(capsys, norun / "checkpoints" / "best.pt", out)
    assert "spm.model" in err and str(norun / "spm.model") in err
    shutil.copy(other_spm, norun / "spm.model")  # another vocabulary
    err = _refused(capsys, norun / "checkpoints" / "best.pt", out)
    assert "sha256" in err and str(norun / "spm.model") in err
    assert not out.exists()

    # an existing OUT_DIR: refused without --overwrite, and --overwrite replaces only an earlier export
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    assert "--overwrite" in _refused(capsys, ckpt, other)
    assert "not an earlier nmt export" in _refused(capsys, ckpt, other, "--overwrite")
    assert "holds the checkpoint" in _refused(capsys, ckpt, smoke_run, "--overwrite")
    assert (other / "keep.txt").read_text() == "keep" and sorted(p.name for p in other.iterdir()) == ["keep.txt"]
    _export(capsys, ckpt, out)
    (out / "stale").write_text("x")
    assert "--overwrite" in _refused(capsys, ckpt, out)
    _export(capsys, ckpt, out, "--overwrite")
    assert not (out / "stale").exists() and (out / "model.safetensors").is_file()

    # the real command line: one line on stderr, exit 2, no traceback
    proc = run_module("nmt.export", junk, tmp_path / "cli", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "junk.pt" in proc.stderr and not (tmp_path / "cli").exists()


def test_a_damaged_export_is_refused_clearly(smoke_run, other_spm, tmp_path, capsys):
    good = tmp_path / "good"
    _export(capsys, smoke_run / "checkpoints" / "best.pt", good)
    Translator.from_checkpoint(good)

    def damaged(name: str, change) -> str:
        d = tmp_path / name
        shutil.copytree(good, d)
        change(d)
        with pytest.raises(Exception) as e:
            load_inference_checkpoint(d)
        assert type(e.value).__name__ == "UserError"
        return str(e.value)

    def flip(d):
        raw = bytearray((d / "model.safetensors").read_bytes())
        raw[-10] ^= 0xFF
        (d / "model.safetensors").write_bytes(bytes(raw))

    def other_vocab(d):
        shutil.copy(other_spm, d / "spm.model")

    def newer(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["format_version"] = 99
        (d / "config.json").write_text(json.dumps(cfg))

    assert "corrupt" in damaged("flipped", flip)
    assert "truncated" in damaged("cut", lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 100))
    assert "spm.model" in damaged("nospm", lambda d: (d / "spm.model").unlink())
    assert "sha256" in damaged("vocab", other_vocab)
    assert "config.json" in damaged("noconfig", lambda d: (d / "config.json").unlink())
    assert "newer" in damaged("newer", newer)
    proc = run_module("nmt.translate", f"ckpt={tmp_path / 'flipped'}", "src_lang=eng_Latn", "tgt_lang=fra_Latn",
                      f"input={tmp_path / 'good' / 'config.json'}", check=False)
    assert proc.returncode == 2 and "model.safetensors" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_writes_next_to_the_checkpoint_it_was_given(tmp_path):
    from nmt.evaluate import EvalConfig, default_out_dir

    export = tmp_path / "exports" / "x"
    export.mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.dcp").mkdir(parents=True)
    assert default_out_dir(EvalConfig(ckpt=str(export))) == export / "eval" / "devtest"
    assert default_out_dir(EvalConfig(ckpt=str(export / "model.safetensors"))) == export / "eval" / "devtest"
    for name in ("best.pt", "best.dcp"):
        got = default_out_dir(EvalConfig(ckpt=str(tmp_path / "run" / "checkpoints" / name), split="dev"))
        assert got == tmp_path / "run" / "eval" / "dev"
