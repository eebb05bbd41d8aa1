"""Score translations on Flores-200 or Flores+: ``python -m nmt.evaluate key=value ...``.

Two modes (exactly one of ``ckpt`` / ``hyp_dir``)::

    # translate with a model, then score (hypotheses kept in <out_dir>/hyp/<src>-<tgt>.hyp)
    python -m nmt.evaluate ckpt=runs/x/checkpoints/best.pt flores.dir=data/flores200 split=devtest
    # score existing hypothesis files (any system), no model needed
    python -m nmt.evaluate hyp_dir=my_system/ flores.dir=data/flores200 split=devtest

Hypothesis layout (both modes): ``<hyp_dir>/<src>-<tgt>.hyp``, e.g. ``eng_Latn-fra_Latn.hyp``:
UTF-8, one translation per line, in the order of the Flores lines of ``<src>``. It has as many
lines as the Flores file (or, with ``max_lines=N``, either that many or exactly N).

Keys:
  ckpt=PATH | hyp_dir=DIR    what to score (ckpt: a .pt file, a .dcp directory, or an export
                              directory written by python -m nmt.export)
  flores.dir=DIR              Flores-200 <DIR>/<split>/<code>.<split> or Flores+
                              <DIR>/<split>/<split>.<code> | <code>.jsonl (required); the release
                              and version are recorded in results.json "testset"
  split=devtest               Flores split (dev or devtest)
  directions=auto             auto: en-centric for ckpt, every <src>-<tgt>.hyp for hyp_dir;
                              en-centric: eng_Latn<->xx for every language of the split;
                              all: every ordered pair; or [eng_Latn-fra_Latn,...] / "a-b,c-d"
  out_dir=DIR                 default <dir of ckpt>/../eval/<split>, or <hyp_dir>/eval
  beam=4 lenpen=1.0 batch_size=64 max_len_a=1.2 max_len_b=10 device=auto   (ckpt mode)
  backend=torch               torch, or ct2: ckpt is a CTranslate2 export (nmt.export --format ct2)
  spm_flores200=PATH          local Flores-200 SentencePiece model: adds spBLEU (never downloads)
  baselines.corpus=DIR        also score copy and nearest-training-segment baselines
  resource.corpus=DIR         averages by NLLB resource group from DIR/manifest.json train pairs
                              (default: baselines.corpus, else data.corpus of the checkpoint's run)
  resource.low=1000000 resource.very_low=100000   group thresholds (NLLB's), in training pairs
  moe.inference=capacity|dynamic|static   MoE dispatch at inference (ckpt mode; docs/moe_serving.md)
  moe.resident_experts=K moe.buffer_policy=lru|lifo   expert buffering: K experts per layer in memory
  max_lines=N                 score only the first N lines of every direction (quick checks)
  overwrite=false             replace existing results / hypothesis files
  allow_untrained_lang=false  ckpt mode: translate from/into languages the model was not trained on
                              (a warning) instead of refusing them
  reference_results=PATH      results.json of an earlier evaluation of the reference model (same
                              split and lines): adds the per-direction change (forgetting) table

Writes ``results.json``, ``results.md`` and ``chrf.png`` to out_dir (see nmt.eval.report) and
prints the sacrebleu signatures and the table.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nmt.cli import parse_overrides
from nmt.errors import UserError, exit_on_user_error
from nmt.eval import flores
from nmt.eval.baselines import RetrievalBaseline, copy_baseline
from nmt.eval.flores import read_text_lines
from nmt.eval.forgetting import check_comparable, compare, load_reference
from nmt.eval.metrics import Scorer, check_line_counts
from nmt.eval.report import build_results, check_out_dir, print_table, write_report
from nmt.eval.resource import LOW, VERY_LOW, check_thresholds, resource_info
from nmt.fileio import atomic_write
from nmt.interop.backend import check_backend, load_translator
from nmt.langs import ENGLISH, parse_direction
from nmt.moe_tools.options import MoEServeConfig

HYP_SUFFIX = ".hyp"


@dataclass
class FloresConfig:
    dir: str | None = None


@dataclass
class BaselinesConfig:
    corpus: str | None = None


@dataclass
class ResourceConfig:
    corpus: str | None = None  # default: baselines.corpus, else the checkpoint run's data.corpus
    low: int = LOW
    very_low: int = VERY_LOW


@dataclass
class EvalConfig:
    ckpt: str | None = None
    hyp_dir: str | None = None
    flores: FloresConfig = field(default_factory=FloresConfig)
    split: str = "devtest"
    directions: Any = "auto"
    out_dir: str | None = None
    beam: int = 4
    lenpen: float = 1.0
    batch_size: int = 64
    max_len_a: float = 1.2
    max_len_b: int = 10
    device: str = "auto"
    spm_flores200: str | None = None
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    resource: ResourceConfig = field(default_factory=ResourceConfig)
    max_lines: int | None = None
    overwrite: bool = False
    allow_untrained_lang: bool = False
    reference_results: str | None = None
    backend: str = "torch"  # torch | ct2
    moe: MoEServeConfig = field(default_factory=MoEServeConfig)

    def validate(self) -> None:
        if (self.ckpt is None) == (self.hyp_dir is None):
            raise UserError(
                "give exactly one of ckpt=PATH (translate with a model) or hyp_dir=DIR "
                "(score existing <src>-<tgt>.hyp files)"
            )
        if not self.flores.dir:
            raise UserError("flores.dir is required: a directory laid out as " + flores.LAYOUT)
        if not self.split or "/" in self.split or self.split in (".", ".."):
            raise UserError(f"split={self.split!r} must be a split name such as dev or devtest")
        for key in ("beam", "batch_size"):
            if getattr(self, key) < 1:
                raise UserError(f"{key}={getattr(self, key)} must be at least 1")
        check_thresholds(self.resource.low, self.resource.very_low)
        check_backend(self.backend)
        self.moe.validate()
        if self.max_lines is not None and self.max_lines < 1:
            raise UserError(f"max_lines={self.max_lines} must be at least 1 (or leave it unset)")


def default_out_dir(cfg: EvalConfig) -> Path:
    """``<run>/eval/<split>`` for a run's checkpoint (``<run>/checkpoints/x.pt`` or ``x.dcp``),
    ``<export>/eval/<split>`` for an export directory, ``<hyp_dir>/eval`` for hyp_dir."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    if cfg.ckpt:
        ckpt = Path(cfg.ckpt).absolute()
        if ckpt.is_dir() and ckpt.suffix != ".dcp":  # an export
            return ckpt / "eval" / cfg.split
        if ckpt.name == "model.safetensors":
            return ckpt.parent / "eval" / cfg.split
        return Path(os.path.normpath(ckpt.parent / ".." / "eval" / cfg.split))
    return Path(given(cfg.hyp_dir, "hyp_dir")) / "eval"


