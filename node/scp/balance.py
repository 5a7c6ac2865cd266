"""The DICOM port shared by ``ainode serve``'s listener processes, and new associations spread by load.

With ``listener_processes`` > 1 the ``serve`` process (slot 0) opens the listening socket and its pool processes
(slots 1..n-1, :mod:`node.scp.pool`) inherit it: one accept queue, whichever process accepts first takes the
connection. The kernel alone would give it to any of them (with ``SO_REUSEPORT``, the node's earlier design, to one
chosen by a hash of the addresses: of four parallel associations two or three often landed in one process and
shared its GIL while another process idled). So each process publishes how many connections it holds in a small
shared table (``<spool>/.run/listener-load``, one 32-bit count per slot, memory-mapped by all) and, when a
connection is waiting, a process that holds more than some sibling lets that sibling take it: it waits up to
:data:`YIELD_S` for the connection to be gone from the queue, then accepts it itself (a sibling that is stopped,
stuck or being restarted never keeps a connection waiting longer than that). Equal loads race, as before.

The socket is non-blocking in every process (the processes share its file description): a process that loses
the race gets ``BlockingIOError`` from ``accept`` and goes back to waiting. A slot whose process exited is marked
:data:`GONE` by the pool until its restart clears it.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: how long a busier process leaves a waiting connection to a less busy sibling
YIELD_S = 0.05
#: how often it looks whether the connection is still waiting meanwhile
POLL_S = 0.002
#: the count of a slot whose process is not running
GONE = 2**31 - 1
_WIDTH = 4


@dataclass(frozen=True)
class SharedPort:
    """How one listener process shares the port: its ``slot`` of ``slots`` in the load ``table``, and the listening
    socket's file descriptor inherited from slot 0 (``None`` in slot 0, which opens it)."""

    table: Path
    slot: int
    slots: int
    fd: int | None = None


class LoadTable:
    """The connection counts of every slot, in a file all listener processes map; each writes only its own slot."""

    def __init__(self, path: Path, slots: int, slot: int, *, create: bool = False) -> None:
        if not 0 <= slot < slots:
            raise ValueError(f"slot {slot} outside 0..{slots - 1}")
        self.path = path
        self.slot = slot
        self.slots = slots
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, slots * _WIDTH)
            elif os.fstat(fd).st_size < slots * _WIDTH:
                raise ValueError(f"{path} holds fewer than {slots} slots")
            self._map = mmap.mmap(fd, slots * _WIDTH)
        finally:
            os.close(fd)
        self._counts = memoryview(self._map).cast("i")
        self._lock = threading.Lock()
        self._own = 0
        self._open = True
        self._counts[slot] = 0

    def opened(self) -> None:
        """This process took a connection."""
        with self._lock:
            self._own += 1
            if self._open:
                self._counts[self.slot] = self._own

    def closed(self) -> None:
        """A connection of this process ended (its association, or the wait for one)."""
        with self._lock:
            self._own = max(self._own - 1, 0)
            if self._open:
                self._counts[self.slot] = self._own

    def counts(self) -> list[int]:
        """Every slot's count (:data:`GONE` for a process not running)."""
        return list(self._counts)

    def busier_than_a_sibling(self) -> bool:
        """Whether some other slot holds fewer connections than this one."""
        own = self._counts[self.slot]
        return any(count < own for slot, count in enumerate(self._counts) if slot != self.slot)

    def mark_gone(self, slot: int) -> None:
        """The process of ``slot`` exited: no connection waits for it (its restart sets its slot again)."""
        with self._lock:
            if self._open:
                self._counts[slot] = GONE

    def close(self) -> None:
        """Unmap the table (a connection ending afterwards, in a thread still winding down, changes nothing)."""
        with self._lock:
            if self._open:
                self._open = False
                self._counts.release()
                self._map.close()


def take_turn(table: LoadTable, sock: socket.socket, *, yield_s: float = YIELD_S) -> bool:
    """Whether this process should accept the connection waiting on ``sock`` now: at once when no sibling holds
    fewer connections; otherwise ``False`` as soon as a sibling has taken it, ``True`` if it is still waiting
    after ``yield_s``."""
    deadline = time.monotonic() + yield_s
    while table.busier_than_a_sibling():
        if time.monotonic() >= deadline:
            return True
        time.sleep(POLL_S)
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
    return True


def shared_socket(fd: int) -> socket.socket:
    """The listening socket inherited from slot 0, non-blocking (see the module docstring)."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock
