"""The study ledger's tables (SQLAlchemy 2 ORM): studies, series, instances, jobs, deliveries, audit events.

Times are POSIX seconds (``float``, UTC by definition) so SQLite and PostgreSQL store and compare them the same
way and tests can pass a fake clock. Rows hold UIDs, descriptions and AE titles, never patient names or IDs.
Only :mod:`node.ledger` imports this module; the states of the records are in ``states.py``.
"""

from __future__ import annotations

import enum

from sqlalchemy import BigInteger, Enum, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from node.ledger.states import DeliveryState, JobState, StudyState


def _enum(kind: type[enum.StrEnum]) -> Enum:
    return Enum(kind, native_enum=False, length=16, values_callable=lambda members: [m.value for m in members])


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), index=True)
    #: Incremented when a late instance reopens the study (late-instance policy "rerun").
    version: Mapped[int] = mapped_column(Integer, default=1)
    #: When the current version received its first instance (the force-complete deadline counts from here).
    opened_at: Mapped[float] = mapped_column(Float)
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float)
    state_changed_at: Mapped[float] = mapped_column(Float)
    #: SHA-256 over the sorted (SOP Instance UID, file SHA-256) pairs when the study became ready.
    content_digest: Mapped[str | None] = mapped_column(String(64))
    forced: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None] = mapped_column(Text)

    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.id")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_description: Mapped[str] = mapped_column(Text, default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    frame_of_reference_uid: Mapped[str | None] = mapped_column(String(64))
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", order_by="Instance.id")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    #: POSIX path relative to the spool root (hashed UIDs, see ``node.spool``).
    path: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    #: The study version the instance arrived in.
    study_version: Mapped[int] = mapped_column(Integer)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One processing run of one study version; the idempotency key makes a re-sent study no new job."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    content_digest: Mapped[str] = mapped_column(String(64))
    state: Mapped[JobState] = mapped_column(_enum(JobState), index=True)
    forced: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    supersedes_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    #: The SR (result or failure SR) of the run that finished the job, recorded with its deliveries in one
    #: transaction; a later, superseding SR references it (added after the first release: NULL = none recorded).
    result_sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    result_series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    result_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    #: NULL: process the study; ``failure-sr``: only write and send the failure SR of a study that failed without
    #: being processed (force-complete deadline). Added after the first release.
    purpose: Mapped[str | None] = mapped_column(String(16))
    # The lease of the run holding the job (``node.ledger.leases``). Added after the first release
    # (``db.py`` adds the columns to older databases); NULL counts means 0, a NULL heartbeat "never leased".
    #: The Celery task id of the run that holds the job.
    lease: Mapped[str | None] = mapped_column(String(64))
    #: The holder's worker was alive at this time (renewed every ``job_heartbeat_s``); in the future while a
    #: retry or a re-sent message is due.
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    #: When the current run started; NULL between runs. Still set when a run begins: the previous one died.
    running_since: Mapped[float | None] = mapped_column(Float)
    #: Runs started, and runs that ended because their process died (the redelivery cap counts these).
    attempts: Mapped[int | None] = mapped_column(Integer)
    worker_deaths: Mapped[int | None] = mapped_column(Integer)
    #: When the job's task message was last handed to the broker; NULL: not (yet) confirmed sent — the
    #: dispatcher's send failed (broker unreachable), or an older release queued it. The poll sends such a
    #: queued job again (``node.ledger.leases.unsent_jobs``). Added after the first release.
    sent_at: Mapped[float | None] = mapped_column(Float)

    study: Mapped[Study] = relationship(back_populates="jobs")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job", order_by="Delivery.id")


class Delivery(Base):
    """One result object sent (or to be sent) to one destination."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "destination", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[float] = mapped_column(Float)
    #: The result file to send. Added after the first release (``db.py`` adds the column to older databases);
    #: the rows written before it keep the path in ``detail`` (:func:`node.ledger.deliveries.file_of`).
    path: Mapped[str | None] = mapped_column(Text)
    #: Added after the first release (NULL in older rows): when the current series of attempts began (the
    #: dead-letter delay counts from it), when the next attempt is due, and the last error in words.
    first_attempt_at: Mapped[float | None] = mapped_column(Float)
    next_attempt_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: Storage Commitment: the N-ACTION's Transaction UID, when it was asked, when the PACS committed.
    commit_transaction_uid: Mapped[str | None] = mapped_column(String(64))
    commit_requested_at: Mapped[float | None] = mapped_column(Float)
    committed_at: Mapped[float | None] = mapped_column(Float)

    job: Mapped[Job] = relationship(back_populates="deliveries")


class AuditEvent(Base):
    """Who sent what, when, and what the node answered or did; append-only."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    event: Mapped[str] = mapped_column(String(32), index=True)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    peer: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


class PrimarySubtype(Base):
    """The primary tumour's molecular subtype, set through ``ainode primary`` before (or after) a study arrives.

    ``key_kind`` is ``study`` (``key`` = the Study Instance UID), ``accession`` or ``patient``: for those two
    ``key`` is the SHA-256 of the value, so the ledger keeps no accession number or patient ID in clear.
    """

    __tablename__ = "primary_subtypes"
    __table_args__ = (UniqueConstraint("key_kind", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(64))
    subtype: Mapped[str] = mapped_column(String(16))
    set_at: Mapped[float] = mapped_column(Float)
    set_by: Mapped[str] = mapped_column(String(64))


class OpenAssociation(Base):
    """A study that an association still open has stored instances of (``node.ledger.associations``).

    Added at an association's first C-STORE of the study, removed when the association is released or aborted;
    the listener process that holds it (host, pid, process start) is recorded so that the rows of a process
    that died are ignored. Added after the first release (a new table: created on older databases).
    """

    __tablename__ = "open_associations"
    __table_args__ = (UniqueConstraint("association", "study_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: a random id of the association (unique across the listener processes sharing the ledger)
    association: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    #: the process's start time as the kernel counts it (``/proc/<pid>/stat``; 0 where unknown): a reused pid
    #: is another process
    process_started_at: Mapped[float] = mapped_column(Float)
    opened_at: Mapped[float] = mapped_column(Float)
