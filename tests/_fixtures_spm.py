"""Tiny multilingual corpora and SentencePiece models for the tokenizer/binarize tests.

Building the shared corpus trains one small model (~1 s); it is built once per test session
and copied by tests that write into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

WORDS = {
    "eng_Latn": "the cat sat on a mat while Latn_code ran to the red house and we saw snake_case "
                "birds sing under blue sky with green trees near old river".split(),
    "fra_Latn": "le chat est sur un tapis pendant que la maison rouge et nous avons vu des "
                "oiseaux chanter sous le ciel bleu près de la vieille rivière été".split(),
    "deu_Latn": "die Katze sitzt auf einer Matte während das rote Haus und wir sahen Vögel "
                "singen unter blauem Himmel mit grünen Bäumen am alten Fluss".split(),
    "rus_Cyrl": "кошка сидит на коврике пока красный дом и мы видели птиц поют под синим "
                "небом с зелёными деревьями у старой реки".split(),
}


def sentences(lang: str, n: int, seed: int) -> list[str]:
    rng = random.Random(f"{lang}-{seed}")
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS[lang]) for _ in range(rng.randint(3, 12))]
        words[0] = words[0][:1].upper() + words[0][1:]
        out.append(" ".join(words) + ".")
    return out


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_corpus(root: Path, splits: dict[str, dict[str, dict[str, list[str]]]]) -> Path:
    """Write ``splits[split][pair][lang] = lines`` in the architecture.md layout + manifest."""
    manifest: dict = {"format": 1, "pairs": {"train": {}, "valid": {}, "test": {}},
                      "languages": [], "inputs": [], "cleaning": {}, "flores": {}}
    langs: set[str] = set()
    for split, pairs in splits.items():
        for pair, sides in pairs.items():
            (root / "bitext" / split).mkdir(parents=True, exist_ok=True)
            counts = {len(lines) for lines in sides.values()}
            assert len(counts) == 1, "fixture sides must be line-aligned"
            sha = {}
            for lang, lines in sides.items():
                path = root / "bitext" / split / f"{pair}.{lang}"
                path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
                sha[lang] = sha256_file(path)
                langs.add(lang)
            manifest["pairs"][split][pair] = {"lines": counts.pop(), "sha256": sha}
    manifest["languages"] = sorted(langs)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return root


def small_corpus(root: Path) -> Path:
    """Four languages, three English-centric train pairs sharing English lines, one valid pair."""
    eng = sentences("eng_Latn", 260, 0)
    splits = {
        "train": {
            "deu_Latn-eng_Latn": {"deu_Latn": sentences("deu_Latn", 200, 0), "eng_Latn": eng[:200]},
            "eng_Latn-fra_Latn": {"eng_Latn": eng[60:260], "fra_Latn": sentences("fra_Latn", 200, 0)},
            "eng_Latn-rus_Cyrl": {"eng_Latn": eng[:80], "rus_Cyrl": sentences("rus_Cyrl", 80, 0)},
        },
        "valid": {
            "eng_Latn-fra_Latn": {"eng_Latn": sentences("eng_Latn", 20, 1),
                                  "fra_Latn": sentences("fra_Latn", 20, 1)},
        },
    }
    return write_corpus(root, splits)


def run_cli(module: str, *args: str | os.PathLike) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repo root, capturing text output."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def train_spm_inprocess(corpus: Path, vocab_size: int = 400, *extra: str) -> Path:
    from data_prep import train_spm

    train_spm.main(["--corpus", str(corpus), "--vocab-size", str(vocab_size),
                    "--sample-sentences", "3000", "--character-coverage", "1.0", *extra])
    return corpus / "spm.model"


def plain_spm(corpus: Path, out_dir: Path) -> Path:
    """A SentencePiece model trained WITHOUT the project's language tags."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "log.txt", "w") as log:
        spm.SentencePieceTrainer.train(
            input=str(corpus / "bitext" / "train" / "eng_Latn-fra_Latn.fra_Latn"),
            model_prefix=str(out_dir / "plain"), vocab_size=80, model_type="unigram",
            hard_vocab_limit=False, logstream=log)
    return out_dir / "plain.model"


_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="session")
def trained_corpus(tmp_path_factory) -> Path:
    """A small corpus with ``spm.model`` trained (do not write into it: use ``corpus_copy``)."""
    if "corpus" not in _CACHE:
        root = tmp_path_factory.mktemp("shared_corpus")
        small_corpus(root)
        train_spm_inprocess(root)
        _CACHE["corpus"] = root
    return _CACHE["corpus"]


@pytest.fixture
def corpus_copy(trained_corpus: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "corpus"
    shutil.copytree(trained_corpus, dst)
    return dst


@pytest.fixture(scope="session")
def plain_model(trained_corpus: Path, tmp_path_factory) -> Path:
    if "plain" not in _CACHE:
        _CACHE["plain"] = plain_spm(trained_corpus, tmp_path_factory.mktemp("plain_spm"))
    return _CACHE["plain"]
