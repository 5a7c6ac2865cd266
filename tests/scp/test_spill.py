"""SpillBuffer (node.scp.receive): fragments gathered in the association's scratch space and written in large
pieces; the file, its digest and the kept head are exactly what was received, whatever the fragment sizes."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from node.scp.receive import FLUSH_BYTES, HEAD_BYTES, Received, ReceiveLimits, SpillBuffer

PREFIX = b"\x00" * 128 + b"DICM" + b"meta"


def _limits(tmp_path: Path) -> ReceiveLimits:
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    return ReceiveLimits(incoming=incoming, max_instance_bytes=1 << 30, min_free_disk_bytes=0)


@pytest.mark.parametrize("size", [0, 100, HEAD_BYTES + 1, 2 * FLUSH_BYTES + 5])
def test_what_is_received_is_what_is_kept(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    scratch = bytearray(b"left over from an earlier message" * 100)
    spill = SpillBuffer(_limits(tmp_path), lambda: PREFIX, scratch)
    position = 0
    while position < size:
        step = random.Random(position).randint(1, 20000)
        spill.write(data[position:position + step])
        position += step
    received = spill.finish()
    assert isinstance(received, Received)
    assert received.path.read_bytes() == PREFIX + data
    assert received.sha256 == hashlib.sha256(PREFIX + data).hexdigest()
    assert received.head == data[:HEAD_BYTES]
    assert (received.offset, received.size) == (len(PREFIX), len(PREFIX) + size)
    assert len(scratch) <= FLUSH_BYTES + 20000  # bounded by the write size, not the instance's


def test_a_view_of_the_scratch_left_alive_does_not_break_the_next_message(tmp_path: Path) -> None:
    scratch = bytearray()
    first = SpillBuffer(_limits(tmp_path), lambda: PREFIX, scratch)
    first.write(b"a" * 1000)
    assert isinstance(first.finish(), Received)
    kept = memoryview(scratch)  # as a traceback holding a frame of the write would
    second = SpillBuffer(_limits(tmp_path), lambda: PREFIX, scratch)
    second.write(b"b" * 5000)
    received = second.finish()
    assert isinstance(received, Received) and received.path.read_bytes() == PREFIX + b"b" * 5000
    kept.release()


def test_discard_removes_the_file(tmp_path: Path) -> None:
    spill = SpillBuffer(_limits(tmp_path), lambda: PREFIX, bytearray())
    spill.write(b"x" * 10)
    path = spill.path
    assert path is not None and path.exists()
    spill.discard()
    spill.discard()
    assert not path.exists()
