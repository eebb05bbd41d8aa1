"""Tokenize every bitext file of a corpus into memory-mapped ``.bin``/``.idx`` pairs.

    python -m data_prep.binarize --corpus CORPUS [--spm CORPUS/spm.model] [--workers 2] [--overwrite]

Writes ``<corpus>/bin/<split>/<pair>.<lang>.{bin,idx}`` (sentence pieces only: no tags, no
eos) and ``<corpus>/bin/meta.json``. ``--spm`` another model (e.g. an import's ``EXPORT/spm.model``)
also makes it the corpus vocabulary: it is copied to ``<corpus>/spm.model``, which training reads
(a different one already there is kept as ``spm.<sha256[:12]>.model``, and needs ``--overwrite``).
Lines are read in chunks and encoded by ``--workers`` processes while the main process writes, so
memory does not grow with the corpus. Everything is built in a temp directory that replaces
``bin/`` only when complete.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep.train_spm import MANIFEST_HINT, bitext_path, iter_lines, pair_langs, read_manifest, split_pairs
from nmt.data.bin_meta import META_FORMAT, read_meta
from nmt.data.indexed import IndexedDatasetWriter, dtype_for_vocab
from nmt.data.tokenizer import Tokenizer
from nmt.errors import UserError, exit_on_user_error

CHUNK_LINES = 2000


@dataclass
class Job:
    """One side of one pair: ``bitext/<split>/<pair>.<lang>`` -> ``bin/<split>/<pair>.<lang>``."""

    split: str
    pair: str
    lang: str
    source: Path
    expected_lines: int | None

    @property
    def key(self) -> str:
        return f"{self.split}/{self.pair}.{self.lang}"


def plan_jobs(corpus: Path, manifest: dict) -> list[Job]:
    """Every split/pair/side listed in the manifest; UserError if a file is missing."""
    jobs: list[Job] = []
    mpath = corpus / "manifest.json"
    for split in manifest["pairs"]:
        for pair, info in split_pairs(manifest, split, corpus).items():
            lines = info.get("lines") if isinstance(info, dict) else None
            for lang in pair_langs(pair, f"{mpath} pairs.{split}"):
                src = bitext_path(corpus, split, pair, lang)
                if not src.is_file():
                    raise UserError(f"{src}: listed in {mpath} but missing; {MANIFEST_HINT}")
                jobs.append(Job(split, pair, lang, src, lines if isinstance(lines, int) else None))
    if not jobs:
        raise UserError(f"{mpath}: lists no pairs; {MANIFEST_HINT}")
    return jobs


# -- workers ----------------------------------------------------------------------------------

_TOK: Tokenizer | None = None
_INIT_ERROR: Exception | None = None


def _init_worker(model_path: str, sha256: str) -> None:
    # An exception raised here would make the pool respawn workers forever: keep it for later.
    global _TOK, _INIT_ERROR
    try:
        _TOK = Tokenizer(model_path, num_threads=1)
        if _TOK.sha256 != sha256:
            raise UserError(f"{model_path} changed while binarizing; run again")
    except Exception as e:
        _INIT_ERROR = e


def _encode_chunk(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids of a chunk of lines, flat, plus the length of each line's sequence."""
    if _INIT_ERROR is not None:
        raise _INIT_ERROR
    assert _TOK is not None
    ids = _TOK.encode_batch(lines)
    sizes = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype_for_vocab(_TOK.vocab_size),
                       count=int(sizes.sum()))
    return flat, sizes


def _chunks(jobs: list[Job]) -> Iterator[tuple[int, list[str], bool]]:
    """(job index, lines, is last chunk of that job); every job yields at least one chunk."""
    for j, job in enumerate(jobs):
        buf: list[str] = []
        for line in iter_lines(job.source):
            buf.append(line)
            if len(buf) == CHUNK_LINES:
                yield j, buf, False
                buf = []
        yield j, buf, True


# -- main -------------------------------------------------------------------------------------


def binarize(corpus: Path, tok: Tokenizer, jobs: list[Job], out_dir: Path, workers: int) -> dict:
    """Write every job under ``out_dir``; return meta.json's "files" entry."""
    files: dict[str, dict] = {}
    writer: IndexedDatasetWriter | None = None
    lines_seen = 0
    total = sum(j.expected_lines or 0 for j in jobs) or None
    bar = tqdm(total=total, unit="lines", desc="binarize", disable=None)

    def consume(j: int, flat: np.ndarray, sizes: np.ndarray, last: bool) -> None:
        nonlocal writer, lines_seen
        job = jobs[j]
        if writer is None:
            (out_dir / job.split).mkdir(parents=True, exist_ok=True)
            writer = IndexedDatasetWriter(out_dir / job.split / f"{job.pair}.{job.lang}", tok.vocab_size)
        writer.add_many(flat, sizes)
        bar.update(sizes.size)
        if not last:
            return
        n = len(writer)
        if job.expected_lines is not None and n != job.expected_lines:
            raise UserError(f"{job.source}: has {n} lines but manifest.json says {job.expected_lines} "
                            f"(the file changed after import); {MANIFEST_HINT}")
        a, b = job.pair.split("-")
        other = files.get(f"{job.split}/{job.pair}.{b if job.lang == a else a}")
        if other is not None and other["lines"] != n:
            raise UserError(f"{job.source}: has {n} lines but the other side of {job.pair} has "
                            f"{other['lines']}; the two files must be line-aligned: {MANIFEST_HINT}")
        files[job.key] = {"lines": n, "tokens": writer.num_tokens}
        writer.finalize()
        writer = None

    def _consume_result(j: int, result: Any, last: bool) -> None:  # an AsyncResult of _encode_chunk
        flat, sizes = result.get()
        consume(j, flat, sizes, last)

    try:
        if workers <= 1:
            _init_worker(str(tok.path), tok.sha256)
            for j, lines, last in _chunks(jobs):
                flat, sizes = _encode_chunk(lines)
                consume(j, flat, sizes, last)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(str(tok.path), tok.sha256)) as pool:
                pending: deque = deque()
                for j, lines, last in _chunks(jobs):
                    pending.append((j, pool.apply_async(_encode_chunk, (lines,)), last))
                    if len(pending) >= 2 * workers:  # bounded read-ahead keeps memory flat
                        _consume_result(*pending.popleft())
                while pending:
                    _consume_result(*pending.popleft())
    finally:
        bar.close()
        if writer is not None:
            writer.abort()
    return files


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.binarize", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, type=Path, help="corpus directory (has manifest.json)")
    ap.add_argument("--spm", type=Path, default=None,
                    help="SentencePiece model (default CORPUS/spm.model); another one becomes CORPUS/spm.model")
    ap.add_argument("--workers", type=int, default=2, help="encoding processes (default 2)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing bin/ directory")
    run(ap.parse_args(argv))


