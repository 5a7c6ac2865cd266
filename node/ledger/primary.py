"""The primary tumour's subtype set beforehand through ``ainode primary``, and its lookup when a job runs.

A study's subtype model uses the primary-tumour subtype when it is known. It comes, in order, from: an entry set
here for the study (Study Instance UID), for its accession number, or for its patient (patient ID); then from the
study's own headers (:func:`node.jobs.process.primary_subtype_from_headers`). Accession numbers and patient IDs
are stored as SHA-256 digests only: the ledger holds no patient identifier in clear. Every change is audited.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.errors import ConfigError, CorruptInstanceError
from node.ledger.tables import PrimarySubtype
from node.ledger.transaction import Operations, run, write_audit
from node.spool import check_uid


class KeyKind(enum.StrEnum):
    """What an entry is keyed by; lookups try them in this order (the most specific first)."""

    STUDY = "study"
    ACCESSION = "accession"
    PATIENT = "patient"


@dataclass(frozen=True)
class PrimaryEntry:
    kind: KeyKind
    key: str  # the Study Instance UID, or the SHA-256 of the accession number / patient ID
    subtype: str
    set_at: float
    set_by: str

    @property
    def source(self) -> str:
        """How the SR and the logs describe where the subtype came from (no identifier)."""
        return f"set with 'ainode primary' for the {self.kind.value}"


def stored_key(kind: KeyKind, value: str) -> str:
    """The ledger key of ``value``: the checked UID for a study, a SHA-256 digest otherwise."""
    value = value.strip()
    if not value:
        raise ConfigError(f"the {kind.value} key is empty")
    if kind is KeyKind.STUDY:
        try:
            return check_uid(value, "StudyInstanceUID")
        except CorruptInstanceError as exc:  # reworded for the command line
            raise ConfigError(f"{value!r} is not a Study Instance UID (digits and dots, at most 64)") from exc
    if len(value) > 64:
        raise ConfigError(f"the {kind.value} value is longer than 64 characters")
    return hashlib.sha256(f"{kind.value}:{value}".encode()).hexdigest()


def _entry(row: PrimarySubtype) -> PrimaryEntry:
    return PrimaryEntry(KeyKind(row.key_kind), row.key, row.subtype, row.set_at, row.set_by)


def _audit(session: Session, event: str, at: float, kind: KeyKind, key: str, detail: str) -> None:
    write_audit(session, event, at, study_instance_uid=key if kind is KeyKind.STUDY else None, detail=detail)


def set_primary(repo: Operations, kind: KeyKind, value: str, subtype: str, at: float, by: str) -> PrimaryEntry:
    """Create or replace the entry for ``value``; ``subtype`` must already be a class name."""
    key = stored_key(kind, value)

    def op(session: Session) -> PrimaryEntry:
        row = session.scalar(select(PrimarySubtype).where(PrimarySubtype.key_kind == kind.value,
                                                          PrimarySubtype.key == key))
        before = None if row is None else row.subtype
        if row is None:
            row = PrimarySubtype(key_kind=kind.value, key=key)
            session.add(row)
        row.subtype, row.set_at, row.set_by = subtype, at, by[:64]
        change = f"{before} -> {subtype}" if before is not None and before != subtype else subtype
        _audit(session, "primary-subtype-set", at, kind, key, f"{kind.value}: {change} (by {by})")
        session.flush()
        return _entry(row)

    return run(repo.ledger, op)  # a concurrent insert of the same key is retried (then it updates)


def clear_primary(repo: Operations, kind: KeyKind, value: str, at: float, by: str) -> bool:
    """Remove the entry for ``value``; ``False`` when there was none."""
    key = stored_key(kind, value)

    def op(session: Session) -> bool:
        row = session.scalar(select(PrimarySubtype).where(PrimarySubtype.key_kind == kind.value,
                                                          PrimarySubtype.key == key))
        removed = row is not None
        if row is not None:
            session.delete(row)
        if removed:
            _audit(session, "primary-subtype-cleared", at, kind, key, f"{kind.value} (by {by})")
        return bool(removed)

    return run(repo.ledger, op)


def list_primary(repo: Operations) -> list[PrimaryEntry]:
    def op(session: Session) -> list[PrimaryEntry]:
        rows = session.scalars(select(PrimarySubtype).order_by(PrimarySubtype.set_at, PrimarySubtype.id))
        return [_entry(row) for row in rows]

    return run(repo.ledger, op)


def lookup_primary(
    repo: Operations, study_instance_uid: str, accession_number: str | None, patient_id: str | None
) -> PrimaryEntry | None:
    """The most specific entry for a study: its UID, then its accession number, then its patient."""
    wanted: list[tuple[KeyKind, str]] = [(KeyKind.STUDY, study_instance_uid)]
    if accession_number and accession_number.strip():
        wanted.append((KeyKind.ACCESSION, accession_number))
    if patient_id and patient_id.strip():
        wanted.append((KeyKind.PATIENT, patient_id))
    keys = []
    for kind, value in wanted:
        try:
            keys.append((kind, stored_key(kind, value)))
        except ConfigError:  # an unusable header value cannot match anything
            continue

    def op(session: Session) -> PrimaryEntry | None:
        for kind, key in keys:
            row = session.scalar(select(PrimarySubtype).where(PrimarySubtype.key_kind == kind.value,
                                                              PrimarySubtype.key == key))
            if row is not None:
                return _entry(row)
        return None

    return run(repo.ledger, op)
