"""Named DIMSE statuses the listener returns (PS3.7 Annex C), so no handler returns a bare hex number."""

from __future__ import annotations

import enum


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses used by :func:`node.scp.handlers.handle_store`."""

    SUCCESS = 0x0000
    #: The instance cannot be kept: free disk is below the configured threshold, or a write hit ENOSPC.
    OUT_OF_RESOURCES = 0xA700
    #: The instance is larger than a configured limit (instance, inflated or element size); resending it unchanged
    #: gives the same answer.
    LIMIT_EXCEEDED = 0xA701
    #: The dataset does not parse, an element's value does not convert, its UIDs are invalid or contradict the
    #: C-STORE request, or its pixel data is missing or shorter than its image.
    CANNOT_UNDERSTAND = 0xC000
    #: The SOP Instance UID is already stored under another Study Instance UID.
    UID_CONFLICT = 0xC001
    #: The instance was received but could not be made durable (spool or ledger I/O error); resend it.
    PROCESSING_FAILURE = 0x0110


class EchoStatus(enum.IntEnum):
    """C-ECHO response statuses."""

    SUCCESS = 0x0000
