"""A shard's partial metrics on a binary stream: a JSON header, then named 1-D numpy arrays, read back in slices.

Layout (all integers little-endian):

    magic           8 bytes   b"LVXPART1"
    header length   8 bytes   unsigned
    header          JSON (UTF-8), then zero bytes up to a multiple of 8
    data            each array's raw bytes at an 8-aligned offset (relative to the start of the data)

The header holds the caller's metadata and, under "arrays", each array's dtype (explicit byte order, e.g.
"<f8", "|S25"), length and offset. Arrays are plain columns: a slice `[start, stop)` is one seek and one
read of `(stop - start) * itemsize` bytes, so a merge can hold a few blocks of every partial instead of the
partials themselves. Only the header is read whole; it is small (no per-row data).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

MAGIC = b"LVXPART1"
_ALIGN = 8


@dataclass(frozen=True, eq=False)
class Partial:
    """Metadata (JSON-ready) and columns; `kind` tells a detection partial from a classification one."""

    kind: str
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def write(self, stream: BinaryIO) -> int:
        """Serialise to `stream` (anything with `write`); returns the bytes written."""
        return write_partial(stream, self.kind, self.meta, self.arrays)

    def nbytes(self) -> int:
        """Size once written, without writing it."""
        return len(_encode_header(self.kind, self.meta, self.arrays)[0]) + _data_size(self.arrays)


def _padded(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _data_size(arrays: Mapping[str, np.ndarray]) -> int:
    return sum(_padded(a.nbytes) for a in arrays.values())


def _encode_header(kind: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> tuple[bytes, list]:
    table, offset, blobs = {}, 0, []
    for name, array in arrays.items():
        if array.ndim != 1:
            raise ValueError(f"{name}: only 1-D arrays are stored, got shape {array.shape}")
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == "=" else array.dtype
        table[name] = {"dtype": dtype.str, "length": len(array), "offset": offset}
        blobs.append((np.ascontiguousarray(array, dtype=dtype), _padded(array.nbytes) - array.nbytes))
        offset += _padded(array.nbytes)
    text = json.dumps({"kind": kind, "meta": meta, "arrays": table}, separators=(",", ":")).encode()
    head = MAGIC + struct.pack("<Q", len(text)) + text
    return head + b"\0" * (_padded(len(head)) - len(head)), blobs


def write_partial(stream: BinaryIO, kind: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> int:
    head, blobs = _encode_header(kind, meta, arrays)
    written = stream.write(head) or 0
    for blob, pad in blobs:
        written += stream.write(blob.view(np.uint8)) or 0
        written += stream.write(b"\0" * pad) or 0
    return written


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    """`read` may return less than asked (raw files, sockets): loop until `size` bytes or the end."""
    data = stream.read(size)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            raise ValueError(f"truncated partial: wanted {size} bytes, got {got}")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class PartialReader:
    """The header of a partial on a seekable stream, and slices of its arrays on demand."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        start = stream.tell()
        first = _read_exact(stream, len(MAGIC) + 8)
        if first[: len(MAGIC)] != MAGIC:
            raise ValueError("not a metrics partial (bad magic)")
        (length,) = struct.unpack("<Q", first[len(MAGIC) :])
        header = json.loads(_read_exact(stream, length))
        self.kind: str = header["kind"]
        self.meta: dict[str, Any] = header["meta"]
        self._arrays = {name: (np.dtype(a["dtype"]), a["length"], a["offset"]) for name, a in header["arrays"].items()}
        self._data = start + _padded(len(MAGIC) + 8 + length)

    @property
    def names(self) -> list[str]:
        return list(self._arrays)

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def length(self, name: str) -> int:
        return self._arrays[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._arrays[name][0]

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Elements `[start, stop)` of array `name` (read-only), one seek and one read."""
        dtype, length, offset = self._arrays[name]
        stop = length if stop is None else min(stop, length)
        if not 0 <= start <= stop:
            raise IndexError(f"{name}[{start}:{stop}] out of range (length {length})")
        if start == stop:
            return np.zeros(0, dtype=dtype)
        self._stream.seek(self._data + offset + start * dtype.itemsize)
        return np.frombuffer(_read_exact(self._stream, (stop - start) * dtype.itemsize), dtype=dtype)


def read_partial(stream: BinaryIO) -> Partial:
    """A whole partial back in memory (for tests and tools; a merge reads slices instead)."""
    reader = PartialReader(stream)
    return Partial(reader.kind, reader.meta, {name: reader.read(name).copy() for name in reader.names})
