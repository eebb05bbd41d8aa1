"""Reference points for a model's scores: the copy and nearest-training-segment baselines.

* :func:`copy_baseline` — the hypothesis is the source sentence itself. It measures how much a
  metric rewards untranslated output (shared names, numbers, punctuation, cognates).
* :class:`RetrievalBaseline` — the hypothesis is the target side of the training pair whose
  *source* is most similar to the test source (character n-gram TF-IDF cosine; an exact
  string match wins outright). It measures how much of the test set can be "solved" by lookup
  in the training data — high on UI-string corpora where segments repeat.

Training text is read from a corpus directory (docs/architecture.md)::

    <corpus>/bitext/train/<a>-<b>.<a>     # a < b (sorted codes); line-aligned with …
    <corpus>/bitext/train/<a>-<b>.<b>

A pair serves both directions. A direction without a training pair has no retrieval baseline
(:meth:`RetrievalBaseline.translate` returns None).

Similarity: each segment is case-folded, padded with one space on each side and cut into
character 3-grams (:data:`ORDERS`), hashed to 64 bits with numpy (collisions negligible);
weights are ``(1 + log tf) * idf`` with smoothed idf, training rows L2-normalised (the query's
norm does not change its argmax). Scores are one sparse CSR (train × n-grams of the test set)
by dense (those n-grams × a block of test segments) product in torch, so ~1000 test × 20k
training segments take well under a second per direction on two cores. Ties go to the
earliest training line; an exact string match always wins.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from nmt.errors import UserError
from nmt.eval.flores import read_text_lines

ORDERS = (3,)  # character 3-grams: 2-4-grams cost ~3x as much for little change in the pick
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier for the rolling hash
_SEP = 0  # code point separating segments in the concatenated array (NUL is mapped away)
_CHUNK = 256  # test segments per similarity block …
_BLOCK_CELLS = 32_000_000  # … and at most this many (train × test) float32 scores at once


def copy_baseline(sources: list[str]) -> list[str]:
    """Hypotheses of the copy baseline: the sources unchanged."""
    return list(sources)


def _ngram_keys(texts: list[str], orders: tuple[int, ...] = ORDERS) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, keys)``: one entry per character n-gram occurrence (row = segment index)."""
    padded = "\x00".join(" " + t.replace("\x00", " ").casefold() + " " for t in texts)
    cp = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    is_sep = cp == _SEP
    seps_before = np.concatenate([[0], np.cumsum(is_sep)])  # separators in cp[:i]
    rows_all, keys_all = [], []
    for n in orders:
        m = len(cp) - n + 1
        if m <= 0:
            continue
        start = np.arange(m)
        ok = seps_before[start + n] - seps_before[start] == 0  # window inside one segment
        h = np.full(m, np.uint64(n), dtype=np.uint64)
        for k in range(n):
            h = h * _MULT + cp[k : k + m]  # uint64 arithmetic wraps: a 64-bit rolling hash
        rows_all.append(seps_before[start[ok]])
        keys_all.append(h[ok])
    if not rows_all:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    return np.concatenate(rows_all).astype(np.int64), np.concatenate(keys_all)


