"""Hard limits: instance size, inflated size, element length, PDU length, and the listener's memory under them.

In-process tests use small limits (fast); one test runs ``python -m node.scp.server`` with the default limits and
checks its peak RSS (``VmHWM``) after a 815 kB deflate bomb and a 100 MiB instance.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from node.scp.status import StoreStatus
from tests.scp.fixtures import FakeClock, ListenerFactory, associate, send
from tests.support.studies import SynthCase

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def _header_bytes(source: Path, *, rows: int, columns: int, frames: int, syntax: str) -> tuple[bytes, bytes]:
    """(preamble + file meta for ``syntax``, explicit VR LE dataset bytes without Pixel Data) of ``source``."""
    ds = pydicom.dcmread(source)
    del ds.PixelData
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    stream = io.BytesIO(buffer.getvalue())
    pydicom.filereader.read_preamble(stream, False)
    pydicom.filereader._read_file_meta_info(stream)
    dataset = buffer.getvalue()[stream.tell():]
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    meta = DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + meta.getvalue(), dataset


def big_instance(source: Path, target: Path, pixel_bytes: int) -> Path:
    """An uncompressed MR instance whose Pixel Data (zeros) is ``pixel_bytes`` long, written without holding it."""
    frames = pixel_bytes // (512 * 512 * 2)
    prefix, dataset = _header_bytes(source, rows=512, columns=512, frames=frames, syntax=ExplicitVRLittleEndian)
    with target.open("wb") as out:
        out.write(prefix + dataset + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
        zeros = bytes(MiB)
        left = pixel_bytes
        while left:
            out.write(zeros[: min(left, MiB)])
            left -= min(left, MiB)
    return target


def deflate_bomb(source: Path, target: Path, inflated_bytes: int) -> Path:
    """A Deflated Explicit VR LE instance whose Pixel Data of zeros inflates to about ``inflated_bytes``."""
    frames = inflated_bytes // (512 * 512 * 2)
    pixel_bytes = frames * 512 * 512 * 2
    prefix, dataset = _header_bytes(source, rows=512, columns=512, frames=frames,
                                    syntax=DeflatedExplicitVRLittleEndian)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with target.open("wb") as out:
        out.write(prefix)
        out.write(packer.compress(dataset + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)))
        zeros = bytes(4 * MiB)
        left = pixel_bytes
        while left:
            out.write(packer.compress(zeros[: min(left, len(zeros))]))
            left -= min(left, len(zeros))
        tail = packer.flush()
        out.write(tail + (b"\x00" if (out.tell() + len(tail)) % 2 else b""))
    return target


def private_blob(source: Path, target: Path, size: int) -> Path:
    ds = pydicom.dcmread(source)
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "OB", bytes(size))
    ds.save_as(target, enforce_file_format=True)
    return target


def test_instance_larger_than_the_limit_is_refused_and_not_kept(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    big = big_instance(synth_case.t2[0], tmp_path / "big.dcm", 8 * MiB)
    listener = start(sqlite_url, FakeClock(), max_instance_bytes="2M")
    assert send(listener.port, [big, synth_case.t2[1]]) == [StoreStatus.LIMIT_EXCEEDED, StoreStatus.SUCCESS]
    (refused,) = [e for e in listener.repository.audit_trail() if e.event == "store-refused"]
    assert refused.status == StoreStatus.LIMIT_EXCEEDED and "max_instance_bytes" in (refused.detail or "")
    assert list((listener.spool.root / ".incoming").iterdir()) == []
    assert listener.repository.studies()[0].instance_count == 1


def test_deflate_bomb_and_inflated_size(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    bomb = deflate_bomb(synth_case.t2[0], tmp_path / "bomb.dcm", 64 * MiB)
    assert bomb.stat().st_size < 200_000
    ds = pydicom.dcmread(synth_case.t2[2])
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    fine = tmp_path / "deflated.dcm"
    ds.save_as(fine, enforce_file_format=True)
    listener = start(sqlite_url, FakeClock(), max_inflated_bytes="8M")
    started = time.monotonic()
    assert send(listener.port, [bomb, fine]) == [StoreStatus.LIMIT_EXCEEDED, StoreStatus.SUCCESS]
    assert time.monotonic() - started < 20
    (refused,) = [e for e in listener.repository.audit_trail() if e.event == "store-refused"]
    assert "max_inflated_bytes" in (refused.detail or "")


def test_element_longer_than_the_limit_is_refused(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    blob = private_blob(synth_case.t2[0], tmp_path / "blob.dcm", 2 * MiB)
    pixels_ok = big_instance(synth_case.t2[1], tmp_path / "pixels.dcm", 4 * MiB)  # Pixel Data is not an element limit
    listener = start(sqlite_url, FakeClock(), max_element_bytes="1M")
    assert send(listener.port, [blob, pixels_ok]) == [StoreStatus.LIMIT_EXCEEDED, StoreStatus.SUCCESS]
    (refused,) = [e for e in listener.repository.audit_trail() if e.event == "store-refused"]
    assert "(0009,1001)" in (refused.detail or "") and "max_element_bytes" in (refused.detail or "")


def test_a_pdu_longer_than_the_limit_closes_the_connection(start: ListenerFactory, sqlite_url: str) -> None:
    """A peer announcing a 2 GB PDU is cut off at once, not read into memory (nor waited on)."""
    listener = start(sqlite_url, FakeClock())
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0x7FFFFFF0) + b"\x00" * 64)
        started = time.monotonic()
        assert sock.recv(64) == b""  # closed by the listener
        assert time.monotonic() - started < 5
    assoc = associate(listener.port)
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the peak RSS")
def test_listener_memory_stays_bounded(synth_case: SynthCase, tmp_path: Path) -> None:
    """The issue's figures: a 815 kB deflate bomb (1.7 GB before) and a large instance (688 MB for 300 MB)."""
    bomb = deflate_bomb(synth_case.t2[0], tmp_path / "bomb.dcm", 800 * MiB)
    assert 700_000 < bomb.stat().st_size < 900_000
    large = big_instance(synth_case.t2[1], tmp_path / "large.dcm", 100 * MiB)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AINODE_MIN_FREE_DISK_BYTES": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "node.scp.server", "--port", "0", "--bind-address", "127.0.0.1",
         "--spool-dir", str(tmp_path / "spool")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening as"), line
        port = int(line.rsplit(":", 1)[1])
        idle = _peak_rss_mib(process.pid)
        assert send(port, [bomb]) == [StoreStatus.LIMIT_EXCEEDED]
        after_bomb = _peak_rss_mib(process.pid)
        assert send(port, [large]) == [StoreStatus.SUCCESS]
        after_large = _peak_rss_mib(process.pid)
        print(f"listener peak RSS: idle {idle:.0f} MiB, after the 815 kB bomb {after_bomb:.0f} MiB, "
              f"after a 100 MiB instance {after_large:.0f} MiB")
        assert after_bomb < 600 and after_large < 600
        assert after_large - idle < 150
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
