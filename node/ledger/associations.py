"""Associations still open, per study: the "no association from that sender still open" signal of completeness.

The listener may run as several processes on one port, so the state lives in the ledger (table
``open_associations``): a row per (association, study) is added at the association's first C-STORE of the study
and removed when the association is released or aborted. A row is ignored once it is older than the
force-complete time, or when the listener process that wrote it is gone (same host: its pid no longer runs, or
runs another program since the kernel's start time differs); rows of dead processes on this host are deleted
when a listener starts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from node.ledger.tables import OpenAssociation
from node.ledger.transaction import Operations


@dataclass(frozen=True)
class ProcessId:
    """A process, told apart from a later one that reuses its pid."""

    host: str
    pid: int
    started_at: float


def process_start(pid: int) -> float:
    """The kernel's start time of ``pid`` (clock ticks since boot, Linux); 0 where unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return float(stat.rsplit(")", 1)[1].split()[19])  # field 22, counting from the state after the name
    except (OSError, IndexError, ValueError):
        return 0.0


@cache
def _this_process(pid: int) -> ProcessId:
    return ProcessId(socket.gethostname(), pid, process_start(pid))


def this_process() -> ProcessId:
    return _this_process(os.getpid())


def process_alive(process: ProcessId) -> bool:
    """Whether ``process`` still runs; a process on another host counts as alive (its rows age out instead)."""
    if process.host != socket.gethostname():
        return True
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    return not process.started_at or process_start(process.pid) in (0.0, process.started_at)


@dataclass(frozen=True)
class OpenAssociationRecord:
    association: str
    study_instance_uid: str
    calling_ae_title: str
    process: ProcessId
    opened_at: float


def _record(row: OpenAssociation) -> OpenAssociationRecord:
    return OpenAssociationRecord(row.association, row.study_instance_uid, row.calling_ae_title,
                                 ProcessId(row.host, row.pid, row.process_started_at), row.opened_at)


class AssociationOperations(Operations):
    def association_opened(self, association: str, study_instance_uid: str, at: float, *, calling_ae_title: str,
                           process: ProcessId | None = None) -> bool:
        """Record that ``association`` stores into the study (False when it was recorded already)."""
        holder = process or this_process()

        def op(session: Session) -> bool:
            known = session.scalar(select(OpenAssociation.id).where(
                OpenAssociation.association == association,
                OpenAssociation.study_instance_uid == study_instance_uid))
            if known is not None:
                return False
            session.add(OpenAssociation(association=association, study_instance_uid=study_instance_uid,
                                        calling_ae_title=calling_ae_title[:16], host=holder.host[:255],
                                        pid=holder.pid, process_started_at=holder.started_at, opened_at=at))
            return True

        return self._run(op)

    def association_ended(self, association: str) -> list[str]:
        """Remove the rows of ``association``; the studies it stored into."""

        def op(session: Session) -> list[str]:
            rows = session.scalars(select(OpenAssociation).where(OpenAssociation.association == association)).all()
            session.execute(delete(OpenAssociation).where(OpenAssociation.association == association))
            return sorted({row.study_instance_uid for row in rows})

        return self._run(op)

    def open_associations(self) -> list[OpenAssociationRecord]:
        """Every recorded row, dead or alive, oldest first."""
        return self._run(lambda session: [
            _record(row) for row in session.scalars(select(OpenAssociation).order_by(OpenAssociation.id))])

    def studies_with_open_associations(self, now: float, max_age_s: float,
                                       alive: Callable[[ProcessId], bool] = process_alive) -> set[str]:
        """The studies an association of a live listener process, opened less than ``max_age_s`` ago, stores
        into."""
        return {record.study_instance_uid for record in self.open_associations()
                if now - record.opened_at < max_age_s and alive(record.process)}

    def forget_dead_associations(self, alive: Callable[[ProcessId], bool] = process_alive) -> int:
        """Delete the rows of listener processes of this host that are gone; how many."""
        dead = {r.association for r in self.open_associations() if not alive(r.process)}

        def op(session: Session) -> int:
            if dead:
                session.execute(delete(OpenAssociation).where(OpenAssociation.association.in_(dead)))
            return len(dead)

        return self._run(op)
