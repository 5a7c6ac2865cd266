"""Studies: snapshots of what is held, and the guarded receiving -> ready | failed transitions of the
completeness check (a transition happens only if the study is still as the caller's snapshot saw it)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from node.ledger.records import StudySnapshot, snapshot_of
from node.ledger.states import StudyState
from node.ledger.tables import Series, Study
from node.ledger.transaction import Operations, write_audit


def load_study(session: Session, study_uid: str, *, full: bool = True) -> Study | None:
    """The study row; ``full`` also loads its series and instances (for snapshots)."""
    query = select(Study).where(Study.study_instance_uid == study_uid)
    if full:
        query = query.options(selectinload(Study.series).selectinload(Series.instances))
    return session.scalar(query)


def set_state(study: Study, state: StudyState, at: float) -> None:
    study.state = state
    study.state_changed_at = at


def guarded(session: Session, seen: StudySnapshot) -> Study | None:
    """The study, if it has not changed since ``seen`` was taken (no new instance, same state/version)."""
    study = load_study(session, seen.study_instance_uid)
    if study is None or study.state is not seen.state or study.version != seen.version:
        return None
    if study.last_received_at != seen.last_received_at:
        return None
    return study


class StudyOperations(Operations):
    def study(self, study_instance_uid: str) -> StudySnapshot | None:
        def op(session: Session) -> StudySnapshot | None:
            study = load_study(session, study_instance_uid)
            return None if study is None else snapshot_of(study)

        return self._run(op)

    def finished_studies_idle_since(self, before: float) -> list[str]:
        """Study Instance UIDs of the studies done or failed on which nothing has happened (no instance received,
        no state change) since ``before``, oldest first: what retention may remove (:mod:`node.retention`)."""

        def op(session: Session) -> list[str]:
            query = (select(Study.study_instance_uid)
                     .where(Study.state.in_([StudyState.DONE, StudyState.FAILED]),
                            Study.last_received_at < before, Study.state_changed_at < before)
                     .order_by(Study.id))
            return list(session.scalars(query))

        return self._run(op)

    def studies(self, states: Iterable[StudyState] | None = None,
                uids: Iterable[str] | None = None) -> list[StudySnapshot]:
        """Snapshots of the studies in ``states`` (all when ``None``), of ``uids`` only if given, oldest first."""
        wanted = None if states is None else list(states)
        only = None if uids is None else sorted(uids)

        def op(session: Session) -> list[StudySnapshot]:
            query = select(Study).options(selectinload(Study.series).selectinload(Series.instances))
            if wanted is not None:
                query = query.where(Study.state.in_(wanted))
            if only is not None:
                query = query.where(Study.study_instance_uid.in_(only))
            return [snapshot_of(s) for s in session.scalars(query.order_by(Study.id))]

        return self._run(op)

    def mark_ready(self, seen: StudySnapshot, at: float, *, forced: bool = False, reason: str | None = None,
                   detail: str | None = None) -> bool:
        """receiving -> ready for the version ``seen`` describes; False if the study changed meanwhile.

        ``detail`` (the completeness rule that fired) goes into the ``study-ready`` audit event only."""

        def op(session: Session) -> bool:
            study = guarded(session, seen)
            if study is None or study.state is not StudyState.RECEIVING:
                return False
            set_state(study, StudyState.READY, at)
            study.content_digest = seen.content_digest
            study.forced = forced
            study.reason = reason
            write_audit(session, "study-ready", at, study_instance_uid=study.study_instance_uid,
                        detail=(detail or reason or "required series present, quiet period over")
                        + f"; version {study.version}, {seen.instance_count} instance(s)")
            return True

        return self._run(op)

    def note_waiting(self, seen: StudySnapshot, at: float, reason: str) -> bool:
        """A ``receiving`` study cannot become ready yet, for ``reason`` (a missing or ambiguous series after the
        quiet period): keep the reason on the study so ``ainode status`` and the dashboard show it at once, and
        audit it once per change. False when nothing changed."""

        def op(session: Session) -> bool:
            study = guarded(session, seen)
            if study is None or study.state is not StudyState.RECEIVING or study.reason == reason:
                return False
            study.reason = reason
            write_audit(session, "study-waiting", at, study_instance_uid=study.study_instance_uid, detail=reason)
            return True

        return self._run(op)

    def mark_failed(self, seen: StudySnapshot, at: float, reason: str) -> bool:
        """receiving -> failed (force-complete deadline with action ``fail``); False if it changed meanwhile."""

        def op(session: Session) -> bool:
            study = guarded(session, seen)
            if study is None or study.state is not StudyState.RECEIVING:
                return False
            set_state(study, StudyState.FAILED, at)
            study.reason = reason
            write_audit(session, "study-failed", at, study_instance_uid=study.study_instance_uid, detail=reason)
            return True

        return self._run(op)
