"""IndexedDatasetWriter / IndexedDataset: round trips, dtype choice, corruption detection."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.data.indexed import HEADER_SIZE, IndexedDataset, IndexedDatasetWriter, dtype_for_vocab
from nmt.errors import UserError


def write(prefix: Path, seqs: list[list[int]], vocab_size: int) -> IndexedDataset:
    with IndexedDatasetWriter(prefix, vocab_size) as w:
        for s in seqs:
            w.add(s)
    return IndexedDataset(prefix)


def test_round_trip_with_empty_sequences(tmp_path: Path) -> None:
    seqs = [[5, 6, 7], [], [399], [], [], [4, 4, 4, 4, 4, 4], []]
    ds = write(tmp_path / "x", seqs, 400)
    assert len(ds) == len(seqs)
    assert ds.sizes.dtype == np.int32
    assert ds.sizes.tolist() == [len(s) for s in seqs]
    for i, s in enumerate(seqs):
        assert ds[i].dtype == np.int64
        assert ds[i].tolist() == s
    assert ds[-1].tolist() == [] and ds[-2].tolist() == [4] * 6
    assert ds.vocab_size == 400 and ds.num_tokens == 10
    with pytest.raises(IndexError):
        ds[len(seqs)]
    assert not list(tmp_path.glob("*.tmp")), "temp files must be renamed away"


def test_pickles_by_path(tmp_path: Path) -> None:
    ds = write(tmp_path / "x", [[1, 2, 3]] * 1000, 400)
    blob = pickle.dumps(ds)
    assert len(blob) < 1000, "the token data must not be copied into the pickle"
    back = pickle.loads(blob)
    assert len(back) == 1000 and back[999].tolist() == [1, 2, 3]


def test_all_empty_and_zero_sequences(tmp_path: Path) -> None:
    ds = write(tmp_path / "empty", [[], []], 300)
    assert len(ds) == 2 and ds[0].size == 0 and ds.num_tokens == 0
    ds0 = write(tmp_path / "none", [], 300)
    assert len(ds0) == 0 and ds0.sizes.size == 0


def test_dtype_choice(tmp_path: Path) -> None:
    assert dtype_for_vocab(65536) == np.uint16
    assert dtype_for_vocab(65537) == np.int32
    small = write(tmp_path / "small", [[0, 65535]], 65536)
    assert small.dtype == np.uint16 and small[0].tolist() == [0, 65535]
    assert (tmp_path / "small.bin").stat().st_size == 4
    big = write(tmp_path / "big", [[70000, 1, 250000]], 256000)
    assert big.dtype == np.int32 and big[0].tolist() == [70000, 1, 250000]
    assert (tmp_path / "big.bin").stat().st_size == 12


def test_add_many_matches_add(tmp_path: Path) -> None:
    seqs = [[1, 2], [], [3, 4, 5]]
    with IndexedDatasetWriter(tmp_path / "a", 10) as w:
        w.add_many(np.array([1, 2, 3, 4, 5]), np.array([2, 0, 3]))
    ds = write(tmp_path / "b", seqs, 10)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert (tmp_path / "a.idx").read_bytes() == (tmp_path / "b.idx").read_bytes()
    assert [ds[i].tolist() for i in range(3)] == seqs


def test_out_of_range_id_rejected_and_abort_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="out of range"):
        with IndexedDatasetWriter(tmp_path / "x", 100) as w:
            w.add([1, 2])
            w.add([100])
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seqs=st.lists(st.lists(st.integers(0, 69999), max_size=20), max_size=30),
       big=st.booleans())
def test_property_round_trip(tmp_path: Path, seqs: list[list[int]], big: bool) -> None:
    vocab = 70000 if big else 65536
    seqs = [[t % vocab for t in s] for s in seqs]
    ds = write(tmp_path / "p", seqs, vocab)
    assert len(ds) == len(seqs)
    assert ds.sizes.tolist() == [len(s) for s in seqs]
    assert [ds[i].tolist() for i in range(len(ds))] == seqs
    assert ds.dtype == (np.int32 if big else np.uint16)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    write(tmp_path / "d", [[1, 2, 3], [4], []], 50)
    return tmp_path / "d"


def _expect_error(prefix: Path, what: str) -> None:
    with pytest.raises(UserError) as e:
        IndexedDataset(prefix)
    msg = str(e.value)
    assert what in msg and "data_prep.binarize" in msg, msg


def test_truncated_idx(good: Path) -> None:
    idx = good.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes()[:-4])
    _expect_error(good, str(idx))


def test_idx_shorter_than_header(good: Path) -> None:
    idx = good.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes()[:10])
    _expect_error(good, "truncated")


def test_bad_magic(good: Path) -> None:
    idx = good.with_suffix(".idx")
    idx.write_bytes(b"XXXXXXXX" + idx.read_bytes()[8:])
    _expect_error(good, "magic")


def test_wrong_version(good: Path) -> None:
    idx = good.with_suffix(".idx")
    data = bytearray(idx.read_bytes())
    data[8:12] = struct.pack("<I", 99)
    idx.write_bytes(bytes(data))
    _expect_error(good, "version 99")


def test_bin_of_other_size(good: Path) -> None:
    b = good.with_suffix(".bin")
    b.write_bytes(b.read_bytes() + b"\x00\x00")
    _expect_error(good, "do not belong together")


def test_decreasing_offsets(good: Path) -> None:
    idx = good.with_suffix(".idx")
    data = bytearray(idx.read_bytes())
    # offsets 0,3,4,4 become 0,4,1,4 (same last offset, so only monotonicity is wrong)
    data[HEADER_SIZE + 8: HEADER_SIZE + 16] = struct.pack("<q", 4)
    data[HEADER_SIZE + 16: HEADER_SIZE + 24] = struct.pack("<q", 1)
    idx.write_bytes(bytes(data))
    _expect_error(good, "not increasing")


def test_missing_files(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nothing", "not found")
