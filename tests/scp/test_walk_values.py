"""The header check's shortcut for plain elements (no sequence, no pixel data, a VR the dictionary agrees with):
every value is still checked, a value remembered as valid under one VR is not taken as valid under another, and
the same dataset gets the same verdict whether its header is read from memory or from the file, in either VR
encoding. Each case is one synthetic T2 slice with one element changed, checked by :func:`read_header`."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from node.errors import CorruptInstanceError
from node.scp import dataset
from node.scp.header import Limits, read_header
from tests.scp.test_values import Edit, put
from tests.support.studies import SynthCase

LIMITS = Limits(max_inflated_bytes=1 << 30, max_element_bytes=1 << 30)


def _variant(source: Path, target: Path, edits: list[Edit], implicit: bool) -> Path:
    ds = pydicom.dcmread(source)
    for edit in edits:
        edit(ds)
    ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit
                                      else pydicom.uid.ExplicitVRLittleEndian)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    target.write_bytes(buffer.getvalue())
    return target


def _verdict(path: Path, *, from_memory: bool) -> str:
    info = pydicom.dcmread(path, stop_before_pixels=True)
    data = path.read_bytes()
    offset = 144 + int.from_bytes(data[140:144], "little")
    head = data[offset:offset + (1 << 16)] if from_memory else b""
    try:
        read_header(path, offset, str(info.file_meta.TransferSyntaxUID), str(info.SOPClassUID),
                    str(info.SOPInstanceUID), LIMITS, head=head, size=len(data))
    except CorruptInstanceError as exc:
        return f"refused: {exc.message}"
    return "accepted"


REFUSED: dict[str, tuple[Edit, str]] = {
    # name: (edit, the element the reason must name); first elements the listener only checks, then values it
    # keeps (dataset.KEPT), checked in the same loop and noted
    "SliceThickness not a number": (put(0x00180050, "DS", b"5mm "), "(0018,0050)"),
    "EchoNumbers not an integer": (put(0x00180086, "IS", b"1.5 "), "(0018,0086)"),
    "ScanningSequence not ASCII": (put(0x00180020, "CS", b"G\xe9 "), "(0018,0020)"),
    "private DS not a number": (put(0x00291010, "DS", b"abc "), "(0029,1010)"),
    "private UL of three bytes": (put(0x00291011, "UL", b"\x01\x02\x03"), "(0029,1011)"),
    "UID with a letter": (put(0x00081150, "UI", b"1.2.x"), "(0008,1150)"),
    "kept Modality not ASCII": (put(0x00080060, "CS", b"M\xc9"), "(0008,0060)"),
    "kept SeriesNumber not an integer": (put(0x00200011, "IS", b"1.5 "), "(0020,0011)"),
    "kept FrameOfReferenceUID with a letter": (put(0x00200052, "UI", b"1.2.x"), "(0020,0052)"),
    "kept Columns of three bytes": (put(0x00280011, "US", b"\x00\x01\x00"), "(0028,0011)"),
}


# in implicit VR a private element is UN: only its length is checked, so the private cases are explicit VR only;
# pydicom cannot write a US of three bytes in implicit VR
CASES = [(name, implicit) for name in REFUSED for implicit in (False, True)
         if not (implicit and (name.startswith("private") or name.endswith("three bytes")))]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("name", "implicit"), CASES,
                         ids=[f"{name}-{'implicit' if implicit else 'explicit'}" for name, implicit in CASES])
def test_plain_values_that_do_not_convert_are_refused(synth_case: SynthCase, tmp_path: Path, name: str,
                                                      implicit: bool) -> None:
    edit, element = REFUSED[name]
    good = _variant(synth_case.t2[0], tmp_path / "good.dcm", [], implicit)
    bad = _variant(synth_case.t2[0], tmp_path / "bad.dcm", [edit], implicit)
    for from_memory in (True, False):
        assert _verdict(good, from_memory=from_memory) == "accepted"
        verdict = _verdict(bad, from_memory=from_memory)
        assert verdict.startswith("refused") and element in verdict, verdict


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_value_valid_under_one_vr_is_checked_again_under_another(synth_case: SynthCase, tmp_path: Path) -> None:
    """"1.5" is a valid DS (and remembered as such); the same bytes in an IS are still refused."""
    as_ds = _variant(synth_case.t2[0], tmp_path / "ds.dcm", [put(0x00180050, "DS", b"1.5 ")], False)
    as_is = _variant(synth_case.t2[1], tmp_path / "is.dcm", [put(0x00180086, "IS", b"1.5 ")], False)
    assert _verdict(as_ds, from_memory=True) == "accepted"
    assert ("DS", b"1.5 ") in dataset._valid
    verdict = _verdict(as_is, from_memory=True)
    assert verdict.startswith("refused") and "(0018,0086)" in verdict, verdict


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_remembered_values_are_bounded(synth_case: SynthCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "_REMEMBERED", 4)
    monkeypatch.setattr(dataset, "_valid", set())
    path = _variant(synth_case.t2[0], tmp_path / "t2.dcm", [], False)
    assert _verdict(path, from_memory=True) == "accepted"
    assert 0 < len(dataset._valid) <= 4



@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_kept_values_are_read_as_pydicom_reads_them(synth_case: SynthCase, tmp_path: Path, implicit: bool) -> None:
    path = _variant(synth_case.t2[0], tmp_path / "t2.dcm", [put(0x0008103E, "LO", b"t2 tse ax ")], implicit)
    ds = pydicom.dcmread(path)
    data = path.read_bytes()
    offset = 144 + int.from_bytes(data[140:144], "little")
    for from_memory in (True, False):
        header = read_header(path, offset, str(ds.file_meta.TransferSyntaxUID), str(ds.SOPClassUID),
                             str(ds.SOPInstanceUID), LIMITS, head=data[offset:offset + (1 << 16)] if from_memory
                             else b"", size=len(data))
        assert (header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid) == (
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert (header.sop_class_uid, header.modality, header.series_description, header.series_number) == (
            ds.SOPClassUID, ds.Modality, "t2 tse ax", int(ds.SeriesNumber))
        assert header.frame_of_reference_uid == ds.FrameOfReferenceUID
