"""Property-based tests (hypothesis) for the data pipeline's documented contracts.

* direction sampling (``nmt.data.sampling``): probabilities and per-epoch counts;
* token-budget batching (``nmt.data.batching``): a partition that respects the budget;
* the memory-mapped ``.bin``/``.idx`` store (``nmt.data.indexed``): exact round trips;
* the text readers and the cleaner (``data_prep.readers`` / ``data_prep.clean``);
* the SentencePiece tokenizer (``nmt.data.tokenizer``): encode→decode and tags in raw text.

Example counts are kept small so the whole file runs in well under a minute on one core.
"""

from __future__ import annotations

import itertools
import math
import pickle
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from data_prep import clean, readers
from nmt.data.batching import Examples, batch_by_tokens, batch_cost
from nmt.data.indexed import IndexedDataset, IndexedDatasetWriter, dtype_for_vocab
from nmt.data.sampling import direction_probs, epoch_counts
from nmt.data.tokenizer import Tokenizer
from nmt.errors import UserError
from nmt.langs import all_tag_tokens

try:
    from _fixtures_spm import trained_corpus
except ImportError:  # tests/ imported as a package
    from tests._fixtures_spm import trained_corpus  # noqa: F401

FAST = settings(max_examples=100, deadline=None)
MEDIUM = settings(max_examples=50, deadline=None)
# Module/session-scoped fixtures are fine with @given; say so explicitly for hypothesis.
WITH_FIXTURE = settings(max_examples=60, deadline=None,
                        suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- direction sampling ------------------------------------------------------------------------

sizes_st = st.lists(st.integers(1, 10**9), min_size=1, max_size=8).map(
    lambda ns: {f"d{i}": n for i, n in enumerate(ns)})
temperature_st = st.floats(0.05, 1000.0, allow_nan=False, allow_infinity=False)


def entropy(p: dict[str, float]) -> float:
    return -sum(x * math.log(x) for x in p.values() if x > 0)


def assert_distribution(p: dict[str, float], sizes: dict[str, int]) -> None:
    assert list(p) == list(sizes), "keys must follow the order of sizes"
    assert all(math.isfinite(x) and x >= 0 for x in p.values())
    assert math.isclose(sum(p.values()), 1.0, rel_tol=0, abs_tol=1e-9)


@FAST
@given(sizes=sizes_st, t=temperature_st)
def test_temperature_probs_form_a_distribution_ordered_like_sizes(sizes, t):
    p = direction_probs(sizes, "temperature", temperature=t)
    assert_distribution(p, sizes)
    # q^(1/T) is increasing in q: a larger direction is never sampled less often.
    for a in sizes:
        for b in sizes:
            if sizes[a] > sizes[b]:
                assert p[a] >= p[b] * (1 - 1e-12)
            elif sizes[a] == sizes[b]:
                assert math.isclose(p[a], p[b], rel_tol=1e-9)


@FAST
@given(sizes=sizes_st)
def test_temperature_one_is_proportional_and_inf_is_uniform(sizes):
    total = sum(sizes.values())
    p1 = direction_probs(sizes, "temperature", temperature=1.0)
    for d, n in sizes.items():
        assert math.isclose(p1[d], n / total, rel_tol=1e-9, abs_tol=1e-15)
    uniform = direction_probs(sizes, "uniform")
    assert_distribution(uniform, sizes)
    assert all(math.isclose(x, 1 / len(sizes), rel_tol=1e-12) for x in uniform.values())
    p_inf = direction_probs(sizes, "temperature", temperature=math.inf)
    assert p_inf == pytest.approx(uniform, rel=1e-12)


@FAST
@given(sizes=sizes_st, t1=temperature_st, t2=temperature_st)
def test_higher_temperature_is_never_less_uniform(sizes, t1, t2):
    lo, hi = sorted((t1, t2))
    p_lo = direction_probs(sizes, "temperature", temperature=lo)
    p_hi = direction_probs(sizes, "temperature", temperature=hi)
    p_inf = direction_probs(sizes, "temperature", temperature=math.inf)
    assert entropy(p_lo) <= entropy(p_hi) + 1e-9
    assert entropy(p_hi) <= entropy(p_inf) + 1e-9
    assert entropy(p_inf) == pytest.approx(math.log(len(sizes)))
    # The largest direction's share shrinks (weakly) as T grows, the smallest one's grows.
    big, small = max(sizes, key=sizes.get), min(sizes, key=sizes.get)
    assert p_hi[big] <= p_lo[big] + 1e-12
    assert p_hi[small] >= p_lo[small] - 1e-12


@FAST
@given(data=st.data(), sizes=sizes_st)
def test_fixed_weights_are_normalised(data, sizes):
    weights = {d: data.draw(st.floats(0, 1e6, allow_nan=False), label=d) for d in sizes}
    assume(sum(weights.values()) > 0)
    p = direction_probs(sizes, "fixed", weights=weights)
    assert_distribution(p, sizes)
    total = sum(weights.values())
    for d in sizes:
        assert math.isclose(p[d], weights[d] / total, rel_tol=1e-9, abs_tol=1e-15)
        if weights[d] == 0:
            assert p[d] == 0


@FAST
@given(sizes=sizes_st,
       budget=st.floats(1.0, 1e11, allow_nan=False),
       max_epochs=st.floats(0.01, 100.0, allow_nan=False))
def test_unimax_respects_budget_and_epoch_cap(sizes, budget, max_epochs):
    p = direction_probs(sizes, "unimax", unimax_budget=budget, unimax_max_epochs=max_epochs,
                          unimax_allow_proportional=True)
    assert_distribution(p, sizes)
    b = budget
    # The greedy UniMax pass hands out min(B, N * sum(U)) units in total (every direction is
    # capped at N * U_l epochs, and whatever is not capped takes an equal share of B), so the
    # allocation of each direction is a_l = p_l * min(B, N * sum(U)).
    total = min(b, max_epochs * sum(sizes.values()))
    alloc = {d: p[d] * total for d in sizes}
    assert sum(alloc.values()) <= b * (1 + 1e-9)
    for d, n in sizes.items():
        assert alloc[d] <= max_epochs * n * (1 + 1e-9), "more than unimax_max_epochs epochs"
    # As uniform as the caps allow: a direction below its cap gets the largest allocation.
    top = max(alloc.values())
    for d, n in sizes.items():
        if alloc[d] < max_epochs * n * (1 - 1e-6):
            assert alloc[d] == pytest.approx(top, rel=1e-6)


@FAST
@given(sizes=sizes_st)
def test_unimax_budget_covering_every_epoch_is_proportional_and_refused(sizes):
    budget = float(sum(sizes.values()))  # N = 1: every direction capped at its size
    p = direction_probs(sizes, "unimax", unimax_budget=budget, unimax_allow_proportional=True)
    p1 = direction_probs(sizes, "temperature", temperature=1.0)
    assert p == pytest.approx(p1, rel=1e-9, abs=1e-15)
    if len(set(sizes.values())) > 1:
        with pytest.raises(UserError, match="unimax_allow_proportional"):
            direction_probs(sizes, "unimax", unimax_budget=budget)


probs_st = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=8).filter(
    lambda ws: sum(ws) > 0).map(lambda ws: {f"d{i}": w for i, w in enumerate(ws)})


