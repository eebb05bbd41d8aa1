"""Tokenizer: id layout, tag checks, encode/decode, tags in raw text, bad model files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nmt.data.tokenizer import Tokenizer
from nmt.errors import UserError
from nmt.langs import FLORES200, all_tag_tokens

try:
    from _fixtures_spm import corpus_copy, plain_model, sentences, trained_corpus  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests._fixtures_spm import corpus_copy, plain_model, sentences, trained_corpus  # noqa: F401


@pytest.fixture(scope="module")
def tok(trained_corpus: Path) -> Tokenizer:
    return Tokenizer(trained_corpus / "spm.model")


def test_special_and_tag_ids(tok: Tokenizer) -> None:
    tok.check_tags()
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    for i, tag in enumerate(all_tag_tokens()):
        assert tok.id_to_piece(4 + i) == tag
    assert tok.lang_id("eng_Latn") == 4 + FLORES200.index("eng_Latn")
    assert tok.lang_id("zul_Latn") == 4 + 203
    assert tok.vocab_size == 400


def test_sha256_is_of_file_bytes(tok: Tokenizer, trained_corpus: Path) -> None:
    assert tok.sha256 == hashlib.sha256((trained_corpus / "spm.model").read_bytes()).hexdigest()


def test_lang_id_rejects_unknown_codes(tok: Tokenizer) -> None:
    with pytest.raises(UserError, match="no tag __xyz_Latn__; add it with python -m nmt.vocab add-language"):
        tok.lang_id("xyz_Latn")  # well-formed, but this vocabulary has no such language
    with pytest.raises(UserError, match="Flores-200"):
        tok.lang_id("xyz")
    with pytest.raises(UserError, match="Flores-200"):
        tok.lang_id("en")  # aliases are for user input, not for tag lookup


def test_check_tags_fails_on_plain_model(plain_model: Path) -> None:
    plain = Tokenizer(plain_model)
    with pytest.raises(UserError) as e:
        plain.check_tags()
    assert str(plain_model) in str(e.value) and "data_prep.train_spm" in str(e.value)
    with pytest.raises(UserError, match="no tag __eng_Latn__"):
        plain.lang_id("eng_Latn")


def test_round_trip(tok: Tokenizer) -> None:
    texts = sentences("eng_Latn", 30, 0) + sentences("rus_Cyrl", 30, 0) + sentences("fra_Latn", 30, 0)
    for text in texts:
        ids = tok.encode(text)
        assert ids and min(ids) >= 260, "plain text must give ordinary pieces only"
        assert tok.decode(ids) == text
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert tok.decode_batch(batch) == texts
    assert tok.encode("") == [] and tok.encode_batch([]) == [] and tok.decode([]) == ""


def test_decode_drops_specials_and_tags(tok: Tokenizer) -> None:
    ids = tok.encode("The cat sat on a mat.")
    framed = [tok.lang_id("fra_Latn"), *ids, tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(framed) == "The cat sat on a mat."
    assert tok.decode_batch([framed, [tok.bos_id, *ids]]) == ["The cat sat on a mat."] * 2


@pytest.mark.parametrize("text,exact", [
    ("The cat __fra_Latn__ sat.", True),
    ("The __eng_Latn__cat sat.", True),
    ("__spare3__", False),  # "3" is not in the tiny vocabulary: <unk>
    ("The ＿＿fra_Latn＿＿ cat.", False),  # full-width underscores normalize to a tag
])
def test_raw_text_never_yields_tag_ids(tok: Tokenizer, text: str, exact: bool) -> None:
    tag_ids = set(range(4, 260))
    ids = tok.encode(text)
    assert not tag_ids & set(ids)
    assert not tag_ids & set(tok.encode_batch([text, "The cat."])[0])
    if exact:  # the tag's literal characters come back
        assert tok.decode(ids) == text
    assert "__" in tok.decode(ids)


def test_missing_and_corrupt_model(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found.*train_spm"):
        Tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(UserError, match="not a valid SentencePiece model"):
        Tokenizer(bad)
