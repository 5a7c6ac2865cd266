"""Check a received dataset and read the header values the ledger records, from the raw bytes as sent.

The dataset must parse completely in the negotiated transfer syntax (no element shorter than its declared
length, no trailing bytes), carry plausible Study/Series/SOP Instance UIDs, and agree with the C-STORE request
(SOP Class and SOP Instance UID); otherwise :class:`CorruptInstanceError` explains why.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from node.errors import CorruptInstanceError
from node.ledger.repository import InstanceHeader
from node.log import redact
from node.spool import check_uid

_UNDEFINED = 0xFFFFFFFF


def _decode(data: bytes, transfer_syntax: UID) -> Dataset:
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise CorruptInstanceError(f"the deflated dataset does not inflate: {exc}") from exc
    stream = BytesIO(data)
    try:
        ds = read_dataset(stream, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian)
    except (ValueError, TypeError, KeyError, EOFError, OSError, struct.error, InvalidDicomError) as exc:
        raise CorruptInstanceError(f"the dataset does not parse: {redact(str(exc))}") from exc
    if stream.tell() != len(data):
        raise CorruptInstanceError(f"the dataset has {len(data) - stream.tell()} unparsed trailing byte(s)")
    try:
        _check_structure(ds)
    except (ValueError, TypeError, KeyError, EOFError, OSError, struct.error, InvalidDicomError) as exc:
        raise CorruptInstanceError(f"the dataset does not parse: {exc}") from exc
    return ds


def _is_sequence(tag: BaseTag, vr: str | None) -> bool:
    if vr is not None:
        return vr == "SQ"
    try:  # implicit VR: the data dictionary says
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:  # private or unknown element: left raw
        return False


def _check_structure(ds: Dataset) -> None:
    """Every element complete and every sequence's items parse, recursively, without decoding the values.

    Decoding every value (pydicom's validation of each string) costs more than the rest of the C-STORE
    handler; a malformed *value* is reported by the loader when the study is processed, while a truncated or
    mis-framed *dataset* is refused here, before Success is answered.
    """
    for raw in ds.elements():
        length = getattr(raw, "length", _UNDEFINED)
        value = getattr(raw, "value", None)
        if length != _UNDEFINED and isinstance(value, bytes) and len(value) != length:
            raise CorruptInstanceError(
                f"element {raw.tag} is truncated ({len(value)} of {length} bytes): the dataset is incomplete"
            )
        if length == _UNDEFINED or _is_sequence(raw.tag, getattr(raw, "VR", None)):
            element = ds[raw.tag]  # parses the sequence's items (their own elements stay raw)
            if element.VR == "SQ":
                for item in element.value:
                    _check_structure(item)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def read_header(data: bytes, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str) -> InstanceHeader:
    """Parse ``data`` (the dataset bytes, without file meta) and return the values the ledger needs."""
    syntax = UID(transfer_syntax)
    ds = _decode(data, syntax)
    study = check_uid(_text(ds, "StudyInstanceUID"), "StudyInstanceUID")
    series = check_uid(_text(ds, "SeriesInstanceUID"), "SeriesInstanceUID")
    sop = check_uid(_text(ds, "SOPInstanceUID"), "SOPInstanceUID")
    sop_class = _text(ds, "SOPClassUID")
    if sop != sop_instance_uid:
        raise CorruptInstanceError(
            f"SOPInstanceUID {sop} in the dataset differs from the request's Affected SOP Instance UID "
            f"{sop_instance_uid}"
        )
    if sop_class != sop_class_uid:
        raise CorruptInstanceError(
            f"SOPClassUID {sop_class!r} in the dataset differs from the request's Affected SOP Class UID "
            f"{sop_class_uid}"
        )
    number = ds.get("SeriesNumber")
    try:
        series_number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        series_number = None
    frame_of_reference = _text(ds, "FrameOfReferenceUID")
    return InstanceHeader(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(syntax),
        modality=_text(ds, "Modality")[:16],
        series_description=_text(ds, "SeriesDescription"),
        series_number=series_number,
        frame_of_reference_uid=frame_of_reference[:64] or None,
    )
