"""A catalogue of bad inputs for every command-line tool, one table row each.

Every row builds its bad input under ``tmp_path`` (copying the session fixtures, never writing
into them), runs the real CLI in a subprocess and checks the same contract:

* exit code 2 and no traceback;
* one short ``error: ...`` line (the last non-empty stderr line) naming the file/line or the
  config key (``expect``);
* nothing under ``tmp_path`` was overwritten, removed, or left half-written (no new files, no
  ``*.tmp`` leftovers). Hydra's own per-invocation files (``.hydra/``, ``train.log``) are the only
  things ``nmt.train`` may add.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SMOKE, run_module, train_smoke

# Tiny training overrides: config errors fail before training, the rest stops after 2 steps.
FAST = ["trainer.max_steps=2", "optim.warmup_steps=1", "trainer.valid_interval=1",
        "trainer.valid_max_sentences=4"]


# ---------------------------------------------------------------- shared, read-only inputs

@pytest.fixture(scope="module")
def alt_spms(prepared_corpus, tmp_path_factory) -> dict[str, Path]:
    """Two other SentencePiece models for the corpus text: one with the project's tags (a
    different vocabulary) and one without any language tags."""
    import sentencepiece as spm

    from data_prep.train_spm import train_model

    root = tmp_path_factory.mktemp("alt_spm")
    text = root / "text.txt"
    with open(text, "wb") as out:
        out.writelines(p.read_bytes() for p in sorted((prepared_corpus / "bitext" / "train").iterdir()))
    train_model(text, root / "tagged", 380, 1.0, root / "tagged.log")
    with open(root / "plain.log", "w") as log:
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(root / "plain"), vocab_size=80,
                                       model_type="unigram", hard_vocab_limit=False, logstream=log)
    return {"tagged": root / "tagged.model", "plain": root / "plain.model"}


@pytest.fixture(scope="module")
def tiny_run(prepared_corpus, tmp_path_factory) -> Path:
    """A finished 2-step smoke run (read-only: copy it before writing into it)."""
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    train_smoke(prepared_corpus, run_dir, *FAST)
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    return run_dir


@dataclass
class Ctx:
    """What a setup function gets: ``tmp`` to write into and lazy access to the fixtures."""

    tmp: Path
    request: pytest.FixtureRequest

    @property
    def prepared(self) -> Path:
        return self.request.getfixturevalue("prepared_corpus")

    def corpus(self) -> Path:
        """A private, writable copy of the prepared corpus."""
        dst = self.tmp / "corpus"
        if not dst.exists():
            shutil.copytree(self.prepared, dst)
        return dst

    def flores(self) -> Path:
        """A private copy of the Flores layout (devtest only: eng_Latn, fra_Latn, deu_Latn)."""
        dst = self.tmp / "flores"
        if not dst.exists():
            shutil.copytree(self.prepared / "flores", dst)
        return dst

    def run(self) -> Path:
        """A private copy of the 2-step run directory."""
        dst = self.tmp / "run"
        if not dst.exists():
            shutil.copytree(self.request.getfixturevalue("tiny_run"), dst)
        return dst

    def spm(self, kind: str) -> Path:
        return self.request.getfixturevalue("alt_spms")[kind]

    def lines(self, lang: str, n: int, split: str = "train") -> list[str]:
        pair = "-".join(sorted((lang, "eng_Latn" if lang != "eng_Latn" else "fra_Latn")))
        path = self.prepared / "bitext" / split / f"{pair}.{lang}"
        return path.read_text(encoding="utf-8").splitlines()[:n]

    def write(self, name: str, data: str | bytes | list[str]) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, list):
            data = "".join(x + "\n" for x in data)
        if isinstance(data, str):
            data = data.encode("utf-8")
        p.write_bytes(data)
        return p


# A setup returns (args, expected substrings of the error line).
Setup = Callable[[Ctx], tuple[list, tuple[str, ...]]]


@dataclass
class Case:
    id: str
    module: str
    setup: Setup


CASES: list[Case] = []


def case(module: str, id: str):
    def register(fn: Setup) -> Setup:
        CASES.append(Case(id, module, fn))
        return fn
    return register


def moses(c: Ctx, src: Path, tgt: Path, *extra) -> list:
    return ["--out", c.tmp / "new_corpus", "--format", "moses", "--src-lang", "fra_Latn",
            "--tgt-lang", "eng_Latn", "--files", src, tgt, *extra]


# ---------------------------------------------------------------- data_prep.import_corpus

IMPORT = "data_prep.import_corpus"


@case(IMPORT, "moses-line-counts-differ")
def _(c):
    src = c.write("raw/x.fra_Latn", c.lines("fra_Latn", 5))
    tgt = c.write("raw/x.eng_Latn", c.lines("eng_Latn", 4))
    return moses(c, src, tgt), ("line counts differ", f"{tgt} has 4 lines")


@case(IMPORT, "moses-line-counts-differ-append")
def _(c):
    corpus = c.corpus()
    src = c.write("raw/x.fra_Latn", c.lines("fra_Latn", 3))
    tgt = c.write("raw/x.eng_Latn", c.lines("eng_Latn", 7))
    return ["--out", corpus, "--append", "--overwrite", "--format", "moses", "--src-lang", "fr",
            "--tgt-lang", "en", "--split", "valid", "--files", src, tgt], ("line counts differ", f"{src} has 3 lines")


@case(IMPORT, "empty-input-file")
def _(c):
    src = c.write("raw/x.fra_Latn", b"")
    tgt = c.write("raw/x.eng_Latn", c.lines("eng_Latn", 4))
    return moses(c, src, tgt), (f"{src}: file is empty",)


@case(IMPORT, "invalid-utf8-names-file-line")
def _(c):
    good = c.lines("fra_Latn", 4)
    src = c.write("raw/x.fra_Latn", ("\n".join(good[:2]) + "\n").encode() + b"caf\xe9 latin-1\n"
                  + (good[3] + "\n").encode())
    tgt = c.write("raw/x.eng_Latn", c.lines("eng_Latn", 4))
    return moses(c, src, tgt), (f"{src}:3: not valid UTF-8",)


@case(IMPORT, "language-code-not-flores200")
def _(c):
    src = c.write("raw/x.fra_Latn", c.lines("fra_Latn", 4))
    tgt = c.write("raw/x.eng_Latn", c.lines("eng_Latn", 4))
    args = moses(c, src, tgt)
    args[args.index("--src-lang") + 1] = "klingon"
    return args, ("unknown language code 'klingon'", "--src-lang")


@case(IMPORT, "tsv-missing-column")
def _(c):
    tsv = c.write("raw/x.tsv", ["Bonjour\tHello", "Merci", "Oui\tYes"])
    return ["--out", c.tmp / "new_corpus", "--format", "tsv", "--files", tsv, "--src-lang", "fra_Latn",
            "--tgt-lang", "eng_Latn"], (f"{tsv}:2: expected 2 tab-separated fields",)


@case(IMPORT, "flores-missing-split-directory")
def _(c):
    fl = c.flores()  # has devtest/ only; dev/ is imported by default
    return ["--out", c.tmp / "new_corpus", "--format", "flores", "--flores-dir", fl,
            "--langs", "eng_Latn", "fra_Latn"], (str(fl / "dev" / "eng_Latn.dev"), "missing Flores-200 file")


@case(IMPORT, "flores-missing-language-file")
def _(c):
    corpus, fl = c.corpus(), c.flores()
    return ["--out", corpus, "--append", "--overwrite", "--format", "flores", "--flores-dir", fl,
            "--flores-splits", "devtest", "--langs", "eng_Latn", "fra_Latn", "spa_Latn"], \
        (str(fl / "devtest" / "spa_Latn.devtest"),)


@case(IMPORT, "flores-plus-parquet-without-pyarrow")
def _(c):
    for code in ("eng_Latn", "fra_Latn"):
        c.write(f"fplus/devtest/{code}.parquet", b"PAR1")
    return ["--out", c.tmp / "new_corpus", "--format", "flores", "--flores-dir", c.tmp / "fplus",
            "--flores-splits", "devtest", "--langs", "eng_Latn", "fra_Latn"], \
        (str(c.tmp / "fplus" / "devtest" / "eng_Latn.parquet"),
         "parquet file" if importlib.util.find_spec("pyarrow") else "pip install pyarrow")


@case(IMPORT, "out-is-an-existing-file")
def _(c):
    out = c.write("not_a_dir", "keep me\n")
    src = c.write("raw/x.fra_Latn", c.lines("fra_Latn", 4))
    tgt = c.write("raw/x.eng_Latn", c.lines("eng_Latn", 4))
    args = moses(c, src, tgt)
    args[1] = out
    return args, (f"{out}: is a file",)


@case(IMPORT, "append-out-is-an-existing-file")
def _(c):
    out = c.write("not_a_dir", "keep me\n")
    src = c.write("raw/x.fra_Latn", c.lines("fra_Latn", 4))
    tgt = c.write("raw/x.eng_Latn", c.lines("eng_Latn", 4))
    args = moses(c, src, tgt, "--append")
    args[1] = out
    return args, (f"{out}: is a file",)


# ---------------------------------------------------------------- data_prep.train_spm

SPM = "data_prep.train_spm"


@case(SPM, "corpus-without-manifest")
def _(c):
    corpus = c.corpus()
    (corpus / "manifest.json").unlink()
    return ["--corpus", corpus, "--vocab-size", "400"], (str(corpus / "manifest.json"),)


@case(SPM, "invalid-utf8-in-training-text")
def _(c):
    corpus = c.corpus()
    p = corpus / "bitext" / "train" / "deu_Latn-eng_Latn.deu_Latn"
    lines = p.read_bytes().split(b"\n")
    lines[4] = b"\xff\xfe" + lines[4]
    p.write_bytes(b"\n".join(lines))
    return ["--corpus", corpus, "--vocab-size", "400", "--overwrite"], (f"{p}:5", "invalid UTF-8")


@case(SPM, "temperature-zero")
def _(c):
    corpus = c.corpus()
    return ["--corpus", corpus, "--temperature", "0", "--overwrite"], ("--temperature 0",)


# ---------------------------------------------------------------- data_prep.binarize

BIN = "data_prep.binarize"


@case(BIN, "corpus-without-manifest")
def _(c):
    corpus = c.corpus()
    (corpus / "manifest.json").unlink()
    return ["--corpus", corpus], (str(corpus / "manifest.json"),)


@case(BIN, "spm-without-language-tags")
def _(c):
    corpus = c.corpus()
    return ["--corpus", corpus, "--spm", c.spm("plain"), "--overwrite"], (str(c.spm("plain")),)


@case(BIN, "existing-bin-from-another-spm")
def _(c):
    corpus = c.corpus()
    return ["--corpus", corpus, "--spm", c.spm("tagged")], ("different SentencePiece model", "--overwrite")


@case(BIN, "bitext-changed-after-import")
def _(c):
    corpus = c.corpus()
    p = corpus / "bitext" / "valid" / "eng_Latn-fra_Latn.fra_Latn"
    p.write_text("".join(x + "\n" for x in p.read_text(encoding="utf-8").splitlines()[:-3]), encoding="utf-8")
    return ["--corpus", corpus, "--overwrite", "--workers", "1"], (str(p), "37 lines")


@case(BIN, "invalid-utf8-in-bitext")
def _(c):
    corpus = c.corpus()
    p = corpus / "bitext" / "test" / "deu_Latn-eng_Latn.deu_Latn"
    lines = p.read_bytes().split(b"\n")
    lines[6] = lines[6] + b"\xc3"
    p.write_bytes(b"\n".join(lines))
    return ["--corpus", corpus, "--overwrite", "--workers", "1"], (f"{p}:7",)


# ---------------------------------------------------------------- nmt.train

TRAIN = "nmt.train"


def train_args(c: Ctx, *overrides: str, corpus: Path | None = None, run: Path | None = None) -> list:
    return [*SMOKE, *FAST, f"data.corpus={corpus or c.prepared}", f"hydra.run.dir={run or c.tmp / 'run'}",
            *overrides]


for _id, _overrides, _key in [
    ("sampling-temperature-zero", ["sampling.temperature=0"], "sampling.temperature"),
    ("moe-capacity-factor-zero", ["model.moe.experts=4", "model.moe.encoder_freq=1",
                                  "model.moe.capacity_factor=0"], "model.moe.capacity_factor"),
    ("moe-top-k-3", ["model.moe.experts=4", "model.moe.encoder_freq=1", "model.moe.top_k=3"], "model.moe.top_k"),
    ("moe-one-expert-top-2", ["model.moe.experts=1", "model.moe.encoder_freq=1", "model.moe.top_k=2"],
     "model.moe.experts"),
    ("moe-experts-without-moe-layers", ["model.moe.experts=4", "model.moe.encoder_freq=0",
                                        "model.moe.decoder_freq=0"], "model.moe.encoder_freq"),
    ("dropout-negative", ["model.dropout=-0.1"], "model.dropout"),
    ("warmup-longer-than-training", ["optim.warmup_steps=5"], "optim.warmup_steps"),
    ("moe-eom-one", ["model.moe.experts=4", "model.moe.encoder_freq=1", "model.moe.eom=1.0"], "model.moe.eom"),
    ("moe-capacity-rule-bogus", ["model.moe.experts=4", "model.moe.encoder_freq=1", "model.moe.capacity_rule=gshard"],
     "model.moe.capacity_rule"),
    ("moe-cmr-budget-loss-bogus", ["model.moe.experts=4", "model.moe.encoder_freq=1", "model.moe.cmr=true",
                                   "model.moe.cmr_budget_loss=layerwise"], "model.moe.cmr_budget_loss"),
    ("moe-inference-bogus", ["model.moe.experts=4", "model.moe.encoder_freq=1", "model.moe.inference=gshard"],
     "model.moe.inference"),
    ("max-bad-updates-zero", ["trainer.max_bad_updates=0"], "trainer.max_bad_updates"),
    ("schedule-bogus", ["optim.schedule=bogus"], "optim.schedule"),
    ("freeze-unknown-group", ["trainer.freeze=[embeddings,everything]"], "trainer.freeze"),
    ("init-lr-scale-without-init-from", ["trainer.init_lr_scale=0.5"], "trainer.init_lr_scale"),
]:
    case(TRAIN, _id)(lambda c, o=_overrides, k=_key: (train_args(c, *o), (f"config key {k}=",)))


@case(TRAIN, "corpus-without-manifest")
def _(c):
    corpus = c.corpus()
    (corpus / "manifest.json").unlink()
    return train_args(c, corpus=corpus), ("data.corpus", str(corpus / "manifest.json"))


@case(TRAIN, "bin-from-another-vocabulary")
def _(c):
    corpus = c.corpus()
    shutil.copyfile(c.spm("tagged"), corpus / "spm.model")
    return train_args(c, corpus=corpus), (str(corpus / "bin"), "different vocabulary")


@case(TRAIN, "spm-without-language-tags")
def _(c):
    corpus = c.corpus()
    shutil.copyfile(c.spm("plain"), corpus / "spm.model")
    return train_args(c, corpus=corpus), (str(corpus / "spm.model"),)


@case(TRAIN, "resume-with-different-d-model")
def _(c):
    run = c.run()
    # the smoke recipe trains conf/model/tiny.yaml (d_model=64)
    return train_args(c, "trainer.resume=true", "model.d_model=32", run=run), \
        (str(run / "checkpoints"), "does not fit this config's model")


@case(TRAIN, "new-run-with-another-config-over-an-existing-run")
def _(c):
    run = c.run()  # trainer.resume=auto continues the same config, and refuses another one
    return train_args(c, "optim.lr=0.01", run=run), (str(run), "optim.lr")


@case(TRAIN, "resume-false-over-an-existing-run")
def _(c):
    run = c.run()
    return train_args(c, "trainer.resume=false", run=run), (str(run), "trainer.resume=true")


def finetune_args(c: Ctx, *overrides: str) -> list:
    return ["+recipe=nllb_finetune", "trainer.progress=false", *FAST, f"data.corpus={c.prepared}",
            f"hydra.run.dir={c.tmp / 'run'}", *overrides]


@case(TRAIN, "nllb-finetune-without-init-from")
def _(c):
    return finetune_args(c), ("model=from_init", "trainer.init_from=")


@case(TRAIN, "nllb-finetune-model-override-conflicts-with-init-from")
def _(c):
    ckpt = c.run() / "checkpoints" / "last.pt"  # the tiny run (d_model 64); refused before its dir is touched
    return finetune_args(c, f"trainer.init_from={ckpt}", "model.d_model=32"), \
        ("model.d_model=32 conflicts", str(ckpt))


# ---------------------------------------------------------------- nmt.evaluate

EVAL = "nmt.evaluate"


def hyp_dir(c: Ctx, n: int = 40) -> Path:
    c.write("hyp/eng_Latn-fra_Latn.hyp", (c.flores() / "devtest" / "fra_Latn.devtest")
            .read_text(encoding="utf-8").splitlines()[:n])
    return c.tmp / "hyp"


@case(EVAL, "hypothesis-wrong-line-count")
def _(c):
    h = hyp_dir(c, 39)
    return [f"hyp_dir={h}", f"flores.dir={c.flores()}"], \
        (f"{h / 'eng_Latn-fra_Latn.hyp'} has 39 lines but the reference has 40",)


@case(EVAL, "flores-dir-does-not-exist")
def _(c):
    h = hyp_dir(c)
    return [f"hyp_dir={h}", f"flores.dir={c.tmp / 'no_flores'}"], (str(c.tmp / "no_flores"), "flores.dir")


@case(EVAL, "flores-dir-not-given")
def _(c):
    return [f"hyp_dir={hyp_dir(c)}"], ("flores.dir is required",)


@case(EVAL, "flores-split-missing")
def _(c):
    return [f"hyp_dir={hyp_dir(c)}", f"flores.dir={c.flores()}", "split=dev"], (str(c.flores() / "dev"),)


@case(EVAL, "flores-language-file-missing")
def _(c):
    c.write("hyp/eng_Latn-spa_Latn.hyp", ["x"] * 40)
    return [f"hyp_dir={hyp_dir(c)}", f"flores.dir={c.flores()}", "directions=[eng_Latn-spa_Latn]"], \
        (str(c.flores() / "devtest" / "spa_Latn.devtest"),)


@case(EVAL, "flores-dir-mixes-flores200-and-flores-plus")
def _(c):
    fl = c.flores()
    c.write("flores/devtest/devtest.cmn_Hans", ["x"] * 40)  # a Flores+ file beside Flores-200 ones
    return [f"hyp_dir={hyp_dir(c)}", f"flores.dir={fl}"], (str(fl / "devtest"), "mixes Flores file layouts")


@case(EVAL, "resource-thresholds-inverted")
def _(c):
    return [f"hyp_dir={hyp_dir(c)}", f"flores.dir={c.flores()}", "resource.low=10", "resource.very_low=20"], \
        ("resource.very_low=20", "resource.low=10")


@case(EVAL, "direction-not-flores200")
def _(c):
    return [f"hyp_dir={hyp_dir(c)}", f"flores.dir={c.flores()}", "directions=[eng_Latn-xyz_Latn]"], \
        ("unknown language code 'xyz_Latn'",)


@case(EVAL, "out-dir-is-an-existing-file")
def _(c):
    out = c.write("results_here", "keep me\n")
    return [f"hyp_dir={hyp_dir(c)}", f"flores.dir={c.flores()}", f"out_dir={out}"], \
        (f"out_dir={out} is an existing file",)


@case(EVAL, "corrupt-checkpoint")
def _(c):
    ckpt = c.run() / "checkpoints" / "best.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:4000])
    return [f"ckpt={ckpt}", f"flores.dir={c.flores()}", "max_lines=2", "device=cpu"], \
        (f"checkpoint {ckpt}", "corrupt")


# ---------------------------------------------------------------- nmt.translate

TRANSLATE = "nmt.translate"


def translate_args(c: Ctx, ckpt: Path, *extra: str) -> list:
    src = c.write("in.txt", ["time year people", "water room"])
    return [f"ckpt={ckpt}", "src_lang=eng_Latn", "tgt_lang=fra_Latn", f"input={src}",
            f"output={c.tmp / 'out.txt'}", *extra]


@case(TRANSLATE, "truncated-checkpoint")
def _(c):
    ckpt = c.run() / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    return translate_args(c, ckpt), (f"checkpoint {ckpt}", "corrupt")


@case(TRANSLATE, "garbage-checkpoint")
def _(c):
    ckpt = c.write("model.pt", b"PK\x03\x04 this is not a checkpoint" * 10)
    return translate_args(c, ckpt), (f"checkpoint {ckpt}",)


@case(TRANSLATE, "unknown-tgt-lang")
def _(c):
    args = translate_args(c, c.run() / "checkpoints" / "best.pt")
    args[2] = "tgt_lang=xyz_Latn"
    return args, ("unknown language code 'xyz_Latn'", "tgt_lang")


@case(TRANSLATE, "output-is-an-existing-file")
def _(c):
    out = c.write("out.txt", "keep me\n")
    return translate_args(c, c.run() / "checkpoints" / "best.pt"), (f"output={out} exists", "overwrite=true")


@case(TRANSLATE, "output-is-a-directory")
def _(c):
    (c.tmp / "out.txt").mkdir()
    return translate_args(c, c.run() / "checkpoints" / "best.pt"), (f"output={c.tmp / 'out.txt'} is a directory",)


@case(TRANSLATE, "invalid-utf8-input")
def _(c):
    args = translate_args(c, c.run() / "checkpoints" / "best.pt")
    bad = c.write("in.txt", b"time year\nwater \xff room\n")
    return args, (f"{bad}:2",)


# ---------------------------------------------------------------- the check

def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root``: relative path -> sha256 (or "dir")."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def hydra_own(rel: str) -> bool:
    """Files Hydra itself writes into hydra.run.dir on every invocation, before nmt code runs."""
    parts = rel.split("/")
    return ".hydra" in parts or parts[-1] == "train.log"


def test_catalogue_is_big_enough():
    assert len(CASES) >= 32
    assert len({(c.module, c.id) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[f"{c.module.split('.')[-1]}:{c.id}" for c in CASES])
def test_bad_input(bad: Case, tmp_path, request):
    args, expect = bad.setup(Ctx(tmp_path, request))
    before = snapshot(tmp_path)
    proc = run_module(bad.module, *args, timeout=120, check=False)
    err = proc.stderr
    what = f"{bad.module} {' '.join(map(str, args))}\nstdout: {proc.stdout[-2000:]}\nstderr: {err[-3000:]}"
    assert proc.returncode == 2, what
    assert "Traceback" not in err, what
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, what
    last = lines[-1]
    assert last.startswith("error: "), what
    assert sum(ln.startswith("error:") for ln in lines) == 1, what
    assert len(last) < 800, what
    for needle in expect:
        assert needle in last, (needle, what)

    after = snapshot(tmp_path)
    if bad.module == TRAIN:
        before = {k: v for k, v in before.items() if not hydra_own(k)}
        after = {k: v for k, v in after.items() if not hydra_own(k)}
        new_run_dir = "run" not in before
        if new_run_dir:  # Hydra created the run directory itself; nmt must have put nothing there
            after = {k: v for k, v in after.items() if k != "run"}
    leftovers = [k for k in after if ".tmp" in k or "tmp-" in k]
    assert not leftovers, leftovers
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert not changed, f"overwritten: {changed}"
    assert not sorted(before.keys() - after.keys()), "removed"
    assert not sorted(after.keys() - before.keys()), f"new (partial) outputs: {sorted(after.keys() - before.keys())}"
