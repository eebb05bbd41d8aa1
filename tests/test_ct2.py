"""CTranslate2 export and backend (nmt/interop/ct2.py, ct2_translate.py, backend.py).

Reference for the conversion and the search settings: Transformers' ``generate`` on a random
M2M100 (NLLB id layout). Reference for the whole path: our torch beam search on a model trained
here, exported with ``python -m nmt.export --format ct2`` (needs nmt.interop.hf_export).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from _fixtures_ct2 import CODES, random_m2m100_dir, train_plain_spm
from conftest import dict_sentences, render, run_module

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ctranslate2") is None or importlib.util.find_spec("transformers") is None,
    reason="ctranslate2 and transformers (the 'dev' extra) are not installed")

N_MAX = 12  # max_len: generated tokens including </s> (or the cut at the limit)


@pytest.fixture(scope="module")
def random_export(tmp_path_factory) -> tuple[Path, Path]:
    """(the Transformers directory, its float32 ct2 conversion)."""
    from nmt.interop.ct2 import convert_hf_dir

    root = tmp_path_factory.mktemp("ct2_random")
    hf = random_m2m100_dir(root / "hf", train_plain_spm(root / "spm"))
    convert_hf_dir(hf, root / "ct2")
    return hf, root / "ct2"


def _hf(hf: Path):
    from transformers import AutoTokenizer, M2M100ForConditionalGeneration

    return AutoTokenizer.from_pretrained(str(hf)), M2M100ForConditionalGeneration.from_pretrained(str(hf)).eval()


def _generate(hf: Path, sources: list[list[str]], tgt: str, suppress: list[str]) -> list[list[str]]:
    """Transformers' beam search (beam 4, no length normalisation) from the same source tokens;
    tokens without the tag and </s>."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    tok, model = _hf(hf)
    banned = tok.convert_tokens_to_ids(suppress)

    class Ban(LogitsProcessor):  # after the forced tag (HF refuses suppress_tokens that hold it)
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] > 1:
                scores[:, banned] = float("-inf")
            return scores

    out = []
    for src in sources:
        ids = torch.tensor([tok.convert_tokens_to_ids(src)])
        with torch.no_grad():
            gen = model.generate(ids, num_beams=4, forced_bos_token_id=tok.convert_tokens_to_ids(tgt),
                                 max_new_tokens=N_MAX, length_penalty=0.0, early_stopping=True, do_sample=False,
                                 logits_processor=LogitsProcessorList([Ban()]))
        toks = tok.convert_ids_to_tokens(gen[0].tolist())
        assert toks[:2] == ["</s>", tgt]
        out.append([t for t in toks[2:] if t not in ("</s>", "<pad>")])
    return out


def _lines(n: int, seed: int) -> list[str]:
    return [render(s, "eng_Latn") for s in dict_sentences(n, seed)]


def test_random_model_ct2_equals_transformers_generate(random_export):
    """Unnormalised scores (lenpen 0): the best finished hypothesis is the same for any stopping rule."""
    from nmt.interop.ct2_translate import Ct2Translator

    hf, ct2 = random_export
    tr = Ct2Translator(ct2)
    lines = _lines(30, 11)
    got = [h for h, _ in tr.translate_scored(lines, "eng_Latn", "fra_Latn", beam_size=4, len_penalty=0.0,
                                             max_len_a=0.0, max_len_b=N_MAX)]
    want = _generate(hf, [tr.source_tokens(line, "eng_Latn") for line in lines], "fra_Latn",
                     tr.meta["suppress_tokens"])
    assert all(len(h) <= N_MAX - 1 for h in got + want)  # the limit counts </s>, as ours does
    # At the limit CTranslate2 and Transformers keep unfinished hypotheses (ours forces </s>),
    # with different bookkeeping: compare the lines that ended with </s> before it.
    ended = [i for i in range(len(lines)) if max(len(got[i]), len(want[i])) < N_MAX - 1]
    # The one documented difference (nmt/interop/ct2_translate.py): at the first free step
    # CTranslate2 drops </s> from every beam but the best, so it never returns the empty
    # translation that Transformers (and ours) can pick from a lower-ranked beam.
    differ = [i for i in ended if got[i] != want[i]]
    assert all(want[i] == [] and got[i] != [] for i in differ), [(got[i], want[i]) for i in differ]
    assert len([i for i in ended if want[i]]) >= 3, (got, want)  # enough non-empty lines compared