@FAST
@given(probs=probs_st, epoch_size=st.integers(1, 10**7), seed=st.integers(0, 2**31 - 1))
def test_epoch_counts_sum_to_epoch_size_and_track_probabilities(probs, epoch_size, seed):
    sizes = {d: 1000 for d in probs}
    counts = epoch_counts(probs, sizes, epoch_size, torch.Generator().manual_seed(seed))
    assert list(counts) == list(probs)
    assert sum(counts.values()) == epoch_size
    total_p = sum(probs.values())
    for d, c in counts.items():
        assert isinstance(c, int) and c >= 0
        expected = epoch_size * probs[d] / total_p
        # floor(V p) plus a share of a remainder smaller than the number of directions.
        assert abs(c - expected) <= len(probs), (d, c, expected)
        if probs[d] == 0:
            assert c == 0
    again = epoch_counts(probs, sizes, epoch_size, torch.Generator().manual_seed(seed))
    assert again == counts, "counts depend on the generator only"


@FAST
@given(sizes=sizes_st.map(lambda s: {d: n % 10**5 + 1 for d, n in s.items()}), seed=st.integers(0, 1000))
def test_epoch_counts_default_size_is_total_size(sizes, seed):
    p = direction_probs(sizes, "temperature", temperature=5.0)
    counts = epoch_counts(p, sizes, None, torch.Generator().manual_seed(seed))
    assert sum(counts.values()) == sum(sizes.values())


