"""Import parallel text into a corpus directory (layout: docs/architecture.md).

    python -m data_prep.import_corpus --out CORPUS --format moses --prefix corpus.de-en \\
        --src-lang de --tgt-lang en                      # reads corpus.de-en.de + corpus.de-en.en
    python -m data_prep.import_corpus --out CORPUS --format moses --files train.de train.en \\
        --src-lang deu_Latn --tgt-lang eng_Latn
    python -m data_prep.import_corpus --out CORPUS --append --format tsv --files dev.tsv \\
        --src-lang fr --tgt-lang en --split valid
    python -m data_prep.import_corpus --out CORPUS --append --format flores \\
        --flores-dir flores200_dataset --langs eng_Latn deu_Latn fra_Latn

Moses/TSV input is cleaned (see data_prep.clean) and written to ``bitext/<split>/``. Flores
input (Flores-200 or Flores+, any layout of nmt/eval/flores_layout.py; Flores+ codes are mapped
to Flores-200 codes) is copied verbatim to ``flores/{dev,devtest}/`` in the Flores-200 layout,
with ``flores/testset.json`` recording the release and version (one release per corpus), and
also written as ``valid`` (dev) and ``test`` (devtest) bitext between ``--pivot`` and every
other language; it is not filtered, so that it stays line-aligned. Without ``--append`` a new
corpus is created (an existing one is replaced only with ``--overwrite``); with ``--append``
pairs are added to an existing corpus and its manifest is updated (a pair already there is
replaced only with ``--overwrite``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from data_prep import clean, readers
from data_prep.manifest import (
    MANIFEST,
    LineWriter,
    add_input,
    add_pair,
    atomic_dir,
    load_manifest,
    new_manifest,
    pair_name,
    write_manifest,
)
from nmt.errors import UserError, exit_on_user_error
from nmt.eval import flores
from nmt.eval.flores_layout import FLORES200, TESTSET_FILE, Layout, check_comparable
from nmt.langs import ENGLISH, normalize_lang

FLORES_TO_SPLIT = {"dev": "valid", "devtest": "test"}


class ArgParser(argparse.ArgumentParser):
    """argparse whose mistakes become one-line UserErrors (exit code 2, no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgParser(prog="python -m data_prep.import_corpus",
                 description="Import parallel text into a corpus directory.")
    ap.add_argument("--out", required=True, type=Path, help="corpus directory to create or extend")
    ap.add_argument("--format", required=True, choices=["moses", "tsv", "flores"])
    ap.add_argument("--src-lang", help="source language (moses/tsv): Flores-200 code or alias")
    ap.add_argument("--tgt-lang", help="target language (moses/tsv): Flores-200 code or alias")
    ap.add_argument("--prefix", help="moses: read PREFIX.SRC and PREFIX.TGT (codes as written)")
    ap.add_argument("--files", nargs="+", type=Path,
                    help="moses: the source and target files; tsv: one or more TSV files")
    ap.add_argument("--split", choices=["train", "valid", "test"], help="moses/tsv (default: train)")
    ap.add_argument("--flores-dir", type=Path, help="flores: directory with dev/ and devtest/")
    ap.add_argument("--langs", nargs="+", help="flores: languages to import")
    ap.add_argument("--flores-splits", nargs="+", choices=list(FLORES_TO_SPLIT),
                    default=list(FLORES_TO_SPLIT), help="flores: which splits (default: both)")
    ap.add_argument("--pivot", default=ENGLISH, help="flores: bitext pairs are pivot<->each other "
                    "language (default: eng_Latn)")
    ap.add_argument("--skip-invalid-utf8", action="store_true",
                    help="drop lines that are not valid UTF-8 instead of stopping")
    ap.add_argument("--max-len", type=int, default=clean.DEFAULT_MAX_LEN,
                    help="drop pairs with a side longer than this many words (0: no limit)")
    ap.add_argument("--max-ratio", type=float, default=clean.DEFAULT_MAX_RATIO,
                    help="drop pairs whose length ratio exceeds this (0: no limit)")
    ap.add_argument("--keep-duplicates", action="store_true", help="do not drop repeated pairs")
    ap.add_argument("--append", action="store_true", help="add to an existing corpus")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return ap.parse_args(argv)


def resolve_lang(code: str, flag: str) -> str:
    """Flores-200 code for ``code``; an alias is mapped and the mapping is printed."""
    flores = normalize_lang(code, where=flag)
    if flores != code:
        print(f"note: {flag} {code!r} read as {flores}")
    return flores


def check_args(args: argparse.Namespace) -> None:
    """Errors for flag combinations that do not fit the chosen format."""
    if args.format == "flores":
        if not args.flores_dir or not args.langs:
            raise UserError("--format flores needs --flores-dir DIR and --langs CODE [CODE ...]")
        if args.split or args.files or args.prefix:
            raise UserError("--split/--files/--prefix do not apply to --format flores "
                            "(dev becomes valid, devtest becomes test)")
        return
    if not args.src_lang or not args.tgt_lang:
        raise UserError(f"--format {args.format} needs --src-lang and --tgt-lang")
    if args.format == "moses":
        if bool(args.prefix) == bool(args.files):
            raise UserError("--format moses needs either --prefix PREFIX or --files SRC TGT")
        if args.files and len(args.files) != 2:
            raise UserError(f"--format moses --files takes 2 paths (source, target), got {len(args.files)}")
    elif args.prefix or not args.files:
        raise UserError("--format tsv needs --files FILE [FILE ...] (no --prefix)")


def write_pair(root: Path, split: str, src: str, tgt: str,
               pairs: Iterable[tuple[str, str]]) -> tuple[str, int, dict[str, str]]:
    """Write ``pairs`` as ``bitext/<split>/<pair>.<lang>``: (pair name, lines, sha256s)."""
    name = pair_name(src, tgt)
    out = root / "bitext" / split
    out.mkdir(parents=True, exist_ok=True)
    ws, wt = LineWriter(out / f"{name}.{src}"), LineWriter(out / f"{name}.{tgt}")
    try:
        for s, t in pairs:
            ws.write(s)
            wt.write(t)
    finally:
        sha = {src: ws.close(), tgt: wt.close()}
    return name, ws.lines, sha


def import_bitext(args: argparse.Namespace, root: Path, manifest: dict) -> dict[str, dict]:
    """Moses/TSV: read, clean, write one pair; returns its cleaning record by name."""
    src = resolve_lang(args.src_lang, "--src-lang")
    tgt = resolve_lang(args.tgt_lang, "--tgt-lang")
    if src == tgt:
        raise UserError(f"--src-lang and --tgt-lang are both {src}; give two different languages")
    split = args.split or "train"
    check_free(args, manifest, [f"{split}/{pair_name(src, tgt)}"])
    skip = args.skip_invalid_utf8
    if args.format == "moses":
        paths = list(readers.moses_paths(args.prefix, args.src_lang, args.tgt_lang)) \
            if args.prefix else list(args.files)
        pairs: Iterable = readers.read_moses(*paths, skip_invalid=skip)
    else:
        paths = list(args.files)
        pairs = (p for path in paths for p in readers.read_tsv(path, skip_invalid=skip))
    filt = clean.PairFilter(src, tgt, max_len=args.max_len or None, max_ratio=args.max_ratio or None,
                            dedup=not args.keep_duplicates)
    name, lines, sha = write_pair(root, split, src, tgt, filt.filter(pairs))
    if lines == 0:
        raise UserError(f"{', '.join(map(str, paths))}: no pair survived cleaning "
                        f"({filt.counts['dropped']}); check the input or loosen --max-len/--max-ratio")
    add_pair(manifest, split, name, lines, sha, filt.counts)
    for p in paths:
        add_input(manifest, p)
    return {f"{split}/{name}": filt.counts}


def import_flores(args: argparse.Namespace, root: Path, manifest: dict) -> dict[str, dict]:
    """Flores: copy the chosen splits and write pivot<->x valid/test bitext."""
    langs = list(dict.fromkeys(resolve_lang(c, "--langs") for c in args.langs))
    pivot = resolve_lang(args.pivot, "--pivot")
    if len(langs) < 2:
        raise UserError("--langs needs at least two languages for --format flores")
    if pivot not in langs:
        raise UserError(f"--pivot {pivot} is not among --langs; add it or choose another --pivot")
    others = [c for c in langs if c != pivot]
    testset = check_one_release(args, manifest)
    check_free(args, manifest, [f"{FLORES_TO_SPLIT[s]}/{pair_name(pivot, c)}"
                                for s in args.flores_splits for c in others],
               [f"{s}/{c}" for s in args.flores_splits for c in langs])
    report: dict[str, dict] = {}
    for fsplit in args.flores_splits:
        split = FLORES_TO_SPLIT[fsplit]
        rows = list_rows(args, fsplit, langs)
        fdir = root / "flores" / fsplit
        fdir.mkdir(parents=True, exist_ok=True)
        kept = [r for r in rows if None not in r]
        for i, code in enumerate(langs):
            w = LineWriter(fdir / f"{code}.{fsplit}")
            for r in kept:
                w.write(r[i])
            w.close()
        manifest["flores"][fsplit] = sorted(set(manifest["flores"].get(fsplit, [])) | set(langs))
        p = langs.index(pivot)
        for i, code in enumerate(langs):
            if code == pivot:
                continue
            name, lines, sha = write_pair(root, split, pivot, code, ((r[p], r[i]) for r in kept))
            counts = clean.empty_counts()
            counts["kept"] = lines
            counts["dropped"]["invalid_utf8"] = len(rows) - len(kept)
            add_pair(manifest, split, name, lines, sha, counts)
            report[f"{split}/{name}"] = counts
        for code in langs:
            add_input(manifest, Path(args.flores_dir) / fsplit / source_layout(args, fsplit).file_name(fsplit, code))
    write_text(root / "flores" / TESTSET_FILE, json.dumps(testset) + "\n")
    return report


def check_one_release(args: argparse.Namespace, manifest: dict) -> dict:
    """The release of --flores-dir (the same for every split); with --append, a UserError if the
    corpus already holds Flores files of another release (scores would mix the two)."""
    found = [source_layout(args, s).describe() for s in args.flores_splits]
    for other in found[1:]:
        check_comparable(found[0], other, f"--flores-dir {args.flores_dir} (dev and devtest)")
    recorded = args.out / "flores" / TESTSET_FILE
    if args.append and any(manifest["flores"].values()) and not args.overwrite:
        have = json.loads(recorded.read_text(encoding="utf-8")) if recorded.is_file() else None
        check_comparable(have, found[0], f"--append of {args.flores_dir} to {args.out}/flores (use --overwrite "
                                         "to replace it, or another corpus)")
    return found[0]


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def list_rows(args: argparse.Namespace, fsplit: str, langs: list[str]) -> list[tuple]:
    """All rows of one Flores split (a Flores split is ~1000 sentences: kept in memory)."""
    lay = source_layout(args, fsplit)
    if lay.kind == "flores200-text":
        return list(readers.read_flores(args.flores_dir, fsplit, langs, skip_invalid=args.skip_invalid_utf8))
    if lay.kind in ("jsonl", "parquet"):
        columns = flores.read_languages(args.flores_dir, fsplit, langs)
        return list(zip(*(columns[c] for c in langs), strict=True))  # aligned: read_languages checks
    paths = [Path(args.flores_dir) / fsplit / lay.file_name(fsplit, c) for c in langs]
    for code, path in zip(langs, paths, strict=True):
        if not path.is_file():
            flores.read_language(args.flores_dir, fsplit, code)  # the UserError naming path and layout
    return list(readers.read_aligned(paths, skip_invalid=args.skip_invalid_utf8))


def source_layout(args: argparse.Namespace, fsplit: str) -> Layout:
    """The layout of --flores-dir's split; a missing split directory reads as Flores-200, so that
    the error names the first missing file (data_prep.readers.read_flores)."""
    if not (Path(args.flores_dir) / fsplit).is_dir():
        return Layout(FLORES200, "flores200-text", "")
    return flores.layout(args.flores_dir, fsplit)


def check_free(args: argparse.Namespace, manifest: dict, pairs: list[str],
               flores: Sequence[str] = ()) -> None:
    """With --append, refuse to replace pairs / Flores files that exist unless --overwrite."""
    if not args.append or args.overwrite:
        return
    for key in pairs:
        split, pair = key.split("/")
        if pair in manifest["pairs"].get(split, {}):
            raise UserError(f"{args.out / MANIFEST} already has {key}; pass --overwrite to replace it")
    for key in flores:
        fsplit, code = key.split("/")
        if code in manifest["flores"].get(fsplit, []):
            raise UserError(f"{args.out}/flores/{fsplit}/{code}.{fsplit} already exists; "
                            "pass --overwrite to replace it")


def run_import(args: argparse.Namespace, root: Path, manifest: dict) -> dict[str, dict]:
    if args.format == "flores":
        return import_flores(args, root, manifest)
    return import_bitext(args, root, manifest)


def append_into(args: argparse.Namespace) -> dict[str, dict]:
    """Stage the new files inside the corpus, move them into place, then update the manifest."""
    out: Path = args.out
    if out.is_file():
        raise UserError(f"{out}: is a file, but --out must be a corpus directory")
    if not (out / MANIFEST).is_file():
        raise UserError(f"{out}: --append needs an existing corpus (no {MANIFEST} there); "
                        "drop --append to create a new corpus")
    manifest = load_manifest(out)
    stage = out / f".import-tmp-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        report = run_import(args, stage, manifest)
        for f in sorted(p for p in stage.rglob("*") if p.is_file()):
            dest = out / f.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
        write_manifest(out, manifest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_args(args)
    if args.append:
        report = append_into(args)
    else:
        manifest = new_manifest()
        with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
            report = run_import(args, tmp, manifest)
            write_manifest(tmp, manifest)
    print(clean.format_report(report))
    total = sum(c["kept"] for c in report.values())
    print(f"wrote {total} pairs to {args.out} ({'appended; ' if args.append else ''}"
          f"manifest: {args.out / MANIFEST})")


if __name__ == "__main__":
    main(sys.argv[1:])