def check_adopt_spm(corpus: Path, tok: Tokenizer, overwrite: bool) -> Tokenizer | None:
    """The corpus's current ``spm.model`` when ``tok`` is another model that will replace it (refused
    without ``--overwrite``: the corpus's bin/ and runs use it); None when nothing changes."""
    current = corpus / "spm.model"
    if not current.is_file():
        return None
    old = Tokenizer(current)
    if old.sha256 != tok.sha256 and not overwrite:
        raise UserError(f"{current} is a different SentencePiece model from {tok.path}: pass --overwrite to make "
                        f"{tok.path} the corpus vocabulary (the old one is kept as spm.{old.sha256[:12]}.model)")
    return old


def adopt_spm(corpus: Path, tok: Tokenizer, old: Tokenizer | None) -> None:
    """Make ``tok`` the corpus vocabulary (``<corpus>/spm.model``), keeping a replaced one beside it."""
    current = corpus / "spm.model"
    if Path(tok.path).resolve() == current.resolve() or (old is not None and old.sha256 == tok.sha256):
        return
    if old is not None:
        shutil.copyfile(current, corpus / f"spm.{old.sha256[:12]}.model")
    staged = corpus / f".spm.model.tmp-{os.getpid()}"
    shutil.copyfile(tok.path, staged)
    staged.replace(current)
    print(f"{current} is now {tok.path} (sha256 {tok.sha256[:12]}…)")


@exit_on_user_error
def run(args: argparse.Namespace) -> None:
    corpus: Path = args.corpus
    if args.workers < 1:
        raise UserError(f"--workers {args.workers} must be at least 1")
    manifest = read_manifest(corpus)
    manifest_sha = hashlib.sha256((corpus / "manifest.json").read_bytes()).hexdigest()
    spm_path: Path = args.spm or corpus / "spm.model"
    if not spm_path.is_file():
        raise UserError(f"{spm_path}: SentencePiece model not found; run python -m data_prep.train_spm "
                        f"--corpus {corpus} first (or pass --spm PATH)")
    tok = Tokenizer(spm_path)
    tok.check_tags()
    corpus_tok = check_adopt_spm(corpus, tok, args.overwrite)
    bin_dir = corpus / "bin"
    if bin_dir.exists() and not args.overwrite:
        meta = read_meta(bin_dir)
        if meta is None:
            raise UserError(f"{bin_dir} already exists (without meta.json); pass --overwrite to replace it")
        if meta["spm_sha256"] != tok.sha256:
            raise UserError(f"{bin_dir} was binarized with a different SentencePiece model than {spm_path} "
                            "(spm_sha256 differs); pass --overwrite to re-binarize with this one")
        if meta.get("manifest_sha256") == manifest_sha:
            print(f"{bin_dir} is up to date (same spm.model and manifest.json); nothing to do")
            return
        raise UserError(f"{bin_dir} was binarized from a different manifest.json; pass --overwrite "
                        "to re-binarize")
    jobs = plan_jobs(corpus, manifest)
    tmp = corpus / f".bin.tmp-{os.getpid()}"  # mkdir (unlike mkdtemp) honours the umask
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    old: Path | None = None
    try:
        files = binarize(corpus, tok, jobs, tmp, args.workers)
        meta = {"format": META_FORMAT, "spm_sha256": tok.sha256, "vocab_size": tok.vocab_size,
                "dtype": dtype_for_vocab(tok.vocab_size).name, "manifest_sha256": manifest_sha,
                "files": files}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if bin_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=".bin-old.", dir=corpus))
            bin_dir.replace(old / "bin")
        tmp.replace(bin_dir)
        adopt_spm(corpus, tok, corpus_tok)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    n_lines = sum(f["lines"] for f in files.values())
    n_tok = sum(f["tokens"] for f in files.values())
    print(f"wrote {bin_dir}: {len(files)} files, {n_lines} lines, {n_tok} tokens ({meta['dtype']})")


if __name__ == "__main__":
    main()
