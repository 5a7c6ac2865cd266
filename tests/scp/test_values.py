"""Values, not only structure: an instance whose elements do not convert is refused before Success is answered.

Each case is one synthetic T2 slice with one element changed, sent to a real listener; the refusal must be
``0xC000`` (Cannot understand), audited ``store-rejected`` with a reason naming the element, nothing spooled, and
the next good instance on the same association still stored.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.scp.status import StoreStatus
from tests.scp.fixtures import FakeClock, ListenerFactory, send
from tests.support.studies import SynthCase

Edit = Callable[[Dataset], None]


def raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    """An element written exactly as given (pydicom does not convert or validate it on write)."""
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def put(tag: int, vr: str, value: bytes) -> Edit:
    def edit(ds: Dataset) -> None:
        ds[tag] = raw(tag, vr, value)

    return edit


def short_pixel_data(ds: Dataset) -> None:
    pixels = ds.PixelData
    ds[0x7FE00010] = raw(0x7FE00010, "OW", pixels[: len(pixels) // 2])


def without_pixel_data(ds: Dataset) -> None:
    del ds[0x7FE00010]


PLACEHOLDER = b"T2 @@ axial "
BAD_UTF8 = b"T2 \xff\xfe axial "  # pydicom re-encodes text on write: these bytes are patched in afterwards


def utf8_with_bad_bytes(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SeriesDescription = PLACEHOLDER.decode()


def variant(source: Path, target: Path, edit: Edit, *, implicit: bool = False) -> Path:
    ds = pydicom.dcmread(source)
    edit(ds)
    if implicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    target.write_bytes(buffer.getvalue().replace(PLACEHOLDER, BAD_UTF8))
    return target


CASES: dict[str, tuple[Edit, bool, str]] = {
    # name: (edit, implicit VR, a word the audited reason must contain)
    "sequence sent as LO": (put(0x00180012, "LO", b"gadolinium"), False, "(0018,0012)"),
    "SeriesNumber abc": (put(0x00200011, "IS", b"abc "), False, "(0020,0011)"),
    "SeriesNumber abc, implicit VR": (put(0x00200011, "IS", b"abc "), True, "(0020,0011)"),
    "SeriesNumber above 2^63": (put(0x00200011, "IS", b"9223372036854775809 "), False, "(0020,0011)"),
    "SeriesNumber above 2^31": (put(0x00200011, "IS", b"2147483648"), False, "(0020,0011)"),
    "Rows as DS": (put(0x00280010, "DS", b"288 "), False, "(0028,0010)"),
    "Rows of three bytes": (put(0x00280010, "US", b"\x20\x01\x00"), False, "(0028,0010)"),
    "SliceThickness not a number": (put(0x00180050, "DS", b"5mm "), False, "(0018,0050)"),
    "invalid UTF-8": (utf8_with_bad_bytes, False, "(0008,103E)"),
    "NUL inside a referenced UID": (put(0x00081155, "UI", b"1.2.3\x004.5\x00"), False, "(0008,1155)"),
    "pixel data shorter than the image": (short_pixel_data, False, "Pixel Data"),
    "no pixel data": (without_pixel_data, False, "Pixel Data"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_values_that_do_not_convert_are_refused(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path, name: str
) -> None:
    edit, implicit, reason = CASES[name]
    bad = variant(synth_case.t2[0], tmp_path / "bad.dcm", edit, implicit=implicit)
    listener = start(sqlite_url, FakeClock())
    assert send(listener.port, [bad, synth_case.t2[1]]) == [StoreStatus.CANNOT_UNDERSTAND, StoreStatus.SUCCESS]
    (rejected,) = [e for e in listener.repository.audit_trail() if e.event == "store-rejected"]
    assert rejected.status == StoreStatus.CANNOT_UNDERSTAND
    assert reason in (rejected.detail or ""), rejected.detail
    snapshot = listener.repository.studies()[0]
    assert snapshot.instance_count == 1  # only the good one
    assert list((listener.spool.root / ".incoming").iterdir()) == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_harmless_variations_are_accepted(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    """What real archives send and the pipeline reads: a numeric string in a text VR, padding, Latin-1 text."""
    cases = [
        put(0x00200011, "LO", b"7 "),  # SeriesNumber as LO holding an integer
        put(0x00200011, "IS", b" +12 "),  # spaces and a sign
        put(0x00100010, "PN", b"M\xfcller^J\xf6rg"),  # ISO_IR 100 (Latin-1) as the instance declares
        put(0x00091010, "LO", b"private \xff bytes"),  # private element: no charset declared for it
        put(0x00280106, "SS", b"\x00\x00"),  # "US or SS"
    ]
    files = [variant(synth_case.t2[i], tmp_path / f"ok{i}.dcm", edit) for i, edit in enumerate(cases)]
    listener = start(sqlite_url, FakeClock())
    assert send(listener.port, files) == [StoreStatus.SUCCESS] * len(files)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_series_numbers_the_ledger_cannot_hold_are_refused_on_every_ledger(
    start: ListenerFactory, ledger_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    """PostgreSQL's integer column answered 0x0110 forever for SeriesNumber > 2^31; SQLite overflowed at 2^63."""
    files = [variant(synth_case.t2[0], tmp_path / "a.dcm", put(0x00200011, "IS", b"2147483648")),
             variant(synth_case.t2[1], tmp_path / "b.dcm", put(0x00200011, "IS", b"-2147483649 ")),
             variant(synth_case.t2[2], tmp_path / "c.dcm", put(0x00200011, "IS", b"2147483647"))]
    listener = start(ledger_url, FakeClock())
    assert send(listener.port, files) == [StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CANNOT_UNDERSTAND, 0]
    (series,) = listener.repository.studies()[0].series
    assert series.series_number == 2147483647
