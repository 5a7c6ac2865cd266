"""The durable spool: every received instance is on disk (fsynced, under a durable name) before Success is returned.

Layout: ``<root>/<study-key>/<series-key>/<sop-key>.dcm`` where each key is the first 32 hex digits of the
SHA-256 of the (checked) UID, so no file name ever comes from bytes a sender chose. The real UIDs live in the
ledger. A file is first written under ``<root>/.incoming/`` (same file system), flushed and fsynced, then
renamed into place and its directory fsynced (:meth:`Spool.place`, :meth:`Spool.adopt`), or hard-linked into
place with its ``.incoming`` name kept until the folder is fsynced (:meth:`Spool.link`, the listener's group
commit): a crash leaves either the whole old file, the whole new file, or a file under ``.incoming`` (put into
place or removed at start-up by :func:`node.scp.reconcile.recover_incoming`). A file in place whose ledger record
never committed is recorded, or moved to ``.orphans/``, at start-up by :func:`node.scp.reconcile.reconcile_spool`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from node.errors import CorruptInstanceError

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK})  # no hard link possible
INCOMING = ".incoming"
ORPHANS = ".orphans"


def check_uid(uid: str, keyword: str) -> str:
    """Return ``uid`` if it is a plausible UID (digits and dots, at most 64 characters), else raise."""
    if not uid or len(uid) > 64 or not _UID.match(uid):
        shown = uid[:80].encode("ascii", "backslashreplace").decode("ascii")
        raise CorruptInstanceError(f"{keyword} {shown!r} is not a valid UID")
    return uid


@lru_cache(maxsize=1024)  # a study's and a series' UIDs come with every one of their instances
def uid_key(uid: str) -> str:
    """The file-system name derived from a UID (32 hex digits of its SHA-256)."""
    return hashlib.sha256(uid.encode("ascii")).hexdigest()[:32]


@dataclass(frozen=True)
class StoredFile:
    """A file made durable in the spool."""

    relative_path: str  # POSIX path relative to the spool root
    size: int
    sha256: str


def fsync_folder(path: Path) -> None:
    """fsync a folder: the names created, linked, renamed or removed in it are durable afterwards."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, fsyncing each parent whose entries changed."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # another association created it first
            continue
        fsync_folder(directory.parent)


