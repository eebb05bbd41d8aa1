"""python -m nmt.vocab add-language: a new tag (spare slot or Flores slot), new pieces, grown embeddings;
old inputs keep their logits; the new tag is used; trainer.init_from works on the grown vocabulary."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from conftest import dict_sentences, render, run_module, train_smoke
from nmt.data.tokenizer import FIRST_TAG_ID, Tokenizer
from nmt.errors import UserError
from nmt.inference import Translator, load_inference_checkpoint
from nmt.langs import FLORES200
from nmt.translate import main as translate_main
from nmt.vocab import spm_edit
from nmt.vocab.__main__ import main as vocab_main

NEW = "xyz_Latn_abcd1234"  # not a Flores-200 code: takes the first spare slot
SPARE0 = FIRST_TAG_ID + len(FLORES200)


def new_word(w: str) -> str:  # a made-up language with a letter the old vocabulary lacks
    return "ki" + w.replace("o", "ŋo") + "wa"


def new_lines(n: int, seed: int) -> list[str]:
    return [" ".join(new_word(w) for w in s) for s in dict_sentences(n, seed)]


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("texts")
    (d / "new.txt").write_text("\n".join(new_lines(300, 5)) + "\n", encoding="utf-8")
    (d / "fra.txt").write_text("".join(render(s, "fra_Latn") + "\n" for s in dict_sentences(200, 7)), encoding="utf-8")
    return {"new": d / "new.txt", "fra": d / "fra.txt"}


@pytest.fixture(scope="module")
def extended(smoke_run, texts, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ext") / "export"
    proc = run_module("nmt.vocab", "add-language", smoke_run / "checkpoints" / "last.pt", out, "--lang", NEW,
                      "--text", texts["new"], "--new-pieces", "30", "--old-text", texts["fra"])
    return out, proc.stdout


def test_export_layout_and_vocabulary(smoke_run, extended):
    out, stdout = extended
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    old, new = Tokenizer(smoke_run / "spm.model"), Tokenizer(out / "spm.model")
    assert cfg["languages"] == ["deu_Latn", "eng_Latn", "fra_Latn", NEW]
    assert cfg["added_languages"] == {NEW: SPARE0} and new.added_languages() == {NEW: SPARE0}
    assert cfg["vocab_size"] == new.vocab_size and old.vocab_size < new.vocab_size <= old.vocab_size + 30
    assert new.lang_id(NEW) == SPARE0 and new.id_to_piece(SPARE0 + 1) == "__spare1__"
    new.check_tags()  # the renamed spare slot is a valid layout
    a, b = spm_edit.parse(old.path.read_bytes()), spm_edit.parse(new.path.read_bytes())
    same = [(p.piece, p.score, p.type) for p in a.pieces]
    same[SPARE0] = (f"__{NEW}__", *same[SPARE0][1:])
    assert [(p.piece, p.score, p.type) for p in b.pieces[: len(a.pieces)]] == same  # old ids and scores kept
    assert max(p.score for p in b.pieces[len(a.pieces):]) < min(p.score for p in a.pieces if p.type == 1)
    assert "tokens/char" in stdout and "of its lines changed" in stdout


def test_unk_rate_and_tokens_per_char_fall(smoke_run, extended, texts):
    out, stdout = extended
    lines = texts["new"].read_text(encoding="utf-8").splitlines()
    before = spm_edit.text_stats(spm_edit.processor(spm_edit.parse((smoke_run / "spm.model").read_bytes())), lines)
    after = spm_edit.text_stats(spm_edit.processor(spm_edit.parse((out / "spm.model").read_bytes())), lines)
    assert before["unk_rate"] > 0 and after["unk_rate"] == 0  # "ŋ" is a new piece
    assert after["tokens_per_char"] < before["tokens_per_char"]
    row = next(line for line in stdout.splitlines() if line.startswith("after"))
    assert f"{after['tokens_per_char']:.3f}" in row


def test_old_inputs_keep_their_logits(smoke_run, extended):
    out, _ = extended
    old_ck, new_ck = load_inference_checkpoint(smoke_run / "checkpoints" / "last.pt"), load_inference_checkpoint(out)
    old_m, new_m = old_ck.build_model(), new_ck.build_model()
    tok = old_ck.tokenizer
    rng = random.Random(0)
    src = [tok.lang_id("fra_Latn")] + tok.encode(render(dict_sentences(1, 3)[0], "fra_Latn")) + [tok.eos_id]
    prev = [tok.eos_id, tok.lang_id("eng_Latn")] + [rng.randrange(SPARE0 + 52, tok.vocab_size) for _ in range(6)]
    s, p = torch.tensor([src]), torch.tensor([prev])
    langs = (torch.tensor([FLORES200.index("fra_Latn")]), torch.tensor([FLORES200.index("eng_Latn")]))
    with torch.no_grad():
        a, _ = old_m(s, p, *langs)
        b, _ = new_m(s, p, *langs)
    keep = [i for i in range(tok.vocab_size) if i != SPARE0]  # the new tag's row was re-initialised
    assert b.shape[-1] > a.shape[-1]
    assert torch.equal(a[..., keep], b[..., keep])
    w_old, w_new = old_ck.state["embed.weight"], new_ck.state["embed.weight"]
    langs_rows = w_old[[tok.lang_id(c) for c in ("deu_Latn", "eng_Latn", "fra_Latn")]].double().mean(0).float()
    assert torch.equal(w_new[SPARE0], langs_rows)  # --init mean: the mean of the model's language tags


def test_new_piece_rows_are_means_of_their_old_pieces(smoke_run, extended):
    out, _ = extended
    old_ck = load_inference_checkpoint(smoke_run / "checkpoints" / "last.pt")
    w_old, w_new = old_ck.state["embed.weight"], load_inference_checkpoint(out).state["embed.weight"]
    new_tok = Tokenizer(out / "spm.model")
    literal = spm_edit.literal_processor(spm_edit.parse((smoke_run / "spm.model").read_bytes()))
    for i in range(old_ck.tokenizer.vocab_size, new_tok.vocab_size):
        ids = literal.encode(new_tok.id_to_piece(i).replace("\u2581", " "), out_type=int)
        assert "".join(literal.id_to_piece(j) for j in ids).replace("<unk>", "ŋ") in new_tok.id_to_piece(i) + "ŋ" * 9
        assert torch.equal(w_new[i], w_old[ids].double().mean(0).float())


def test_translating_into_the_new_code_uses_its_tag(extended, monkeypatch):
    out, _ = extended
    import nmt.inference as inference

    seen = {}
    real = inference.beam_search

    def spy(model, src, tgt_tag, **kw):
        seen.update(tgt_tag=tgt_tag.tolist(), tgt_lang=kw["tgt_lang"].tolist())
        return real(model, src, tgt_tag, **kw)

    monkeypatch.setattr(inference, "beam_search", spy)
    tr = Translator.from_checkpoint(out)
    assert tr.languages == ["deu_Latn", "eng_Latn", "fra_Latn", NEW]
    assert len(tr.translate(["time year"], "eng_Latn", NEW, beam_size=1)) == 1
    assert seen == {"tgt_tag": [SPARE0], "tgt_lang": [len(FLORES200)]}
    seen.clear()
    src, hyp = out.parent / "in.txt", out.parent / "out.txt"
    src.write_text("time year\nwater\n", encoding="utf-8")
    translate_main([f"ckpt={out}", f"src_lang={NEW}", "tgt_lang=eng_Latn", f"input={src}", f"output={hyp}", "beam=1"])
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == 2
    assert seen["tgt_tag"] == [FIRST_TAG_ID + FLORES200.index("eng_Latn")] * 2


def test_init_from_a_grown_vocabulary(smoke_run, prepared_corpus, texts, tmp_path):
    """A Flores-200 code the model never trained (its own slot) with new pieces; fine-tune on a corpus
    binarized with the export's spm.model; the old corpus (old vocabulary) is refused naming both."""
    out = tmp_path / "swh"
    vocab_main(["add-language", str(smoke_run / "checkpoints" / "last.pt"), str(out), "--lang", "swh_Latn",
                "--init", "from:fra_Latn", "--text", str(texts["new"]), "--new-pieces", "20"])
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert "added_languages" not in cfg and cfg["vocab_edit"]["tag_id"] == FIRST_TAG_ID + FLORES200.index("swh_Latn")
    corpus = tmp_path / "corpus"
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, (n, seed) in {"train": (200, 11), "valid": (20, 12)}.items():
        sents = dict_sentences(n, seed)
        (raw / f"{split}.swh").write_text("".join(" ".join(new_word(w) for w in s) + "\n" for s in sents),
                                          encoding="utf-8")
        (raw / f"{split}.eng").write_text("".join(render(s, "eng_Latn") + "\n" for s in sents), encoding="utf-8")
        run_module("data_prep.import_corpus", "--out", corpus, "--format", "moses", "--split", split, "--src-lang",
                   "swh_Latn", "--tgt-lang", "eng_Latn", "--files", raw / f"{split}.swh", raw / f"{split}.eng",
                   *(["--append"] if (corpus / "manifest.json").exists() else []))
    shutil.copy(out / "spm.model", corpus / "spm.model")
    run_module("data_prep.binarize", "--corpus", corpus)
    fast = ["trainer.max_steps=3", "optim.warmup_steps=1", "trainer.valid_interval=3", "trainer.valid_max_sentences=4"]
    train_smoke(corpus, tmp_path / "run", f"trainer.init_from={out}", *fast)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["languages"] == ["deu_Latn", "eng_Latn", "fra_Latn", "swh_Latn"]  # the base's and the new one
    assert state["model"]["embed.weight"].shape[0] == cfg["vocab_size"]

    bad = train_smoke(prepared_corpus, tmp_path / "bad", f"trainer.init_from={out}", *fast, check=False)
    err = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 2 and err.startswith("error: trainer.init_from=") and "Traceback" not in bad.stderr
    assert str(out / "spm.model") in err and str(prepared_corpus / "spm.model") in err


