"""Shared fixtures: a small, learnable, fully prepared corpus (bitext → spm → bin → Flores layout).

The corpus is a word-for-word "dictionary" language family: every English word has a fixed
made-up counterpart in each other language, so a tiny model learns it within a few dozen
steps and the tests can check that loss falls and translation works end to end.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGLISH = ("time year people way day man thing woman life child world school state family student group "
           "country problem hand part place case week company system program question work number night "
           "point home water room mother area money story fact month lot right study book eye job word").split()
LANGS = {"fra_Latn": lambda w: w[::-1] + "e", "deu_Latn": lambda w: w.upper()[:3] + w[3:] + "en"}


def dict_sentences(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(ENGLISH) for _ in range(rng.randint(3, 7))] for _ in range(n)]


def render(words: list[str], lang: str) -> str:
    return " ".join(words if lang == "eng_Latn" else [LANGS[lang](w) for w in words])


def run_module(module: str, *args, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def build_dictionary_corpus(root: Path) -> Path:
    """Write raw pair files and import them with the real CLI, plus a Flores-layout test set."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    corpus = root / "corpus"
    sizes = {"train": (600, 0), "valid": (40, 1), "test": (40, 2)}
    for split, (n, seed) in sizes.items():
        sents = dict_sentences(n, seed)
        for lang in LANGS:
            stem = raw / f"{split}.{lang}-eng"
            Path(f"{stem}.{lang}").write_text("".join(render(s, lang) + "\n" for s in sents), encoding="utf-8")
            Path(f"{stem}.eng").write_text("".join(render(s, "eng_Latn") + "\n" for s in sents), encoding="utf-8")
            run_module("data_prep.import_corpus", "--out", corpus, "--format", "moses", "--split", split,
                       "--src-lang", lang, "--tgt-lang", "eng_Latn", "--files", f"{stem}.{lang}", f"{stem}.eng",
                       *(["--append"] if (corpus / "manifest.json").exists() else []))
    flores = corpus / "flores" / "devtest"
    flores.mkdir(parents=True)
    sents = dict_sentences(40, 2)
    for lang in ["eng_Latn", *LANGS]:
        (flores / f"{lang}.devtest").write_text("".join(render(s, lang) + "\n" for s in sents), encoding="utf-8")
    run_module("data_prep.train_spm", "--corpus", corpus, "--vocab-size", "400", "--character-coverage", "1.0")
    run_module("data_prep.binarize", "--corpus", corpus)
    return corpus


@pytest.fixture(scope="session")
def prepared_corpus(tmp_path_factory) -> Path:
    """Read-only prepared corpus (copy it before writing into it)."""
    return build_dictionary_corpus(tmp_path_factory.mktemp("dictcorpus"))


@pytest.fixture
def corpus_copy(prepared_corpus, tmp_path) -> Path:
    dst = tmp_path / "corpus"
    shutil.copytree(prepared_corpus, dst)
    return dst


SMOKE = ["+recipe=smoke", "trainer.progress=false", "trainer.precision=fp32", "trainer.threads=1"]


def train_smoke(corpus: Path, run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_module("nmt.train", *SMOKE, f"data.corpus={corpus}", f"hydra.run.dir={run_dir}", *overrides,
                      check=check)


@pytest.fixture(scope="session")
def smoke_run(prepared_corpus, tmp_path_factory) -> Path:
    """A finished 60-step smoke run (read-only)."""
    run_dir = tmp_path_factory.mktemp("smoke_run")
    train_smoke(prepared_corpus, run_dir)
    return run_dir
