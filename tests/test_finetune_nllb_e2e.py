"""The README's "Adapt NLLB-200 to your data and language" flow, command by command, on a tiny random
NLLB-layout model that lacks deu_Latn and the prepared test corpus (which has it):

import → add-language deu_Latn → binarize with the new spm → train +recipe=nllb_finetune →
evaluate with the delta table against the import → export hf → Transformers loads it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from _fixtures_hf import build_m2m100, build_nllb_moe
from conftest import dict_sentences, render, run_module

NEW = "deu_Latn"
OLD = ["eng_Latn-fra_Latn", "fra_Latn-eng_Latn"]
# Few hundred steps at a learning rate the random tiny model learns with (the recipe's 5e-5 is for a
# trained NLLB model); one thread, fp32, no validation until the end.
FAST = ["trainer.max_steps=200", "optim.lr=3e-3", "optim.warmup_steps=30", "trainer.valid_interval=200",
        "trainer.log_interval=100", "trainer.progress=false", "trainer.precision=fp32", "trainer.threads=1",
        "data.max_tokens=1024", "trainer.valid_max_sentences=20"]


def _prepare(root: Path, prepared_corpus: Path, hf_dir: Path) -> tuple[Path, Path]:
    """Commands 1–3: import, add the language, binarize the corpus with the extended vocabulary."""
    imported, extended, corpus = root / "imported", root / "extended", root / "corpus"
    run_module("nmt.import_hf", hf_dir, imported)
    assert NEW not in json.loads((imported / "config.json").read_text())["languages"]
    run_module("nmt.vocab", "add-language", imported, extended, "--lang", NEW)
    assert NEW in json.loads((extended / "config.json").read_text())["languages"]
    shutil.copytree(prepared_corpus, corpus)
    r = run_module("data_prep.binarize", "--corpus", corpus, "--spm", extended / "spm.model", "--overwrite",
                   "--workers", "1")
    assert "is now" in r.stdout
    assert (corpus / "spm.model").read_bytes() == (extended / "spm.model").read_bytes()
    return extended, corpus


def _evaluate(ckpt: Path, corpus: Path, out: Path, *extra: str) -> dict:
    run_module("nmt.evaluate", f"ckpt={ckpt}", f"flores.dir={corpus / 'flores'}", "split=devtest", "max_lines=20",
               "beam=1", f"out_dir={out}", *extra)
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_adapt_nllb_to_a_new_language(prepared_corpus, tmp_path):
    hf_dir = build_m2m100(tmp_path / "hf_src", without=(NEW,))
    extended, corpus = _prepare(tmp_path, prepared_corpus, hf_dir)
    reference = _evaluate(tmp_path / "imported", corpus, tmp_path / "eval_ref", f"directions=[{','.join(OLD)}]")
    new = f"eng_Latn-{NEW}"
    before = _evaluate(extended, corpus, tmp_path / "eval_before", f"directions=[{new}]")["directions"][new]

    run = tmp_path / "run"
    r = run_module("nmt.train", "+recipe=nllb_finetune", f"trainer.init_from={extended}", f"data.corpus={corpus}",
                   f"hydra.run.dir={run}", *FAST, timeout=600)
    assert "initialised from" in r.stdout
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert (model["d_model"], model["encoder_layers"], model["ffn_dim"]) == (64, 2, 128)  # the import's

    results = _evaluate(run / "checkpoints" / "best.pt", corpus, tmp_path / "eval_ft",
                        f"reference_results={tmp_path / 'eval_ref' / 'results.json'}")
    rows = results["forgetting"]["directions"]
    for d in OLD:  # untouched directions: a change against the import's score
        assert rows[d]["delta_chrf++"] == pytest.approx(results["directions"][d]["chrf++"] - rows[d]["ref_chrf++"])
    assert new in results["directions"] and new not in reference["directions"]
    assert results["directions"][new]["chrf++"] > before["chrf++"] + 5, (before, results["directions"][new])

    _check_transformers(run / "checkpoints" / "best.pt", tmp_path / "hf_out")


def _check_transformers(ckpt: Path, out: Path) -> None:
    """Export hf; Transformers loads model and tokenizer, knows the new code, and computes our logits."""
    transformers = pytest.importorskip("transformers")
    from nmt.inference import load_inference_checkpoint
    from nmt.interop.vocab_layout import make_layout, spm_to_fairseq
    from nmt.langs import FLORES200

    run_module("nmt.export", ckpt, out, "--format", "hf")
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(out)).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ck = load_inference_checkpoint(ckpt)
    _, has_mask = spm_to_fairseq(ck.tokenizer.path.read_bytes(), "spm")
    fid = torch.tensor(make_layout(ck.tokenizer.vocab_size, list(FLORES200), has_mask).fairseq_id)
    tok = ck.tokenizer
    assert hf_tok.convert_tokens_to_ids(NEW) == int(fid[tok.lang_id(NEW)]) != hf_tok.unk_token_id
    lines = [render(words, "eng_Latn") for words in dict_sentences(4, 7)]
    src = [[tok.lang_id("eng_Latn"), *tok.encode(s), tok.eos_id] for s in lines]
    prev = [[tok.eos_id, tok.lang_id(NEW), *tok.encode(s)[:3]] for s in lines]
    s, p = _pad(src), _pad(prev)
    ours = ck.build_model().float().eval()
    with torch.no_grad():
        logits, _ = ours(s, p)
        theirs = hf(input_ids=fid[s], attention_mask=s.ne(0).long(), decoder_input_ids=fid[p]).logits
    absent = ck.model_config["absent_ids"]  # tag slots the NLLB import lacked: -inf in ours (docs/interop.md)
    assert tok.lang_id(NEW) not in absent and tok.lang_id("eng_Latn") not in absent
    known = fid >= 0
    known[absent] = False
    assert theirs[p.ne(0)].std() > 0.1  # a real comparison, not of near-zero logits
    diff = (logits[..., known] - theirs[..., fid[known]])[p.ne(0)].abs().max().item()
    assert diff < 1e-4, diff


def _pad(seqs: list[list[int]]) -> torch.Tensor:
    t = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.long)
    for i, s in enumerate(seqs):
        t[i, : len(s)] = torch.tensor(s)
    return t


@pytest.mark.slow
def test_finetune_an_nllb_moe_import(prepared_corpus, tmp_path):
    """The recipe on an NLLB-MoE import: the experts' layout comes from the checkpoint, training runs,
    and trainer.freeze=[experts] keeps the expert weights while the rest moves."""
    hf_dir = build_nllb_moe(tmp_path / "hf_src", without=(NEW,))
    extended, corpus = _prepare(tmp_path, prepared_corpus, hf_dir)
    run = tmp_path / "run"
    run_module("nmt.train", "+recipe=nllb_finetune", f"trainer.init_from={extended}", f"data.corpus={corpus}",
               f"hydra.run.dir={run}", "trainer.freeze=[experts]", *FAST[1:], "trainer.max_steps=20",
               "trainer.valid_interval=20", "optim.warmup_steps=5", timeout=600)
    from nmt.inference import load_inference_checkpoint

    before, after = load_inference_checkpoint(extended), load_inference_checkpoint(run / "checkpoints" / "last.pt")
    assert after.model_config["moe"]["experts"] == 4 and after.model_config["moe"]["encoder_freq"] == 2
    experts = [k for k in before.state if ".ffn.experts." in k]
    assert experts and all(torch.equal(before.state[k], after.state[k]) for k in experts)
    assert not torch.equal(before.state["embed.weight"], after.state["embed.weight"])