def _unique_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values of an int64 array and their counts (a plain sort: fast for int64)."""
    s = np.sort(x)
    first = np.empty(len(s), dtype=bool)
    first[:1] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return s[starts], np.diff(np.append(starts, len(s)))


def _tf_weights(major: np.ndarray, minor: np.ndarray, n_minor: int) -> tuple[np.ndarray, ...]:
    """Unique (major, minor) pairs, sorted by major then minor, and ``1 + log tf`` weights."""
    upair, counts = _unique_counts(major * n_minor + minor)
    return upair // n_minor, upair % n_minor, 1.0 + np.log(counts)


class NgramIndex:
    """Character n-gram TF-IDF index over a list of segments; :meth:`nearest` finds neighbours.

    Stored as CSR-ordered ``(rows, cols, weights)``: rows sorted, columns sorted within a row,
    weights L2-normalised per row.
    """

    def __init__(self, segments: list[str]) -> None:
        self.size = len(segments)
        rows, keys = _ngram_keys(segments)
        keys = keys.view(np.int64)  # compared as int64 bit patterns: any consistent order works
        self.vocab = _unique_counts(keys)[0]
        v = len(self.vocab)
        r, c, tf = _tf_weights(rows, np.searchsorted(self.vocab, keys), max(v, 1))
        df = np.bincount(c, minlength=v)
        self.idf = np.log((1.0 + self.size) / (1.0 + df)) + 1.0
        w = tf * self.idf[c]
        norm = np.sqrt(np.bincount(r, weights=w * w, minlength=self.size))
        self.rows, self.cols = r, c
        self.weights = (w / np.maximum(norm[r], 1e-12)).astype(np.float32)
        self.exact: dict[str, int] = {}
        for i, seg in enumerate(segments):
            self.exact.setdefault(seg, i)

    def nearest(self, queries: list[str]) -> np.ndarray:
        """Index of the most similar indexed segment for every query (int64 array).

        Only the n-grams that occur in some query are kept as columns (the others add 0 to
        every dot product); then ``train (CSR) @ queries (dense block)`` per block of queries.
        """
        out = np.zeros(len(queries), dtype=np.int64)
        if self.size == 0 or not queries or len(self.vocab) == 0:
            return out
        import torch  # imported here: nmt.evaluate without baselines never needs it

        qrows, qkeys = _ngram_keys(queries)
        qkeys = qkeys.view(np.int64)
        pos = np.minimum(np.searchsorted(self.vocab, qkeys), len(self.vocab) - 1)
        found = self.vocab[pos] == qkeys
        qr, qc, tf = _tf_weights(qrows[found], pos[found], len(self.vocab))
        used = _unique_counts(qc)[0]
        if len(used) == 0:
            return self._exact_matches(queries, out)
        remap = np.full(len(self.vocab), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        keep = remap[self.cols] >= 0  # CSR order survives the filter
        crow = np.concatenate([[0], np.cumsum(np.bincount(self.rows[keep], minlength=self.size))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            train = torch.sparse_csr_tensor(
                torch.from_numpy(crow), torch.from_numpy(remap[self.cols[keep]]),
                torch.from_numpy(self.weights[keep]), size=(self.size, len(used)),
                check_invariants=False,
            )
        qw = torch.from_numpy((tf * self.idf[qc]).astype(np.float32))
        qcol = torch.from_numpy(remap[qc])
        chunk = max(1, min(_CHUNK, _BLOCK_CELLS // self.size))
        for lo in range(0, len(queries), chunk):
            hi = min(lo + chunk, len(queries))
            a, b = np.searchsorted(qr, [lo, hi])
            block = torch.zeros(len(used), hi - lo)
            block[qcol[a:b], torch.from_numpy(qr[a:b] - lo)] = qw[a:b]
            out[lo:hi] = torch.argmax(train @ block, dim=0).numpy()  # ties: earliest line
        return self._exact_matches(queries, out)

    def _exact_matches(self, queries: list[str], out: np.ndarray) -> np.ndarray:
        """An exact string match overrides the similarity search."""
        for i, q in enumerate(queries):
            j = self.exact.get(q)
            if j is not None:
                out[i] = j
        return out


class RetrievalBaseline:
    """Nearest-training-segment baseline over ``<corpus>/bitext/train``.

    Indexes are built lazily per (pair, source side) and cached, so the ``eng_Latn`` side of
    ``deu_Latn-eng_Latn`` is indexed once for every direction that needs it.
    """

    def __init__(self, corpus: str | Path, *, key: str = "baselines.corpus") -> None:
        self.corpus = Path(corpus)
        self.train_dir = self.corpus / "bitext" / "train"
        if not self.train_dir.is_dir():
            raise UserError(
                f"{self.train_dir} does not exist ({key}={corpus}): give a corpus directory "
                f"with training bitext in <corpus>/bitext/train/<a>-<b>.<a> and .<b>"
            )
        self._sides: dict[tuple[str, str], list[str]] = {}
        self._index: dict[tuple[str, str], NgramIndex] = {}

    def pair_files(self, src: str, tgt: str) -> tuple[Path, Path]:
        """Training files ``(<pair>.<src>, <pair>.<tgt>)`` of a direction (pair name sorted)."""
        a, b = sorted((src, tgt))
        stem = self.train_dir / f"{a}-{b}"
        return stem.with_name(f"{stem.name}.{src}"), stem.with_name(f"{stem.name}.{tgt}")

    def available(self, src: str, tgt: str) -> bool:
        """Whether the corpus has a training pair for this direction."""
        return all(p.is_file() for p in self.pair_files(src, tgt))

    def _side(self, pair: str, lang: str, path: Path) -> list[str]:
        if (pair, lang) not in self._sides:
            self._sides[(pair, lang)] = read_text_lines(path, what="training file")
        return self._sides[(pair, lang)]

    def training_pair(self, src: str, tgt: str) -> tuple[list[str], list[str]] | None:
        """Line-aligned training ``(sources, targets)`` for a direction, or None if absent."""
        if not self.available(src, tgt):
            return None
        ps, pt = self.pair_files(src, tgt)
        pair = ps.stem
        s, t = self._side(pair, src, ps), self._side(pair, tgt, pt)
        if len(s) != len(t):
            raise UserError(
                f"training files are not line-aligned: {ps} has {len(s)} lines, {pt} has "
                f"{len(t)}; rebuild the corpus"
            )
        return s, t

    def translate(self, sources: list[str], src: str, tgt: str) -> list[str] | None:
        """Retrieval hypotheses for ``sources`` (src→tgt), or None without a training pair."""
        data = self.training_pair(src, tgt)
        if data is None or not data[0]:
            return None
        train_src, train_tgt = data
        key = (self.pair_files(src, tgt)[0].stem, src)
        if key not in self._index:
            self._index[key] = NgramIndex(train_src)
        idx = self._index[key].nearest(sources)
        return [train_tgt[i] for i in idx]
