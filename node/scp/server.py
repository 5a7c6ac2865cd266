"""Wiring of the DICOM listener: the pynetdicom AE, its contexts and limits, TLS, and the event handlers.

``start_listener(settings, ledger)`` starts a non-blocking server and returns a :class:`ListenerHandle` (use it
in-process, e.g. from ``ainode serve`` or a test); ``main(argv)`` / ``python -m node.scp.server`` runs the
listener alone until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.utils import make_target
from sqlalchemy.exc import SQLAlchemyError

from node import log
from node.config import Settings
from node.errors import ConfigError, NodeError
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.scp import handlers
from node.scp.arrivals import Arrivals, DispatcherFactory, StudyDispatcher
from node.scp.balance import SharedPort
from node.scp.contexts import VERIFICATION, VERIFICATION_TRANSFER_SYNTAXES, storage_contexts
from node.scp.header import Limits
from node.scp.receive import ReceiveLimits
from node.scp.reconcile import reconcile_spool, recover_incoming
from node.scp.recorder import IntakeRecorder
from node.scp.transport import (
    MIN_PDU_LIMIT,
    ConnectionAudit,
    ConnectionPolicy,
    NodeAE,
    NodeRequestHandler,
    NodeServer,
)
from node.spool import Spool

logger = logging.getLogger(__name__)

ACSE_TIMEOUT_S = 30.0
RELEASE_FLUSH_TIMEOUT_S = 30.0  # the A-RELEASE-RP waits at most this long for the group commit
DIMSE_TIMEOUT_S = 120.0  # generous: large enhanced MR objects over slow links
NETWORK_TIMEOUT_S = 120.0


class ListenerHandle:
    """A running listener: its bound port, the spool and repository it writes to, and ``stop()``."""

    def __init__(
        self, ae: AE, server: NodeServer, spool: Spool, repository: Repository, owns_ledger: bool,
        recorder: IntakeRecorder | None = None, dispatcher: StudyDispatcher | None = None,
    ) -> None:
        self.ae = ae
        self.server = server
        self.spool = spool
        self.repository = repository
        self.recorder = recorder
        self.dispatcher = dispatcher  # judges the studies of each association that ends (dispatch on the event)
        self._owns_ledger = owns_ledger
        self._stopped = False

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with ``port = 0``)."""
        return int(self.server.server_address[1])

    @property
    def address(self) -> str:
        return str(self.server.server_address[0])

    def stop(self) -> None:
        """Stop accepting, close pending connections, abort the running associations, and release the ledger if
        this handle opened it.

        Calling it again does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        if self.recorder is not None:
            self.recorder.close()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self._owns_ledger:
            self.repository.ledger.dispose()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Commit every instance acknowledged so far to the ledger (the group commit); ``False`` on timeout."""
        return self.recorder.flush(timeout_s) if self.recorder is not None else True

    def __enter__(self) -> ListenerHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Server-side TLS (1.2+) from the settings; with ``tls_ca`` set, client certificates are required."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH, cafile=str(settings.tls_ca) if settings.tls_ca else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"TLS certificate {settings.tls_cert} / key {settings.tls_key} cannot be loaded: {exc}"
        ) from exc
    context.verify_mode = ssl.CERT_REQUIRED if settings.tls_ca else ssl.CERT_NONE
    return context


def connection_policy(settings: Settings, spool: Spool) -> ConnectionPolicy:
    """The transport limits of ``settings`` (see :mod:`node.scp.transport`)."""
    max_pdu_read = max(settings.max_pdu, MIN_PDU_LIMIT) if settings.max_pdu else settings.max_instance_bytes
    return ConnectionPolicy(
        handshake_timeout_s=settings.handshake_timeout_s,
        network_timeout_s=NETWORK_TIMEOUT_S,
        max_associations_per_peer=settings.max_associations_per_peer,
        max_pending=2 * settings.max_associations,
        max_pdu_bytes=max_pdu_read,
        receive=ReceiveLimits(incoming=spool.incoming, max_instance_bytes=settings.max_instance_bytes,
                              min_free_disk_bytes=settings.min_free_disk_bytes),
    )


