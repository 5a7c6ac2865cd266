"""The association's reactor woken by what it waits for, instead of polling every millisecond.

pynetdicom's acceptor reactor (``Association._run_reactor``) sleeps 1 ms, looks for a complete DIMSE message,
a release request, an abort, a dead DUL thread or an expired network timeout, and sleeps again. Each received
instance therefore waited up to a millisecond (on a loaded machine several) before its C-STORE handler ran, on
the one path a sender waits on between two instances, and every open association woke its thread 1000 times a
second, taking the GIL from the threads that receive and store.

:class:`WakingAssociation` runs the same checks in the same order, but waits on an event that is set whenever
something arrives for it: a DIMSE message (``dimse.msg_queue``), an ACSE primitive from the DUL (A-RELEASE,
A-ABORT, A-P-ABORT: ``dul.to_user_queue``) or :meth:`kill`. The network timeout is checked at least every
:data:`REACTOR_WAIT_S`. After serving a message it looks again at once (several may be waiting).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association

from node.scp.lane import LaneDUL

logger = logging.getLogger(__name__)

REACTOR_WAIT_S = 0.05  # the longest the reactor sleeps without being woken (network timeout granularity)


class SignallingQueue(queue.Queue[Any]):
    """A ``queue.Queue`` that sets ``event`` whenever an item is put."""

    def __init__(self, event: threading.Event) -> None:
        super().__init__()
        self._event = event

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._event.set()


class WakingAssociation(Association):
    """pynetdicom's acceptor :class:`Association` whose reactor waits for an event instead of polling; see the module
    docstring. :meth:`install_queues` must run once the association's DUL and DIMSE providers are in place."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._activity = threading.Event()
        self.dul = LaneDUL(self)  # C-STORE requests in the DUL thread (node.scp.lane)
        self.acse_timeout = self.ae.acse_timeout  # the setters reach the new DUL's timers
        self.network_timeout = self.ae.network_timeout

    def install_queues(self) -> None:
        """Replace the (still empty) queues the reactor reads with ones that wake it."""
        self.dimse.msg_queue = SignallingQueue(self._activity)
        self.dul.to_user_queue = SignallingQueue(self._activity)

    def kill(self) -> None:
        self._kill = True
        self._activity.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom's ``Association._run_reactor`` (3.0), each sleep replaced by a wait for :attr:`_activity`."""
        self._is_paused = False
        served = False
        while not self._kill:
            if not served:
                self._activity.wait(REACTOR_WAIT_S)
                self._activity.clear()  # whatever arrives from now on sets it again; the checks below see the rest

            # the reactor may be paused while the acceptor itself sends DIMSE messages (pynetdicom's checkpoint)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            served = bool(msg)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                logger.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                logger.info("Association Aborted%s", " (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else "")
                self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                logger.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return
