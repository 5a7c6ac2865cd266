"""Waking the DUL loop when there is something to send, so it can wait for the peer's data without polling.

pynetdicom's DUL thread loops: send what the association queued (``to_provider_queue``), else read a PDU if the
socket has data. Waiting on the socket alone would delay every response until the peer sends again, so it used
to wait at most 1 ms at a time: ~13 wake-ups per instance, each taking the GIL from the thread that checks and
stores the instance. :class:`Wakeup` is a socket pair whose read end the loop waits on with the peer's socket;
:class:`WakingQueue` (installed as ``to_provider_queue``) writes a byte to it on every ``put``.
"""

from __future__ import annotations

import contextlib
import queue
import socket
from typing import Any


class Wakeup:
    """A socket pair: :meth:`wake` makes :attr:`reader` readable until :meth:`drain`. Socket objects, not raw file
    descriptors: once closed, a late :meth:`wake` fails quietly instead of writing to a reused descriptor."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self._writer.close()
        self.reader.close()


class WakingQueue(queue.Queue[Any]):
    """A ``queue.Queue`` that wakes ``wakeup`` whenever an item is put."""

    def __init__(self, wakeup: Wakeup) -> None:
        super().__init__()
        self._wakeup = wakeup

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wakeup.wake()
