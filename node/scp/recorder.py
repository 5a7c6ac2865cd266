"""The listener's group commit: new instances are acknowledged once durable in the spool, and their ledger rows
are committed in small batches by one writer thread per listener process.

The C-STORE handler (:mod:`node.scp.handlers`) checks the dataset, finds its SOP Instance UID unknown (a read,
no write lock), hard-links the fsynced file into place (its ``.incoming/`` name stays: durable since the file's
fsync), hands an :class:`SpooledInstance` and that name to :meth:`IntakeRecorder.submit` and answers Success: one
fsync per instance. For each batch the writer thread fsyncs the batch's folders (once per folder, not per
instance), commits the rows and then removes the ``.incoming/`` names; a crash before the folders' fsync leaves the
``.incoming/`` name, which the next start puts into place (:func:`node.scp.reconcile.recover_incoming`). The writer
thread commits what was handed over at most
``max_delay_s`` (100 ms) later (or as soon as ``max_batch`` are waiting, or at once when someone calls :meth:`flush`) in
**one** transaction, with each instance's ``stored`` audit event. A ledger that refuses the batch is retried
(1, 2, 4 ... s); while it does, :attr:`IntakeRecorder.failing` makes the handler refuse new instances (nothing
more is acknowledged that the ledger cannot take). A crash (even SIGKILL) between Success and the commit loses
nothing: the file is durable, and :func:`recover_spooled` (called by :func:`node.scp.reconcile.reconcile_spool`
at the next start) records every spooled file the ledger lacks.

:meth:`IntakeRecorder.flush` returns once everything submitted before the call is committed: the association's
release / abort handlers call it (so completeness is judged on a ledger that has every acknowledged instance),
and so does the listener's ``stop()``.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from pydicom.uid import UID

from node.errors import CorruptInstanceError, NodeError
from node.ledger.intake import InstanceConflictError
from node.ledger.records import SpooledInstance
from node.ledger.repository import Repository
from node.scp.header import Limits, read_header
from node.spool import Spool, fsync_folder

logger = logging.getLogger(__name__)

MAX_BATCH = 128
MAX_DELAY_S = 0.1  # a wider window: bigger batches, less ledger CPU per instance (rows are flushed at release)
RETRY_MAX_S = 8.0


class IntakeRecorder:
    """One writer thread committing :class:`SpooledInstance` rows in batches; see the module docstring."""

    def __init__(self, repository: Repository, spool: Spool, *, max_batch: int = MAX_BATCH,
                 max_delay_s: float = MAX_DELAY_S) -> None:
        self._repository = repository
        self._spool = spool
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._cond = threading.Condition()
        # (item, its number: the count submitted before it, its .incoming/ name to remove once committed or None)
        self._queue: list[tuple[SpooledInstance, int, Path | None]] = []
        self._inflight: dict[str, int] = {}  # SOP Instance UID -> the number of its latest copy not yet written
        self._submitted = 0
        self._written = 0  # submitted items the writer is done with (committed, or given up at close)
        self._flush_wanted = 0  # a flush waits for this many
        self._closing = False
        self._failures = 0
        self.failing = False  # the last commit failed: the handler refuses new instances until one succeeds
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def submit(self, item: SpooledInstance, spill: Path | None = None) -> None:
        """Queue the rows of an instance already durable in the spool: at ``item.path`` (its folder fsynced), or,
        with ``spill``, under that ``.incoming/`` name and linked at ``item.path``; the writer fsyncs the folder
        before the commit and removes ``spill`` after it."""
        with self._cond:
            if self._closing:
                raise RuntimeError("the ledger writer is closed")
            self._queue.append((item, self._submitted, spill))
            self._inflight[item.header.sop_instance_uid] = self._submitted
            self._submitted += 1
            # the writer waits for a first item, then for a full batch or its window's end: only those wake it
            # (a wake-up per instance cost a thread switch and the GIL each time)
            if len(self._queue) == 1 or len(self._queue) >= self._max_batch:
                self._cond.notify_all()

    def settle(self, sop_instance_uid: str, timeout_s: float = 30.0) -> None:
        """Wait until an instance of this UID submitted earlier (not yet committed) is in the ledger, so a resend
        right after the first copy is judged against the recorded row."""
        with self._cond:
            number = self._inflight.get(sop_instance_uid)
        if number is None:
            return
        self._request_flush()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._written <= number and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.5))

    def _request_flush(self) -> int:
        with self._cond:
            self._flush_wanted = max(self._flush_wanted, self._submitted)
            self._cond.notify_all()
            return self._submitted

    def flush(self, timeout_s: float | None = None) -> bool:
        """Commit at once everything submitted so far; ``True`` once it is in the ledger, ``False`` on timeout or
        as soon as the ledger refuses the commit (the writer goes on retrying; nobody waits for a broken ledger)."""
        target = self._request_flush()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            failures = self._failures
            while self._written < target:
                if self._failures > failures:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if not self._thread.is_alive():
                    return False
                self._cond.wait(0.5 if left is None else min(left, 0.5))
        return True

    @property
    def pending(self) -> int:
        """Instances acknowledged whose rows are not committed yet."""
        with self._cond:
            return self._submitted - self._written

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued (up to ``timeout_s``), then stop the writer. Rows it could not commit are
        recorded by the start-up reconciliation (their files are durable)."""
        self.flush(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _next_batch(self) -> list[tuple[SpooledInstance, int, Path | None]] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self._max_delay_s
            while (len(self._queue) < self._max_batch and self._flush_wanted <= self._written
                   and not self._closing):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self._queue[:self._max_batch]
            del self._queue[:self._max_batch]
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            linked = [(item, spill) for item, _number, spill in batch if spill is not None]
            synced = self._sync_folders(item for item, _spill in linked)
            if not self._commit([item for item, _number, _spill in batch]):
                logger.error("%d acknowledged instance(s) not in the ledger at stop; the next start records them "
                             "from the spool", len(batch))
            elif synced:  # the files' names in their folders are durable and recorded: the .incoming/ ones can go
                for _item, spill in linked:
                    try:
                        spill.unlink()
                    except FileNotFoundError:
                        pass
                    except OSError as exc:  # left for the next start, which removes it (its file is in place)
                        logger.warning("cannot remove a received file's .incoming name: %s", exc.strerror)
            with self._cond:
                for item, number, _spill in batch:
                    if self._inflight.get(item.header.sop_instance_uid) == number:
                        del self._inflight[item.header.sop_instance_uid]
                self._written += len(batch)
                self._cond.notify_all()

    def _sync_folders(self, items: Iterable[SpooledInstance]) -> bool:
        """fsync each folder the batch's linked files were put in, once; ``False`` if one failed (their
        ``.incoming/`` names then stay until the next start, which finds the files in place and removes them)."""
        folders = {self._spool.path(item.path).parent for item in items}
        ok = True
        for folder in folders:
            try:
                fsync_folder(folder)
            except OSError as exc:
                logger.error("cannot fsync a spool folder (%s): its files keep their .incoming names until the next "
                             "start", exc.strerror)
                ok = False
        return ok

    def _commit(self, batch: list[SpooledInstance]) -> bool:
        """Commit ``batch``, retrying until it is in the ledger (``True``) or the recorder closes (``False``)."""
        delay = 0.5
        while True:
            try:
                try:
                    raced = [item for item, _known in self._repository.record_spooled(batch)]
                except InstanceConflictError:  # a series of another study: settle them one by one
                    raced = batch
                for item in raced:
                    self._resolve(item)
                self.failing = False
                return True
            except Exception as exc:  # noqa: BLE001 - any failure: the files are durable, retry; never drop them
                self.failing = True
                with self._cond:
                    self._failures += 1
                    self._cond.notify_all()
                logger.error("the ledger cannot record %d acknowledged instance(s) (%s); retrying in %g s",
                             len(batch), exc.__class__.__name__, delay)
                with self._cond:
                    if self._closing:
                        return False
                    self._cond.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _resolve(self, item: SpooledInstance) -> None:
        if self._repository.resolve_spooled(item, self._disk_sha256):
            return
        try:
            self._spool.quarantine(item.path)
        except OSError as exc:
            logger.error("cannot move an acknowledged copy the ledger does not list to .orphans: %s", exc.strerror)

    def _disk_sha256(self, relative: str) -> str | None:
        return file_sha256(self._spool, relative)


def file_sha256(spool: Spool, relative: str) -> str | None:
    """The SHA-256 of a spooled file, ``None`` if it cannot be read."""
    try:
        return _digest(spool.path(relative))[1]
    except OSError:
        return None


def _digest(path: Path) -> tuple[int, str]:
    """(size, SHA-256) of the file at ``path``, read in chunks: an instance may be up to ``max_instance_bytes``
    (1 GiB by default), and the start-up may recover many."""
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
        return handle.tell(), digest.hexdigest()


def _file_meta(path: Path) -> tuple[int, str, str, str]:
    """(dataset offset, transfer syntax, SOP class, SOP instance) from the file meta the listener wrote."""
    with path.open("rb") as handle:
        head = handle.read(144)
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
            raise CorruptInstanceError("no Part-10 file meta")
        (group_length,) = struct.unpack("<I", head[140:144])
        meta = handle.read(group_length)
    values: dict[int, str] = {}
    position = 0
    while position + 8 <= len(meta):
        group, element = struct.unpack_from("<HH", meta, position)
        vr = meta[position + 4:position + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            (length,) = struct.unpack_from("<I", meta, position + 8)
            start = position + 12
        else:
            (length,) = struct.unpack_from("<H", meta, position + 6)
            start = position + 8
        values[(group << 16) | element] = meta[start:start + length].decode("ascii", "replace").strip("\x00 ")
        position = start + length
    try:
        return 144 + group_length, values[0x00020010], values[0x00020002], values[0x00020003]
    except KeyError as exc:
        raise CorruptInstanceError("incomplete file meta") from exc


def check_received_file(spool: Spool, path: Path, limits: Limits) -> SpooledInstance:
    """The ledger rows of a file the listener wrote (in place, or under ``.incoming/``) as if it had just been
    received: its file meta and whole dataset checked again; ``path`` of the result is where its UIDs place it.
    Raises :class:`CorruptInstanceError` / ``OSError`` for a file that cannot be a whole instance the listener
    received (an interrupted write, a corrupt file)."""
    offset, syntax, sop_class, sop_instance = _file_meta(path)
    try:
        header = read_header(path, offset, str(UID(syntax)), sop_class, sop_instance, limits)
        relative = spool.relative_path(header.study_instance_uid, header.series_instance_uid,
                                       header.sop_instance_uid)
    except NodeError as exc:
        raise CorruptInstanceError(exc.message) from exc
    size, sha256 = _digest(path)
    return SpooledInstance(header, relative, size, sha256, calling_ae_title="", peer=None, at=path.stat().st_mtime)


def recover_spooled(spool: Spool, relative: str, limits: Limits) -> SpooledInstance:
    """The ledger rows of a spooled file the ledger lacks (acknowledged, then the process died before the group
    commit): its file meta and dataset checked again, its place in the spool matching its UIDs. Raises
    :class:`CorruptInstanceError` / ``OSError`` for a file that cannot be one the listener placed."""
    item = check_received_file(spool, spool.path(relative), limits)
    if item.path != relative:
        raise CorruptInstanceError(f"its UIDs belong at {item.path}")
    return item
