"""SpillBuffer (node.scp.receive): fragments gathered in the association's scratch space and written in large
pieces; the file, its digest and the kept head are exactly what was received, whatever the fragment sizes."""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import random
import shutil
from pathlib import Path

import pytest

from node.scp import receive
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


def test_a_file_moved_into_place_is_left_alone_by_discard(tmp_path: Path) -> None:
    spill = SpillBuffer(_limits(tmp_path), lambda: PREFIX, bytearray())
    spill.write(b"x" * 10)
    received = spill.finish()
    assert isinstance(received, Received)
    placed = tmp_path / "placed.dcm"
    received.path.replace(placed)
    spill.moved()
    received.path.write_bytes(b"another process's file of that name")  # whatever is there now is not ours
    spill.discard()
    assert received.path.exists() and placed.read_bytes() == PREFIX + b"x" * 10


def test_spill_names_skip_a_file_left_under_the_same_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receive, "_numbers", itertools.count(7))
    limits = _limits(tmp_path)
    left = limits.incoming / f"{receive._name_prefix}7.part"  # a crashed process of the same pid left it
    left.write_bytes(b"stale")
    spill = SpillBuffer(limits, lambda: PREFIX, bytearray())
    spill.write(b"y" * 10)
    received = spill.finish()
    assert isinstance(received, Received)
    assert received.path == limits.incoming / f"{receive._name_prefix}8.part"
    assert fnmatch.fnmatch(received.path.name, "rx-*.part")  # what the start-up clean-up removes
    assert left.read_bytes() == b"stale"


def test_free_disk_after_the_file_is_the_last_measure_less_what_was_written(tmp_path: Path) -> None:
    spill = SpillBuffer(_limits(tmp_path), lambda: PREFIX, bytearray())
    size = 3 * FLUSH_BYTES
    before = shutil.disk_usage(tmp_path).free
    for _ in range(size // 1000):
        spill.write(b"z" * 1000)
    received = spill.finish()
    after = shutil.disk_usage(tmp_path).free
    assert isinstance(received, Received) and received.free_bytes is not None
    # measured at the first fragment, then everything (prefix included) subtracted as written
    assert received.free_bytes <= before - len(PREFIX) - (size // 1000) * 1000 + 64 * 1024
    assert abs(received.free_bytes - after) < 4 << 20  # the file system's own accounting: blocks, metadata
    empty = SpillBuffer(_limits(tmp_path), lambda: PREFIX, bytearray())
    nothing = empty.finish()
    assert isinstance(nothing, Received) and nothing.free_bytes is None  # never measured: the handler measures
