"""Memory-mapped storage for tokenized sentences: ``<prefix>.bin`` + ``<prefix>.idx``.

``.bin`` holds every sentence's token ids back to back (uint16 when the vocabulary has at
most 65536 pieces, else int32), little-endian, no header.

``.idx`` (little-endian)::

    offset  size  field
    0       8     magic  b"NMTIDX\\x00\\x01"
    8       4     format version (uint32, currently 1)
    12      4     dtype code (uint32: 1 = uint16, 2 = int32)
    16      8     vocab size (uint64)
    24      8     number of sequences N (uint64)
    32      8*(N+1) offsets (int64, in tokens): sequence i is bin[offsets[i]:offsets[i+1]]

The writer streams both files to ``<name>.tmp`` and renames them into place in
:meth:`IndexedDatasetWriter.finalize` (``.bin`` first, then ``.idx``), so memory use does not
depend on the corpus size and a final ``.idx`` always has a complete ``.bin`` beside it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nmt.errors import UserError

MAGIC = b"NMTIDX\x00\x01"
VERSION = 1
_HEADER = struct.Struct("<8sIIQQ")
HEADER_SIZE = _HEADER.size  # 32: the offsets that follow stay 8-byte aligned
_DTYPES: dict[int, np.dtype] = {1: np.dtype("<u2"), 2: np.dtype("<i4")}
_CODES = {v: k for k, v in _DTYPES.items()}
_FLUSH_TOKENS = 1 << 20
_FIX = "re-run python -m data_prep.binarize (with --overwrite)"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else int32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return _DTYPES[1] if vocab_size <= 65536 else _DTYPES[2]


def _paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    p = str(prefix)
    return Path(p + ".bin"), Path(p + ".idx")


class IndexedDatasetWriter:
    """Append sequences of token ids, then :meth:`finalize` to publish the two files.

    Usable as a context manager: leaving the block with an exception removes the temp files,
    leaving it normally finalizes.
    """

    def __init__(self, prefix: str | os.PathLike, vocab_size: int) -> None:
        self.vocab_size = int(vocab_size)
        self.dtype = dtype_for_vocab(self.vocab_size)
        self.bin_path, self.idx_path = _paths(prefix)
        self._bin_tmp = self.bin_path.with_name(self.bin_path.name + ".tmp")
        self._idx_tmp = self.idx_path.with_name(self.idx_path.name + ".tmp")
        self._bin = open(self._bin_tmp, "wb")
        self._idx = open(self._idx_tmp, "wb")
        self._idx.write(_HEADER.pack(MAGIC, VERSION, _CODES[self.dtype], self.vocab_size, 0))
        self._idx.write(np.zeros(1, dtype="<i8").tobytes())
        self._count = 0
        self._tokens = 0
        self._pending_ids: list[np.ndarray] = []
        self._pending_offsets: list[np.ndarray] = []
        self._pending_tokens = 0
        self._closed = False

    def __len__(self) -> int:
        return self._count

    @property
    def num_tokens(self) -> int:
        return self._tokens

    def _check(self, arr: np.ndarray) -> None:
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(
                f"token id out of range [0, {self.vocab_size}) for {self.bin_path}: "
                f"min {arr.min()}, max {arr.max()}"
            )

    def add(self, ids: Iterable[int] | np.ndarray) -> None:
        """Append one sequence (may be empty)."""
        arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        if arr.ndim != 1:
            raise ValueError("add() takes one 1-D sequence of ids")
        self.add_many(arr, np.array([arr.size], dtype=np.int64))

    def add_many(self, flat: np.ndarray, sizes: np.ndarray) -> None:
        """Append ``len(sizes)`` sequences stored back to back in ``flat``."""
        if self._closed:
            raise RuntimeError(f"{self.bin_path}: writer already finalized or aborted")
        flat = np.asarray(flat)
        sizes = np.asarray(sizes, dtype=np.int64)
        if flat.ndim != 1 or sizes.ndim != 1 or (sizes.size and sizes.min() < 0):
            raise ValueError("add_many() takes a 1-D id array and 1-D non-negative sizes")
        if int(sizes.sum()) != flat.size:
            raise ValueError(f"sizes sum to {int(sizes.sum())} but {flat.size} ids were given")
        self._check(flat)
        self._pending_ids.append(flat.astype(self.dtype, copy=False))
        self._pending_offsets.append(self._tokens + np.cumsum(sizes))
        self._count += sizes.size
        self._tokens += flat.size
        self._pending_tokens += flat.size + sizes.size
        if self._pending_tokens >= _FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        for a in self._pending_ids:
            self._bin.write(a.tobytes())
        for o in self._pending_offsets:
            self._idx.write(o.astype("<i8", copy=False).tobytes())
        self._pending_ids.clear()
        self._pending_offsets.clear()
        self._pending_tokens = 0

    def finalize(self) -> None:
        """Write the header's count, fsync, and rename both files into place."""
        if self._closed:
            raise RuntimeError(f"{self.bin_path}: writer already finalized or aborted")
        self._flush()
        self._idx.seek(0)
        self._idx.write(_HEADER.pack(MAGIC, VERSION, _CODES[self.dtype], self.vocab_size, self._count))
        for f in (self._bin, self._idx):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._closed = True
        os.replace(self._bin_tmp, self.bin_path)
        os.replace(self._idx_tmp, self.idx_path)

    def abort(self) -> None:
        """Close and delete the temp files; nothing is published."""
        if self._closed:
            return
        self._closed = True
        for f, p in ((self._bin, self._bin_tmp), (self._idx, self._idx_tmp)):
            f.close()
            p.unlink(missing_ok=True)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