def test_keep_old_segmentation_skips_pieces_of_the_old_text(smoke_run, prepared_corpus):
    """A related language (the English words, some with a suffix): its whole-word pieces also match old
    English text, whose segmentation then changes; --keep-old-segmentation skips those pieces."""
    rng = random.Random(1)
    text = [" ".join(w + rng.choice(["", "s", "ing", "li"]) for w in s) for s in dict_sentences(400, 9)]
    old_text = (prepared_corpus / "bitext" / "train" / "eng_Latn-fra_Latn.eng_Latn").read_text(encoding="utf-8")
    old_lines = old_text.splitlines()
    data = (smoke_run / "spm.model").read_bytes()
    old = spm_edit.processor(spm_edit.parse(data))
    changed = {}
    for avoid in ((), old_lines):
        proto = spm_edit.parse(data)
        pieces = spm_edit.learn_pieces(proto, text, 30, avoid)
        spm_edit.append_pieces(proto, pieces)
        new = spm_edit.processor(proto)
        changed[bool(avoid)] = spm_edit.changed_lines(old, new, old_lines)
        assert len(pieces) == 30
        assert spm_edit.text_stats(new, text)["tokens_per_char"] < spm_edit.text_stats(old, text)["tokens_per_char"]
    assert changed[False] > 0.05 and changed[True] == 0.0