def test_random_model_ct2_length_normalisation_is_ours(random_export):
    """score = Σ log p(tokens, </s>) ÷ (tokens + 1) ** lenpen, the tag neither scored nor counted
    (nmt.eval.search); checked against a teacher-forced Transformers forward."""
    import torch

    from nmt.interop.ct2_translate import Ct2Translator

    hf, ct2 = random_export
    tok, model = _hf(hf)
    tr = Ct2Translator(ct2)
    lines = _lines(12, 11)
    checked = 0
    scored = tr.translate_scored(lines, "eng_Latn", "fra_Latn", beam_size=4, len_penalty=1.0, max_len_a=0.0,
                                 max_len_b=N_MAX)
    for line, (hyp, score) in zip(lines, scored, strict=True):
        if len(hyp) >= N_MAX - 1:
            continue  # cut at the limit: no </s> to score
        src = torch.tensor([tok.convert_tokens_to_ids(tr.source_tokens(line, "eng_Latn"))])
        tgt = tok.convert_tokens_to_ids(["</s>", "fra_Latn", *hyp, "</s>"])
        with torch.no_grad():
            logits = model(input_ids=src, decoder_input_ids=torch.tensor([tgt[:-1]])).logits[0]
        lp = torch.log_softmax(logits.float(), -1)[torch.arange(1, len(tgt) - 1), tgt[2:]]
        assert score == pytest.approx(float(lp.sum()) / (len(hyp) + 1), abs=1e-4)
        checked += 1
    assert checked >= 3


def test_config_records_languages_convention_and_suppressed_tokens(random_export):
    meta = json.loads((random_export[1] / "config.json").read_text())
    assert meta["format"] == "ct2" and meta["quantization"] == "none"
    assert meta["languages"] == sorted(CODES) and meta["source_convention"] == "lang_first"
    assert {"<s>", "<pad>", *CODES} <= set(meta["suppress_tokens"]) and "</s>" not in meta["suppress_tokens"]
    assert (random_export[1] / "sentencepiece.bpe.model").is_file()


def test_translate_cli_backend_ct2_matches_in_process(random_export, tmp_path):
    from nmt.interop.ct2_translate import Ct2Translator

    lines = _lines(5, 12)
    lines.insert(2, "")
    src = tmp_path / "in.txt"
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    proc = run_module("nmt.translate", "backend=ct2", f"ckpt={random_export[1]}", "src_lang=eng_Latn",
                      "tgt_lang=fra_Latn", f"input={src}", "beam=4")
    out = proc.stdout.split("\n")[:-1]
    assert out == Ct2Translator(random_export[1]).translate(lines, "eng_Latn", "fra_Latn", beam_size=4)
    assert len(out) == len(lines) and out[2] == ""


def test_int8_export_evaluates_and_reports_chrf(random_export, tmp_path):
    from nmt.interop.ct2 import convert_hf_dir

    int8 = tmp_path / "int8"
    assert convert_hf_dir(random_export[0], int8, quantization="int8")["quantization"] == "int8"
    flores = tmp_path / "flores" / "devtest"
    flores.mkdir(parents=True)
    sents = dict_sentences(6, 13)
    for code in ("eng_Latn", "fra_Latn"):
        (flores / f"{code}.devtest").write_text("".join(render(s, code) + "\n" for s in sents), encoding="utf-8")
    run_module("nmt.evaluate", "backend=ct2", f"ckpt={int8}", f"flores.dir={flores.parent}",
               "directions=[eng_Latn-fra_Latn]", f"out_dir={tmp_path / 'eval'}", "device=cpu", "beam=2")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["decoding"]["backend"] == "ct2"
    chrf = results["directions"]["eng_Latn-fra_Latn"]["chrf++"]
    assert 0.0 <= chrf <= 100.0
    print(f"int8 random model chrF++ {chrf:.1f}")