class IndexedDataset:
    """Read-only, memory-mapped view of one ``<prefix>.bin``/``.idx`` pair."""

    def __init__(self, prefix: str | os.PathLike) -> None:
        self.bin_path, self.idx_path = _paths(prefix)
        for p in (self.idx_path, self.bin_path):
            if not p.is_file():
                raise UserError(f"{p}: binarized file not found; {_FIX}")
        idx_size = self.idx_path.stat().st_size
        if idx_size < HEADER_SIZE:
            raise self._bad(f"index is truncated ({idx_size} bytes)")
        with open(self.idx_path, "rb") as f:
            magic, version, code, vocab_size, count = _HEADER.unpack(f.read(HEADER_SIZE))
        if magic != MAGIC:
            raise self._bad("not an index file (bad magic bytes)")
        if version != VERSION:
            raise self._bad(f"index format version {version}, this code reads {VERSION}")
        if code not in _DTYPES:
            raise self._bad(f"unknown dtype code {code}")
        self.dtype: np.dtype = _DTYPES[code]
        self.vocab_size = int(vocab_size)
        if self.vocab_size <= 0 or dtype_for_vocab(self.vocab_size) != self.dtype:
            raise self._bad(f"vocab size {self.vocab_size} does not match dtype {self.dtype.name}")
        if idx_size != HEADER_SIZE + 8 * (count + 1):
            raise self._bad(f"index holds {idx_size} bytes, expected {HEADER_SIZE + 8 * (count + 1)} "
                            f"for {count} sequences (truncated or corrupt)")
        self._offsets = np.memmap(self.idx_path, dtype="<i8", mode="r", offset=HEADER_SIZE,
                                  shape=(count + 1,))
        total = int(self._offsets[-1])
        if int(self._offsets[0]) != 0:
            raise self._bad("first offset is not 0")
        bin_size = self.bin_path.stat().st_size
        if total < 0 or bin_size != total * self.dtype.itemsize:
            raise self._bad(f"{self.bin_path.name} holds {bin_size} bytes but the index expects "
                            f"{total * self.dtype.itemsize} (the two files do not belong together)")
        self.sizes = np.empty(count, dtype=np.int32)
        step = 1 << 22
        for s in range(0, count, step):
            d = np.diff(self._offsets[s:s + step + 1])
            if d.size and (d.min() < 0 or d.max() > np.iinfo(np.int32).max):
                raise self._bad("offsets are not increasing")
            self.sizes[s:s + d.size] = d
        if total == 0:  # numpy cannot map an empty file
            self._data = np.empty(0, dtype=self.dtype)
        else:
            self._data = np.memmap(self.bin_path, dtype=self.dtype, mode="r", shape=(total,))

    def _bad(self, what: str) -> UserError:
        return UserError(f"{self.idx_path}: {what}; {_FIX}")

    def __len__(self) -> int:
        return self.sizes.size

    @property
    def num_tokens(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        """Token ids of sequence ``i`` as a fresh int64 array."""
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences in {self.bin_path}")
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._data[start:end].astype(np.int64)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self) -> dict:
        # Pickle (e.g. for DataLoader worker processes) by path: re-map instead of copying data.
        return {"prefix": str(self.bin_path)[: -len(".bin")]}

    def __setstate__(self, state: dict) -> None:
        IndexedDataset.__init__(self, state["prefix"])

    def __repr__(self) -> str:
        return f"IndexedDataset({str(self.bin_path)[:-4]!r}, n={len(self)}, dtype={self.dtype.name})"
