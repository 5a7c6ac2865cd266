"""The listener's transport: a deadline on every new socket (TLS too), connection limits per peer and in all,
bounded reads, and the dataset of every message received into the spool.

pynetdicom's ``AssociationServer`` does the TLS handshake in its accept thread on a socket without a timeout (one
silent client blocks every later connection), counts connections that never sent an A-ASSOCIATE-RQ towards
``maximum_associations`` (idle sockets lock a PACS out), reads a PDU of any declared length into memory, and
keeps each dataset in memory. :class:`NodeServer` and :class:`NodeRequestHandler` change that:

* **Pending connections.** Each accepted socket gets its own thread, which does the TLS handshake and waits for
  the first bytes of the A-ASSOCIATE-RQ, both within ``handshake_timeout_s``; only then is a pynetdicom
  association created. At most ``max_associations_per_peer`` such connections per IP address and
  2 x ``max_associations`` in all are kept: when a new one arrives beyond that, the **oldest** pending one is
  closed, so idle sockets never keep a sender out. Closures are audited (``connection-closed``, with the reason,
  at most one row per address per 10 s) from a background thread, never from the accept loop.
* **Associations.** :class:`LimitedACSE` rejects an A-ASSOCIATE-RQ (A-ASSOCIATE-RJ) for an unknown calling or
  called AE title, ``max_associations`` open associations, or ``max_associations_per_peer`` from the same
  address, and notes the reason for the ``association-rejected`` audit row.
* **Reads.** :class:`BoundedSocket` closes the connection on a PDU longer than the limit (max(``max_pdu``, 1 MiB)
  once associated; 1 MiB for the A-ASSOCIATE-RQ), requires the whole A-ASSOCIATE-RQ within the handshake
  deadline, and afterwards a byte at least every ``NETWORK_TIMEOUT_S``.
* **Datasets** go to the spool as they arrive (:class:`node.scp.receive.BoundedDIMSE`).
* **The DUL loop** waits for the peer's data or for something to send (:mod:`node.scp.wake`), not polling.

Size: one module for pynetdicom's transport classes the node replaces (socket, ACSE, request handler, server),
each a few lines over pynetdicom's own; splitting them apart would scatter one policy over several files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import select
import socket
import ssl
import struct
import threading
import time
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import AE, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.ledger.repository import Repository
from node.scp.balance import LoadTable, SharedPort, shared_socket, take_turn
from node.scp.handlers import audit_quietly
from node.scp.lane import LaneDUL
from node.scp.reactor import WakingAssociation
from node.scp.receive import BoundedDIMSE, ReceiveLimits, quiet_message_dumps
from node.scp.wake import Wakeup, WakingQueue

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

FIRST_PDU_LIMIT = 1 << 20  # bytes: the A-ASSOCIATE-RQ (before a maximum PDU length is agreed)
MIN_PDU_LIMIT = 1 << 20  # bytes: tolerated for P-DATA even when max_pdu is smaller
AUDIT_WINDOW_S = 10.0
_READ_CHUNK = 1 << 16
_PDU_LENGTH = struct.Struct(">L")
IDLE_WAIT_S = 0.02  # the DUL loop's longest wait for data (woken at once when there is something to send)


@dataclass(frozen=True)
class ConnectionPolicy:
    """The limits :class:`NodeServer` applies (from :class:`node.config.Settings`)."""

    handshake_timeout_s: float
    network_timeout_s: float
    max_associations_per_peer: int
    max_pending: int  # connections not yet associated, in all
    max_pdu_bytes: int  # longest P-DATA PDU read once associated
    receive: ReceiveLimits


class ConnectionAudit:
    """Audit rows for what the transport refuses on its own (connections closed before they associated, invalid
    C-STORE requests), written by a background thread.

    At most one row per peer address per :data:`AUDIT_WINDOW_S` (the next one counts those left out), and at
    most 1000 waiting: a flood of connections never floods the ledger or blocks the accept loop.
    """

    def __init__(self, repository: Repository, clock: Callable[[], float]) -> None:
        self._repository = repository
        self._clock = clock
        self._queue: queue.Queue[tuple[str, str, str, float] | None] = queue.Queue(maxsize=1000)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="ainode-connection-audit", daemon=True)
        self._thread.start()

    def record(self, event: str, address: str, peer: str, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(address, -math.inf) < AUDIT_WINDOW_S:
                self._left_out[address] = self._left_out.get(address, 0) + 1
                return
            if len(self._last) > 10_000:  # forget addresses quiet for a window
                self._last = {a: t for a, t in self._last.items() if now - t < AUDIT_WINDOW_S}
            self._last[address] = now
            left_out = self._left_out.pop(address, 0)
        if left_out:
            detail += f" ({left_out} more from this address in the previous {AUDIT_WINDOW_S:g} s not audited)"
        logger.warning("%s, %s: %s", event, peer, detail)
        try:
            self._queue.put_nowait((event, peer, detail, self._clock()))
        except queue.Full:
            logger.warning("audit queue full: connection-closed event from %s not recorded", peer)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            event, peer, detail, at = item
            audit_quietly(self._repository, event, at, peer=peer, detail=detail)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


@dataclass(eq=False)
class Pending:
    """An accepted connection that has not sent its A-ASSOCIATE-RQ yet."""

    address: str
    sock: socket.socket
    closed_because: str | None = None


@dataclass
class PendingConnections:
    """The pending connections, oldest first; adding one beyond a limit closes the oldest that limit counts."""

    per_peer: int
    total: int
    _entries: list[Pending] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, address: str, sock: socket.socket) -> Pending:
        entry = Pending(address, sock)
        with self._lock:
            same = [p for p in self._entries if p.address == address]
            victims: list[Pending] = []
            if len(same) >= self.per_peer:
                victims.append(same[0])
                same[0].closed_because = (
                    f"{address} opened more than max_associations_per_peer ({self.per_peer}) connections that have "
                    "not sent an A-ASSOCIATE-RQ; the oldest is closed"
                )
            elif len(self._entries) >= self.total:
                victims.append(self._entries[0])
                self._entries[0].closed_because = (
                    f"more than {self.total} connections (2 x max_associations) have not sent an A-ASSOCIATE-RQ; "
                    "the oldest is closed"
                )
            for victim in victims:
                self._entries.remove(victim)
            self._entries.append(entry)
        for victim in victims:
            _wake(victim.sock)
        return entry

    def remove(self, entry: Pending) -> None:
        with self._lock:
            if entry in self._entries:
                self._entries.remove(entry)

    def close_all(self, reason: str) -> None:
        with self._lock:
            entries, self._entries = self._entries, []
        for entry in entries:
            entry.closed_because = reason
            _wake(entry.sock)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _wake(sock: socket.socket) -> None:
    """Shut a socket down so the thread blocked on it returns (closing alone does not wake it on Linux)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class NodeAE(AE):
    """pynetdicom's AE whose ``active_associations`` leave out those already released, aborted or rejected whose
    threads are still winding down, so pynetdicom's own ``maximum_associations`` check counts what
    :class:`LimitedACSE` counts."""

    @property
    def active_associations(self) -> list[Association]:
        return [a for a in super().active_associations if not (a.is_released or a.is_aborted or a.is_rejected)]


