"""Copy and nearest-training-segment baselines."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest

from nmt.errors import UserError
from nmt.eval.baselines import ORDERS, NgramIndex, RetrievalBaseline, copy_baseline

ENG = ["Open the file.", "Open the file", "Close the window.", "Save the document as PDF.",
       "Print the current page.", "Open a new window."]
FRA = ["Ouvrir le fichier.", "Ouvrir le fichier", "Fermer la fenêtre.",
       "Enregistrer le document en PDF.", "Imprimer la page actuelle.", "Ouvrir une nouvelle fenêtre."]


def make_corpus(root: Path) -> Path:
    d = root / "bitext" / "train"
    d.mkdir(parents=True)
    (d / "eng_Latn-fra_Latn.eng_Latn").write_text("\n".join(ENG) + "\n", encoding="utf-8")
    (d / "eng_Latn-fra_Latn.fra_Latn").write_text("\n".join(FRA) + "\n", encoding="utf-8")
    return root


def test_copy():
    assert copy_baseline(["a", "b"]) == ["a", "b"]


def test_exact_source_returns_exact_target(tmp_path):
    rb = RetrievalBaseline(make_corpus(tmp_path))
    # Each test source equals one training source (some near-duplicates precede them).
    assert rb.translate(["Open the file", "Open a new window.", "Close the window."],
                        "eng_Latn", "fra_Latn") == [FRA[1], FRA[5], FRA[2]]
    # The pair serves the other direction too.
    assert rb.translate(["Imprimer la page actuelle."], "fra_Latn", "eng_Latn") == [ENG[4]]


def test_similar_source(tmp_path):
    rb = RetrievalBaseline(make_corpus(tmp_path))
    assert rb.translate(["Save this document as a PDF file"], "eng_Latn", "fra_Latn") == [FRA[3]]
    assert rb.translate(["print current pages"], "eng_Latn", "fra_Latn") == [FRA[4]]


def test_missing_pair_and_corpus(tmp_path):
    rb = RetrievalBaseline(make_corpus(tmp_path))
    assert not rb.available("eng_Latn", "deu_Latn")
    assert rb.translate(["Hello"], "eng_Latn", "deu_Latn") is None
    with pytest.raises(UserError, match=r"bitext/train does not exist \(baselines\.corpus"):
        RetrievalBaseline(tmp_path / "nope")


def test_misaligned_pair(tmp_path):
    make_corpus(tmp_path)
    (tmp_path / "bitext/train/eng_Latn-fra_Latn.fra_Latn").write_text("only one\n")
    with pytest.raises(UserError, match="not line-aligned"):
        RetrievalBaseline(tmp_path).translate(["x"], "eng_Latn", "fra_Latn")


def _reference_cosines(train: list[str], query: str) -> list[float]:
    """Plain-Python TF-IDF cosine with the same features as NgramIndex (for checking)."""

    def grams(s: str) -> Counter:
        s = " " + s.casefold() + " "
        return Counter(s[i:i + n] for n in ORDERS for i in range(len(s) - n + 1))

    docs = [grams(t) for t in train]
    df = Counter(g for d in docs for g in d)
    idf = {g: math.log((1 + len(train)) / (1 + c)) + 1 for g, c in df.items()}

    def vec(c: Counter) -> dict:
        v = {g: (1 + math.log(n)) * idf[g] for g, n in c.items() if g in idf}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {g: x / norm for g, x in v.items()}

    q = vec(grams(query))
    return [sum(q.get(g, 0.0) * x for g, x in vec(d).items()) for d in docs]


def test_nearest_matches_reference_cosine():
    rng = random.Random(1)
    vocab = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "eta", "θήτα", "iota", "kappa"]
    train = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6))) for _ in range(150)]
    queries = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6))) + "x" for _ in range(40)]
    got = NgramIndex(train).nearest(queries)
    for q, j in zip(queries, got, strict=True):
        cos = _reference_cosines(train, q)
        assert cos[j] == pytest.approx(max(cos), abs=1e-5)


def test_scale_many_segments():
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnoprstuvwyzäöß") for _ in range(rng.randint(2, 8)))
             for _ in range(2000)]
    train = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 10))) for _ in range(5000)]
    picks = [rng.randrange(len(train)) for _ in range(300)]
    index = NgramIndex(train)
    index.exact = {}  # check the cosine path itself, not the exact-match shortcut
    got = index.nearest([train[i] for i in picks])
    assert all(train[j] == train[i] for i, j in zip(picks, got, strict=True))