def given(value: str | None, key: str) -> str:
    """A path-valued key that validation guarantees in this mode (``ckpt``, ``hyp_dir``, ``flores.dir``)."""
    if value is None:
        raise UserError(f"{key} is not set; pass {key}=PATH")
    return value


def hyp_files(hyp_dir: str | Path) -> dict[tuple[str, str], Path]:
    """Every ``<src>-<tgt>.hyp`` in ``hyp_dir`` keyed by its (normalised) direction."""
    d = Path(hyp_dir)
    if not d.is_dir():
        raise UserError(f"hyp_dir={d} is not a directory; expected <hyp_dir>/<src>-<tgt>.hyp files")
    out: dict[tuple[str, str], Path] = {}
    for p in sorted(d.glob(f"*{HYP_SUFFIX}")):
        out[parse_direction(p.name[: -len(HYP_SUFFIX)], where=f"hypothesis file {p}")] = p
    return out


def resolve_directions(cfg: EvalConfig, langs: list[str]) -> list[tuple[str, str]]:
    """The directions to score, from ``cfg.directions`` and the languages of the split."""
    spec = cfg.directions
    if spec == "auto":
        if cfg.hyp_dir is not None:
            found = list(hyp_files(cfg.hyp_dir))
            if not found:
                raise UserError(
                    f"no hypothesis files in hyp_dir={cfg.hyp_dir}: expected "
                    f"<src>-<tgt>{HYP_SUFFIX} files such as eng_Latn-fra_Latn{HYP_SUFFIX}"
                )
            return found
        spec = "en-centric"
    where = f"{cfg.flores.dir}/{cfg.split}"
    if spec == "en-centric":
        if ENGLISH not in langs:
            english = flores.lang_path(given(cfg.flores.dir, "flores.dir"), cfg.split, ENGLISH)
            raise UserError(f"directions=en-centric needs {english}, which does not exist; list directions "
                            f"explicitly, e.g. directions=[a-b,b-a]")
        others = [c for c in langs if c != ENGLISH]
        if not others:
            raise UserError(f"{where} has only {ENGLISH}: en-centric needs a second language")
        return [(ENGLISH, c) for c in others] + [(c, ENGLISH) for c in others]
    if spec == "all":
        if len(langs) < 2:
            raise UserError(f"{where} has {len(langs)} language(s); directions=all needs two")
        return [(a, b) for a in langs for b in langs if a != b]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[tuple[str, str]] = []
    for item in items:
        src, tgt = parse_direction(str(item).strip(), where="directions")
        if src == tgt:
            raise UserError(f"direction {item!r} (directions) translates {src} into itself")
        if (src, tgt) not in out:
            out.append((src, tgt))
    if not out:
        raise UserError("directions is empty: use en-centric, all or a list such as [eng_Latn-fra_Latn]")
    return out


