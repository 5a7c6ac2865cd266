"""Retention: remove the received instances (and, if asked, the results) of studies finished long ago.

A node keeps every instance it received until someone removes it; a spool that fills up makes the listener refuse
new studies (0xA700 below ``min_free_disk_bytes``), which stalls the PACS's routing. :func:`purge` removes, for
each study that is **done or failed** and on which nothing has happened (no instance received, no state change)
for ``older_than_s``:

* its instance files in the spool (the ledger's rows and audit trail stay: the study is still listed, and an
  instance of it sent again is stored again, see docs/operations.md "Retention");
* with ``results``, its SR and companion objects under ``results/``, but only when every delivery of its jobs has
  reached the PACS (``sent`` / ``committed``): a pending delivery or a dead letter (which ``ainode resend`` may
  retry) keeps them.

Each study is audited ``study-purged`` (files, bytes, whether the results went too). A study receiving, ready,
queued or processing is never touched. Nothing acknowledged since the study was read is removed: a file is moved
aside (a rename in its folder), and only deleted if it is still the very file (inode) that was read; a copy the
listener put at that place meanwhile (a replacement) is put back. Files the listener adds to the study's folders
meanwhile are not in the list, and a folder is removed only when empty.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from node.ledger import deliveries as outbox
from node.ledger.records import StudySnapshot
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState, StudyState
from node.spool import RESULTS_DIRNAME, fsync_folder, uid_key

logger = logging.getLogger(__name__)

FINISHED = frozenset({StudyState.DONE, StudyState.FAILED})
DELIVERED = frozenset({DeliveryState.SENT, DeliveryState.COMMITTED})
ASIDE = ".purging"  # suffix of a file moved aside before its removal (never ".dcm": not a spooled instance)


@dataclass(frozen=True)
class Purged:
    """What :func:`purge` removed (or, on a dry run, would remove) of one study."""

    study_instance_uid: str
    state: StudyState
    idle_since: float  # the later of its last instance and its last state change
    files: int
    bytes: int
    results_removed: bool
    results_kept_because: str | None  # why the results stay, when they were asked for


def purge(repo: Repository, spool_dir: Path, *, older_than_s: float, results: bool = False, dry_run: bool = False,
          now: float | None = None) -> list[Purged]:
    """Remove what retention allows (module docstring); returns one :class:`Purged` per study touched. A study
    with nothing left to remove (purged before) is skipped without a word."""
    if older_than_s < 0:
        raise ValueError("older_than_s must be >= 0")
    now = time.time() if now is None else now
    spool_dir = spool_dir.resolve()
    done: list[Purged] = []
    for uid in repo.finished_studies_idle_since(now - older_than_s):
        study_dir = spool_dir / uid_key(uid)
        results_dir = spool_dir / RESULTS_DIRNAME / uid_key(uid)
        if not study_dir.is_dir() and not (results and results_dir.is_dir()):
            continue  # purged before: nothing to look up
        snapshot = repo.study(uid)
        if snapshot is None or snapshot.state not in FINISHED:
            continue
        result = _purge_study(repo, spool_dir, snapshot, results_dir if results else None, dry_run, now)
        if result is not None:
            done.append(result)
    return done


def _purge_study(repo: Repository, spool_dir: Path, study: StudySnapshot, results_dir: Path | None, dry_run: bool,
                 now: float) -> Purged | None:
    uid = study.study_instance_uid
    prefix = uid_key(uid) + "/"
    files: list[tuple[Path, int, int]] = []  # (path, inode, size) as read now
    for series in study.series:
        for relative in series.files:
            if not relative.startswith(prefix):  # never outside the study's own folder
                continue
            try:
                stat = (spool_dir / relative).stat()
            except FileNotFoundError:
                continue
            files.append((spool_dir / relative, stat.st_ino, stat.st_size))
    keep_results = None if results_dir is None else _why_results_stay(repo, uid, results_dir)
    remove_results = results_dir is not None and keep_results is None
    if not files and not remove_results:
        return None
    idle_since = max(study.last_received_at, study.state_changed_at)
    outcome = Purged(uid, study.state, idle_since, len(files), sum(size for _p, _i, size in files), remove_results,
                     keep_results)
    if dry_run:
        return outcome
    removed: list[int] = []
    for path, inode, size in files:
        try:
            if _remove(path, inode):
                removed.append(size)
        except OSError as exc:  # e.g. permissions: this file stays, the others go; the audit counts what went
            logger.error("retention cannot remove a file of study %s: %s", uid_key(uid), exc.strerror)
    _remove_empty_folders(spool_dir / uid_key(uid))
    if remove_results and results_dir is not None:
        shutil.rmtree(results_dir, ignore_errors=True)
        fsync_folder(results_dir.parent)
    outcome = Purged(uid, study.state, idle_since, len(removed), sum(removed), remove_results, keep_results)
    detail = (f"retention: {outcome.files} instance file(s), {outcome.bytes} bytes removed from the spool; results "
              + ("removed" if remove_results else f"kept ({keep_results})" if keep_results else "kept"))
    repo.audit("study-purged", time.time(), study_instance_uid=uid, detail=detail)
    logger.info("study %s purged: %s", uid_key(uid), detail)
    return outcome


def _why_results_stay(repo: Repository, uid: str, results_dir: Path) -> str | None:
    """Why a study's results must stay (a delivery not yet at the PACS), ``None`` if they may go."""
    if not results_dir.is_dir():
        return None if not results_dir.exists() else "not a folder"
    for job in repo.jobs(uid):
        for delivery in outbox.deliveries(repo, job_id=job.id):
            if delivery.state not in DELIVERED:
                return f"delivery {delivery.id} is {delivery.state}"
    return None


def _remove(path: Path, inode: int) -> bool:
    """Remove ``path`` if it is still the file (``inode``) that was read; a file put there since stays."""
    aside = path.with_name(path.name + ASIDE)
    try:
        path.rename(aside)
    except FileNotFoundError:
        return False
    try:
        if aside.stat().st_ino == inode:
            aside.unlink()
            return True
        logger.warning("a spooled file was replaced while retention removed its study: it stays")
        with contextlib.suppress(FileExistsError):  # yet another copy there now: that one stays
            os.link(aside, path)
        aside.unlink()
        return False
    finally:
        fsync_folder(path.parent)


def _remove_empty_folders(study_dir: Path) -> None:
    """Remove the study's series folders, then the study folder, where empty. A listener storing into the study at
    that moment finds its folder gone between making it and linking its file at worst: that C-STORE fails (not
    acknowledged, the sender resends it)."""
    if not study_dir.is_dir():
        return
    for folder in [*sorted(p for p in study_dir.iterdir() if p.is_dir()), study_dir]:
        try:
            folder.rmdir()
        except OSError:  # not empty (the listener added a file), or gone: leave it
            continue
    fsync_folder(study_dir.parent)
