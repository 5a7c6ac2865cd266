"""The operations the node performs on the ledger, each one transaction, returning plain frozen records.

Nothing outside ``node.ledger`` touches ORM objects: callers get the frozen records of ``records.py``
(:class:`StudySnapshot`, :class:`JobRecord`...), re-exported here.
Every state change is guarded (the expected current state is checked inside the transaction) and audited,
so calling an operation twice, or from two processes, never produces two jobs for one study version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from sqlalchemy import bindparam, case, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from node.config import DuplicatePolicy, LateInstancePolicy
from node.errors import NodeError
from node.ledger.db import Ledger
from node.ledger.records import (
    AuditRecord,
    DeliveryRecord,
    InstanceHeader,
    JobRecord,
    KnownInstance,
    ReceiveOutcome,
    RecordedInstance,
    SeriesSnapshot,
    StudySnapshot,
    WrittenFile,
    content_digest,
    idempotency_key,
    job_record_of,
    snapshot_of,
)
from node.ledger.tables import (
    LATE_STATES,
    AuditEvent,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Series,
    Study,
    StudyState,
)

__all__ = [  # the records are re-exported: callers import everything ledger-related from here
    "AuditRecord", "DeliveryRecord", "InstanceHeader", "JobRecord", "KnownInstance", "LedgerStateError",
    "ReceiveOutcome", "RecordedInstance", "Repository", "SeriesSnapshot", "StudySnapshot", "WrittenFile",
    "content_digest", "idempotency_key",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_RETRIES = 3

# The listener's per-instance statements, built once: building a statement and its cache key costs more than
# running it on SQLite, and this runs inside every C-STORE handler.
_KNOWN_INSTANCE = (
    select(Instance.id, Study.study_instance_uid, Instance.path, Instance.sha256)
    .join(Series, Instance.series_id == Series.id)
    .join(Study, Series.study_id == Study.id)
    .where(Instance.sop_instance_uid == bindparam("sop"))
)
_STUDY_BY_UID = select(Study.id, Study.state, Study.version).where(Study.study_instance_uid == bindparam("uid"))
_INSERT_STUDY = insert(Study).returning(Study.id)
_TOUCH_STUDY = (
    update(Study).where(Study.id == bindparam("study_id"))
    .values(last_received_at=case((Study.last_received_at < bindparam("now"), bindparam("now")),
                                  else_=Study.last_received_at))
)
_SERIES_BY_UID = select(Series.id).where(Series.series_instance_uid == bindparam("uid"))
_INSERT_SERIES = insert(Series).returning(Series.id)
_TOUCH_SERIES = (
    update(Series).where(Series.id == bindparam("series_id"), Series.last_received_at < bindparam("now"))
    .values(last_received_at=bindparam("now"))
)
_INSTANCE_ID = select(Instance.id).where(Instance.sop_instance_uid == bindparam("sop"))
_INSERT_INSTANCE = insert(Instance)
_UPDATE_INSTANCE = update(Instance).where(Instance.id == bindparam("instance_id"))
_INSERT_AUDIT = insert(AuditEvent)


class LedgerStateError(NodeError):
    """An operation was asked of a study or job in a state that does not allow it (a caller's bug or a race)."""

    default_message = "the study or job is not in a state that allows this operation"


def _clip(text: str | None, size: int) -> str | None:
    return None if text is None else text[:size]


_STUDY_STATE_OF_JOB = {
    JobState.QUEUED: StudyState.QUEUED,
    JobState.PROCESSING: StudyState.PROCESSING,
    JobState.DONE: StudyState.DONE,
    JobState.FAILED: StudyState.FAILED,
}


class Repository:
    """The ledger operations of the listener, the completeness check and the job layer."""

    def __init__(self, ledger: Ledger, late_policy: LateInstancePolicy = LateInstancePolicy.RERUN) -> None:
        self.ledger = ledger
        self.late_policy = late_policy

    # -- helpers ------------------------------------------------------------------------------------------

    def _run(self, operation: Callable[[Session], T]) -> T:
        """Run ``operation`` in one transaction, retrying when a concurrent insert won a unique key."""
        for attempt in range(_RETRIES):
            try:
                with self.ledger.session() as session:
                    return operation(session)
            except IntegrityError:
                if attempt == _RETRIES - 1:
                    raise
                logger.debug("unique-key race in the ledger, retrying (attempt %d)", attempt + 1)
        raise AssertionError("unreachable")

    @staticmethod
    def _audit(session: Session, event: str, at: float, **fields: str | int | None) -> None:
        session.connection().execute(_INSERT_AUDIT, {
            "at": at,
            "event": event,
            "calling_ae_title": _clip(fields.get("calling_ae_title"), 16),  # type: ignore[arg-type]
            "peer": _clip(fields.get("peer"), 64),  # type: ignore[arg-type]
            "study_instance_uid": _clip(fields.get("study_instance_uid"), 64),  # type: ignore[arg-type]
            "sop_instance_uid": _clip(fields.get("sop_instance_uid"), 64),  # type: ignore[arg-type]
            "status": fields.get("status"),
            "detail": fields.get("detail"),
        })

    @staticmethod
    def _study(session: Session, study_uid: str, *, full: bool = True) -> Study | None:
        """The study row; ``full`` also loads its series and instances (for snapshots)."""
        query = select(Study).where(Study.study_instance_uid == study_uid)
        if full:
            query = query.options(selectinload(Study.series).selectinload(Series.instances))
        return session.scalar(query)

    @staticmethod
    def _set_state(study: Study, state: StudyState, at: float) -> None:
        study.state = state
        study.state_changed_at = at

    # -- audit --------------------------------------------------------------------------------------------

    def audit(
        self,
        event: str,
        at: float,
        *,
        calling_ae_title: str | None = None,
        peer: str | None = None,
        study_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        status: int | None = None,
        detail: str | None = None,
    ) -> None:
        """Append one audit event (association rejected, C-ECHO, duplicate kept, ...)."""

        def op(session: Session) -> None:
            self._audit(
                session, event, at, calling_ae_title=calling_ae_title, peer=peer,
                study_instance_uid=study_instance_uid, sop_instance_uid=sop_instance_uid, status=status, detail=detail,
            )

        self._run(op)

    def audit_trail(self, study_instance_uid: str | None = None) -> list[AuditRecord]:
        """Audit events in order, for one study or (``None``) all of them."""

        def op(session: Session) -> list[AuditRecord]:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if study_instance_uid is not None:
                query = query.where(AuditEvent.study_instance_uid == study_instance_uid)
            return [
                AuditRecord(e.at, e.event, e.calling_ae_title, e.peer, e.study_instance_uid, e.sop_instance_uid,
                            e.status, e.detail)
                for e in session.scalars(query)
            ]

        return self._run(op)

    # -- receiving ----------------------------------------------------------------------------------------

    @staticmethod
    def _known_instance(session: Session, sop_instance_uid: str) -> KnownInstance | None:
        row = session.connection().execute(_KNOWN_INSTANCE, {"sop": sop_instance_uid}).first()
        if row is None:
            return None
        return KnownInstance(sop_instance_uid, row.study_instance_uid, row.path, row.sha256)

    def find_instance(self, sop_instance_uid: str) -> KnownInstance | None:
        return self._run(lambda session: self._known_instance(session, sop_instance_uid))

    def receive_instance(
        self,
        header: InstanceHeader,
        *,
        sha256: str,
        duplicate_policy: DuplicatePolicy,
        new_path: str,
        write: Callable[[str], WrittenFile],
        calling_ae_title: str,
        peer: str,
        at: float,
    ) -> ReceiveOutcome:
        """Look up, write and record one received instance in **one** transaction (the listener's hot path).

        An instance already recorded with the same SHA-256, or with different content under policy ``keep``,
        is acknowledged and audited without writing anything. Otherwise ``write(path)`` makes the file durable
        (at ``new_path``, or at the known path when policy ``replace`` replaces it) and the instance is recorded
        before the commit. If the transaction fails after a write, the exception propagates and the caller
        removes the file it wrote (see :attr:`ReceiveOutcome` / the listener). One transaction instead of a
        lookup plus a write transaction halves the database round trips and commits per instance.
        """

        def op(session: Session) -> ReceiveOutcome:
            known = self._known_instance(session, header.sop_instance_uid)
            if known is not None and (known.sha256 == sha256 or duplicate_policy is DuplicatePolicy.KEEP):
                identical = known.sha256 == sha256
                self._audit(
                    session, "duplicate-identical" if identical else "duplicate-kept", at,
                    calling_ae_title=calling_ae_title, peer=peer, study_instance_uid=header.study_instance_uid,
                    sop_instance_uid=header.sop_instance_uid, status=0,
                    detail="identical copy acknowledged" if identical else "different content; the first copy is kept",
                )
                return ReceiveOutcome(stored=False, identical=identical, recorded=None)
            stored = write(known.path if known is not None else new_path)
            recorded = self._record(session, header, path=stored.relative_path, size_bytes=stored.size,
                                    sha256=stored.sha256, calling_ae_title=calling_ae_title, peer=peer, at=at)
            return ReceiveOutcome(stored=True, identical=False, recorded=recorded)

        return self._run(op)

    def known_paths(self) -> set[str]:
        """The spool paths of every recorded instance (for the start-up reconciliation)."""

        def op(session: Session) -> set[str]:
            return set(session.scalars(select(Instance.path)))

        return self._run(op)

    def record_instance(
        self,
        header: InstanceHeader,
        *,
        path: str,
        size_bytes: int,
        sha256: str,
        calling_ae_title: str,
        peer: str,
        at: float,
    ) -> RecordedInstance:
        """Record a spooled instance (new, or replacing the stored copy) and apply the study state rules.

        A new instance re-opens a ``ready`` study (its quiet period restarts). In a study already handed to the
        job layer it is *late*: policy ``rerun`` reopens the study as version + 1, policy ``ignore`` keeps it
        stored and audited only.
        """
        return self._run(lambda session: self._record(
            session, header, path=path, size_bytes=size_bytes, sha256=sha256, calling_ae_title=calling_ae_title,
            peer=peer, at=at,
        ))

    def _record(
        self,
        session: Session,
        header: InstanceHeader,
        *,
        path: str,
        size_bytes: int,
        sha256: str,
        calling_ae_title: str,
        peer: str,
        at: float,
    ) -> RecordedInstance:
        # Core statements, not the ORM unit of work: this runs once per received instance, inside the C-STORE
        # handler, and the ORM's flush bookkeeping cost more than the rest of the handler together.
        uid = header.study_instance_uid
        row = session.connection().execute(_STUDY_BY_UID, {"uid": uid}).first()
        if row is None:
            study_id = session.connection().execute(_INSERT_STUDY, {
                "study_instance_uid": uid, "state": StudyState.RECEIVING, "version": 1, "opened_at": at,
                "first_received_at": at, "last_received_at": at, "state_changed_at": at, "forced": False,
            }).scalar_one()
            state, version = StudyState.RECEIVING, 1
            self._audit(session, "study-opened", at, study_instance_uid=uid, calling_ae_title=calling_ae_title,
                        detail="version 1")
        else:
            study_id, state, version = row.id, StudyState(row.state), int(row.version)
        late = state in LATE_STATES
        reopened = False
        changes: dict[str, object] = {}
        if late and self.late_policy is LateInstancePolicy.RERUN:
            version += 1
            state = StudyState.RECEIVING
            changes = {"version": version, "opened_at": at, "content_digest": None, "forced": False, "reason": None,
                       "state": state, "state_changed_at": at}
            reopened = True
            self._audit(session, "study-reopened", at, study_instance_uid=uid,
                        sop_instance_uid=header.sop_instance_uid, calling_ae_title=calling_ae_title,
                        detail=f"late instance: version {version} will be processed and supersede the "
                        "earlier result")
        elif late:
            self._audit(session, "late-instance-ignored", at, study_instance_uid=uid,
                        sop_instance_uid=header.sop_instance_uid, calling_ae_title=calling_ae_title,
                        detail=f"study is {state.value}; late-instance policy is ignore")
        elif state is StudyState.READY:
            state = StudyState.RECEIVING
            changes = {"state": state, "state_changed_at": at, "content_digest": None}
            self._audit(session, "ready-revoked", at, study_instance_uid=uid,
                        sop_instance_uid=header.sop_instance_uid,
                        detail="a new instance restarted the quiet period")
        if changes:  # a state transition (rare): its own statement
            session.execute(update(Study).where(Study.id == study_id).values(**changes))
        session.connection().execute(_TOUCH_STUDY, {"study_id": study_id, "now": at})

        series_id = session.connection().execute(_SERIES_BY_UID, {"uid": header.series_instance_uid}).scalar()
        if series_id is None:
            series_id = session.connection().execute(_INSERT_SERIES, {
                "study_id": study_id, "series_instance_uid": header.series_instance_uid, "modality": header.modality,
                "sop_class_uid": header.sop_class_uid, "series_description": header.series_description,
                "series_number": header.series_number, "frame_of_reference_uid": header.frame_of_reference_uid,
                "first_received_at": at, "last_received_at": at,
            }).scalar_one()
        else:
            session.connection().execute(_TOUCH_SERIES, {"series_id": series_id, "now": at})

        values = {
            "sop_class_uid": header.sop_class_uid, "transfer_syntax_uid": header.transfer_syntax_uid, "path": path,
            "size_bytes": size_bytes, "sha256": sha256, "received_at": at, "calling_ae_title": calling_ae_title,
            "study_version": version,
        }
        instance_id = session.connection().execute(_INSTANCE_ID, {"sop": header.sop_instance_uid}).scalar()
        replaced = instance_id is not None
        if instance_id is None:
            session.connection().execute(
                _INSERT_INSTANCE, {"sop_instance_uid": header.sop_instance_uid, "series_id": series_id, **values}
            )
        else:
            session.connection().execute(_UPDATE_INSTANCE, {"instance_id": instance_id, **values})
        self._audit(session, "replaced" if replaced else "stored", at, calling_ae_title=calling_ae_title,
                    peer=peer, study_instance_uid=uid, sop_instance_uid=header.sop_instance_uid, status=0,
                    detail=f"{size_bytes} bytes, {path}")
        return RecordedInstance(state, version, replaced, late, reopened)

    # -- completeness -------------------------------------------------------------------------------------

    def study(self, study_instance_uid: str) -> StudySnapshot | None:
        def op(session: Session) -> StudySnapshot | None:
            study = self._study(session, study_instance_uid)
            return None if study is None else snapshot_of(study)

        return self._run(op)

    def studies(self, states: Iterable[StudyState] | None = None) -> list[StudySnapshot]:
        """Snapshots of the studies in ``states`` (all when ``None``), oldest first."""
        wanted = None if states is None else list(states)

        def op(session: Session) -> list[StudySnapshot]:
            query = select(Study).options(selectinload(Study.series).selectinload(Series.instances))
            if wanted is not None:
                query = query.where(Study.state.in_(wanted))
            return [snapshot_of(s) for s in session.scalars(query.order_by(Study.id))]

        return self._run(op)

    def _guarded(self, session: Session, seen: StudySnapshot) -> Study | None:
        """The study, if it has not changed since ``seen`` was taken (no new instance, same state/version)."""
        study = self._study(session, seen.study_instance_uid)
        if study is None or study.state is not seen.state or study.version != seen.version:
            return None
        if study.last_received_at != seen.last_received_at:
            return None
        return study

    def mark_ready(self, seen: StudySnapshot, at: float, *, forced: bool = False, reason: str | None = None) -> bool:
        """receiving -> ready for the version ``seen`` describes; False if the study changed meanwhile."""

        def op(session: Session) -> bool:
            study = self._guarded(session, seen)
            if study is None or study.state is not StudyState.RECEIVING:
                return False
            self._set_state(study, StudyState.READY, at)
            study.content_digest = seen.content_digest
            study.forced = forced
            study.reason = reason
            self._audit(session, "study-ready", at, study_instance_uid=study.study_instance_uid,
                        detail=(reason or "required series present, quiet period over")
                        + f"; version {study.version}, {seen.instance_count} instance(s)")
            return True

        return self._run(op)

    def mark_failed(self, seen: StudySnapshot, at: float, reason: str) -> bool:
        """receiving -> failed (force-complete deadline with action ``fail``); False if it changed meanwhile."""

        def op(session: Session) -> bool:
            study = self._guarded(session, seen)
            if study is None or study.state is not StudyState.RECEIVING:
                return False
            self._set_state(study, StudyState.FAILED, at)
            study.reason = reason
            self._audit(session, "study-failed", at, study_instance_uid=study.study_instance_uid, detail=reason)
            return True

        return self._run(op)

    # -- jobs ---------------------------------------------------------------------------------------------

    def enqueue(self, study_instance_uid: str, key: str, at: float) -> JobRecord | None:
        """ready -> queued with a new job keyed ``key``; ``None`` when a job with that key already exists.

        A known key means this exact content was already handed over (a re-sent identical study): the study
        takes that job's state again and no second job, hence no second result, is created.
        """

        def op(session: Session) -> JobRecord | None:
            study = self._study(session, study_instance_uid)
            if study is None or study.state is not StudyState.READY or study.content_digest is None:
                state = "unknown" if study is None else study.state.value
                raise LedgerStateError(f"study {study_instance_uid} is {state}, not ready: it cannot be queued")
            existing = session.scalar(select(Job).where(Job.idempotency_key == key))
            if existing is not None:
                self._set_state(study, _STUDY_STATE_OF_JOB[existing.state], at)
                self._audit(session, "job-deduplicated", at, study_instance_uid=study_instance_uid,
                            detail=f"content identical to job {existing.id}; no new job")
                return None
            return job_record_of(self._new_job(session, study, key, study.content_digest, at, reason=study.reason))

        return self._run(op)

    def _new_job(self, session: Session, study: Study, key: str, digest: str, at: float, *, reason: str | None,
                 note: str = "") -> Job:
        """A queued job of the study's current version, superseding its latest job; the study becomes queued."""
        previous = session.scalar(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc()).limit(1))
        job = Job(
            study_id=study.id, study_version=study.version, idempotency_key=key, content_digest=digest,
            state=JobState.QUEUED, forced=study.forced, reason=reason,
            supersedes_job_id=None if previous is None else previous.id, created_at=at, updated_at=at,
        )
        session.add(job)
        self._set_state(study, StudyState.QUEUED, at)
        session.flush()
        self._audit(session, "job-queued", at, study_instance_uid=study.study_instance_uid,
                    detail=f"job {job.id}, version {study.version}"
                    + (f", supersedes job {previous.id}" if previous is not None else "") + note)
        return job

    def rerun(self, seen: StudySnapshot, key: str, at: float, *, requested_by: str) -> JobRecord | None:
        """done | failed -> queued with a new job keyed ``key`` (an operator's re-run of the version ``seen``).

        ``None`` when a job with ``key`` already exists (the same request made twice). Raises
        :class:`LedgerStateError` when the study is in another state or changed since ``seen`` was taken.
        """

        def op(session: Session) -> JobRecord | None:
            if session.scalar(select(Job.id).where(Job.idempotency_key == key)) is not None:
                return None
            study = self._guarded(session, seen)
            if study is None or study.state not in (StudyState.DONE, StudyState.FAILED):
                raise LedgerStateError(
                    f"study {seen.study_instance_uid} changed or is not done/failed: it cannot be re-run now"
                )
            study.reason = None
            job = self._new_job(session, study, key, seen.content_digest, at, reason=None,
                                note=f", re-run requested by {requested_by}")
            return job_record_of(job)

        return self._run(op)

    def _job(self, session: Session, job_id: int) -> Job:
        job = session.get(Job, job_id)
        if job is None:
            raise LedgerStateError(f"job {job_id} does not exist")
        return job

    def start_job(self, job_id: int, at: float, *, worker: str | None = None) -> JobRecord:
        """queued -> processing (job and, when it is the study's current version, the study); ``worker`` (the
        Celery node name) is recorded in the audit event so an operator can see which worker ran which job."""

        def op(session: Session) -> JobRecord:
            job = self._job(session, job_id)
            if job.state is not JobState.QUEUED:
                raise LedgerStateError(f"job {job_id} is {job.state.value}, not queued")
            job.state = JobState.PROCESSING
            job.updated_at = at
            study = job.study
            if study.version == job.study_version and study.state is StudyState.QUEUED:
                self._set_state(study, StudyState.PROCESSING, at)
            self._audit(session, "job-started", at, study_instance_uid=study.study_instance_uid,
                        detail=f"job {job_id}" + (f" on {worker}" if worker else ""))
            return job_record_of(job)

        return self._run(op)

    def finish_job(self, job_id: int, at: float, *, ok: bool, reason: str | None = None) -> JobRecord:
        """processing -> done | failed."""

        def op(session: Session) -> JobRecord:
            job = self._job(session, job_id)
            if job.state is not JobState.PROCESSING:
                raise LedgerStateError(f"job {job_id} is {job.state.value}, not processing")
            job.state = JobState.DONE if ok else JobState.FAILED
            job.reason = reason
            job.updated_at = at
            study = job.study
            if study.version == job.study_version and study.state is StudyState.PROCESSING:
                self._set_state(study, StudyState.DONE if ok else StudyState.FAILED, at)
                study.reason = reason
            self._audit(session, "job-done" if ok else "job-failed", at, study_instance_uid=study.study_instance_uid,
                        detail=f"job {job_id}" + (f": {reason}" if reason else ""))
            return job_record_of(job)

        return self._run(op)

    def jobs(self, study_instance_uid: str) -> list[JobRecord]:
        def op(session: Session) -> list[JobRecord]:
            query = select(Job).join(Study).where(Study.study_instance_uid == study_instance_uid).order_by(Job.id)
            return [job_record_of(j) for j in session.scalars(query)]

        return self._run(op)

    # -- deliveries ---------------------------------------------------------------------------------------

    def record_delivery(
        self,
        job_id: int,
        destination: str,
        sop_instance_uid: str,
        state: DeliveryState,
        at: float,
        *,
        status: int | None = None,
        detail: str | None = None,
    ) -> DeliveryRecord:
        """Create or update the delivery of one result object to one destination (attempts counted)."""

        def op(session: Session) -> DeliveryRecord:
            job = self._job(session, job_id)
            row = session.scalar(
                select(Delivery).where(
                    Delivery.job_id == job_id, Delivery.destination == destination,
                    Delivery.sop_instance_uid == sop_instance_uid,
                )
            )
            if row is None:
                row = Delivery(job_id=job_id, destination=destination, sop_instance_uid=sop_instance_uid, attempts=0)
                session.add(row)
            row.state = state
            if state is not DeliveryState.PENDING:
                row.attempts += 1
            row.last_status = status
            row.detail = detail
            row.updated_at = at
            self._audit(session, f"delivery-{state.value}", at, study_instance_uid=job.study.study_instance_uid,
                        sop_instance_uid=sop_instance_uid, status=status, detail=f"job {job_id} -> {destination}")
            return DeliveryRecord(job_id, destination, sop_instance_uid, row.state, row.attempts, row.last_status,
                                  row.detail)

        return self._run(op)
