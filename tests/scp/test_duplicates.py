"""A SOP Instance UID re-sent under another study, and re-sends after the purge procedure of docs/operations.md."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from node.scp.status import StoreStatus
from node.spool import uid_key
from tests.scp.fixtures import FakeClock, ListenerFactory, dataset_bytes, send
from tests.support.studies import SynthCase

OTHER_STUDY = "1.2.826.0.1.3680043.8.498.999999"


def under_another_study(source: Path, target: Path) -> Path:
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = OTHER_STUDY
    ds.save_as(target, enforce_file_format=True)
    return target


def uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


@pytest.mark.parametrize("policy", ["keep", "replace"])
def test_same_uid_under_another_study_is_refused_and_the_first_kept(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path, policy: str
) -> None:
    listener = start(sqlite_url, FakeClock(), duplicate_policy=policy)
    original = synth_case.t2[0]
    study, sop = uids(original)
    assert send(listener.port, [original]) == [StoreStatus.SUCCESS]
    first = listener.repository.find_instance(sop)
    assert first is not None
    moved = under_another_study(original, tmp_path / "moved.dcm")
    assert send(listener.port, [moved, synth_case.t2[1]]) == [StoreStatus.UID_CONFLICT, StoreStatus.SUCCESS]
    assert listener.repository.find_instance(sop) == first
    assert dataset_bytes(listener.spool.path(first.path)) == dataset_bytes(original)
    assert listener.repository.study(OTHER_STUDY) is None
    (rejected,) = [e for e in listener.repository.audit_trail() if e.event == "store-rejected"]
    assert rejected.status == StoreStatus.UID_CONFLICT
    assert rejected.study_instance_uid == OTHER_STUDY and study in (rejected.detail or "")
    assert not listener.spool.study_dir(OTHER_STUDY).exists()


def _purge(spool: Path, study: str) -> None:
    """What docs/operations.md does: remove the study's folder, keep its ledger rows."""
    shutil.rmtree(spool / uid_key(study))


def test_identical_resend_after_the_purge_is_stored_again(
    start: ListenerFactory, ledger_url: str, synth_case: SynthCase
) -> None:
    listener = start(ledger_url, FakeClock())
    files = list(synth_case.t2[:3])
    assert send(listener.port, files) == [0, 0, 0]
    study, _ = uids(files[0])
    _purge(listener.spool.root, study)
    assert send(listener.port, files) == [0, 0, 0]
    for path in files:
        known = listener.repository.find_instance(uids(path)[1])
        assert known is not None
        stored = listener.spool.path(known.path)
        assert stored.is_file() and dataset_bytes(stored) == dataset_bytes(path)
    assert [e.event for e in listener.repository.audit_trail()].count("instance-missing") == 3


def test_a_series_uid_under_another_study_is_refused(
    start: ListenerFactory, ledger_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    """A new instance of a series that is stored under another study: refused, the series stays where it is."""
    listener = start(ledger_url, FakeClock())
    assert send(listener.port, [synth_case.t2[0]]) == [0]
    ds = pydicom.dcmread(synth_case.t2[1])
    ds.StudyInstanceUID = OTHER_STUDY
    ds.save_as(tmp_path / "other.dcm", enforce_file_format=True)
    assert send(listener.port, [tmp_path / "other.dcm"]) == [StoreStatus.UID_CONFLICT]
    assert listener.repository.study(OTHER_STUDY) is None
    assert not list(listener.spool.study_dir(OTHER_STUDY).rglob("*.dcm"))  # the file written was removed again
    (rejected,) = [e for e in listener.repository.audit_trail() if e.event == "store-rejected"]
    assert "SeriesInstanceUID" in (rejected.detail or "")


def test_after_the_purge_the_uid_may_arrive_under_another_study(
    start: ListenerFactory, ledger_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    """A PACS that merged studies re-sends an instance under the new study: once the old copy is gone, it is kept."""
    listener = start(ledger_url, FakeClock())
    original = synth_case.t2[0]
    study, sop = uids(original)
    assert send(listener.port, [original]) == [0]
    _purge(listener.spool.root, study)
    moved = under_another_study(original, tmp_path / "moved.dcm")
    assert send(listener.port, [moved]) == [0]
    known = listener.repository.find_instance(sop)
    assert known is not None and known.study_instance_uid == OTHER_STUDY
    assert listener.spool.path(known.path).is_file()
    assert known.path.startswith(uid_key(OTHER_STUDY))