# ---------------------------------------------------------------- bad input: one error line, nothing written

def _refused(capsys, argv: list) -> str:
    with pytest.raises(SystemExit) as e:
        vocab_main(["add-language", *map(str, argv)])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra, expect", [
    (["--lang", "xyz_latn"], "--lang 'xyz_latn' is not a language code"),
    (["--lang", "sw"], "--lang 'sw' is not a language code"),
    (["--lang", "eng_Latn"], "--lang eng_Latn: the model already knows eng_Latn"),
    (["--lang", "swh_Latn", "--new-pieces", "5"], "--new-pieces needs --text FILE"),
    (["--lang", "swh_Latn", "--text", "BAD", "--new-pieces", "5"], "BAD:2: invalid UTF-8"),
    (["--lang", "swh_Latn", "--init", "from:swh_Latn"], "--init from:swh_Latn: swh_Latn is not a language of"),
    (["--lang", "swh_Latn", "--init", "median"], "--init 'median': use mean or from:LANG"),
    (["--lang", "swh_Latn", "--keep-old-segmentation"], "--keep-old-segmentation needs --old-text FILE"),
])
def test_bad_input(smoke_run, tmp_path, capsys, extra, expect):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\n\xff\xfe bad\n")
    out = tmp_path / "out"
    argv = [str(bad) if a == "BAD" else a for a in extra]
    err = _refused(capsys, [smoke_run / "checkpoints" / "last.pt", out, *argv])
    assert expect.replace("BAD", str(bad)) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]


def test_existing_out_is_refused_without_overwrite(smoke_run, extended, capsys):
    out, _ = extended
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    err = _refused(capsys, [smoke_run / "checkpoints" / "last.pt", out, "--lang", "swh_Latn"])
    assert "already exists; pass --overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_no_spare_slot_left_is_refused_by_the_cli(extended, tmp_path, capsys):
    """An export whose every spare slot holds a language (its spm.model edited, config.json's sha256 updated)."""
    import hashlib

    full = tmp_path / "full"
    shutil.copytree(extended[0], full)
    proto = spm_edit.parse((full / "spm.model").read_bytes())
    for i in range(1, 52):
        spm_edit.take_spare_slot(proto, f"q{chr(97 + i // 26)}{chr(97 + i % 26)}_Latn")
    data = proto.SerializeToString()
    (full / "spm.model").write_bytes(data)
    cfg = json.loads((full / "config.json").read_text(encoding="utf-8"))
    cfg["tokenizer"]["sha256"] = hashlib.sha256(data).hexdigest()
    (full / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert len(Tokenizer(full / "spm.model").added_languages()) == 52
    err = _refused(capsys, [full, tmp_path / "out", "--lang", "qzz_Latn"])
    assert "no spare language-tag slot is left for qzz_Latn" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_no_spare_slot_left(smoke_run):
    proto = spm_edit.parse((smoke_run / "spm.model").read_bytes())
    for i in range(52):  # qaa_Latn, qab_Latn, ... (ISO 639-3 reserves qaa-qtz for local use)
        assert spm_edit.take_spare_slot(proto, f"q{chr(97 + i // 26)}{chr(97 + i % 26)}_Latn") == SPARE0 + i
    with pytest.raises(UserError, match="no spare language-tag slot is left for qzz_Latn"):
        spm_edit.take_spare_slot(proto, "qzz_Latn")
