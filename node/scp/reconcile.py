"""The spool set right with the ledger when a listener process starts, before it accepts associations.

:func:`recover_incoming` goes through ``.incoming/``: a new instance is answered Success once fsynced there and
hard-linked into place, and the group commit removes that name only after fsyncing the folder and committing the
rows (:mod:`node.scp.recorder`), so a whole, valid file left there may have been acknowledged. Then
:func:`reconcile_spool` records the files in place that the ledger lacks, or moves them to ``.orphans/``.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from node.errors import NodeError
from node.ledger.repository import Repository
from node.scp import handlers
from node.scp.header import Limits
from node.scp.recorder import check_received_file, file_sha256, recover_spooled
from node.spool import INCOMING, ORPHANS, Spool, fsync_folder

logger = logging.getLogger(__name__)

DEFAULT_LIMITS = Limits(max_inflated_bytes=256 << 20, max_element_bytes=16 << 20)


def recover_incoming(spool: Spool, repository: Repository, limits: Limits | None = None) -> int:
    """Put into place the received files under ``.incoming/`` (this process's own folder, or all of it) that may
    have been acknowledged; remove the others. Returns how many were put into place.

    A new instance is answered Success once fsynced under ``.incoming/`` and hard-linked into place; the group
    commit fsyncs its folder, records it and only then removes the ``.incoming/`` name (:mod:`node.scp.recorder`).
    So a file left there that is whole and valid, whose place is empty, and which the ledger lacks or lists at that
    place with the same SHA-256, may have been acknowledged with a link that a power loss undid: it is linked into
    place again and its folder fsynced (:func:`reconcile_spool` then records it if the ledger lacks it). Any other
    file there (an interrupted write, one refused, one already in place, another copy in the ledger) is removed. One
    that cannot be put into place now (a full disk) stays for the next start.
    """
    placed = removed = 0
    for received in spool.incoming_files():
        try:
            item = check_received_file(spool, received, limits or DEFAULT_LIMITS)
        except (NodeError, OSError):
            item = None  # incomplete or corrupt: never acknowledged
        target = spool.path(item.path) if item is not None else None
        if item is not None and target is not None and not target.exists():
            try:
                known = repository.find_instance(item.header.sop_instance_uid)
            except SQLAlchemyError as exc:
                logger.error("cannot look up a received file under %s (%s); it stays for the next start", INCOMING,
                             exc.__class__.__name__)
                continue
            if known is None or (known.path == item.path and known.sha256 == item.sha256):
                try:
                    moved = _put_into_place(spool, received, item.path, item.size_bytes, item.sha256)
                except OSError as exc:
                    logger.error("cannot put a received file from %s into place (%s); it stays for the next start",
                                 INCOMING, exc.strerror)
                    continue
                placed += 1
                if moved:
                    continue
        elif target is not None and _same_file(received, target):
            try:  # linked before the crash: that name is made durable before this one goes
                fsync_folder(target.parent)
            except OSError as exc:
                logger.error("cannot fsync a spool folder (%s); %s stays for the next start", exc.strerror,
                             received.name)
                continue
        try:
            received.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.error("cannot remove %s: %s", received.name, exc.strerror)
    if placed:
        logger.warning("put %d received file(s) from %s into place (acknowledged before a crash)", placed, INCOMING)
    if removed > placed:
        logger.warning("removed %d file(s) left in %s by an interrupted write or already in place", removed - placed,
                       INCOMING)
    return placed


def _put_into_place(spool: Spool, received: Path, relative: str, size: int, sha256: str) -> bool:
    """Link ``received`` at ``relative`` and fsync the folder; where the file system has no hard links, rename it
    there (folder fsynced too). ``True`` if it was moved (``received`` is gone)."""
    _stored, moved = spool.link_or_adopt(relative, received, size, sha256)
    if not moved:
        fsync_folder(spool.path(relative).parent)
    return moved


def _same_file(one: Path, other: Path) -> bool:
    try:
        return one.samefile(other)
    except OSError:
        return False


def reconcile_spool(spool: Spool, repository: Repository, at: float, limits: Limits | None = None) -> list[str]:
    """Record spooled files the ledger lacks, quarantine those that cannot be recorded; returns the quarantined.

    A file the ledger lacks was placed durably and (with the group commit) possibly acknowledged before the
    process died: it is checked again (file meta, dataset, its place matching its UIDs) and recorded
    (``instance-recovered``). One that fails the check, or whose UID the ledger holds at another path, is moved
    to ``.orphans/`` (``orphan-quarantined``): no job ever reads an instance the ledger does not list.
    """
    known = repository.known_paths()
    unknown = [path for path in spool.stored_paths() if path not in known]
    orphans = []
    for path in unknown:
        try:
            item = recover_spooled(spool, path, limits or DEFAULT_LIMITS)
        except (NodeError, OSError) as exc:
            logger.warning("a spooled file unknown to the ledger cannot be recorded: %s", exc)
        else:
            try:
                recorded = repository.resolve_spooled(item, partial(file_sha256, spool))
            except SQLAlchemyError as exc:  # a full disk, a ledger down: start anyway, record it at the next start
                logger.error("a spooled file unknown to the ledger cannot be recorded now (%s); it stays for the "
                             "next start", exc.__class__.__name__)
                continue
            if recorded:
                handlers.audit_quietly(repository, "instance-recovered", at,
                                       study_instance_uid=item.header.study_instance_uid,
                                       sop_instance_uid=item.header.sop_instance_uid,
                                       detail=f"{path}: in the spool, not in the ledger (acknowledged before a "
                                       "stop or crash); recorded at start-up")
                continue
        orphans.append(path)
        try:
            moved = spool.quarantine(path)
        except OSError as exc:  # e.g. a full disk: start anyway, try again at the next start
            logger.error("cannot quarantine %s, unknown to the ledger: %s", path, exc.strerror)
            continue
        handlers.audit_quietly(repository, "orphan-quarantined", at,
                               detail=f"{path} -> {moved.relative_to(spool.root).as_posix()}")
    if len(unknown) > len(orphans):
        logger.warning("recorded %d spooled file(s) the ledger lacked", len(unknown) - len(orphans))
    if orphans:
        logger.warning("moved %d spooled file(s) unknown to the ledger to %s", len(orphans), ORPHANS)
    return orphans
