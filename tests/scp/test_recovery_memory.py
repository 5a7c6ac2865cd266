"""The start-up recovery checks and hashes a received file without holding it in memory: a spool may hold instances
up to ``max_instance_bytes`` (1 GiB by default; large enhanced multi-frame MR), and a node restarting after a crash
may have to recover many of them. Real files as the listener writes them (Part-10, explicit VR little endian)."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pydicom

from node.scp.reconcile import DEFAULT_LIMITS
from node.scp.recorder import check_received_file, file_sha256
from node.spool import Spool
from tests.support.studies import SynthCase

T = TypeVar("T")
SIDE = 2048  # 2048 x 2048 x 16 bits: 8 MiB of pixel data


def _large_instance(case: SynthCase, path: Path) -> bytes:
    """One of ``case``'s T1CE slices with 8 MiB of pixel data, written to ``path``; returns the file's bytes."""
    ds = pydicom.dcmread(case.t1ce[0])
    ds.Rows = ds.Columns = SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 16, 16, 15, 1
    ds.PixelData = bytes(range(256)) * (SIDE * SIDE * 2 // 256)
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def _peak_bytes(call: Callable[[], T]) -> tuple[T, int]:
    """``call()``'s result and the most memory Python held during it (tracemalloc: every allocation domain)."""
    tracemalloc.start()
    try:
        result = call()
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_a_large_received_file_is_checked_and_hashed_in_bounded_memory(synth_case: SynthCase, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    received = spool.incoming / "rx-1-test-1.part"
    data = _large_instance(synth_case, received)
    assert len(data) > 8 << 20

    item, peak = _peak_bytes(lambda: check_received_file(spool, received, DEFAULT_LIMITS))
    assert item.size_bytes == len(data)
    assert item.sha256 == hashlib.sha256(data).hexdigest()
    assert peak < 2 << 20, f"{peak} bytes held to check an {len(data)}-byte file"

    place = spool.path(item.path)
    place.parent.mkdir(parents=True)
    received.rename(place)
    digest, peak = _peak_bytes(lambda: file_sha256(spool, item.path))
    assert digest == hashlib.sha256(data).hexdigest()
    assert peak < 2 << 20, f"{peak} bytes held to hash an {len(data)}-byte file"
    assert file_sha256(spool, "no/such/file.dcm") is None