class BoundedSocket(AssociationSocket):
    """pynetdicom's socket wrapper with a length limit and a deadline on every PDU it reads."""

    waits_for_data = True  # ready() waits for data (node.scp.lane.LaneDUL's loop need not sleep between turns)

    def __init__(self, assoc: Association, client_socket: socket.socket, policy: ConnectionPolicy,
                 deadline: float) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._policy = policy
        self._deadline = deadline  # monotonic time by which the A-ASSOCIATE-RQ must be complete
        self.violation: str | None = None
        # bytes received but not yet asked for (read ahead on an established association, or put back by
        # node.scp.lane), from _at on: recv() serves them first, ready() reports them
        self._buffered = bytearray()
        self._at = 0
        self._chunk = bytearray(_READ_CHUNK)
        self._timeout: float | None = None  # the socket timeout last set (setting it costs two fcntl calls)
        self._wakeup = Wakeup()
        assoc.dul.to_provider_queue = WakingQueue(self._wakeup)

    @property
    def ready(self) -> bool:
        """Data to read? Waits up to IDLE_WAIT_S (nothing to send): the DUL loop wakes when a PDU arrives."""
        sock = self.socket
        if sock is None or not self._is_connected:
            return False
        if self._at < len(self._buffered):  # read ahead already
            return True
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # TLS-buffered data select() cannot see
            return True
        try:
            ready, _, _ = select.select([sock, self._wakeup.reader], [], [],
                                        IDLE_WAIT_S if self.assoc.dul.to_provider_queue.empty() else 0)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # the transport connection closed
            return False
        if self._wakeup.reader in ready:
            self._wakeup.drain()
        return sock in ready

    def close(self) -> None:
        super().close()
        self._wakeup.close()

    def unread(self, data: bytes) -> None:
        """Put ``data`` (just read) back: the next :meth:`recv` returns it first."""
        self._buffered[:self._at] = data
        self._at = 0

    def buffered_pdu(self, pdu_type: int) -> bytearray | None:
        """The body of the next PDU if it is of ``pdu_type`` and already read ahead whole (no system call, one
        copy), else ``None`` with nothing taken (:meth:`recv` then reads it, with its limit and deadline)."""
        buffered, at = self._buffered, self._at
        if len(buffered) - at < 6 or buffered[at] != pdu_type:
            return None
        length = _PDU_LENGTH.unpack_from(buffered, at + 2)[0]
        end = at + 6 + length
        if end > len(buffered) or length > self._policy.max_pdu_bytes:
            return None
        body = buffered[at + 6:end]
        if end == len(buffered):
            buffered.clear()
            self._at = 0
        else:
            self._at = end
        return body

    def _take(self, nr_bytes: int) -> bytearray:
        """Up to ``nr_bytes`` of the bytes read ahead."""
        end = self._at + nr_bytes
        data = self._buffered[self._at:end]
        if end >= len(self._buffered):
            self._buffered.clear()
            self._at = 0
        else:
            self._at = end
        return data

    def _settimeout(self, sock: socket.socket, timeout: float) -> None:
        if timeout != self._timeout:
            sock.settimeout(timeout)
            self._timeout = timeout

    def recv(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` bytes (fewer only if the peer closed the connection). On an established association a
        read takes whatever has arrived, up to 64 KiB, and keeps what was not asked for: the PDUs of a data set
        come in a few system calls instead of two per PDU."""
        data = self._take(nr_bytes) if self._at < len(self._buffered) else bytearray()
        if len(data) == nr_bytes:
            return data
        established = self.assoc.is_established
        limit = self._policy.max_pdu_bytes if established else FIRST_PDU_LIMIT
        if nr_bytes > limit + 6:
            self.violation = f"the peer sent a PDU of {nr_bytes} bytes, more than the {limit} accepted"
            raise OSError(self.violation)
        sock = cast(socket.socket, self.socket)
        chunk = self._chunk
        view = memoryview(chunk)
        while len(data) < nr_bytes:
            wanted = nr_bytes - len(data)
            if established:
                self._settimeout(sock, self._policy.network_timeout_s)
                size = _READ_CHUNK
            else:  # the A-ASSOCIATE-RQ: no more than asked for, within the handshake deadline
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self.violation = (f"no complete A-ASSOCIATE-RQ within handshake_timeout_s "
                                      f"({self._policy.handshake_timeout_s:g} s)")
                    raise TimeoutError(self.violation)
                self._settimeout(sock, left)
                size = min(wanted, _READ_CHUNK)
            try:
                received = sock.recv_into(chunk, size)
            except TimeoutError:
                self.violation = self.violation or "the peer stopped sending in the middle of a PDU"
                raise
            if not received:
                break
            if received > wanted:
                data += view[:wanted]
                self._buffered += view[wanted:received]
            else:
                data += view[:received]
        return data


class LimitedACSE(ACSE):
    """pynetdicom's ACSE with the node's association checks first, each rejection's reason kept for the audit."""

    def __init__(self, assoc: Association, policy: ConnectionPolicy) -> None:
        super().__init__(assoc)
        self._policy = policy
        self.rejection_reason: str | None = None

    def is_release_requested(self) -> bool:
        """An A-RELEASE-RQ? The server's ``before_release`` (the group commit's flush) runs before the answer."""
        requested = super().is_release_requested()
        if requested and (before := getattr(self.assoc._server, "before_release", None)) is not None:
            before()
        return requested

    def _negotiate_as_acceptor(self) -> None:
        refusal = self._refusal()
        if refusal is None:
            super()._negotiate_as_acceptor()
            return
        self.rejection_reason, (result, source, diagnostic) = refusal
        self.requestor.ae_title = cast(A_ASSOCIATE, self.requestor.primitive).calling_ae_title
        self.assoc.is_rejected = True
        self.send_reject(result, source, diagnostic)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()

    def _refusal(self) -> tuple[str, tuple[int, int, int]] | None:
        request = cast(A_ASSOCIATE, self.requestor.primitive)
        ae = self.assoc.ae
        calling, called = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
        if ae.require_calling_aet and calling not in [t.strip() for t in ae.require_calling_aet]:
            return f"calling AE title {calling!r} is not in accepted_calling_aets", (0x01, 0x01, 0x03)
        if ae.require_called_aet and called != str(self.acceptor.ae_title).strip():
            return f"called AE title {called!r} is not this node's ({self.acceptor.ae_title})", (0x01, 0x01, 0x07)
        server = self.assoc._server
        others = [a for a in self.assoc.ae.active_associations  # NodeAE: threads winding down do not count
                  if a is not self.assoc and a.is_acceptor and a._server is server]
        if len(others) >= ae.maximum_associations:
            return f"max_associations ({ae.maximum_associations}) associations are open", (0x02, 0x03, 0x02)
        address = self.requestor.address
        same = sum(1 for a in others if a.requestor.address == address)
        if same >= self._policy.max_associations_per_peer:
            return (f"{address} already has max_associations_per_peer ({self._policy.max_associations_per_peer}) "
                    "associations open", (0x02, 0x03, 0x02))
        return None


class NodeRequestHandler(RequestHandler):
    """One accepted connection: handshake and first bytes within the deadline, then a bounded association."""

    _deadline = 0.0

    def handle(self) -> None:
        server = cast(NodeServer, self.server)
        address = str(self.client_address[0])
        peer = f"{address}:{self.client_address[1]}"
        raw = cast(socket.socket, self.request)
        deadline = time.monotonic() + server.policy.handshake_timeout_s
        entry = server.pending.add(address, raw)
        try:
            ready, reason = self._handshake(server, entry, deadline)
        finally:
            server.pending.remove(entry)
        if ready is None:
            reason = entry.closed_because or reason
            if reason:
                server.connection_audit.record("connection-closed", address, peer, reason)
            _close(entry.sock)
            return
        self.request = ready
        self._deadline = deadline
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()  # this thread waits, so the spill file of a message cut off mid-way is removed
        cast(BoundedDIMSE, assoc.dimse).discard_partial()
        if isinstance(assoc.dul, LaneDUL) and assoc.dul.lane is not None:
            assoc.dul.lane.close()

    @staticmethod
    def _handshake(server: NodeServer, entry: Pending, deadline: float) -> tuple[socket.socket | None, str]:
        """The socket ready for pynetdicom (TLS done, data waiting), or ``None`` and why not."""
        timeout = server.policy.handshake_timeout_s
        sock = entry.sock
        try:
            sock.settimeout(timeout)
            if server.tls is not None:
                sock = entry.sock = server.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                sock.do_handshake()
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0):
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                if not poller.poll(max(deadline - time.monotonic(), 0) * 1000):
                    return None, f"no A-ASSOCIATE-RQ within handshake_timeout_s ({timeout:g} s)"
                if not isinstance(sock, ssl.SSLSocket) and not sock.recv(1, socket.MSG_PEEK):
                    return None, ""  # the peer closed it: nothing to audit
        except TimeoutError:
            return None, f"TLS handshake not done within handshake_timeout_s ({timeout:g} s)"
        except (ssl.SSLError, OSError) as exc:
            return None, f"TLS handshake failed: {exc.__class__.__name__}" if server.tls else ""
        if entry.closed_because:
            return None, ""
        sock.settimeout(server.policy.network_timeout_s)
        return sock, ""

    def _create_association(self) -> Association:
        """pynetdicom's ``RequestHandler._create_association`` with the node's ACSE, DIMSE and socket."""
        server = cast(NodeServer, self.server)
        assoc = WakingAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.acse = LimitedACSE(assoc, server.policy)
        address, peer = str(self.client_address[0]), f"{self.client_address[0]}:{self.client_address[1]}"
        assoc.dimse = BoundedDIMSE(assoc, server.policy.receive,
                                   lambda why: server.connection_audit.record("store-rejected", address, peer, why))
        assoc.install_queues()
        assoc.set_socket(BoundedSocket(assoc, cast(socket.socket, self.request), server.policy, self._deadline))
        assoc.dul._run_loop_delay = 0  # the loop waits for data in BoundedSocket.ready instead of sleeping
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(server.contexts)
        assoc.requestor.address_info = self.remote
        for event, bound in server._handlers.items():
            if event.is_intervention and bound:
                assoc.bind(event, *bound)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list[tuple[Any, Any]], bound):
                    assoc.bind(event, handler, args)
        quiet_message_dumps(assoc)
        return assoc


def _close(sock: socket.socket) -> None:
    _wake(sock)
    with contextlib.suppress(OSError):
        sock.close()


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server without TLS in the accept loop; see the module docstring."""

    daemon_threads = True
    block_on_close = False  # stop() ends associations itself; it never waits on a silent peer

    def __init__(self, *args: Any, policy: ConnectionPolicy, tls: ssl.SSLContext | None,
                 connection_audit: ConnectionAudit, shared: SharedPort | None = None, **kwargs: Any) -> None:
        self.shared = shared
        self.load: LoadTable | None = None
        self.policy = policy
        self.tls = tls
        self.connection_audit = connection_audit
        self.pending = PendingConnections(policy.max_associations_per_peer, policy.max_pending)
        self.before_release: Callable[[], object] | None = None  # run before an A-RELEASE-RP is sent
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """Bind the port, or (a pool process) take the listening socket slot 0 bound; see :mod:`node.scp.balance`."""
        shared = self.shared
        if shared is None:
            super().server_bind()
            return
        if shared.fd is None:  # slot 0: it opens the socket and the load table
            super().server_bind()
            self.load = LoadTable(shared.table, shared.slots, shared.slot, create=True)
        else:
            cast(socket.socket, self.socket).close()
            self.socket = shared_socket(shared.fd)
            self.server_address = self.socket.getsockname()
            self.load = LoadTable(shared.table, shared.slots, shared.slot)
        cast(socket.socket, self.socket).setblocking(False)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock = cast(socket.socket, self.socket)
        if self.load is None:
            return sock.accept()
        if not take_turn(self.load, sock):
            raise BlockingIOError("a less busy listener process took the connection")
        conn, address = sock.accept()  # BlockingIOError when a sibling was quicker: the accept loop goes on
        conn.setblocking(True)
        self.load.opened()
        return conn, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:  # NodeRequestHandler returns when the connection's association has ended
            if self.load is not None:
                self.load.closed()

    def server_close(self) -> None:
        """Close the listening socket; a shared one only here (``shutdown`` would stop every process's accepts)."""
        if self.shared is None:
            super().server_close()
            return
        cast(socket.socket, self.socket).close()
        if self.load is not None:
            self.load.close()
            self.load = None

    def shutdown(self) -> None:
        """Stop accepting, close pending connections and abort the open associations."""
        super().shutdown()
        self.pending.close_all("the listener is stopping")
        for assoc in self.active_associations:
            assoc.abort()
        self.connection_audit.close()