# --- token-budget batching ---------------------------------------------------------------------

@st.composite
def examples_st(draw, min_len=0, max_len=300, max_n=200):
    n = draw(st.integers(0, max_n))
    lens = st.integers(min_len, max_len)
    src = np.array(draw(st.lists(lens, min_size=n, max_size=n)), dtype=np.int64)
    tgt = np.array(draw(st.lists(lens, min_size=n, max_size=n)), dtype=np.int64)
    direction = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int64)
    return Examples(direction, np.arange(n, dtype=np.int64), src, tgt)


budget_st = st.integers(1, 2000)
max_sentences_st = st.one_of(st.none(), st.integers(1, 50))


def check_batches(ex: Examples, batches, max_tokens, max_sentences, one_direction):
    n = len(ex)
    allpos = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    # Every example exactly once: no skips, no duplicates.
    assert len(allpos) == n
    assert np.array_equal(np.sort(allpos), np.arange(n))
    cost_len = np.maximum(ex.src_len, ex.tgt_len)
    for b in batches:
        assert len(b) >= 1
        if max_sentences is not None:
            assert len(b) <= max_sentences
        cost = batch_cost(ex, b)
        assert cost == len(b) * int(cost_len[b].max())  # n_sentences * padded length
        if cost > max_tokens:  # only an oversized example, alone
            assert len(b) == 1 and cost_len[b[0]] > max_tokens
        if one_direction:
            assert len(set(ex.direction[b].tolist())) == 1
    for b in batches:  # oversized examples never share a batch
        if len(b) > 1:
            assert cost_len[b].max() <= max_tokens


@MEDIUM
@given(ex=examples_st(), max_tokens=budget_st, max_sentences=max_sentences_st,
       one_direction=st.booleans(), seed=st.one_of(st.none(), st.integers(0, 2**31 - 1)))
def test_batches_partition_examples_within_budget(ex, max_tokens, max_sentences, one_direction, seed):
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    batches = batch_by_tokens(ex, max_tokens, max_sentences, one_direction_per_batch=one_direction,
                              generator=gen)
    check_batches(ex, batches, max_tokens, max_sentences, one_direction)
    if seed is not None:  # reproducible from the generator alone
        again = batch_by_tokens(ex, max_tokens, max_sentences, one_direction_per_batch=one_direction,
                                generator=torch.Generator().manual_seed(seed))
        assert len(again) == len(batches)
        assert all(np.array_equal(a, b) for a, b in zip(again, batches, strict=True))


@MEDIUM
@given(ex=examples_st(min_len=1, max_len=100, max_n=400), max_tokens=st.integers(1, 5000),
       max_sentences=max_sentences_st)
def test_batches_are_sorted_and_packed_greedily(ex, max_tokens, max_sentences):
    """Without a generator: ascending length order, and no batch could take the next example."""
    batches = batch_by_tokens(ex, max_tokens, max_sentences)
    check_batches(ex, batches, max_tokens, max_sentences, False)
    cost_len = np.maximum(ex.src_len, ex.tgt_len)
    order = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert np.all(np.diff(cost_len[order]) >= 0)
    for cur, nxt in itertools.pairwise(batches):
        grown = np.append(cur, nxt[0])
        full = max_sentences is not None and len(grown) > max_sentences
        assert full or batch_cost(ex, grown) > max_tokens, "a batch stopped while the next example fit"


