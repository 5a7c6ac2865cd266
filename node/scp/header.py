"""Check a received dataset and read the header values the ledger records, from the spill file as received.

:func:`read_header` walks the whole dataset once (:mod:`node.scp.dataset`: structure and every value, in the
negotiated transfer syntax; a Deflated dataset is inflated on the fly up to ``max_inflated_bytes``), then checks
what the node relies on: plausible Study / Series / SOP Instance UIDs agreeing with the C-STORE request, Pixel
Data present and, uncompressed, at least Rows x Columns x Samples per Pixel x Bits Allocated / 8 x Number of
Frames bytes long (compressed: at least one fragment per frame). Otherwise it raises
:class:`CorruptInstanceError`, or :class:`LimitExceededError` for a configured size limit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from node.errors import CorruptInstanceError
from node.ledger.repository import InstanceHeader
from node.scp.dataset import Walked, Walker
from node.scp.source import FileReader, HeadReader, InflateReader, Reader
from node.spool import check_uid

STUDY_UID, SERIES_UID, SOP_UID, SOP_CLASS = 0x0020000D, 0x0020000E, 0x00080018, 0x00080016
MODALITY, SERIES_DESCRIPTION, SERIES_NUMBER, FRAME_OF_REFERENCE = 0x00080060, 0x0008103E, 0x00200011, 0x00200052
SAMPLES, FRAMES, ROWS, COLUMNS, BITS_ALLOCATED = 0x00280002, 0x00280008, 0x00280010, 0x00280011, 0x00280100


@dataclass(frozen=True)
class Limits:
    """The configured limits the dataset check applies (see :class:`node.config.Settings`)."""

    max_inflated_bytes: int
    max_element_bytes: int


def read_header(
    path: Path, offset: int, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str, limits: Limits,
    *, head: bytes = b"", size: int | None = None,
) -> InstanceHeader:
    """Check the dataset stored in ``path`` from ``offset`` and return the values the ledger needs. With ``head``
    (the dataset's first bytes, as received) and ``size`` (the file's), the file is read only past ``head``."""
    transfer_syntax, explicit, little, encapsulated, deflated = _syntax(transfer_syntax)
    if head and size is not None and not deflated:
        head_reader = HeadReader(head, path, offset, size)
        try:
            walked = Walker(head_reader, explicit=explicit, little=little, encapsulated=encapsulated,
                            max_element_bytes=limits.max_element_bytes).walk()
        finally:
            head_reader.close()
        return _header(walked, transfer_syntax, little, sop_class_uid, sop_instance_uid)
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(offset)
        reader: Reader = InflateReader(handle, limits.max_inflated_bytes) if deflated else FileReader(handle, size)
        walked = Walker(reader, explicit=explicit, little=little, encapsulated=encapsulated,
                        max_element_bytes=limits.max_element_bytes).walk()
    return _header(walked, transfer_syntax, little, sop_class_uid, sop_instance_uid)


@lru_cache(maxsize=64)
def _syntax(transfer_syntax: str) -> tuple[str, bool, bool, bool, bool]:
    """(the UID as pydicom reads it, explicit VR, little endian, encapsulated, deflated) of a transfer syntax,
    worked out once."""
    uid = UID(transfer_syntax)
    return (str(uid), not uid.is_implicit_VR, uid.is_little_endian, uid.is_encapsulated,
            uid == DeflatedExplicitVRLittleEndian)


def _text(walked: Walked, tag: int) -> str:
    found = walked.values.get(tag)
    if found is None:
        return ""
    vr, value = found
    if vr in ("LO", "SH", "LT", "ST", "UT", "UC", "PN") and walked.charset.codecs:
        return value.decode(walked.charset.codecs[0], "replace").strip(" \x00")
    return value.decode("latin-1").strip(" \x00")


def _number(walked: Walked, tag: int, little: bool, name: str) -> int | None:
    """An integer element (US/SS/UL/SL binary or an IS string), its first value; ``None`` when absent/empty."""
    found = walked.values.get(tag)
    if found is None or not found[1]:
        return None
    vr, value = found
    formats = {"US": "H", "SS": "h", "UL": "L", "SL": "l"}
    if vr in formats:
        return int(struct.unpack_from(("<" if little else ">") + formats[vr], value)[0])
    first = value.split(b"\\")[0].strip(b" \x00")  # IS, or a text VR the walk checked as IS
    try:
        return int(first) if first else None
    except ValueError as exc:
        raise CorruptInstanceError(f"{name} ({vr}) is not an integer") from exc


def _check_pixels(walked: Walked, little: bool) -> None:
    if walked.pixel_tag is None:
        raise CorruptInstanceError("the dataset has no Pixel Data (7FE0,0010): it is not an image")
    rows = _number(walked, ROWS, little, "Rows")
    columns = _number(walked, COLUMNS, little, "Columns")
    bits = _number(walked, BITS_ALLOCATED, little, "Bits Allocated")
    samples = _number(walked, SAMPLES, little, "Samples per Pixel") or 1
    frames = _number(walked, FRAMES, little, "Number of Frames")
    frames = 1 if frames is None else frames
    if not rows or not columns or not bits or samples < 1 or frames < 1:
        raise CorruptInstanceError(
            "Pixel Data is present but Rows, Columns, Bits Allocated, Samples per Pixel or Number of Frames is "
            "missing or not positive"
        )
    if walked.pixel_length is None:
        if walked.fragments < frames:
            raise CorruptInstanceError(
                f"compressed Pixel Data has {walked.fragments} fragment(s) for {frames} frame(s)"
            )
        return
    needed = (rows * columns * samples * bits * frames + 7) // 8
    if walked.pixel_length < needed:
        raise CorruptInstanceError(
            f"Pixel Data has {walked.pixel_length} bytes; Rows x Columns x Samples per Pixel x Bits Allocated / 8 "
            f"x Number of Frames ({rows} x {columns} x {samples} x {bits} / 8 x {frames}) need {needed}"
        )


def _header(walked: Walked, transfer_syntax: str, little: bool, sop_class_uid: str,
            sop_instance_uid: str) -> InstanceHeader:
    study = check_uid(_text(walked, STUDY_UID), "StudyInstanceUID")
    series = check_uid(_text(walked, SERIES_UID), "SeriesInstanceUID")
    sop = check_uid(_text(walked, SOP_UID), "SOPInstanceUID")
    sop_class = _text(walked, SOP_CLASS)
    if sop != sop_instance_uid:
        raise CorruptInstanceError("SOPInstanceUID in the dataset differs from the request's Affected SOP Instance UID")
    if sop_class != sop_class_uid:
        raise CorruptInstanceError("SOPClassUID in the dataset differs from the request's Affected SOP Class UID")
    _check_pixels(walked, little)
    frame_of_reference = _text(walked, FRAME_OF_REFERENCE)
    return InstanceHeader(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax_uid=transfer_syntax,
        modality=_text(walked, MODALITY)[:16],
        series_description=_text(walked, SERIES_DESCRIPTION),
        series_number=_number(walked, SERIES_NUMBER, little, "SeriesNumber"),
        frame_of_reference_uid=frame_of_reference[:64] or None,
    )