@pytest.mark.parametrize("args, needle", [
    (["nmt.translate", "backend=ct2", "ckpt={pt}", "src_lang=eng_Latn", "tgt_lang=fra_Latn"],
     "backend=ct2 takes a CTranslate2 export directory"),
    (["nmt.translate", "backend=onnx", "ckpt={pt}", "src_lang=eng_Latn", "tgt_lang=fra_Latn"], "backend='onnx'"),
    (["nmt.translate", "backend=torch", "ckpt={ct2}", "src_lang=eng_Latn", "tgt_lang=fra_Latn"],
     "is a CTranslate2 export; translate it with backend=ct2"),
    (["nmt.export", "{pt}", "{out}", "--format", "ct2", "--quantization", "int4"], "--quantization 'int4'"),
])
def test_bad_input_one_error_line_exit_2(random_export, tmp_path, args, needle):
    pt = tmp_path / "best.pt"
    pt.write_bytes(b"not used")
    fill = {"pt": pt, "ct2": random_export[1], "out": tmp_path / "out"}
    proc = run_module(*[a.format(**fill) for a in args], check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_convert_refuses_non_m2m100_and_existing_output(random_export, tmp_path):
    from nmt.errors import UserError
    from nmt.interop.ct2 import convert_hf_dir

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bart"}))
    (bad / "tokenizer_config.json").write_text("{}")
    with pytest.raises(UserError, match="model_type 'bart'"):
        convert_hf_dir(bad, tmp_path / "o")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        convert_hf_dir(random_export[0], random_export[1])
    with pytest.raises(UserError, match="not an earlier ct2 export"):
        convert_hf_dir(random_export[0], bad, overwrite=True)


def test_a_banned_token_that_wins_is_searched_again_with_it_suppressed(random_export):
    """The search runs without suppress_sequences (ours bans after the softmax); a sentence whose
    best hypothesis holds a banned token is searched again with the tokens suppressed."""
    from nmt.interop.ct2_translate import Ct2Translator

    tr = Ct2Translator(random_export[1])
    lines = _lines(8, 14)
    first = [h for h, _ in tr.translate_scored(lines, "eng_Latn", "fra_Latn", beam_size=4)]
    frequent = max({t for h in first for t in h}, key=lambda t: sum(h.count(t) for h in first))
    tr._banned.add(frequent)  # as if the export had banned it
    tr._suppress.append([frequent])
    again = [h for h, _ in tr.translate_scored(lines, "eng_Latn", "fra_Latn", beam_size=4)]
    assert any(frequent in h for h in first) and all(frequent not in h for h in again)
    assert all(a == f for f, a in zip(first, again, strict=True) if frequent not in f)  # the others: not searched again


def test_backend_ct2_refuses_an_untrained_language_like_torch(random_export, tmp_path):
    from nmt.interop.ct2 import convert_hf_dir

    ct2 = tmp_path / "ct2"
    convert_hf_dir(random_export[0], ct2, languages=["eng_Latn", "fra_Latn"])
    src = tmp_path / "in.txt"
    src.write_text(_lines(1, 15)[0] + "\n", encoding="utf-8")
    args = ["nmt.translate", "backend=ct2", f"ckpt={ct2}", "src_lang=deu_Latn", "tgt_lang=fra_Latn", f"input={src}"]
    proc = run_module(*args, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: the model was not trained on deu_Latn")
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    proc = run_module(*args, "allow_untrained_lang=true")
    assert "warning: the model was not trained on deu_Latn" in proc.stderr and len(proc.stdout.splitlines()) == 1
