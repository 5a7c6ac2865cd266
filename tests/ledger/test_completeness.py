"""When a study is complete: required series + quiet period, force-complete, ordering, late instances and
idempotency. Instances arrive through a real listener; time is a fake clock (no sleeping)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from node.config import ForceCompleteAction
from node.imaging.series_rules import SeriesRules
from node.jobs.completeness import CompletenessChecker, CompletenessPolicy
from node.ledger.states import JobState, StudyState
from node.scp.server import ListenerHandle
from tests.scp.fixtures import FakeClock, ListenerFactory, send
from tests.support.studies import SynthCase

QUIET = 60.0
FORCE = 600.0


def checker_for(listener: ListenerHandle, rules: SeriesRules, action: str = "fail") -> CompletenessChecker:
    policy = CompletenessPolicy(QUIET, FORCE, ForceCompleteAction(action))
    return CompletenessChecker(listener.repository, rules, policy, listener.spool.root)


def uids(case: SynthCase) -> dict[str, str]:
    def series(path: Path) -> str:
        return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)

    ds = pydicom.dcmread(case.t1ce[0], stop_before_pixels=True)
    return {"study": str(ds.StudyInstanceUID), "t1ce": series(case.t1ce[0]), "t2": series(case.t2[0]),
            "seg": series(case.seg[0])}


def test_ready_after_quiet_period_and_idempotent(
    start: ListenerFactory, ledger_url: str, synth_case: SynthCase, series_rules: SeriesRules
) -> None:
    clock = FakeClock()
    listener = start(ledger_url, clock)
    checker = checker_for(listener, series_rules)
    assert set(send(listener.port, synth_case.all)) == {0}
    ids = uids(synth_case)

    assert checker.find_ready_studies(clock.now + QUIET - 1) == []
    ready = checker.find_ready_studies(clock.now + QUIET)
    assert len(ready) == 1
    study = ready[0]
    assert study.study_instance_uid == ids["study"] and study.version == 1 and not study.forced
    assert study.identified is not None
    assert study.identified.t1ce.series_instance_uid == ids["t1ce"]
    assert study.identified.t2.series_instance_uid == ids["t2"]
    assert study.identified.seg.series_instance_uid == ids["seg"]
    assert sum(1 for p in study.study_dir.rglob("*.dcm")) == len(synth_case.all)
    # asking again returns the same study with the same key until the job layer takes it
    again = checker.find_ready_studies(clock.now + QUIET + 5)
    assert [r.idempotency_key for r in again] == [study.idempotency_key]

    job = listener.repository.enqueue(study.study_instance_uid, study.idempotency_key, clock.now + QUIET + 6)
    assert job is not None and job.state is JobState.QUEUED
    assert checker.find_ready_studies(clock.now + QUIET + 7) == []
    snapshot = listener.repository.study(ids["study"])
    assert snapshot is not None and snapshot.state is StudyState.QUEUED


def test_seg_before_t2_over_several_associations(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, series_rules: SeriesRules
) -> None:
    clock = FakeClock()
    listener = start(sqlite_url, clock)
    checker = checker_for(listener, series_rules)
    assert set(send(listener.port, synth_case.seg)) == {0}
    clock.advance(5)
    assert set(send(listener.port, synth_case.t1ce)) == {0}
    assert checker.find_ready_studies(clock.now + QUIET * 3) == []  # T2 missing: the quiet period alone is not enough
    clock.advance(QUIET * 3)
    assert set(send(listener.port, synth_case.t2[::2])) == {0}
    clock.advance(10)
    assert set(send(listener.port, synth_case.t2[1::2])) == {0}  # the quiet period restarts with every instance
    assert checker.find_ready_studies(clock.now + QUIET - 1) == []
    ready = checker.find_ready_studies(clock.now + QUIET)
    assert len(ready) == 1 and ready[0].identified is not None


@pytest.mark.parametrize("action", ["fail", "process"])
def test_force_complete_deadline(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, series_rules: SeriesRules, action: str
) -> None:
    clock = FakeClock()
    listener = start(sqlite_url, clock)
    checker = checker_for(listener, series_rules, action)
    opened = clock.now
    assert set(send(listener.port, synth_case.seg + synth_case.t1ce)) == {0}
    ids = uids(synth_case)
    assert checker.find_ready_studies(opened + FORCE - 1) == []
    ready = checker.find_ready_studies(opened + FORCE)
    snapshot = listener.repository.study(ids["study"])
    assert snapshot is not None
    if action == "fail":
        assert ready == []
        assert snapshot.state is StudyState.FAILED
        assert snapshot.reason is not None and "T2" in snapshot.reason and "deadline" in snapshot.reason
    else:
        assert len(ready) == 1 and ready[0].forced and ready[0].identified is None
        assert ready[0].reason is not None and "T2" in ready[0].reason
        assert snapshot.state is StudyState.READY
    events = [e.event for e in listener.repository.audit_trail(ids["study"])]
    assert ("study-failed" in events) == (action == "fail")


def _run_job(listener: ListenerHandle, key: str, study_uid: str, at: float) -> int:
    job = listener.repository.enqueue(study_uid, key, at)
    assert job is not None
    listener.repository.start_job(job.id, at + 1)
    listener.repository.finish_job(job.id, at + 2, ok=True)
    return job.id


def test_identical_resend_never_makes_a_second_job(
    start: ListenerFactory, ledger_url: str, synth_case: SynthCase, series_rules: SeriesRules
) -> None:
    clock = FakeClock()
    listener = start(ledger_url, clock)
    checker = checker_for(listener, series_rules)
    assert set(send(listener.port, synth_case.all)) == {0}
    clock.advance(QUIET)
    (ready,) = checker.find_ready_studies(clock.now)
    _run_job(listener, ready.idempotency_key, ready.study_instance_uid, clock.now)

    clock.advance(3600)
    assert set(send(listener.port, synth_case.all)) == {0}  # the PACS sends the same study again
    clock.advance(QUIET * 10)
    assert checker.find_ready_studies(clock.now) == []
    assert len(listener.repository.jobs(ready.study_instance_uid)) == 1
    snapshot = listener.repository.study(ready.study_instance_uid)
    assert snapshot is not None and snapshot.state is StudyState.DONE
    events = [e.event for e in listener.repository.audit_trail(ready.study_instance_uid)]
    assert events.count("duplicate-identical") == len(synth_case.all)


def _extra_t2_slice(case: SynthCase, folder: Path) -> Path:
    """A new instance in the T2 series (new SOP Instance UID) that arrives late."""
    ds = pydicom.dcmread(case.t2[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 999
    folder.mkdir(exist_ok=True)
    path = folder / "late.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("policy", ["rerun", "ignore"])
def test_late_instance_policy(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, series_rules: SeriesRules, tmp_path: Path,
    policy: str,
) -> None:
    clock = FakeClock()
    listener = start(sqlite_url, clock, late_instance_policy=policy)
    checker = checker_for(listener, series_rules)
    assert set(send(listener.port, synth_case.all)) == {0}
    clock.advance(QUIET)
    (first,) = checker.find_ready_studies(clock.now)
    first_job = _run_job(listener, first.idempotency_key, first.study_instance_uid, clock.now)

    clock.advance(100)
    assert send(listener.port, [_extra_t2_slice(synth_case, tmp_path / "late")]) == [0]
    snapshot = listener.repository.study(first.study_instance_uid)
    assert snapshot is not None and snapshot.instance_count == len(synth_case.all) + 1  # stored either way
    clock.advance(QUIET)
    ready = checker.find_ready_studies(clock.now)
    if policy == "ignore":
        assert ready == [] and snapshot.state is StudyState.DONE
        assert "late-instance-ignored" in [e.event for e in listener.repository.audit_trail()]
        return
    assert snapshot.state is StudyState.RECEIVING and snapshot.version == 2
    (second,) = ready
    assert second.version == 2 and second.idempotency_key != first.idempotency_key
    job = listener.repository.enqueue(second.study_instance_uid, second.idempotency_key, clock.now)
    assert job is not None and job.supersedes_job_id == first_job and job.study_version == 2


def _second_t2_series(case: SynthCase, folder: Path, series_number_offset: int = 100) -> list[Path]:
    """The T2 series again as another series (new Series/SOP Instance UIDs, a higher SeriesNumber): a sequence
    re-acquired after motion and sent too, so two series match the T2 role equally."""
    series_uid = generate_uid()
    folder.mkdir(exist_ok=True)
    out = []
    for n, source in enumerate(case.t2):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = int(ds.SeriesNumber) + series_number_offset
        path = folder / f"t2b-{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def test_a_rule_conflict_shows_its_reason_at_once(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, series_rules: SeriesRules, tmp_path: Path
) -> None:
    """Two series matching the T2 role: the study used to sit in "receiving" with no reason until the 1-hour
    deadline. As soon as the quiet period is over the reason is on the study (status, dashboard) and audited
    once; with ``tie_break: latest`` the re-acquired series (higher SeriesNumber) is used and the study is ready."""
    clock = FakeClock()
    listener = start(sqlite_url, clock)
    checker = checker_for(listener, series_rules)
    extra = _second_t2_series(synth_case, tmp_path / "t2b")
    assert set(send(listener.port, [*synth_case.all, *extra])) == {0}
    ids = uids(synth_case)

    assert checker.find_ready_studies(clock.now + QUIET) == []
    snapshot = listener.repository.study(ids["study"])
    assert snapshot is not None and snapshot.state is StudyState.RECEIVING
    assert snapshot.reason is not None and "match the T2 role equally" in snapshot.reason, snapshot.reason
    checker.find_ready_studies(clock.now + QUIET + 5)  # asked again: the same reason, audited once
    waiting = [e for e in listener.repository.audit_trail(ids["study"]) if e.event == "study-waiting"]
    assert len(waiting) == 1

    latest = checker_for(listener, dataclasses.replace(series_rules, tie_break="latest"))
    ready = latest.find_ready_studies(clock.now + QUIET + 10)
    assert len(ready) == 1 and ready[0].identified is not None
    chosen = ready[0].identified.t2
    assert chosen.series_instance_uid != ids["t2"] and chosen.series_number is not None
    assert any("tie_break: latest" in w for w in ready[0].identified.warnings)
    snapshot = listener.repository.study(ids["study"])
    assert snapshot is not None and snapshot.state is StudyState.READY and snapshot.reason is None
