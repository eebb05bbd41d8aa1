"""Our per-direction metrics equal sacrebleu's own; spBLEU works offline from a local model."""

from __future__ import annotations

import shutil
import socket

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st

from nmt.errors import UserError
from nmt.eval.metrics import Scorer, bleu_tokenizer

REFS = {
    "fra_Latn": ["Le chat est assis sur le tapis.", "Ouvrir le fichier.", "Il fait beau aujourd'hui !"],
    "zho_Hans": ["猫坐在垫子上。", "打开文件。", "今天天气很好！"],
    "jpn_Jpan": ["猫がマットの上に座っています。", "ファイルを開く。", "今日はいい天気です！"],
}
HYPS = {
    "fra_Latn": ["Le chat est sur le tapis.", "Ouvrir fichier.", "Il fait beau !"],
    "zho_Hans": ["猫在垫子上。", "打开文件。", "今天很好！"],
    "jpn_Jpan": ["猫がマットに座る。", "ファイルを開きます。", "今日は天気です！"],
}


@pytest.mark.parametrize("tgt", sorted(REFS))
def test_equals_sacrebleu(tgt):
    hyps, refs = HYPS[tgt], REFS[tgt]
    s = Scorer()
    got = s.score(hyps, refs, tgt)
    assert got["chrf++"] == sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score
    tok = {"fra_Latn": "13a", "zho_Hans": "zh", "jpn_Jpan": "char"}[tgt]
    assert got["bleu"] == sacrebleu.corpus_bleu(hyps, [refs], tokenize=tok).score
    assert got["n"] == 3 and "spbleu" not in got
    assert f"tok:{tok}" in s.signatures["bleu"][tok]
    assert "nw:2" in s.signatures["chrf++"] and "spbleu" not in s.signatures


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30)),
                min_size=1, max_size=5))
def test_equals_sacrebleu_random(pairs):
    hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
    got = Scorer().score(hyps, refs, "deu_Latn")
    assert got["chrf++"] == sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score
    assert got["bleu"] == sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score


def test_identical_is_100():
    refs = ["the quick brown fox jumps over the lazy dog", "hello world again and again"]
    got = Scorer().score(list(refs), refs, "eng_Latn")
    assert got["chrf++"] == pytest.approx(100.0) and got["bleu"] == pytest.approx(100.0)


def test_tokenizer_choice():
    assert [bleu_tokenizer(c) for c in ("zho_Hans", "zho_Hant", "yue_Hant")] == ["zh"] * 3
    assert bleu_tokenizer("jpn_Jpan") == "char" and bleu_tokenizer("kor_Hang") == "char"
    assert bleu_tokenizer("tha_Thai") == "char"
    assert bleu_tokenizer("fra_Latn") == "13a" and bleu_tokenizer("rus_Cyrl") == "13a"


def test_line_count_mismatch_names_file_and_counts():
    with pytest.raises(UserError) as e:
        Scorer().score(["a", "b"], ["a", "b", "c"], "eng_Latn", hyp_name="hypothesis file x.hyp")
    assert "x.hyp has 2 lines but the reference has 3" in str(e.value)


@pytest.fixture(scope="module")
def tiny_spm(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    words = ("le chat est assis sur tapis ouvrir fichier il fait beau aujourd hui the cat sat on "
             "mat open file weather nice today maison rouge oiseaux chanter ciel bleu").split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 5)) for i in range(400)]
    (d / "text.txt").write_text("\n".join(lines + REFS["fra_Latn"]) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(d / "text.txt"), model_prefix=str(d / "tiny"), vocab_size=200,
        model_type="unigram", hard_vocab_limit=False, minloglevel=2,
    )
    return d / "tiny.model"


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Any connection or sacrebleu download attempt fails the test loudly."""

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    import sacrebleu.tokenizers.tokenizer_spm as tspm

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(sacrebleu.utils, "download_file", refuse)
    monkeypatch.setattr(tspm, "download_file", refuse)
    monkeypatch.setattr(tspm, "SACREBLEU_DIR", str(tmp_path / "empty_sacrebleu_home"))
    monkeypatch.setenv("SACREBLEU", str(tmp_path / "empty_sacrebleu_home"))


def test_spbleu_local_model_no_download(tiny_spm, no_network, tmp_path, monkeypatch):
    hyps, refs = HYPS["fra_Latn"], REFS["fra_Latn"]
    s = Scorer(tiny_spm)
    got = s.score(hyps, refs, "fra_Latn")
    assert "tok:flores200" in s.signatures["spbleu"]
    assert s.spm_info["path"] == str(tiny_spm) and len(s.spm_info["sha256"]) == 64
    assert s.score(list(refs), refs, "fra_Latn")["spbleu"] == pytest.approx(100.0)

    # sacrebleu's own flores200 tokenizer, given the same file where it looks for it, agrees.
    import sacrebleu.tokenizers.tokenizer_spm as tspm

    home = tmp_path / "sb"
    (home / "models").mkdir(parents=True)
    shutil.copy(tiny_spm, home / "models" / "flores200sacrebleuspm")
    monkeypatch.setattr(tspm, "SACREBLEU_DIR", str(home))
    ref_score = sacrebleu.corpus_bleu(hyps, [refs], tokenize="flores200").score
    assert got["spbleu"] == ref_score


def test_spbleu_missing_model(tmp_path):
    with pytest.raises(UserError, match="spm_flores200"):
        Scorer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_text("not a model")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        Scorer(bad)


def test_reference_cache_reuse_keeps_exact_scores():
    s = Scorer()
    refs = REFS["fra_Latn"]
    systems = [HYPS["fra_Latn"], list(refs), ["x", "y", "z"]]
    for hyps in systems + [HYPS["fra_Latn"]]:
        got = s.score(hyps, refs, "fra_Latn")
        assert got["chrf++"] == sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score
        assert got["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    other = ["Le chien.", "Fermer.", "Il pleut."]  # same target language, other references
    assert s.score(HYPS["fra_Latn"], other, "fra_Latn")["chrf++"] == sacrebleu.corpus_chrf(
        HYPS["fra_Latn"], [other], word_order=2).score
    zh = s.score(HYPS["zho_Hans"], REFS["zho_Hans"], "zho_Hans")
    assert zh["bleu"] == sacrebleu.corpus_bleu(HYPS["zho_Hans"], [REFS["zho_Hans"]], tokenize="zh").score
    assert set(s.signatures["bleu"]) == {"13a", "zh"}