def _read_hypotheses(
    cfg: EvalConfig, dirs: list[tuple[str, str]], refs: dict[str, list[str]], full_len: int
) -> dict[tuple[str, str], tuple[list[str], Path]]:
    """Load and check every hypothesis file (with its path) before any scoring or writing."""
    hyp_dir = given(cfg.hyp_dir, "hyp_dir")
    files = hyp_files(hyp_dir)
    out = {}
    for src, tgt in dirs:
        p = files.get((src, tgt), Path(hyp_dir) / f"{src}-{tgt}{HYP_SUFFIX}")
        if not p.is_file():
            raise UserError(
                f"hypothesis file {p} does not exist: hyp_dir needs one <src>-<tgt>{HYP_SUFFIX} "
                f"file per direction (or choose directions=...)"
            )
        hyps = read_text_lines(p, what="hypothesis file")
        n = len(refs[tgt])
        if len(hyps) == full_len and n < full_len:
            hyps = hyps[:n]  # max_lines: full-length hypothesis files are cut like the references
        check_line_counts(hyps, refs[tgt], f"hypothesis file {p}")
        out[(src, tgt)] = (hyps, p)
    return out


def _translator(cfg: EvalConfig):
    """Load the model lazily (torch and the model code are only needed in ckpt mode)."""
    ckpt = given(cfg.ckpt, "ckpt")
    if not Path(ckpt).exists():  # a .pt file, a .dcp directory or an export directory (nmt.export)
        raise UserError(f"checkpoint {cfg.ckpt} does not exist (ckpt=): pass a .pt checkpoint, a .dcp "
                        f"checkpoint directory or an export directory (python -m nmt.export)")
    from nmt.device import resolve_device  # torch is needed in ckpt mode only

    return load_translator(cfg.backend, ckpt, resolve_device(cfg.device).type, cfg.moe)


