"""The listener against real clients (pynetdicom SCU, dcmtk storescu/echoscu) on a free port, real spool and ledger."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from node.config import ForceCompleteAction
from node.imaging.series_rules import SeriesRules
from node.jobs.completeness import CompletenessChecker, CompletenessPolicy
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.ledger.states import StudyState
from node.scp.status import StoreStatus
from tests.scp.fixtures import T0, FakeClock, ListenerFactory, associate, dataset_bytes, send
from tests.support.studies import SynthCase


def spooled_files(spool: Path) -> list[Path]:
    """Instance files in the study folders (not .incoming/ or .orphans/)."""
    return sorted(p for p in spool.glob("[!.]*/*/*.dcm"))


def study_uid(case: SynthCase) -> str:
    return str(pydicom.dcmread(case.t1ce[0], stop_before_pixels=True).StudyInstanceUID)


def test_echo_and_whole_study_are_spooled_byte_identical(
    start: ListenerFactory, ledger_url: str, synth_case: SynthCase
) -> None:
    clock = FakeClock()
    listener = start(ledger_url, clock)
    assoc = associate(listener.port)
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()

    statuses = send(listener.port, synth_case.all)
    assert statuses == [StoreStatus.SUCCESS] * len(synth_case.all)

    repo = listener.repository
    snapshot = repo.study(study_uid(synth_case))
    assert snapshot is not None
    assert snapshot.state is StudyState.RECEIVING
    assert snapshot.instance_count == len(synth_case.all)
    assert sorted(len(s.files) for s in snapshot.series) == sorted(
        [len(synth_case.t1ce), len(synth_case.t2), len(synth_case.seg)]
    )
    files = spooled_files(listener.spool.root)
    assert len(files) == len(synth_case.all)
    # every sent dataset is in the spool byte for byte, under a hashed name, and the ledger has its digest
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in synth_case.all}
    for series in snapshot.series:
        for relative in series.files:
            stored = listener.spool.path(relative)
            uid = pydicom.dcmread(stored, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(stored) == dataset_bytes(sent[uid])
            assert uid not in relative
            known = repo.find_instance(uid)
            assert known is not None and known.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
    trail = repo.audit_trail()
    assert [e.event for e in trail].count("stored") == len(synth_case.all)
    assert {e.calling_ae_title for e in trail if e.event == "stored"} == {"PACS"}
    assert any(e.event == "echo" for e in trail)


def test_dcmtk_storescu_and_echoscu(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, require_tool
) -> None:
    storescu, echoscu = require_tool("storescu"), require_tool("echoscu")
    listener = start(sqlite_url, FakeClock())
    env = {**os.environ, "TCP_NODELAY": "1"}
    port = str(listener.port)
    echo = subprocess.run([echoscu, "-aet", "MODALITY", "-aec", "AINODE", "127.0.0.1", port],
                          capture_output=True, text=True, env=env, timeout=60)
    assert echo.returncode == 0, echo.stderr
    files = [str(p) for p in synth_case.seg + synth_case.t2]
    store = subprocess.run([storescu, "-aet", "MODALITY", "-aec", "AINODE", "127.0.0.1", port, *files],
                           capture_output=True, text=True, env=env, timeout=120)
    assert store.returncode == 0, store.stderr
    snapshot = listener.repository.study(study_uid(synth_case))
    assert snapshot is not None and snapshot.instance_count == len(files)
    for series in snapshot.series:
        for relative in series.files:
            stored = listener.spool.path(relative)
            uid = pydicom.dcmread(stored, stop_before_pixels=True).SOPInstanceUID
            source = next(p for p in synth_case.seg + synth_case.t2
                          if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid)
            assert dataset_bytes(stored) == dataset_bytes(source)
    stored_events = [e for e in listener.repository.audit_trail() if e.event == "stored"]
    assert {e.calling_ae_title for e in stored_events} == {"MODALITY"}


def test_unknown_calling_ae_is_rejected_at_association(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase
) -> None:
    listener = start(sqlite_url, FakeClock(), accepted_calling_aets="PACS,ARCHIVE")
    rogue = associate(listener.port, calling="ROGUE")
    assert rogue.is_rejected
    allowed = associate(listener.port, calling="ARCHIVE")
    assert allowed.is_established
    allowed.release()
    wrong_called = associate(listener.port, calling="PACS", called="SOMEONE")
    assert wrong_called.is_rejected
    events = [(e.event, e.calling_ae_title) for e in listener.repository.audit_trail()]
    assert ("association-rejected", "ROGUE") in events
    assert spooled_files(listener.spool.root) == []


def test_low_disk_answers_out_of_resources_and_keeps_nothing(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase
) -> None:
    listener = start(sqlite_url, FakeClock(), min_free_disk_bytes=1 << 62)
    assert send(listener.port, synth_case.seg + synth_case.t2[:2]) == [StoreStatus.OUT_OF_RESOURCES] * 3
    assert spooled_files(listener.spool.root) == []
    assert list((listener.spool.root / ".incoming").iterdir()) == []
    assert listener.repository.studies() == []
    refused = [e for e in listener.repository.audit_trail() if e.event == "store-refused"]
    assert len(refused) == 3 and all(e.status == StoreStatus.OUT_OF_RESOURCES for e in refused)


def _corrupt_copies(case: SynthCase, folder: Path) -> tuple[Path, Path]:
    """A truncated T2 slice and one whose dataset bytes are garbage (both with valid file meta)."""
    folder.mkdir()
    raw = case.t2[0].read_bytes()
    truncated = folder / "truncated.dcm"
    truncated.write_bytes(raw[:-500])
    other = case.t2[1].read_bytes()
    meta = other[: len(other) - len(dataset_bytes(case.t2[1]))]
    garbage = folder / "garbage.dcm"
    garbage.write_bytes(meta + b"\x13\x37" * 800)
    return truncated, garbage


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_corrupt_datasets_fail_without_affecting_others(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    listener = start(sqlite_url, FakeClock())
    truncated, garbage = _corrupt_copies(synth_case, tmp_path / "bad")
    good = list(synth_case.t2[2:6])
    statuses = send(listener.port, [good[0], truncated, good[1], garbage, good[2], good[3]])
    assert statuses == [0, StoreStatus.CANNOT_UNDERSTAND, 0, StoreStatus.CANNOT_UNDERSTAND, 0, 0]
    files = spooled_files(listener.spool.root)
    assert len(files) == 4
    assert all(dataset_bytes(f) in {dataset_bytes(g) for g in good} for f in files)
    assert list((listener.spool.root / ".incoming").iterdir()) == []
    rejected = [e for e in listener.repository.audit_trail() if e.event == "store-rejected"]
    assert len(rejected) == 2 and "truncated" in (rejected[0].detail or "")
    # a later, concurrent sender is unaffected
    assert send(listener.port, synth_case.seg) == [0]


def _different_copy(source: Path, target: Path) -> Path:
    ds = pydicom.dcmread(source)
    ds.ImageComments = "re-sent with different content"
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.mark.parametrize("policy", ["keep", "replace"])
def test_duplicate_policy(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path, policy: str
) -> None:
    listener = start(sqlite_url, FakeClock(), duplicate_policy=policy)
    original = synth_case.t2[0]
    assert send(listener.port, [original]) == [0]
    uid = str(pydicom.dcmread(original, stop_before_pixels=True).SOPInstanceUID)
    first = listener.repository.find_instance(uid)
    assert first is not None
    # identical re-send: acknowledged, nothing changes
    assert send(listener.port, [original]) == [0]
    assert listener.repository.find_instance(uid) == first
    # different content under the same SOP Instance UID
    changed = _different_copy(original, tmp_path / "changed.dcm")
    assert send(listener.port, [changed]) == [0]
    now = listener.repository.find_instance(uid)
    assert now is not None and now.path == first.path
    stored = listener.spool.path(first.path)
    if policy == "keep":
        assert now.sha256 == first.sha256
        assert dataset_bytes(stored) == dataset_bytes(original)
    else:
        assert now.sha256 != first.sha256
        assert dataset_bytes(stored) == dataset_bytes(changed)
    events = [e.event for e in listener.repository.audit_trail()]
    assert "duplicate-identical" in events
    assert ("duplicate-kept" in events) == (policy == "keep")
    assert ("replaced" in events) == (policy == "replace")
    assert len(spooled_files(listener.spool.root)) == 1


def test_restart_mid_study_forgets_nothing(
    start: ListenerFactory, ledger_url: str, synth_case: SynthCase, series_rules: SeriesRules
) -> None:
    clock = FakeClock()
    first = start(ledger_url, clock)
    assert set(send(first.port, synth_case.seg + synth_case.t1ce)) == {0}
    first.stop()
    clock.advance(30)
    second = start(ledger_url, clock)  # same spool folder and database
    assert set(send(second.port, synth_case.t2)) == {0}
    uid = study_uid(synth_case)
    snapshot = second.repository.study(uid)
    assert snapshot is not None and snapshot.instance_count == len(synth_case.all)
    for series in snapshot.series:
        for relative in series.files:
            assert second.spool.path(relative).is_file()
    second.stop()
    # a third process opening the same database sees the same study, and it completes
    ledger = Ledger.open(ledger_url)
    try:
        repository = Repository(ledger)
        again = repository.study(uid)
        assert again is not None and again.content_digest == snapshot.content_digest
        checker = CompletenessChecker(repository, series_rules, CompletenessPolicy(60, 600, ForceCompleteAction.FAIL),
                                      second.spool.root)
        assert checker.find_ready_studies(clock.now + 59) == []
        (ready,) = checker.find_ready_studies(clock.now + 60)
        assert ready.study_instance_uid == uid and ready.identified is not None and not ready.forced
    finally:
        ledger.dispose()


def test_handler_survives_many_associations_in_parallel(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase
) -> None:
    """Several senders at once (SQLite serialises the writes): every instance answered Success and recorded."""
    from concurrent.futures import ThreadPoolExecutor

    listener = start(sqlite_url, FakeClock(), max_associations=8)
    chunks = [synth_case.t1ce[i::4] for i in range(4)] + [synth_case.t2, synth_case.seg]
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        results = list(pool.map(lambda files: send(listener.port, files), chunks))
    assert all(set(r) == {0} for r in results)
    snapshot = listener.repository.study(study_uid(synth_case))
    assert snapshot is not None and snapshot.instance_count == len(synth_case.all)


def test_nothing_is_acknowledged_that_the_ledger_cannot_record(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    """The group commit: an instance acknowledged before the ledger broke is durable in the spool and recorded at
    the next start; once a commit failed, nothing more is acknowledged (0x0110) until the ledger takes rows."""
    from sqlalchemy import text

    listener = start(sqlite_url, FakeClock())
    assert send(listener.port, synth_case.t2[:1]) == [0]
    with listener.repository.ledger.engine.begin() as connection:
        connection.execute(text("DROP TABLE audit_events"))  # the ledger breaks under the running listener
    second = str(pydicom.dcmread(synth_case.t2[1], stop_before_pixels=True).SOPInstanceUID)
    assert send(listener.port, synth_case.t2[1:2]) == [0]  # durable in the spool; its rows fail to commit
    assert listener.recorder is not None and not listener.flush(timeout_s=30)
    assert listener.repository.find_instance(second) is None
    assert len(spooled_files(listener.spool.root)) == 2
    # a refusal whose own audit row cannot be written (the broken ledger) is still answered with its status
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(synth_case.t2[2].read_bytes()[:-100])
    assert send(listener.port, [truncated, synth_case.t2[3]]) == [
        StoreStatus.CANNOT_UNDERSTAND, StoreStatus.PROCESSING_FAILURE,
    ]
    assert len(spooled_files(listener.spool.root)) == 2
    listener.stop()
    restarted = start(sqlite_url, FakeClock())  # opening the ledger re-creates the table; the spool is reconciled
    known = restarted.repository.find_instance(second)
    assert known is not None and (restarted.spool.path(known.path)).is_file()
    assert "instance-recovered" in [e.event for e in restarted.repository.audit_trail()]


def test_interrupted_spool_write_leaves_nothing(tmp_path: Path) -> None:
    from node.spool import INCOMING, Spool

    spool = Spool(tmp_path / "spool")

    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise OSError(28, "No space left on device")

    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    with pytest.raises(OSError):
        spool.write(relative, chunks())
    assert not spool.path(relative).exists()
    assert list((spool.root / INCOMING).iterdir()) == []
    (spool.root / INCOMING / "rx-crashed.part").write_bytes(b"left by a crash")
    assert Spool(spool.root).clean_incoming() == 1
    stored = spool.write(relative, [b"abc", b"def"])
    assert spool.path(relative).read_bytes() == b"abcdef"
    assert stored.sha256 == hashlib.sha256(b"abcdef").hexdigest() and stored.size == 6


def test_compressed_and_deflated_transfer_syntaxes(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

    from node.imaging.volume import read_instance

    folder = tmp_path / "encoded"
    folder.mkdir()
    sent: dict[str, tuple[Path, str]] = {}
    for index, syntax in enumerate((RLELossless, JPEGLSLossless, DeflatedExplicitVRLittleEndian,
                                    ImplicitVRLittleEndian)):
        ds = pydicom.dcmread(synth_case.t2[index])
        if syntax.is_compressed:
            ds.compress(syntax)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        path = folder / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True, implicit_vr=syntax.is_implicit_VR, little_endian=True)
        sent[str(ds.SOPInstanceUID)] = (path, str(syntax))
    listener = start(sqlite_url, FakeClock())
    assert send(listener.port, [p for p, _ in sent.values()]) == [0] * len(sent)
    for uid, (path, expected) in sent.items():
        known = listener.repository.find_instance(uid)
        assert known is not None
        stored = listener.spool.path(known.path)
        assert dataset_bytes(stored) == dataset_bytes(path)
        assert str(pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID) == expected
        # the pipeline's reader decodes what was spooled, losslessly
        assert (read_instance(stored).pixel_array == pydicom.dcmread(path).pixel_array).all()


def test_restart_quarantines_files_the_ledger_never_recorded(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase
) -> None:
    clock = FakeClock()
    first = start(sqlite_url, clock)
    assert send(first.port, synth_case.t2[:2]) == [0, 0]
    first.stop()
    # a crash between the rename and the ledger commit leaves a file the ledger does not list
    relative = first.spool.relative_path(study_uid(synth_case), "1.2.3.4", "1.2.3.4.5")
    first.spool.write(relative, [synth_case.t2[2].read_bytes()])
    second = start(sqlite_url, clock)
    assert not second.spool.path(relative).exists()
    assert len(spooled_files(second.spool.root)) == 2
    assert len(list((second.spool.root / ".orphans").iterdir())) == 1
    assert "orphan-quarantined" in [e.event for e in second.repository.audit_trail()]


def test_start_up_reconciliation_survives_a_ledger_that_cannot_record(
    tmp_path: Path, sqlite_url: str, synth_case: SynthCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An acknowledged file the ledger lacks, at a start whose ledger cannot take rows (a disk still full after a
    crash): the listener starts all the same and the file stays in place, valid, for the next start."""
    from sqlalchemy.exc import OperationalError

    from node.scp.reconcile import reconcile_spool
    from node.spool import Spool

    source = synth_case.t2[0]
    header = pydicom.dcmread(source, stop_before_pixels=True)
    spool = Spool(tmp_path / "spool")
    relative = spool.relative_path(str(header.StudyInstanceUID), str(header.SeriesInstanceUID),
                                   str(header.SOPInstanceUID))
    spool.path(relative).parent.mkdir(parents=True)
    spool.path(relative).write_bytes(source.read_bytes())
    ledger = Ledger.open(sqlite_url)
    try:
        repository = Repository(ledger)

        def full(*_args: object) -> bool:
            raise OperationalError("INSERT", {}, Exception("database or disk is full"))

        monkeypatch.setattr(repository, "resolve_spooled", full)
        assert reconcile_spool(spool, repository, T0) == []
        assert spool.path(relative).is_file() and spool.stored_paths() == [relative]
        monkeypatch.undo()
        assert reconcile_spool(spool, repository, T0) == []  # the next start records it
        assert repository.known_paths() == {relative}
    finally:
        ledger.dispose()