class Spool:
    """The spool folder. Thread-safe: writers never share a temporary file and renames are atomic."""

    def __init__(self, root: Path, worker: str | None = None) -> None:
        """``worker`` names this process's own folder under ``.incoming/`` (a listener process of a pool), so its
        start-up clean-up never touches another live process's files; ``None``: ``.incoming/`` itself."""
        self.root = root.resolve()
        self._own_incoming = worker is not None
        self.incoming = self.root / INCOMING / worker if worker is not None else self.root / INCOMING
        _make_dirs(self.incoming)

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        return "/".join(
            (
                uid_key(check_uid(study_uid, "StudyInstanceUID")),
                uid_key(check_uid(series_uid, "SeriesInstanceUID")),
                uid_key(check_uid(sop_instance_uid, "SOPInstanceUID")) + ".dcm",
            )
        )

    def path(self, relative_path: str) -> Path:
        return self.root / relative_path

    def study_dir(self, study_uid: str) -> Path:
        """The folder holding every spooled instance of a study (what the imaging pipeline scans)."""
        return self.root / uid_key(check_uid(study_uid, "StudyInstanceUID"))

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def write(self, relative_path: str, chunks: Iterable[bytes]) -> StoredFile:
        """Write ``chunks`` durably at ``relative_path`` (replacing any file there) and return its digest.

        Raises ``OSError`` (e.g. ENOSPC) with nothing left behind at the target path.
        """
        target = self.path(relative_path)
        _make_dirs(target.parent)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(prefix="rx-", suffix=".part", dir=self.incoming)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_folder(target.parent)
        return StoredFile(relative_path=relative_path, size=size, sha256=digest.hexdigest())

    def place(self, relative_path: str, source: Path, size: int, sha256: str) -> StoredFile:
        """Put a received file (already fsynced, on the spool's file system) at ``relative_path`` durably.

        The file is hard-linked under ``.incoming/`` and renamed into place (replacing any file there), so
        ``source`` stays for a retry; where hard links are not supported it is copied and fsynced instead.
        Raises ``OSError`` (e.g. ENOSPC) with nothing left behind at the target path.
        """
        target = self.path(relative_path)
        _make_dirs(target.parent)
        tmp = self.incoming / f"rx-{secrets.token_hex(12)}.part"
        try:
            try:
                os.link(source, tmp)
            except OSError as exc:
                if exc.errno not in NO_LINKS:
                    raise
                shutil.copyfile(source, tmp)
                with tmp.open("rb+") as handle:
                    os.fsync(handle.fileno())
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_folder(target.parent)
        return StoredFile(relative_path=relative_path, size=size, sha256=sha256)

    def link(self, relative_path: str, source: Path, size: int, sha256: str) -> StoredFile:
        """Give a received file (already fsynced under ``.incoming/``, so durable under that name) a second name at
        ``relative_path``; ``source`` stays. The new name is durable once its folder is fsynced
        (:func:`fsync_folder`), which the caller does before it records the file and removes ``source``: until
        then ``source`` is the name a crash cannot take away (:func:`node.scp.reconcile.recover_incoming`).
        Raises ``FileExistsError`` when a file is already at ``relative_path``, ``OSError`` with an errno in
        :data:`NO_LINKS` where the file system has no hard links (use :meth:`adopt` then), other errors
        (e.g. ENOSPC) with nothing left at the target path.
        """
        target = self.path(relative_path)
        try:  # the series folder is there for all but a series' first instance: no look first
            os.link(source, target)
        except FileNotFoundError:
            if not source.exists():
                raise
            _make_dirs(target.parent)
            os.link(source, target)
        return StoredFile(relative_path=relative_path, size=size, sha256=sha256)

    def adopt(self, relative_path: str, source: Path, size: int, sha256: str) -> StoredFile:
        """Move a received file (already fsynced, on the spool's file system) to ``relative_path`` durably: one
        rename (replacing any file there) and the folder fsynced; ``source`` is gone afterwards. What
        :meth:`place` does without the hard link and its removal, for a file that needs no retry.
        Raises ``OSError`` (e.g. ENOSPC) with nothing left behind at the target path.
        """
        target = self.path(relative_path)
        try:  # the series folder is there for all but a series' first instance: no look first
            source.replace(target)
        except FileNotFoundError:
            if not source.exists():
                raise
            _make_dirs(target.parent)
            source.replace(target)
        fsync_folder(target.parent)
        return StoredFile(relative_path=relative_path, size=size, sha256=sha256)

    def link_or_adopt(self, relative_path: str, source: Path, size: int, sha256: str, *,
                      over_existing: bool = False) -> tuple[StoredFile, bool]:
        """:meth:`link` ``source`` at ``relative_path``; where the file system has no hard links (or, with
        ``over_existing``, a file is there already: a racing copy), :meth:`adopt` it there instead (renamed, the
        folder fsynced). Returns the stored file and whether ``source`` was moved (is gone); a link's folder is
        the caller's to fsync. Raises what :meth:`link` raises otherwise (``FileExistsError``, ENOSPC ...)."""
        try:
            return self.link(relative_path, source, size, sha256), False
        except OSError as exc:
            if not (over_existing and isinstance(exc, FileExistsError)) and exc.errno not in NO_LINKS:
                raise
        return self.adopt(relative_path, source, size, sha256), True

    def remove(self, relative_path: str) -> None:
        """Remove a spooled file (one the ledger could not record), durably."""
        target = self.path(relative_path)
        target.unlink(missing_ok=True)
        fsync_folder(target.parent)

    def stored_paths(self) -> list[str]:
        """Every spooled instance file, as spool-relative POSIX paths."""
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.glob("*/*/*.dcm")
            if not p.parts[len(self.root.parts)].startswith(".")
        )

    def quarantine(self, relative_path: str) -> Path:
        """Move a file out of the study folders into ``.orphans/`` (kept, never processed)."""
        target = self.root / ORPHANS / relative_path.replace("/", "_")
        _make_dirs(target.parent)
        self.path(relative_path).replace(target)
        fsync_folder(target.parent)
        fsync_folder(self.path(relative_path).parent)
        return target

    def incoming_files(self) -> list[Path]:
        """The received files under ``.incoming`` (all of it, or only this process's own folder)."""
        return sorted(self.incoming.glob("rx-*.part") if self._own_incoming else self.incoming.rglob("rx-*.part"))

    def clean_incoming(self) -> int:
        """Remove temporary files a crash left under ``.incoming`` (all of it, or only this process's own folder);
        returns how many were removed."""
        removed = 0
        for stray in (self.incoming.glob("rx-*.part") if self._own_incoming else self.incoming.rglob("rx-*.part")):
            stray.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.warning("removed %d incomplete file(s) left in %s by an interrupted write", removed, INCOMING)
        return removed


# ---------------------------------------------------------------------------------------------------------
# results: where a job writes its SR and companions, and its summary beside them

RESULTS_DIRNAME = "results"


def result_dir(spool_dir: Path, study_instance_uid: str, job_id: int) -> Path:
    """Where a job's SR and companions are written: ``<spool>/results/<hashed study uid>/job-<id>``."""
    return spool_dir / RESULTS_DIRNAME / uid_key(study_instance_uid) / f"job-{job_id}"


def result_json_path(out_dir: Path) -> Path:
    """Where a job's result summary is kept: beside its result folder (``.../job-<id>.json``), so the folder
    itself holds only the DICOM objects that are delivered."""
    return out_dir.parent / f"{out_dir.name}.json"
