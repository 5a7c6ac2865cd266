"""The tables of ``docs/conformance.md`` (the DICOM Conformance Statement), generated from the code.

Sources: the listener's accepted contexts (:mod:`node.scp.contexts`, as :func:`node.scp.server.build_ae` adds them),
the C-STORE statuses it returns (:class:`node.scp.status.StoreStatus`, plus pynetdicom's 0xC211 for a handler
that raises), the AE defaults (:class:`node.config.Settings`, the timeouts of :mod:`node.scp.server`, pynetdicom's
implementation class UID), and the objects the job layer sends as SCU with the contexts
:mod:`node.delivery.scu` proposes for them. ``python -m node.cli.conformance --write`` rewrites the generated blocks
of the page; ``--check`` exits 1 when they are stale (``tests/docs/test_conformance.py`` does the same).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from node.config import ENV_PREFIX, Settings
from node.docgen import generator_main, markdown_table
from node.scp.contexts import (
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    VERIFICATION,
    VERIFICATION_TRANSFER_SYNTAXES,
    storage_contexts,
)
from node.scp.dataset import MAX_DEPTH
from node.scp.server import ACSE_TIMEOUT_S, DIMSE_TIMEOUT_S, NETWORK_TIMEOUT_S, build_ae
from node.scp.status import EchoStatus, StoreStatus

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"

VERIFICATION_NAME = "Verification"
STORAGE_GROUP = "storage"
VERIFICATION_GROUP = "verification"

#: Error status pynetdicom answers when a C-STORE handler raises an unexpected exception.
HANDLER_EXCEPTION_STATUS = 0xC211

#: What each C-STORE status means when this node returns it (every :class:`StoreStatus` member needs one).
STORE_STATUS_MEANINGS: dict[StoreStatus, str] = {
    StoreStatus.SUCCESS: "the instance is on disk (fsynced, under a durable name) and in the ledger or its group "
    "commit; also answered to an identical re-send and, with `duplicate_policy: keep`, to a different copy of a "
    "known SOP Instance UID of the same study",
    StoreStatus.OUT_OF_RESOURCES: "free disk in the spool is below `min_free_disk_bytes` (measured when the data "
    "set's first bytes arrive and every 64 MiB after; before storing, that measure less what was written since), "
    "or a write or the ledger hit a full disk (ENOSPC / EDQUOT, SQLITE_FULL, PostgreSQL "
    "53100); nothing is kept, resend later. Answered even when the refusal's own audit row cannot be written",
    StoreStatus.LIMIT_EXCEEDED: "the dataset is larger than `max_instance_bytes` (the rest is received and "
    "discarded), a Deflated dataset inflates to more than `max_inflated_bytes`, or an element other than Pixel Data "
    "is longer than `max_element_bytes`; nothing is kept, and the same instance is refused again",
    StoreStatus.CANNOT_UNDERSTAND: "the dataset does not parse completely in the negotiated transfer syntax, an "
    "element's value does not convert under its VR (or its VR contradicts the data dictionary), sequences nest "
    "deeper than 32 levels, a Study / Series / SOP Instance UID is missing or invalid, SOP Class / Instance UID "
    "differ from the request, or Pixel Data is missing or shorter than Rows x Columns x Samples per Pixel x Bits "
    "Allocated / 8 x Number of Frames (compressed: fewer fragments than frames)",
    StoreStatus.UID_CONFLICT: "the SOP Instance UID, or the Series Instance UID, is already stored under another "
    "Study Instance UID; the stored copy is kept and this one refused (once the other study's files were purged, "
    "the instance is stored under its new study)",
    StoreStatus.PROCESSING_FAILURE: "the spool or the ledger could not make the instance durable (I/O or database "
    "error); nothing is acknowledged, resend it",
}
HANDLER_EXCEPTION_MEANING = (
    "an unexpected error inside the node's C-STORE handler (a bug); pynetdicom answers it, only that request fails"
)

#: Objects the job layer sends to the configured destinations (C-STORE SCU), with when.
SCU_SOP_CLASSES: dict[str, str] = {
    "Comprehensive 3D SR Storage": "1.2.840.10008.5.1.4.1.1.88.34",
    "Secondary Capture Image Storage": str(SecondaryCaptureImageStorage),
}
SCU_WHEN: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.34": "every processed study: the TID 1500 result SR, or the failure SR when the "
    "study cannot be processed",
    str(SecondaryCaptureImageStorage): "every processed study: one RGB companion image per lesion",
}
#: The transfer syntax the node writes its result objects in (highdicom's and the companion builders' default).
RESULT_TRANSFER_SYNTAX = ExplicitVRLittleEndian

_REPO_SOP_CLASSES = (
    ("Comprehensive SR Storage", "1.2.840.10008.5.1.4.1.1.88.33"),
    ("Enhanced SR Storage", "1.2.840.10008.5.1.4.1.1.88.22"),
    ("Encapsulated PDF Storage", "1.2.840.10008.5.1.4.1.1.104.1"),
)


def _ts_name(uid: str) -> str:
    for name, value in TRANSFER_SYNTAXES.items():
        if value == uid:
            return name
    return UID(uid).name


def scp_contexts() -> list[tuple[str, str, str, list[str]]]:
    """(name, abstract syntax UID, group, transfer syntax UIDs) of every context the listener accepts, in order."""
    rows = []
    names = {uid: name for name, uid in STORAGE_SOP_CLASSES.items()}
    for abstract, syntaxes in storage_contexts():
        rows.append((names[abstract], str(abstract), STORAGE_GROUP, [str(s) for s in syntaxes]))
    rows.append((VERIFICATION_NAME, str(VERIFICATION), VERIFICATION_GROUP,
                 [str(s) for s in VERIFICATION_TRANSFER_SYNTAXES]))
    return rows


def scu_transfer_syntaxes(sop_class: str) -> list[str]:
    """The transfer syntaxes :mod:`node.delivery.scu` proposes for a result object of ``sop_class``."""
    from node.delivery.scu import proposed_contexts

    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RESULT_TRANSFER_SYNTAX
    (context,) = proposed_contexts([ds])
    return [str(ts) for ts in context.transfer_syntax]


def _check_meanings() -> None:
    missing = set(StoreStatus) - set(STORE_STATUS_MEANINGS)
    if missing:
        raise AssertionError(f"StoreStatus member(s) without a conformance meaning: {sorted(missing)}")


#: Storage Commitment Push Model: the SCU role, for destinations configured with ``commitment=yes``.
COMMITMENT_NAME = "Storage Commitment Push Model"


def overview_table() -> str:
    rows = [[name, "No", "Yes"] for name, _, _, _ in scp_contexts()]
    rows += [[name, "Yes", "No"] for name in SCU_SOP_CLASSES]
    rows.append([COMMITMENT_NAME, "Yes (destinations with `commitment=yes`)", "No"])
    return markdown_table(["SOP class", "User of service (SCU)", "Provider of service (SCP)"], rows)


def scp_sop_class_table() -> str:
    rows = [[name, f"`{uid}`", group, "SCP", "none"] for name, uid, group, _ in scp_contexts()]
    return markdown_table(["Abstract syntax", "SOP class UID", "Transfer syntaxes", "Role", "Extended negotiation"],
                          rows)


def scp_transfer_syntax_table() -> str:
    contexts = scp_contexts()
    storage = next(s for _, _, g, s in contexts if g == STORAGE_GROUP)
    verification = next(s for _, _, g, s in contexts if g == VERIFICATION_GROUP)
    ordered = list(dict.fromkeys([*storage, *verification]))
    rows = [[_ts_name(uid), f"`{uid}`", "yes" if uid in storage else "no", "yes" if uid in verification else "no"]
            for uid in ordered]
    return markdown_table(["Transfer syntax", "UID", STORAGE_GROUP, VERIFICATION_GROUP], rows)


def scu_table() -> str:
    rows = []
    for name, uid in SCU_SOP_CLASSES.items():
        syntaxes = ", ".join(f"{_ts_name(ts)} `{ts}`" for ts in scu_transfer_syntaxes(uid))
        rows.append([name, f"`{uid}`", SCU_WHEN[uid], syntaxes, "SCU", "none"])
    return markdown_table(["Abstract syntax", "SOP class UID", "Sent", "Transfer syntaxes proposed", "Role",
                           "Extended negotiation"], rows)


def other_objects_table() -> str:
    rows = [[name, f"`{uid}`"] for name, uid in _REPO_SOP_CLASSES]
    return markdown_table(["SOP class", "UID"], rows)


def store_status_table() -> str:
    _check_meanings()
    rows = []
    for status in StoreStatus:
        category, standard = STORAGE_SERVICE_CLASS_STATUS[int(status)]
        rows.append([f"`0x{int(status):04X}`", category, standard or category, f"`StoreStatus.{status.name}`",
                     STORE_STATUS_MEANINGS[status]])
    category, standard = STORAGE_SERVICE_CLASS_STATUS[HANDLER_EXCEPTION_STATUS]
    rows.append([f"`0x{HANDLER_EXCEPTION_STATUS:04X}`", category, standard, "pynetdicom", HANDLER_EXCEPTION_MEANING])
    rows.append([f"`0x{int(EchoStatus.SUCCESS):04X}` (C-ECHO)", "Success", "Success", "`EchoStatus.SUCCESS`",
                 "every C-ECHO on an accepted association (audited `echo`)"])
    return markdown_table(["Status", "Category", "PS3.4 meaning", "Code", "When the node returns it"], rows)


def ae_table() -> str:
    settings = Settings()
    ae = build_ae(settings)

    def env(name: str) -> str:
        return f"`{ENV_PREFIX}{name.upper()}`"

    rows = [
        ["AE title", f"`{settings.ae_title}`", env("ae_title")],
        ["TCP port", f"`{settings.port}`", env("port")],
        ["Listen address", f"`{settings.bind_address}`", env("bind_address")],
        ["Maximum concurrent associations", f"`{ae.maximum_associations}`", env("max_associations")],
        ["Maximum concurrent associations per peer address", f"`{settings.max_associations_per_peer}`",
         env("max_associations_per_peer")],
        ["Handshake timeout: TLS + A-ASSOCIATE-RQ after TCP accept (s)", f"`{settings.handshake_timeout_s:g}`",
         env("handshake_timeout_s")],
        ["Maximum PDU size received (bytes)", f"`{ae.maximum_pdu_size}`", env("max_pdu")],
        ["Maximum dataset size per C-STORE (bytes)", f"`{settings.max_instance_bytes}`", env("max_instance_bytes")],
        ["Maximum inflated size of a Deflated dataset (bytes)", f"`{settings.max_inflated_bytes}`",
         env("max_inflated_bytes")],
        ["Maximum element length, Pixel Data excepted (bytes)", f"`{settings.max_element_bytes}`",
         env("max_element_bytes")],
        ["Maximum sequence nesting depth", f"`{MAX_DEPTH}`", "(fixed)"],
        ["Accepted calling AE titles", "any" if not ae.require_calling_aet else ", ".join(ae.require_calling_aet),
         env("accepted_calling_aets")],
        ["Called AE title must equal ours", "yes" if ae.require_called_aet else "no", "(fixed)"],
        ["ACSE timeout (s)", f"`{ACSE_TIMEOUT_S:g}`", "(fixed)"],
        ["DIMSE timeout (s)", f"`{DIMSE_TIMEOUT_S:g}`", "(fixed)"],
        ["Network (idle) timeout (s)", f"`{NETWORK_TIMEOUT_S:g}`", "(fixed)"],
        ["Implementation Class UID", f"`{ae.implementation_class_uid}`", "(pynetdicom's)"],
        ["Implementation Version Name", f"`{ae.implementation_version_name}`", "(pynetdicom's)"],
        ["TLS", "off" if not settings.tls_enabled else "on", f"{env('tls_cert')}, {env('tls_key')}, {env('tls_ca')}"],
    ]
    return markdown_table(["Parameter", "Default", "Configured by"], rows)


def commitment_table() -> str:
    """The Storage Commitment Push Model context proposed to destinations with ``commitment=yes``."""
    from node.delivery.commitment import commitment_context

    commitment = commitment_context()
    syntaxes = ", ".join(f"{_ts_name(str(ts))} `{ts}`" for ts in commitment.transfer_syntax)
    rows = [[COMMITMENT_NAME, f"`{commitment.abstract_syntax}`", "with the C-STORE of each result object to a "
             "destination with `commitment=yes` (N-ACTION; the N-EVENT-REPORT is accepted on the same or a new "
             "association)", syntaxes, "SCU", "none"]]
    return markdown_table(["Abstract syntax", "SOP class UID", "Proposed", "Transfer syntaxes proposed", "Role",
                           "Extended negotiation"], rows)


def scu_parameter_table() -> str:
    """The outbound (SCU) association parameters and the outbox's schedule, with their defaults."""
    settings = Settings()

    def env(name: str) -> str:
        return f"`{ENV_PREFIX}{name.upper()}`"

    rows = [
        ["Calling AE title", f"our AE title (`{settings.ae_title}`)", f"{env('ae_title')}; per destination "
         "`calling_ae`"],
        ["Called AE title, address", "the destination's", f"{env('destinations')} (`AET@HOST:PORT`)"],
        ["TLS (1.2+), CA bundle, client certificate", "off", "per destination `tls`, `tls_ca`, `tls_cert`, "
         "`tls_key`, `tls_check_hostname`"],
        ["Storage Commitment", "off", "per destination `commitment`"],
        ["Connection / ACSE / DIMSE / network timeout (s)", f"`{settings.delivery_timeout_s:g}`",
         env("delivery_timeout_s")],
        ["First retry delay (s), doubling", f"`{settings.delivery_retry_initial_s:g}`",
         env("delivery_retry_initial_s")],
        ["Longest retry delay (s)", f"`{settings.delivery_retry_max_s:g}`", env("delivery_retry_max_s")],
        ["Dead letter after (s, from the first failed attempt)", f"`{settings.delivery_dead_letter_after_s:g}`",
         env("delivery_dead_letter_after_s")],
        ["Port for N-EVENT-REPORTs on a new association", "none (`0`): same association only",
         env("commitment_port")],
        ["Wait for the commitment result (s)", f"`{settings.commitment_timeout_s:g}`", env("commitment_timeout_s")],
        ["Maximum PDU size received", "`0` (unlimited)", "(fixed)"],
    ]
    return markdown_table(["Parameter", "Default", "Configured by"], rows)


def blocks() -> dict[str, str]:
    """Every generated block of ``docs/conformance.md``, by name."""
    return {
        "overview": overview_table(),
        "ae-parameters": ae_table(),
        "scp-contexts": scp_sop_class_table(),
        "scp-transfer-syntaxes": scp_transfer_syntax_table(),
        "scu-contexts": scu_table(),
        "scu-parameters": scu_parameter_table(),
        "scu-commitment": commitment_table(),
        "other-objects": other_objects_table(),
        "store-statuses": store_status_table(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    return generator_main("node.cli.conformance", DOC, blocks, argv)


if __name__ == "__main__":
    sys.exit(main())
