"""Reading a received dataset from its spill file: as stored, or inflated on the fly with a cap.

:class:`FileReader` reads the dataset bytes of a file from an offset and skips large values by seeking;
:class:`InflateReader` inflates a Deflated Explicit VR Little Endian dataset with ``zlib.decompressobj``, chunk by
chunk, keeping at most about one element plus 1 MiB in memory and stopping as soon as more than ``max_bytes``
come out (a deflate bomb costs the time to inflate the limit, nothing more). Both raise
:class:`CorruptInstanceError` when the data ends inside an element, and :class:`LimitExceededError` when a
configured limit is passed.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import BinaryIO, Protocol

from node.errors import CorruptInstanceError, NodeError

_CHUNK = 1 << 16
_OUT = 1 << 20


class LimitExceededError(NodeError):
    """The instance is larger than a configured limit (instance, inflated or element size)."""


class Reader(Protocol):
    """What the dataset walker reads from."""

    pos: int

    def read(self, size: int) -> bytes: ...
    def skip(self, size: int) -> None: ...
    def at_end(self) -> bool: ...


def _whole(data: bytes, size: int) -> None:
    if len(data) != size:
        raise CorruptInstanceError(
            f"the dataset is truncated: it ends {size - len(data)} byte(s) short of a declared length"
        )


def _within(position: int, size: int, end: int) -> None:
    if position + size > end:
        raise CorruptInstanceError(
            f"the dataset is truncated: a value of {size} bytes runs {position + size - end} byte(s) past its end"
        )


class FileReader:
    """The bytes of ``handle`` from its current position to ``end`` (an absolute file offset)."""

    def __init__(self, handle: BinaryIO, end: int) -> None:
        self._handle = handle
        self.pos = handle.tell()
        self._end = end

    def read(self, size: int) -> bytes:
        data = self._handle.read(size)
        _whole(data, size)
        self.pos += size
        return data

    def skip(self, size: int) -> None:
        _within(self.pos, size, self._end)
        self._handle.seek(size, io.SEEK_CUR)
        self.pos += size

    def at_end(self) -> bool:
        return self.pos >= self._end


class HeadReader:
    """A dataset's bytes from ``offset`` to ``end`` of the file at ``path``, the first ones (``head``) from memory:
    the file is opened only if the walk reads past them (a header longer than the kept bytes)."""

    def __init__(self, head: bytes, path: Path, offset: int, end: int) -> None:
        self.head = head
        self._path = path
        self.offset = offset
        self.end = end
        self._handle: BinaryIO | None = None
        self.pos = offset

    def read(self, size: int) -> bytes:
        at = self.pos - self.offset
        if at + size <= len(self.head):  # all there: no truncation check
            self.pos += size
            return self.head[at:at + size]
        if self._handle is None:
            self._handle = self._path.open("rb")
        self._handle.seek(self.pos)
        data = self._handle.read(size)
        _whole(data, size)
        self.pos += size
        return data

    def skip(self, size: int) -> None:
        _within(self.pos, size, self.end)
        self.pos += size

    def at_end(self) -> bool:
        return self.pos >= self.end

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class InflateReader:
    """The inflated bytes of a raw-deflate stream (PS3.5 A.5), at most ``max_bytes`` of them."""

    def __init__(self, handle: BinaryIO, max_bytes: int) -> None:
        self._handle = handle
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._max = max_bytes
        self._buffer = bytearray()
        self._offset = 0  # consumed bytes at the front of _buffer
        self._inflated = 0
        self._done = False
        self.pos = 0

    def _fill(self, size: int) -> None:
        """Inflate until ``size`` unread bytes are buffered or the stream ends."""
        while len(self._buffer) - self._offset < size and not self._done:
            data = self._inflater.unconsumed_tail or self._handle.read(_CHUNK)
            if not data:
                self._done = True
                if not self._inflater.eof:
                    raise CorruptInstanceError("the deflated dataset is truncated: its deflate stream does not end")
                break
            try:
                out = self._inflater.decompress(data, _OUT)
            except zlib.error as exc:
                raise CorruptInstanceError(f"the deflated dataset does not inflate: {exc}") from exc
            self._inflated += len(out)
            if self._inflated > self._max:
                raise LimitExceededError(
                    f"the deflated dataset inflates to more than max_inflated_bytes ({self._max} bytes)"
                )
            if self._offset > _OUT:
                del self._buffer[: self._offset]
                self._offset = 0
            self._buffer += out
            if self._inflater.eof:
                self._done = True
                trailing = self._inflater.unused_data + self._handle.read(2)
                if len(trailing) > 1 or trailing.strip(b"\x00"):  # one NUL pads the stream to an even length
                    raise CorruptInstanceError("bytes follow the end of the deflated dataset")

    def read(self, size: int) -> bytes:
        self._fill(size)
        end = self._offset + size
        if end > len(self._buffer):
            raise CorruptInstanceError(
                f"the dataset is truncated: it ends {end - len(self._buffer)} byte(s) short of a declared length"
            )
        data = bytes(self._buffer[self._offset:end])
        self._offset = end
        self.pos += size
        return data

    def skip(self, size: int) -> None:
        left = size
        while left:
            step = min(left, _OUT)
            self.read(step)
            left -= step

    def at_end(self) -> bool:
        self._fill(1)
        return self._offset >= len(self._buffer)