def build_ae(settings: Settings) -> AE:
    """The AE with the accepted contexts, limits and association policy of ``settings``."""
    ae = NodeAE(ae_title=settings.ae_title)
    for abstract_syntax, transfer_syntaxes in storage_contexts():
        ae.add_supported_context(abstract_syntax, transfer_syntaxes)
    ae.add_supported_context(VERIFICATION, list(VERIFICATION_TRANSFER_SYNTAXES))
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu
    ae.require_called_aet = True
    ae.require_calling_aet = list(settings.accepted_calling_aets)
    ae.acse_timeout = ACSE_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = NETWORK_TIMEOUT_S
    return ae


def start_listener(
    settings: Settings, ledger: Ledger | None = None, *, clock: Callable[[], float] = time.time,
    dispatcher: DispatcherFactory | None = None, reconcile: bool = True, shared: SharedPort | None = None,
) -> ListenerHandle:
    """Start the C-ECHO / C-STORE SCP in background threads and return its handle.

    ``ledger`` defaults to one opened from ``settings.effective_database_url`` (closed again by ``stop()``);
    ``clock`` gives the receive times recorded in the ledger (tests pass a fake one). With ``dispatcher`` (a factory
    of this listener's dispatcher, e.g. :func:`node.jobs.dispatcher.dispatcher_factory`: the job layer is injected,
    the listener does not import it), the studies of an association that ends are judged ``settle_s`` later and
    dispatched when ready, from this process. With ``shared`` (:mod:`node.scp.balance`) it is one process of
    ``ainode serve``'s listeners on one port: slot 0 opens the port, a pool process (:mod:`node.scp.pool`) takes
    the socket slot 0 opened; each has its own ``.incoming/p<slot>/`` (the only one its start-up clean-up touches)
    for slots above 0. ``reconcile=False`` skips the reconciliation of the spool with the ledger (the pool's first
    start, after the parent's).
    """
    if _config.STORE_RECV_CHUNKED_DATASET:
        raise ConfigError("pynetdicom's STORE_RECV_CHUNKED_DATASET must stay off: the listener receives datasets "
                          "into the spool itself (node.scp.receive)")
    owns_ledger = ledger is None
    if ledger is None:
        ledger = Ledger.open(settings.effective_database_url)
    spool = Spool(settings.spool_dir, None if shared is None or shared.slot == 0 else f"p{shared.slot}")
    limits = Limits(max_inflated_bytes=settings.max_inflated_bytes, max_element_bytes=settings.max_element_bytes)
    repository = Repository(ledger, settings.late_instance_policy)
    recover_incoming(spool, repository, limits)
    if reconcile:
        reconcile_spool(spool, repository, clock(), limits)
    try:
        repository.forget_dead_associations()
    except SQLAlchemyError as exc:
        logger.error("the open associations of stopped listeners could not be cleared: %s", exc.__class__.__name__)
    recorder = IntakeRecorder(repository, spool)
    study_dispatcher = None if dispatcher is None else dispatcher(repository, clock)
    context = handlers.ListenerContext(
        spool=spool,
        repository=repository,
        min_free_disk_bytes=settings.min_free_disk_bytes,
        duplicate_policy=settings.duplicate_policy,
        clock=clock,
        limits=limits,
        arrivals=Arrivals(repository, clock, None if study_dispatcher is None else study_dispatcher.schedule),
        recorder=recorder,
    )
    evt_handlers: list[Any] = [
        (evt.EVT_C_ECHO, handlers.handle_echo, [context]),
        (evt.EVT_C_STORE, handlers.handle_store, [context]),
        (evt.EVT_REJECTED, handlers.handle_rejected, [context]),
        (evt.EVT_ABORTED, handlers.handle_aborted, [context]),
        (evt.EVT_RELEASED, handlers.handle_released, [context]),
        (evt.EVT_CONN_CLOSE, handlers.handle_closed, [context]),
    ]
    ae = build_ae(settings)
    tls = tls_context(settings)
    audit = ConnectionAudit(repository, clock)
    try:
        server = ae.make_server(
            (settings.bind_address, settings.port),
            evt_handlers=evt_handlers,
            server_class=NodeServer,
            request_handler=NodeRequestHandler,
            policy=connection_policy(settings, spool),
            tls=tls,
            connection_audit=audit,
            shared=shared,
        )
        assert isinstance(server, NodeServer)
        server.before_release = partial(recorder.flush, RELEASE_FLUSH_TIMEOUT_S)
    except OSError as exc:
        audit.close()
        recorder.close()
        if study_dispatcher is not None:
            study_dispatcher.stop()
        if owns_ledger:
            ledger.dispose()
        raise ConfigError(f"cannot listen on {settings.bind_address}:{settings.port}: {exc.strerror}") from exc
    thread = threading.Thread(target=make_target(server.serve_forever), name=f"AcceptorServer@{settings.port}",
                              daemon=True)
    thread.start()
    ae._servers.append(server)
    if study_dispatcher is not None:
        study_dispatcher.start()
    handle = ListenerHandle(ae, server, spool, repository, owns_ledger, recorder, study_dispatcher)
    logger.info(
        "listening as %s on %s:%d%s, spool %s, ledger %s",
        settings.ae_title, handle.address, handle.port, " (TLS)" if settings.tls_enabled else "",
        spool.root, ledger.url,
    )
    return handle


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m node.scp.server",
        description="Run the node's DICOM listener (C-ECHO, C-STORE of MR and SEG) until interrupted.",
    )
    parser.add_argument("--config", type=Path, help="YAML settings file (default: $AINODE_CONFIG)")
    parser.add_argument("--ae-title", help="our AE title")
    parser.add_argument("--port", help="TCP port (0 = any free port)")
    parser.add_argument("--bind-address", help="address to listen on")
    parser.add_argument("--spool-dir", help="spool folder")
    parser.add_argument("--database-url", help="ledger URL (default: SQLite in the spool folder)")
    parser.add_argument("--accepted-calling-aets", help="comma-separated calling AE titles allowed to connect")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    # a listener process of ainode serve's pool (node.scp.pool, started as python -m node.cli.listener)
    parser.add_argument("--settings-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--slot", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load-table", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reconcile", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None,
         make_dispatcher: Callable[[Settings], DispatcherFactory] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log.configure(max(args.verbose, 1), default=log.LogFormat.JSON)
    overrides = {
        key: getattr(args, key)
        for key in ("ae_title", "port", "bind_address", "spool_dir", "database_url", "accepted_calling_aets")
    }
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()

    try:
        if args.settings_file is not None:  # a pool process: settings as the parent has them, port included
            settings = Settings.read_handover(args.settings_file)
            args.settings_file.unlink(missing_ok=True)  # read once: it may hold the database password
            # it dispatches the studies of the associations it ends, as the parent's listener does (the job layer
            # is injected by node.cli.listener)
            if args.slot is None or args.slots is None or args.listen_fd is None or args.load_table is None:
                raise ConfigError("a listener process of ainode serve needs --slot, --slots, --listen-fd and "
                                  "--load-table")
            shared = SharedPort(args.load_table, args.slot, args.slots, args.listen_fd)
            handle = start_listener(settings, shared=shared, reconcile=args.reconcile,
                                    dispatcher=None if make_dispatcher is None else make_dispatcher(settings))
        else:
            settings = Settings.load(args.config, overrides=overrides)
            handle = start_listener(settings)
    except NodeError as exc:
        print(f"node.scp.server: error: {exc.message}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"listening as {settings.ae_title} on {handle.address}:{handle.port}", flush=True)
    with handle:
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
