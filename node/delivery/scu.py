"""C-STORE SCU: send DICOM files to one destination ``AET@HOST:PORT`` over one association, checking the
status of every response; TLS when the destination asks for it (its CA bundle, client certificate and key).

What can go wrong, and what the caller gets:

=====================================================  ========================================================
peer down, connection refused, association rejected     :class:`PacsUnavailableError` (temporary: retry later)
or aborted, no response in time (ACSE/DIMSE/network)
failure status other than the ones below (0xA7xx out   :class:`PacsUnavailableError` with ``status``
of resources, 0x0110 processing failure, 0xCxxx ...)
SOP class not accepted at negotiation (also when the   :class:`DeliveryRefusedError` with ``status`` (permanent:
peer accepts none of the offered contexts, which       the same object will be refused again)
pynetdicom answers with an A-ABORT), 0x0122 SOP class
not supported, 0x0124 not authorised, 0xA9xx dataset
does not match the SOP class
TLS certificate or handshake problem                    :class:`PacsUnavailableError` (logged with the reason)
warning statuses 0x0001, 0xB000, 0xB006, 0xB007        success, logged as a warning
=====================================================  ========================================================

The files are read completely (``dcmread``), so an unreadable file is a :class:`DeliveryRefusedError` too, before
any association is opened. TCP_NODELAY is set on the association's socket (small PDUs are not delayed by Nagle).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from node.errors import ConfigError, DeliveryRefusedError, PacsUnavailableError
from node.values import Destination

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
REFUSED_STATUSES = frozenset({0x0122, 0x0124})  # SOP class not supported, not authorised
MAX_PDU = 0  # no limit on what we accept; the peer's maximum governs what we send


def _read(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
        _ = ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID
    except (InvalidDicomError, OSError, AttributeError) as exc:
        raise DeliveryRefusedError(f"{path} is not a readable DICOM file: {exc}") from exc
    return ds


def proposed_contexts(datasets: Sequence[Dataset]) -> list[PresentationContext]:
    syntaxes: dict[str, list[str]] = {}
    for ds in datasets:
        wanted = syntaxes.setdefault(str(ds.SOPClassUID), [])
        for ts in (str(ds.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if ts not in wanted:
                wanted.append(ts)
    if len(syntaxes) > 128:
        raise DeliveryRefusedError(f"{len(syntaxes)} SOP classes in one send; at most 128 fit one association")
    return [build_context(sop_class, ts) for sop_class, ts in syntaxes.items()]


def _classify(status: int, path: Path, destination: Destination) -> None:
    """Raise for a failure status of one C-STORE response; return for success and warnings."""
    if status == SUCCESS:
        return
    if status in WARNING_STATUSES:
        logger.warning("%s stored %s with warning status 0x%04X", destination, path.name, status)
        return
    text = f"{destination} answered status 0x{status:04X} to C-STORE of {path.name}"
    if status in REFUSED_STATUSES or 0xA900 <= status <= 0xA9FF:
        raise DeliveryRefusedError(text, status=status)
    raise PacsUnavailableError(text, status=status)


def _nodelay(assoc: Association) -> None:
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (never in practice): Nagle only costs speed
            logger.debug("could not set TCP_NODELAY", exc_info=True)


def wait_reactor_resumed(assoc: Association, timeout_s: float = 1.0) -> None:
    """Let the association's reactor thread wake up after a request before the next one is sent.

    pynetdicom pauses its reactor around each ``send_*`` (clear the checkpoint, wait until ``_is_paused``) and
    resumes it afterwards (set the checkpoint). On a starved CPU the reactor may not have run since that
    ``set()``, so ``_is_paused`` is still True from the last pause: the next ``send_c_store`` does not wait,
    the reactor then wakes, takes the new C-STORE response off the queue ("Received unexpected C-STORE service
    message") and the sender waits for it until the DIMSE timeout. Seen under load in the tests and the demo.
    Waiting here until the reactor has left its pause closes the window.
    """
    deadline = time.monotonic() + timeout_s
    while getattr(assoc, "_is_paused", False) and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0002)


def send_all(assoc: Association, items: Sequence[tuple[Path, Dataset]], destination: Destination) -> None:
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    for path, ds in items:
        if str(ds.SOPClassUID) not in accepted:
            raise DeliveryRefusedError(
                f"{destination} does not accept SOP class {ds.SOPClassUID} ({path.name}) in any offered transfer "
                "syntax"
            )
        wait_reactor_resumed(assoc)
        try:
            response = assoc.send_c_store(ds)
        except ValueError as exc:  # no context fits the dataset's transfer syntax
            raise DeliveryRefusedError(f"{destination} cannot receive {path.name}: {exc}") from exc
        if response is None or "Status" not in response:
            raise PacsUnavailableError(
                f"no valid C-STORE response from {destination} for {path.name} (timeout, abort or invalid response)"
            )
        _classify(int(response.Status), path, destination)
        logger.info("sent %s to %s", path.name, destination)


def tls_context(destination: Destination) -> ssl.SSLContext | None:
    """Client-side TLS (1.2+) for ``destination``: the peer's certificate checked against ``tls_ca`` (or the
    system's CAs) and, unless ``tls_check_hostname=no``, against its host; our certificate with ``tls_cert``."""
    if not destination.tls:
        return None
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(destination.tls_ca) if destination.tls_ca else None)
        if destination.tls_cert is not None and destination.tls_key is not None:
            context.load_cert_chain(str(destination.tls_cert), str(destination.tls_key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"destination {destination}: TLS files cannot be loaded: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = destination.tls_check_hostname
    return context


def associate(
    destination: Destination, contexts: Sequence[PresentationContext], *, calling_ae: str, timeout_s: float,
    evt_handlers: list[Any] | None = None,
) -> Association:
    """An established association with ``destination`` (TLS when it asks for it), or the reason as an error:
    :class:`DeliveryRefusedError` when the peer accepts none of ``contexts``, :class:`PacsUnavailableError` when
    it is down, rejects us, aborts or times out."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    ae.maximum_pdu_size = MAX_PDU
    ae.requested_contexts = list(contexts)
    context = tls_context(destination)
    tls_args = None if context is None else (context, destination.host)  # SNI; checked only if check_hostname
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args,
                         evt_handlers=evt_handlers or [])
    if assoc.is_established:
        _nodelay(assoc)
        return assoc
    if assoc.is_aborted and not assoc.accepted_contexts and assoc.rejected_contexts:
        refused = ", ".join(sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts}))
        raise DeliveryRefusedError(f"{destination} accepts none of the offered SOP classes ({refused}); the "
                                   "presentation contexts were rejected", status=0x0122)
    state = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
    raise PacsUnavailableError(f"association with {destination} {state} (peer down or refusing us?)"
                               + (" over TLS" if context is not None else ""))


def read_files(paths: Sequence[Path]) -> list[tuple[Path, Dataset]]:
    """Every file read completely (an unreadable one is a :class:`DeliveryRefusedError`)."""
    return [(Path(p), _read(Path(p))) for p in paths]


def send_files(
    paths: Sequence[Path], destination: Destination, *, calling_ae: str = "AINODE", timeout_s: float = 30
) -> None:
    """Send every file in ``paths`` to ``destination`` over one association; returns only when every response
    was a success (or warning) status. Raises :class:`PacsUnavailableError` / :class:`DeliveryRefusedError`."""
    if not paths:
        return
    items = read_files(paths)
    assoc = associate(destination, proposed_contexts([ds for _, ds in items]), calling_ae=calling_ae,
                      timeout_s=timeout_s)
    try:
        send_all(assoc, items, destination)
    except BaseException:
        assoc.abort()
        raise
    assoc.release()
    if assoc.is_aborted:
        logger.warning("%s aborted the association after the last response; the objects were stored", destination)
