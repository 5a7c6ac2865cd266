"""Deliveries are created only by the run that finishes the job, in the same ledger transaction (issue 10 item 5),
and a superseding job finds the SR it replaces."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from node.ledger import deliveries as store
from node.ledger import results, transaction
from node.ledger.repository import LedgerStateError, Repository
from node.ledger.results import ResultDocument, ResultObject
from node.ledger.states import JobState
from tests.delivery.conftest import STUDY, make_job

OBJECTS = [ResultObject("/r/sr.dcm", "1.2.3.1"), ResultObject("/r/sc.dcm", "1.2.3.2")]
DESTINATIONS = ["PACS@127.0.0.1:104", "ARCHIVE@127.0.0.1:105"]
SR = ResultDocument(STUDY, "1.2.3.9", "1.2.3.1", "1.2.840.10008.5.1.4.1.1.88.34")


def _job_state(repo: Repository, job_id: int) -> JobState:
    return next(j.state for j in repo.jobs(STUDY) if j.id == job_id)


def test_the_finishing_run_records_every_delivery_and_the_loser_nothing(repo: Repository) -> None:
    job = make_job(repo)
    repo.start_job(job, 4.0)
    assert repo.complete_job(job, 5.0, ok=True, objects=OBJECTS, destinations=DESTINATIONS, document=SR,
                             detail="sr.dcm") == 4
    assert _job_state(repo, job) is JobState.DONE
    rows = store.deliveries(repo, job_id=job)
    assert sorted((r.destination, r.sop_instance_uid, str(r.path)) for r in rows) == sorted(
        (d, o.sop_instance_uid, o.path) for d in DESTINATIONS for o in OBJECTS)
    # a second run of the same job (overlapping, or redelivered after the commit) finds it done
    with pytest.raises(LedgerStateError, match="not processing"):
        repo.complete_job(job, 6.0, ok=True, objects=[ResultObject("/r/other.dcm", "9.9.9")],
                          destinations=DESTINATIONS, document=SR, detail="other")
    assert len(store.deliveries(repo, job_id=job)) == 4
    events = [e.event for e in repo.audit_trail(STUDY)]
    assert events.count("job-done") == 1 and events.count("job-result") == 1 and events.count("delivery-pending") == 4


def test_a_crash_inside_the_transaction_leaves_the_job_processing_and_no_delivery(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a kill between 'record the deliveries' and 'finish the job' did before: now one transaction."""
    job = make_job(repo)
    repo.start_job(job, 4.0)
    real = transaction.write_audit
    pending: list[str] = []

    def dies_on_second_delivery(session: Session, event: str, at: float, **kwargs: Any) -> None:
        if event == "delivery-pending":
            if pending:
                raise KeyboardInterrupt("killed")  # the process dies in the middle of recording
            pending.append(event)
        real(session, event, at, **kwargs)

    monkeypatch.setattr(results, "write_audit", dies_on_second_delivery)
    with pytest.raises(KeyboardInterrupt):
        repo.complete_job(job, 5.0, ok=True, objects=OBJECTS, destinations=DESTINATIONS[:1], document=SR)
    assert _job_state(repo, job) is JobState.PROCESSING  # the redelivery runs it again
    assert store.deliveries(repo, job_id=job) == []


def test_failed_job_with_failure_sr_and_the_superseding_job_finds_it(repo: Repository) -> None:
    job = make_job(repo)
    repo.start_job(job, 4.0)
    assert repo.superseded_document(job) is None
    assert repo.complete_job(job, 5.0, ok=False, reason="no SEG", objects=OBJECTS[:1], destinations=DESTINATIONS[:1],
                             document=SR) == 1
    assert _job_state(repo, job) is JobState.FAILED
    study = repo.study(STUDY)
    assert study is not None and study.reason == "no SEG"
    key = "rerun-1"
    second = repo.rerun(study, key, 6.0, requested_by="test")
    assert second is not None and second.supersedes_job_id == job
    found = repo.superseded_document(second.id)
    assert found is not None and (found.sop_instance_uid, found.series_instance_uid, found.job_id) == (
        SR.sop_instance_uid, SR.series_instance_uid, job)
    # a job in between that recorded no SR is skipped over
    repo.start_job(second.id, 7.0)
    repo.finish_job(second.id, 8.0, ok=False, reason="no model")
    study = repo.study(STUDY)
    assert study is not None
    third = repo.rerun(study, "rerun-2", 9.0, requested_by="test")
    assert third is not None
    again = repo.superseded_document(third.id)
    assert again is not None and again.job_id == job