@FAST
@given(n=st.integers(1, 50), length=st.integers(1, 100), max_tokens=budget_st)
def test_uniform_lengths_batch_sizes(n, length, max_tokens):
    ex = Examples(np.zeros(n, np.int64), np.arange(n), np.full(n, length), np.full(n, length))
    batches = batch_by_tokens(ex, max_tokens)
    per = max(1, max_tokens // length)
    assert [len(b) for b in batches] == [per] * (n // per) + ([n % per] if n % per else [])


# --- memory-mapped indexed dataset -------------------------------------------------------------

@st.composite
def corpus_st(draw):
    vocab_size = draw(st.one_of(st.integers(1, 65536), st.just(65536), st.just(65537),
                                st.integers(65537, 2**31)))
    ids = st.one_of(st.integers(0, vocab_size - 1), st.just(vocab_size - 1), st.just(0))
    seqs = draw(st.lists(st.lists(ids, max_size=20), max_size=30))
    return vocab_size, seqs


@FAST
@given(corpus=corpus_st(), use_many=st.booleans())
def test_indexed_round_trip(corpus, use_many):
    vocab_size, seqs = corpus
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "train.eng_Latn"
        with IndexedDatasetWriter(prefix, vocab_size) as w:
            if use_many and seqs:
                flat = np.array([i for s in seqs for i in s], dtype=np.int64)
                w.add_many(flat, np.array([len(s) for s in seqs]))
            else:
                for s in seqs:
                    w.add(s)
            assert len(w) == len(seqs)
        ds = IndexedDataset(prefix)
        assert ds.dtype == dtype_for_vocab(vocab_size)
        assert ds.dtype == (np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<i4"))
        assert ds.vocab_size == vocab_size
        assert len(ds) == len(seqs)
        assert ds.num_tokens == sum(map(len, seqs))
        assert ds.sizes.tolist() == [len(s) for s in seqs]
        got = [ds[i].tolist() for i in range(len(ds))]
        assert got == seqs
        assert [x.tolist() for x in ds] == seqs
        if seqs:
            assert ds[-1].tolist() == seqs[-1]
            assert ds[0].dtype == np.int64
        clone = pickle.loads(pickle.dumps(ds))
        assert [clone[i].tolist() for i in range(len(clone))] == seqs
        assert not list(Path(tmp).glob("*.tmp")), "temp files must be renamed into place"


@FAST
@given(vocab_size=st.integers(1, 2**31), bad=st.integers(0, 10))
def test_indexed_writer_rejects_out_of_range_ids(vocab_size, bad):
    with tempfile.TemporaryDirectory() as tmp:
        w = IndexedDatasetWriter(Path(tmp) / "x", vocab_size)
        with pytest.raises(ValueError, match="out of range"):
            w.add([0, vocab_size + bad])
        with pytest.raises(ValueError, match="out of range"):
            w.add([-1 - bad])
        w.abort()
        assert not list(Path(tmp).iterdir())


# --- readers and cleaner -----------------------------------------------------------------------

# Lines are split on b"\n" only (binary reads) and "\r\n" is a line ending, so a line may hold
# any other character, Unicode line separators (U+2028, U+0085, \v, \f) and a "\r" that does
# not end the line included.
line_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")
line_st = st.one_of(
    st.text(line_chars, max_size=30),
    st.text(st.sampled_from("ab \t\r\v\f\x85\u2028\u3000\xa0"), max_size=8),  # separator-heavy
).filter(lambda s: not s.endswith("\r"))


def write_lines(path: Path, lines: list[str], crlf: bool, trailing_newline: bool) -> None:
    eol = "\r\n" if crlf else "\n"
    text = eol.join(lines)
    # Without a final newline an empty last line would vanish, so keep it then.
    if trailing_newline or lines[-1] == "":
        text += eol
    path.write_bytes(text.encode("utf-8"))


def without_bom(lines: list[str]) -> list[str]:
    """The reader removes one UTF-8 byte-order mark at the start of the file."""
    return [lines[0].removeprefix("\ufeff"), *lines[1:]]


@MEDIUM
@given(pairs=st.lists(st.tuples(line_st, line_st), min_size=1, max_size=20),
       crlf=st.booleans(), trailing=st.booleans())
def test_moses_files_round_trip_line_aligned(pairs, crlf, trailing):
    src = [s for s, _ in pairs]
    tgt = [t for _, t in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        sp, tp = readers.moses_paths(Path(tmp) / "corpus.de-en", "de", "en")
        write_lines(sp, src, crlf, trailing)
        write_lines(tp, tgt, crlf, not trailing)
        got = list(readers.read_moses(sp, tp))
        assert got == list(zip(without_bom(src), without_bom(tgt), strict=True))
        assert readers.count_lines(sp) == len(src)
        assert list(readers.iter_lines(sp)) == without_bom(src)


@MEDIUM
@given(pairs=st.lists(st.tuples(line_st, line_st), min_size=2, max_size=10), cut=st.integers(1, 9))
def test_moses_files_of_different_length_are_rejected(pairs, cut):
    from nmt.errors import UserError

    cut = min(cut, len(pairs) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        sp, tp = Path(tmp) / "a.src", Path(tmp) / "a.tgt"
        write_lines(sp, [s for s, _ in pairs], False, True)
        write_lines(tp, [t for _, t in pairs[:cut]], False, True)
        with pytest.raises(UserError, match="line counts differ"):
            list(readers.read_moses(sp, tp))


tsv_field = line_st.map(lambda s: s.replace("\t", " "))


@MEDIUM
@given(pairs=st.lists(st.tuples(tsv_field, tsv_field), min_size=1, max_size=20),
       crlf=st.booleans(), trailing=st.booleans())
def test_tsv_round_trip_line_aligned(pairs, crlf, trailing):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.tsv"
        write_lines(path, [f"{s}\t{t}" for s, t in pairs], crlf, trailing)
        got = list(readers.read_tsv(path))
    expected = []
    for i, (s, t) in enumerate(pairs):
        if i == 0:
            s = s.removeprefix("\ufeff")
        # Documented: a blank line (whitespace only) reads as ("", "").
        expected.append(("", "") if not f"{s}\t{t}".strip() else (s, t))
    assert got == expected


raw_line_st = st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@MEDIUM
@given(src=st.lists(raw_line_st, min_size=1, max_size=25), data=st.data(),
       max_len=st.one_of(st.none(), st.integers(1, 5)), max_ratio=st.one_of(st.none(), st.floats(1.0, 4.0)),
       dedup=st.booleans())
def test_cleaner_counts_add_up(src, data, max_len, max_ratio, dedup):
    """Raw bytes through read_moses(skip_invalid=True) and the cleaner: kept + dropped = input."""
    tgt = data.draw(st.lists(raw_line_st, min_size=len(src), max_size=len(src)), label="tgt")

    def valid(b: bytes) -> bool:
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    with tempfile.TemporaryDirectory() as tmp:
        sp, tp = Path(tmp) / "c.src", Path(tmp) / "c.tgt"
        sp.write_bytes(b"".join(x + b"\n" for x in src))
        tp.write_bytes(b"".join(x + b"\n" for x in tgt))
        pairs = list(readers.read_moses(sp, tp, skip_invalid=True))
        assert len(pairs) == len(src)
        f = clean.PairFilter("eng_Latn", "zho_Hans", max_len=max_len, max_ratio=max_ratio, dedup=dedup)
        kept = list(f.filter(iter(pairs)))
    counts = f.counts
    assert set(counts["dropped"]) == set(clean.DROP_REASONS)
    assert all(v >= 0 for v in counts["dropped"].values())
    assert counts["kept"] == len(kept)
    assert counts["kept"] + sum(counts["dropped"].values()) == len(pairs)
    assert counts["dropped"]["invalid_utf8"] == sum(not (valid(s) and valid(t)) for s, t in zip(src, tgt, strict=True))
    for s, t in kept:
        assert s and t and s == " ".join(s.split()) and t == " ".join(t.split())
        assert clean.drop_reason(s, t, "eng_Latn", "zho_Hans", max_len=max_len, max_ratio=max_ratio) is None
    if dedup:
        assert len(set(kept)) == len(kept)
    else:
        assert counts["dropped"]["duplicate"] == 0


@MEDIUM
@given(pairs=st.lists(st.tuples(st.one_of(st.none(), line_st), st.one_of(st.none(), line_st)),
                      max_size=30))
def test_clean_function_counts_add_up(pairs):
    kept, counts = clean.clean(pairs, max_len=10, max_ratio=2.0)
    assert counts["kept"] == len(kept)
    assert counts["kept"] + sum(counts["dropped"].values()) == len(pairs)
    assert counts["dropped"]["invalid_utf8"] == sum(s is None or t is None for s, t in pairs)
    assert counts["dropped"]["empty"] == sum(
        s is not None and t is not None and (not s.split() or not t.split()) for s, t in pairs)
    assert len(set(kept)) == len(kept)
    for s, t in kept:  # whitespace runs (any Unicode separator) are one space, ends stripped
        assert s and t and s == " ".join(s.split()) and t == " ".join(t.split())
    # The report has one column per reason and the numbers of the record.
    report = clean.format_report({"train/a-b": counts})
    assert report.splitlines()[1].split()[1:] == [str(counts["kept"])] + [
        str(counts["dropped"][r]) for r in clean.DROP_REASONS]


# --- tokenizer ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok(trained_corpus: Path) -> Tokenizer:
    return Tokenizer(trained_corpus / "spm.model")


@pytest.fixture(scope="module")
def alphabet(tok: Tokenizer) -> str:
    """Characters with a piece of their own in the model (the word boundary ▁ as a space)."""
    chars = set()
    for i in range(tok.vocab_size):
        piece = tok.id_to_piece(i)
        if i <= tok.eos_id or tok.is_tag(i) or len(piece) != 1:
            continue
        chars.add(" " if piece == "\u2581" else piece)
    assert len(chars) > 30
    return "".join(sorted(chars))


@WITH_FIXTURE
@given(data=st.data())
def test_encode_decode_round_trip(tok, alphabet, data):
    text = data.draw(st.text(st.sampled_from(alphabet), max_size=60), label="text")
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.unk_id not in ids, "every character of the alphabet has a piece"
    assert not any(tok.is_tag(i) or i in (tok.pad_id, tok.bos_id, tok.eos_id) for i in ids)
    expected = " ".join(unicodedata.normalize("NFKC", text).split())
    assert tok.decode(ids) == expected
    assert tok.encode_batch([text]) == [ids]
    assert tok.decode_batch([ids]) == [expected]
    # Framing with a tag, bos, eos and padding does not change the text.
    framed = [tok.lang_id("fra_Latn"), tok.bos_id, *ids, tok.eos_id, tok.pad_id]
    assert tok.decode(framed) == expected


@WITH_FIXTURE
@given(data=st.data(), tag=st.sampled_from(all_tag_tokens()), full_width=st.booleans())
def test_tags_in_raw_text_never_become_tag_ids(tok, alphabet, data, tag, full_width):
    words = st.text(st.sampled_from(alphabet), max_size=15)
    before, after = data.draw(words, label="before"), data.draw(words, label="after")
    typed = tag.replace("_", "\uff3f") if full_width else tag  # ＿ NFKC-normalises to _
    text = before + typed + after
    ids = tok.encode(text)
    assert not any(tok.is_tag(i) for i in ids), "raw text must not produce a language-tag id"
    assert not any(tok.is_tag(i) for i in tok.encode_batch([text, "The cat."])[0])
    decoded = tok.decode(ids)
    assert "__" in decoded
    if all(ch in alphabet for ch in tag):  # the literal tag text comes back unchanged
        assert decoded == " ".join(unicodedata.normalize("NFKC", text).split())
