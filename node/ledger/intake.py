"""Intake: received instances looked up, written and recorded, and the study state rules a new instance applies.

This is the listener's hot path (one transaction per C-STORE): the per-instance statements are Core statements
built once, not the ORM unit of work.

Size: the three ways an instance enters the ledger (one transaction, the group commit's batch, the settling of a
raced instance) share these statements and the state rules of :meth:`IntakeOperations._record`; apart, each
would need the other's internals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import bindparam, case, insert, select, update
from sqlalchemy.orm import Session

from node.config import DuplicatePolicy, LateInstancePolicy
from node.errors import CorruptInstanceError
from node.ledger.records import (
    InstanceHeader,
    KnownInstance,
    ReceiveOutcome,
    RecordedInstance,
    SpooledInstance,
    WrittenFile,
)
from node.ledger.states import LATE_STATES, StudyState
from node.ledger.tables import Instance, Series, Study
from node.ledger.transaction import Operations, audit_row, write_audit, write_audits

# The listener's per-instance statements, built once: building a statement and its cache key costs more than
# running it on SQLite, and this runs inside every C-STORE handler.
_KNOWN_INSTANCE = (
    select(Instance.id, Study.study_instance_uid, Instance.path, Instance.sha256)
    .join(Series, Instance.series_id == Series.id)
    .join(Study, Series.study_id == Study.id)
    .where(Instance.sop_instance_uid == bindparam("sop"))
)
_KNOWN_INSTANCES = (
    select(Instance.sop_instance_uid, Study.study_instance_uid, Instance.path, Instance.sha256)
    .join(Series, Instance.series_id == Series.id)
    .join(Study, Series.study_id == Study.id)
    .where(Instance.sop_instance_uid.in_(bindparam("sops", expanding=True)))
)
_STUDY_BY_UID = select(Study.id, Study.state, Study.version).where(Study.study_instance_uid == bindparam("uid"))
_INSERT_STUDY = insert(Study).returning(Study.id)
_TOUCH_STUDY = (
    update(Study).where(Study.id == bindparam("study_id"))
    .values(last_received_at=case((Study.last_received_at < bindparam("now"), bindparam("now")),
                                  else_=Study.last_received_at))
)
_SERIES_BY_UID = select(Series.id, Series.study_id).where(Series.series_instance_uid == bindparam("uid"))
_INSERT_SERIES = insert(Series).returning(Series.id)
_TOUCH_SERIES = (
    update(Series).where(Series.id == bindparam("series_id"), Series.last_received_at < bindparam("now"))
    .values(last_received_at=bindparam("now"))
)
_SERIES_STUDY = (
    select(Study.study_instance_uid).join(Series, Series.study_id == Study.id)
    .where(Series.series_instance_uid == bindparam("uid"))
)
_INSTANCE_ID = select(Instance.id).where(Instance.sop_instance_uid == bindparam("sop"))
_INSERT_INSTANCE = insert(Instance)
_PLAINLY_NEW = select(_INSTANCE_ID.scalar_subquery().label("instance"), _SERIES_STUDY.scalar_subquery().label("owner"))
_INSTANCE_SERIES = (
    select(Instance.series_id, Series.study_id).join(Series, Instance.series_id == Series.id)
    .where(Instance.sop_instance_uid == bindparam("sop"))
)
_UPDATE_INSTANCE = update(Instance).where(Instance.id == bindparam("instance_id"))
# A series already recorded under this study, with the study's state: the group commit's steady state
_SERIES_IN_STUDY = (
    select(Study.id.label("study_id"), Study.state, Study.version, Series.id.label("series_id"))
    .join(Series, Series.study_id == Study.id)
    .where(Study.study_instance_uid == bindparam("study"), Series.series_instance_uid == bindparam("series"))
)


class _Receiving:
    """A series of a receiving study that a group-commit batch already recorded an instance of: the batch's next
    instances of it need only their own rows and audit events (what :meth:`IntakeOperations._record` would write
    for them: the study stays receiving, the series exists), the study and series touched once at the end."""

    def __init__(self, study_id: int, series_id: int, version: int) -> None:
        self.study_id, self.series_id, self.version = study_id, series_id, version
        self.latest: float | None = None

    def add(self, item: SpooledInstance, instances: list[dict[str, object]], audits: list[dict[str, object]]) -> None:
        """Queue the instance's row and its ``stored`` audit event (inserted with the batch's others at once)."""
        header = item.header
        instances.append({
            "sop_instance_uid": header.sop_instance_uid, "series_id": self.series_id,
            "sop_class_uid": header.sop_class_uid, "transfer_syntax_uid": header.transfer_syntax_uid,
            "path": item.path, "size_bytes": item.size_bytes, "sha256": item.sha256, "received_at": item.at,
            "calling_ae_title": item.calling_ae_title, "study_version": self.version,
        })
        audits.append(audit_row("stored", item.at, calling_ae_title=item.calling_ae_title, peer=item.peer,
                                study_instance_uid=header.study_instance_uid,
                                sop_instance_uid=header.sop_instance_uid, status=0,
                                detail=f"{item.size_bytes} bytes, {item.path}"))
        self.latest = item.at if self.latest is None else max(self.latest, item.at)

    def touch(self, session: Session) -> None:
        if self.latest is not None:
            session.connection().execute(_TOUCH_STUDY, {"study_id": self.study_id, "now": self.latest})
            session.connection().execute(_TOUCH_SERIES, {"series_id": self.series_id, "now": self.latest})


def _insert_queued(session: Session, instances: list[dict[str, object]], audits: list[dict[str, object]]) -> None:
    """Insert the instance rows and audit events :meth:`_Receiving.add` queued (one executemany each)."""
    if instances:
        session.connection().execute(_INSERT_INSTANCE, instances)
        instances.clear()
    write_audits(session, audits)
    audits.clear()


class InstanceConflictError(CorruptInstanceError):
    """The SOP Instance UID is already stored under another Study Instance UID (nothing was written)."""

    def __init__(self, message: str, *, study_instance_uid: str) -> None:
        super().__init__(message)
        self.study_instance_uid = study_instance_uid  # the study that holds the stored copy


class IntakeOperations(Operations):
    """Receiving instances; ``late_policy`` decides what an instance arriving after the hand-over does."""

    late_policy: LateInstancePolicy

    @staticmethod
    def _known_instance(session: Session, sop_instance_uid: str) -> KnownInstance | None:
        row = session.connection().execute(_KNOWN_INSTANCE, {"sop": sop_instance_uid}).first()
        if row is None:
            return None
        return KnownInstance(sop_instance_uid, row.study_instance_uid, row.path, row.sha256)

    @staticmethod
    def _known_instances(session: Session, sop_instance_uids: Sequence[str]) -> dict[str, KnownInstance]:
        rows = session.connection().execute(_KNOWN_INSTANCES, {"sops": list(sop_instance_uids)})
        return {row.sop_instance_uid: KnownInstance(row.sop_instance_uid, row.study_instance_uid, row.path,
                                                    row.sha256) for row in rows}

    def find_instance(self, sop_instance_uid: str) -> KnownInstance | None:
        return self._run(lambda session: self._known_instance(session, sop_instance_uid))

    def is_plainly_new(self, header: InstanceHeader) -> bool:
        """Whether the ledger has neither this SOP Instance UID nor its series under another study, read without a
        write lock (it never waits for a writer): such an instance needs no duplicate or conflict rule, and the
        listener's group commit may record it after answering."""
        instance, owner = self.ledger.read_row(  # one statement: both lookups in one round trip
            _PLAINLY_NEW, {"sop": header.sop_instance_uid, "uid": header.series_instance_uid})
        return instance is None and (owner is None or owner == header.study_instance_uid)

    def record_spooled(self, batch: Sequence[SpooledInstance]) -> list[tuple[SpooledInstance, KnownInstance]]:
        """Record a batch of new instances already durable in the spool (and acknowledged) in **one** transaction.

        This is the listener's group commit: the C-STORE handler found each SOP Instance UID unknown, placed the
        file and answered Success; the rows (and their ``stored`` audit events) follow here. An instance that is
        recorded by now after all (a concurrent association in another process, or the start-up reconciliation)
        is not recorded again: it is returned with the row that won, for the caller to resolve (see
        :meth:`resolve_spooled`). Raises :class:`InstanceConflictError` (nothing committed) when a series of the
        batch belongs to another study: the caller then records the batch one instance at a time.
        """

        def op(session: Session) -> list[tuple[SpooledInstance, KnownInstance]]:
            raced: list[tuple[SpooledInstance, KnownInstance]] = []
            receiving: dict[tuple[str, str], _Receiving] = {}
            uids = [item.header.sop_instance_uid for item in batch]
            known_before: dict[str, KnownInstance] | None = self._known_instances(session, uids)  # one query
            if len(set(uids)) != len(uids):  # the same UID twice in a batch: look each up after the ones before
                known_before = None
            instances: list[dict[str, object]] = []
            audits: list[dict[str, object]] = []
            # a series this study already has while it is receiving (nearly every batch, after a series' first
            # instance): its instances need only their rows, audit events and one touch, as _record would write
            # them; one lookup per series instead of _record's seven statements for its first instance in a batch
            for study_uid, series_uid in dict.fromkeys((item.header.study_instance_uid,
                                                        item.header.series_instance_uid) for item in batch):
                row = session.connection().execute(_SERIES_IN_STUDY, {"study": study_uid, "series": series_uid}).first()
                if row is not None and StudyState(row.state) is StudyState.RECEIVING:
                    receiving[(study_uid, series_uid)] = _Receiving(row.study_id, row.series_id, int(row.version))
            for item in batch:
                header = item.header
                if known_before is None:
                    known = self._known_instance(session, header.sop_instance_uid)
                else:
                    known = known_before.get(header.sop_instance_uid)
                if known is not None:
                    raced.append((item, known))
                    continue
                key = (header.study_instance_uid, header.series_instance_uid)
                if (into := receiving.get(key)) is not None:
                    into.add(item, instances, audits)
                    if known_before is None:  # the next lookup must see this row
                        _insert_queued(session, instances, audits)
                    continue
                _insert_queued(session, instances, audits)  # _record sees every row before it (series claims)
                recorded = self._record(session, header, path=item.path, size_bytes=item.size_bytes,
                                        sha256=item.sha256, calling_ae_title=item.calling_ae_title, peer=item.peer,
                                        at=item.at)
                if recorded.study_state is StudyState.RECEIVING:
                    ids = session.connection().execute(_INSTANCE_SERIES, {"sop": header.sop_instance_uid}).one()
                    receiving[key] = _Receiving(ids.study_id, ids.series_id, recorded.study_version)
            _insert_queued(session, instances, audits)
            for into in receiving.values():
                into.touch(session)
            return raced

        return self._run(op)

    def resolve_spooled(self, item: SpooledInstance, disk_sha256: Callable[[str], str | None]) -> bool:
        """Settle one acknowledged instance :meth:`record_spooled` could not simply record; ``True`` when its file is
        recorded (or identical to the recorded one at the same path), ``False`` when the file is not the ledger's
        (another study holds the UID, or another path does): the caller keeps it in ``.orphans/``, audited.

        Two different copies of one SOP instance written to the same path at the same moment by two processes:
        the copy on disk (``disk_sha256(path)``) is what the ledger records.
        """

        def op(session: Session) -> bool:
            known = self._known_instance(session, item.header.sop_instance_uid)
            if known is None:
                self._record(session, item.header, path=item.path, size_bytes=item.size_bytes, sha256=item.sha256,
                             calling_ae_title=item.calling_ae_title, peer=item.peer, at=item.at)
                return True
            if known.path != item.path:
                write_audit(session, "store-rejected", item.at, calling_ae_title=item.calling_ae_title,
                            peer=item.peer, study_instance_uid=item.header.study_instance_uid,
                            sop_instance_uid=item.header.sop_instance_uid,
                            detail=f"recorded meanwhile as {known.path} (study {known.study_instance_uid}) by a "
                            "concurrent association; this copy was acknowledged and is kept in .orphans")
                return False
            on_disk = disk_sha256(item.path)
            if on_disk is None or on_disk == known.sha256:
                return True
            self._record(session, item.header, path=item.path, size_bytes=item.size_bytes, sha256=on_disk,
                         calling_ae_title=item.calling_ae_title, peer=item.peer, at=item.at)
            write_audit(session, "duplicate-raced", item.at, calling_ae_title=item.calling_ae_title, peer=item.peer,
                        study_instance_uid=item.header.study_instance_uid,
                        sop_instance_uid=item.header.sop_instance_uid,
                        detail="two different copies were received at the same moment; the one on disk is recorded")
            return True

        try:
            return self._run(op)
        except InstanceConflictError as exc:
            detail = (f"{exc.message}; stored in study {exc.study_instance_uid}; found after this copy was "
                      "acknowledged: it is kept in .orphans")
            self._run(lambda session: write_audit(
                session, "store-rejected", item.at, calling_ae_title=item.calling_ae_title, peer=item.peer,
                study_instance_uid=item.header.study_instance_uid, sop_instance_uid=item.header.sop_instance_uid,
                detail=detail))
            return False

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
        present: Callable[[str], bool] = lambda _path: True,
    ) -> ReceiveOutcome:
        """Look up, write and record one received instance in **one** transaction (the listener's hot path).

        A SOP Instance UID whose stored copy (``present(path)``) belongs to **another study** raises
        :class:`InstanceConflictError`: nothing is written, and the first study's file is never touched. An
        instance already recorded with the same SHA-256, or with different content under policy ``keep``, is
        acknowledged and audited without writing anything. A recorded instance whose file is no longer in the
        spool (purged, see docs/operations.md) is stored again, under the study it now arrives with. Otherwise
        ``write(path)`` makes the file durable (at ``new_path``, or at the known path when policy ``replace``
        replaces it) and the instance is recorded before the commit. If the transaction fails after a write, the
        exception propagates and the caller removes the file it wrote. One transaction instead of a lookup plus
        a write transaction halves the database round trips and commits per instance.
        """

        def op(session: Session) -> ReceiveOutcome:
            known = self._known_instance(session, header.sop_instance_uid)
            if known is not None and not present(known.path):
                write_audit(session, "instance-missing", at, study_instance_uid=known.study_instance_uid,
                            sop_instance_uid=header.sop_instance_uid, calling_ae_title=calling_ae_title, peer=peer,
                            detail=f"{known.path} is no longer in the spool; the instance received now is stored")
                stored = write(new_path)
                recorded = self._record(session, header, path=stored.relative_path, size_bytes=stored.size,
                                        sha256=stored.sha256, calling_ae_title=calling_ae_title, peer=peer, at=at,
                                        present=present)
                return ReceiveOutcome(stored=True, identical=False, recorded=recorded)
            if known is not None and known.study_instance_uid != header.study_instance_uid:
                raise InstanceConflictError(
                    "this SOP Instance UID is already stored in another study; a SOP Instance UID names one "
                    "instance of one study (the stored copy is kept, this one is refused)",
                    study_instance_uid=known.study_instance_uid,
                )
            if known is not None and (known.sha256 == sha256 or duplicate_policy is DuplicatePolicy.KEEP):
                identical = known.sha256 == sha256
                write_audit(
                    session, "duplicate-identical" if identical else "duplicate-kept", at,
                    calling_ae_title=calling_ae_title, peer=peer, study_instance_uid=header.study_instance_uid,
                    sop_instance_uid=header.sop_instance_uid, status=0,
                    detail="identical copy acknowledged" if identical else "different content; the first copy is kept",
                )
                return ReceiveOutcome(stored=False, identical=identical, recorded=None)
            stored = write(known.path if known is not None else new_path)
            recorded = self._record(session, header, path=stored.relative_path, size_bytes=stored.size,
                                    sha256=stored.sha256, calling_ae_title=calling_ae_title, peer=peer, at=at,
                                    present=present)
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

    @staticmethod
    def _claim_series(
        session: Session, series_id: int, owner_id: int, study_id: int, header: InstanceHeader,
        present: Callable[[str], bool] | None, at: float,
    ) -> None:
        """A series UID recorded under another study: moved to this one if none of its files is left in the spool
        (the other study was purged), else :class:`InstanceConflictError`."""
        owner = session.connection().execute(select(Study.study_instance_uid).where(Study.id == owner_id)).scalar_one()
        paths = session.connection().execute(select(Instance.path).where(Instance.series_id == series_id)).scalars()
        if present is None or any(present(path) for path in paths):
            raise InstanceConflictError(
                "this SeriesInstanceUID already belongs to another study; a series belongs to one study (the "
                "stored series is kept, this instance is refused)",
                study_instance_uid=owner,
            )
        session.execute(update(Series).where(Series.id == series_id).values(study_id=study_id))
        write_audit(session, "series-moved", at, study_instance_uid=header.study_instance_uid,
                    sop_instance_uid=header.sop_instance_uid,
                    detail=f"series {header.series_instance_uid} moved here from study {owner}, whose files of it "
                    "are no longer in the spool")

    def _record(
        self,
        session: Session,
        header: InstanceHeader,
        *,
        path: str,
        size_bytes: int,
        sha256: str,
        calling_ae_title: str,
        peer: str | None,
        at: float,
        present: Callable[[str], bool] | None = None,
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
            write_audit(session, "study-opened", at, study_instance_uid=uid, calling_ae_title=calling_ae_title,
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
            write_audit(session, "study-reopened", at, study_instance_uid=uid,
                        sop_instance_uid=header.sop_instance_uid, calling_ae_title=calling_ae_title,
                        detail=f"late instance: version {version} will be processed and supersede the "
                        "earlier result")
        elif late:
            write_audit(session, "late-instance-ignored", at, study_instance_uid=uid,
                        sop_instance_uid=header.sop_instance_uid, calling_ae_title=calling_ae_title,
                        detail=f"study is {state.value}; late-instance policy is ignore")
        elif state is StudyState.READY:
            state = StudyState.RECEIVING
            changes = {"state": state, "state_changed_at": at, "content_digest": None}
            write_audit(session, "ready-revoked", at, study_instance_uid=uid,
                        sop_instance_uid=header.sop_instance_uid,
                        detail="a new instance restarted the quiet period")
        if changes:  # a state transition (rare): its own statement
            session.execute(update(Study).where(Study.id == study_id).values(**changes))
        session.connection().execute(_TOUCH_STUDY, {"study_id": study_id, "now": at})

        series = session.connection().execute(_SERIES_BY_UID, {"uid": header.series_instance_uid}).first()
        series_id = None if series is None else series.id
        if series is not None and series.study_id != study_id:
            self._claim_series(session, series.id, series.study_id, study_id, header, present, at)
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
            session.connection().execute(
                _UPDATE_INSTANCE, {"instance_id": instance_id, "series_id": series_id, **values}
            )
        write_audit(session, "replaced" if replaced else "stored", at, calling_ae_title=calling_ae_title,
                    peer=peer, study_instance_uid=uid, sop_instance_uid=header.sop_instance_uid, status=0,
                    detail=f"{size_bytes} bytes, {path}")
        return RecordedInstance(state, version, replaced, late, reopened)
