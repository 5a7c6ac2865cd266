"""A new instance is answered Success once fsynced under ``.incoming/`` and hard-linked into place; the group commit
fsyncs its folder, records it and only then removes the ``.incoming/`` name (node.scp.recorder). At start-up
(node.scp.reconcile.recover_incoming) a file left under ``.incoming/`` that may have been acknowledged is put into
place and recorded; any other is removed. Real listeners, a real SQLite ledger, files as the listener writes them.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pydicom
import pytest

from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.scp.recorder import IntakeRecorder
from node.scp.status import StoreStatus
from node.spool import INCOMING, Spool
from tests.scp.fixtures import FakeClock, ListenerFactory, send
from tests.scp.test_listener import spooled_files
from tests.scp.test_recorder import _item
from tests.support.studies import SynthCase


def _as_received(start: ListenerFactory, sqlite_url: str, files: tuple[Path, ...]) -> dict[str, tuple[str, bytes]]:
    """SOP Instance UID -> (spool-relative path, bytes) of ``files`` as a listener writes them (another spool)."""
    listener = start(sqlite_url, FakeClock())
    assert send(listener.port, files) == [StoreStatus.SUCCESS] * len(files)
    assert listener.flush(timeout_s=30)
    root = listener.spool.root
    received = {}
    for path in spooled_files(root):
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        received[sop] = (path.relative_to(root).as_posix(), path.read_bytes())
    assert not list((root / INCOMING).rglob("rx-*.part"))  # committed: no .incoming name left
    return received


def _second_node(start: ListenerFactory, tmp_path: Path) -> tuple[Path, str, ListenerFactory]:
    """Another spool (its folders made, ``.incoming/`` included) and ledger for a second listener."""
    spool = tmp_path / "second"
    Spool(spool)
    return spool, f"sqlite:///{tmp_path / 'second.sqlite3'}", start


def test_a_new_instance_keeps_its_incoming_name_until_its_rows_are_committed(tmp_path: Path) -> None:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    spool = Spool(tmp_path / "spool")
    recorder = IntakeRecorder(Repository(ledger), spool, max_batch=100, max_delay_s=60)
    try:
        item = _item(1)
        spill = spool.incoming / "rx-1-test-1.part"
        spill.write_bytes(b"received")
        stored = spool.link(item.path, spill, item.size_bytes, item.sha256)
        placed = spool.path(stored.relative_path)
        recorder.submit(item, spill)
        assert spill.exists() and placed.samefile(spill) and placed.stat().st_nlink == 2  # two names until the commit
        assert recorder.flush(timeout_s=30)
        assert not spill.exists() and placed.read_bytes() == b"received" and placed.stat().st_nlink == 1
        assert Repository(ledger).find_instance(item.header.sop_instance_uid) is not None
    finally:
        recorder.close()
        ledger.dispose()


def test_the_listener_answers_with_one_fsync_and_leaves_nothing_in_incoming(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase
) -> None:
    """Through a real association: every instance in place with one name, recorded, ``.incoming/`` empty."""
    received = _as_received(start, sqlite_url, synth_case.t2[:3])
    assert len(received) == 3


def test_an_acknowledged_instance_whose_link_a_power_loss_undid_is_put_into_place(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    """The power went after Success and before the group commit fsynced the folder: the file survives only under
    its ``.incoming/`` name (fsynced before the answer). The next start puts it into place and records it."""
    (sop, (relative, data)), *_ = _as_received(start, sqlite_url, synth_case.t2[:1]).items()
    root, url, factory = _second_node(start, tmp_path)
    spill = root / INCOMING / "rx-4242-deadbeef-7.part"
    spill.write_bytes(data)
    listener = factory(url, FakeClock(), spool_dir=root)
    assert (root / relative).read_bytes() == data
    known = listener.repository.find_instance(sop)
    assert known is not None and known.path == relative
    assert "instance-recovered" in [e.event for e in listener.repository.audit_trail()]
    assert not spill.exists() and (root / relative).stat().st_nlink == 1


def test_an_instance_linked_before_a_crash_keeps_its_place_and_loses_its_incoming_name(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    """The process died after the link and before the commit: the file has both names; the start keeps the one in
    place, records it, and removes the other."""
    (sop, (relative, data)), *_ = _as_received(start, sqlite_url, synth_case.t2[1:2]).items()
    root, url, factory = _second_node(start, tmp_path)
    placed = root / relative
    placed.parent.mkdir(parents=True)
    placed.write_bytes(data)
    spill = root / INCOMING / "rx-4242-deadbeef-8.part"
    os.link(placed, spill)
    listener = factory(url, FakeClock(), spool_dir=root)
    assert not spill.exists() and placed.read_bytes() == data and placed.stat().st_nlink == 1
    assert listener.repository.find_instance(sop) is not None


def test_leftovers_never_acknowledged_are_removed_and_nothing_is_recorded(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    """An interrupted write (the file cut short) cannot have been acknowledged: removed, nothing placed; so is a
    whole file whose place already holds another copy (the one in place stays)."""
    received = _as_received(start, sqlite_url, synth_case.t2[2:4])
    (first, (relative, data)), (second, (other_relative, other_data)) = received.items()
    root, url, factory = _second_node(start, tmp_path)
    (root / INCOMING / "rx-4242-deadbeef-9.part").write_bytes(data[:-100])
    kept = root / other_relative
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(other_data)
    (root / INCOMING / "rx-4242-deadbeef-10.part").write_bytes(other_data)
    listener = factory(url, FakeClock(), spool_dir=root)
    assert not list((root / INCOMING).rglob("rx-*.part"))
    assert not (root / relative).exists() and listener.repository.find_instance(first) is None
    assert kept.read_bytes() == other_data and kept.stat().st_nlink == 1
    assert listener.repository.find_instance(second) is not None  # the copy in place, recorded by the reconciliation


def test_without_hard_links_files_are_renamed_into_place(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without hard links (``link(2)`` fails with EPERM, as on FAT or some network shares): the start-up
    renames a file left under ``.incoming/`` into place, and the listener renames each new instance into place and
    fsyncs its folder before answering."""
    (sop, (relative, data)), *_ = _as_received(start, sqlite_url, synth_case.t2[4:5]).items()

    def no_links(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    root, url, factory = _second_node(start, tmp_path)
    spill = root / INCOMING / "rx-4242-deadbeef-11.part"
    spill.write_bytes(data)
    listener = factory(url, FakeClock(), spool_dir=root)
    assert not spill.exists() and (root / relative).read_bytes() == data
    assert listener.repository.find_instance(sop) is not None
    assert send(listener.port, synth_case.t2[5:7]) == [StoreStatus.SUCCESS] * 2
    assert listener.flush(timeout_s=30)
    assert len(spooled_files(root)) == 3 and not list((root / INCOMING).rglob("rx-*.part"))