def evaluate(cfg: EvalConfig) -> dict:
    """Run an evaluation end to end; returns the results.json object."""
    out_dir = check_out_dir(default_out_dir(cfg), overwrite=cfg.overwrite)
    flores_dir = given(cfg.flores.dir, "flores.dir")
    langs = flores.list_languages(flores_dir, cfg.split)
    dirs = resolve_directions(cfg, langs)
    corpus = resource_corpus(cfg)  # checked before any translation work
    resource = resource_info([f"{a}-{b}" for a, b in dirs], corpus, cfg.resource.low,
                             cfg.resource.very_low) if corpus else None
    needed = list(dict.fromkeys(code for d in dirs for code in d))
    full = flores.read_languages(flores_dir, cfg.split, needed)
    full_len = len(next(iter(full.values())))
    refs = {c: v[: cfg.max_lines] if cfg.max_lines else v for c, v in full.items()}
    reference = load_reference(cfg.reference_results) if cfg.reference_results else None
    if reference is not None:
        check_comparable(reference, cfg.split, {f"{s}-{t}": len(refs[t]) for s, t in dirs})
    scorer = Scorer(cfg.spm_flores200)
    retrieval = RetrievalBaseline(cfg.baselines.corpus) if cfg.baselines.corpus else None

    hyp_out = out_dir / "hyp"
    if cfg.hyp_dir is not None:
        hyps_by_dir = _read_hypotheses(cfg, dirs, refs, full_len)
        translator = None
    else:
        if hyp_out.exists() and not hyp_out.is_dir():
            raise UserError(f"{hyp_out} is a file; out_dir/hyp must be a directory")
        for src, tgt in dirs:
            p = hyp_out / f"{src}-{tgt}{HYP_SUFFIX}"
            if p.exists() and not cfg.overwrite:
                raise UserError(f"{p} already exists; choose another out_dir or pass overwrite=true")
        hyps_by_dir = {}
        translator = _translator(cfg)
        translator.check_languages(dirs, allow_untrained=cfg.allow_untrained_lang)
        hyp_out.mkdir(parents=True, exist_ok=True)

    directions: dict[str, dict] = {f"{s}-{t}": {} for s, t in dirs}  # keeps the requested order
    no_retrieval: list[str] = []
    # Grouped by target so the scorer pre-processes each reference file once.
    by_target = sorted(dirs, key=lambda d: d[1])
    interactive = sys.stderr.isatty()  # a bar on a terminal; one line per direction in a log (no \r)
    for i, (src, tgt) in enumerate(tqdm(by_target, desc="directions", unit="dir", file=sys.stderr,
                                        disable=not interactive), 1):
        name = f"{src}-{tgt}"
        if translator is not None:
            hyps = translator.translate(
                refs[src], src, tgt, beam_size=cfg.beam, len_penalty=cfg.lenpen,
                batch_size=cfg.batch_size, max_len_a=cfg.max_len_a, max_len_b=cfg.max_len_b,
            )
            if len(hyps) != len(refs[src]):
                raise RuntimeError(f"Translator returned {len(hyps)} lines for {len(refs[src])} ({name})")
            path = hyp_out / f"{name}{HYP_SUFFIX}"
            atomic_write(path, "".join(h.replace("\n", " ") + "\n" for h in hyps),
                         overwrite=cfg.overwrite)
        else:
            hyps, path = hyps_by_dir[(src, tgt)]
        entry: dict[str, Any] = scorer.score(hyps, refs[tgt], tgt, hyp_name=f"hypothesis file {path}")
        if retrieval is not None:
            entry["copy_baseline"] = _without_n(
                scorer.score(copy_baseline(refs[src]), refs[tgt], tgt, hyp_name="copy baseline"))
            r_hyps = retrieval.translate(refs[src], src, tgt)
            if r_hyps is None:
                no_retrieval.append(name)
                entry["retrieval_baseline"] = None
            else:
                entry["retrieval_baseline"] = _without_n(
                    scorer.score(r_hyps, refs[tgt], tgt, hyp_name="retrieval baseline"))
        directions[name] = entry
        if not interactive:
            print(f"direction {i}/{len(by_target)} {name}: chrF++ {entry['chrf++']:.2f}", file=sys.stderr, flush=True)

    testset = flores.layout(flores_dir, cfg.split).describe()
    notes = [scorer.note(), f"test set: {testset['dataset']} {testset['version']} ({cfg.split}, "
                            f"files {testset['layout']})"]
    if cfg.max_lines:
        notes.append(f"only the first {cfg.max_lines} lines of each direction were scored")
    if no_retrieval:
        no_retrieval = [d for d in directions if d in no_retrieval]
        notes.append(f"no training bitext in {cfg.baselines.corpus} for {', '.join(no_retrieval)}: "
                     "no retrieval baseline there; its averages use the other directions")
    extra: dict[str, Any] = {
        "model": cfg.ckpt if cfg.ckpt else str(cfg.hyp_dir),
        "mode": "checkpoint" if cfg.ckpt else "hyp_dir",
        "split": cfg.split,
        "flores_dir": str(cfg.flores.dir),
        "testset": testset,
        "notes": notes,
    }
    if translator is not None and translator.languages is not None:
        extra["model_languages"] = translator.languages
    if cfg.ckpt:
        extra["decoding"] = {"beam": cfg.beam, "lenpen": cfg.lenpen, "max_len_a": cfg.max_len_a,
                             "max_len_b": cfg.max_len_b, "backend": cfg.backend}
    if cfg.ckpt and cfg.moe.active:
        extra["moe"] = _moe_serving(translator)
    if scorer.spm_info:
        extra["spm_flores200"] = scorer.spm_info
    if cfg.baselines.corpus:
        extra["baselines_corpus"] = str(cfg.baselines.corpus)
    results = build_results(directions, scorer.signatures, extra, resource)
    if reference is not None:
        results["forgetting"] = compare(results, reference)
    paths = write_report(out_dir, results, overwrite=cfg.overwrite)
    print_table(results)
    print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
    return results


def resource_corpus(cfg: EvalConfig) -> str | None:
    """The training corpus for resource groups: resource.corpus (must be a corpus), else
    baselines.corpus or the ``data.corpus`` of the checkpoint's run (``<run>/config.yaml``) when
    that directory has a manifest.json; None: no resource groups."""
    if cfg.resource.corpus:
        return cfg.resource.corpus
    candidates = [cfg.baselines.corpus]
    run_config = Path(cfg.ckpt).absolute().parent.parent / "config.yaml" if cfg.ckpt else None
    if run_config is not None and run_config.is_file():
        from omegaconf import OmegaConf

        candidates.append(OmegaConf.select(OmegaConf.load(run_config), "data.corpus", default=None))
    found = [str(c) for c in candidates if c and (Path(str(c)) / "manifest.json").is_file()]
    return found[0] if found else None


def _moe_serving(translator) -> dict:
    """results.json "moe": the dispatch mode and, with buffering, hit rate, loads and bytes moved."""
    from nmt.moe_tools.serving import buffer_stats, describe

    out: dict[str, Any] = {"inference": translator.model.cfg.moe.inference}
    stats = buffer_stats(translator.model)
    if stats is not None:
        out["buffer"] = stats
        print(describe(stats), flush=True)
    return out


def _without_n(score: dict) -> dict:
    return {k: v for k, v in score.items() if k != "n"}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(__doc__)
        return
    cfg = parse_overrides(EvalConfig, args)
    evaluate(cfg)


if __name__ == "__main__":
    main()
