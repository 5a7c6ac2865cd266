"""Secondary Capture and Encapsulated PDF companions: identity copied, own series, disclaimer, content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from node.sr.companion import BANNER, Companion, build_companion_sc, render_png, write_companions
from node.sr.content import ReportContent
from node.sr.report import write_instance
from node.sr.validate import validate_object

from .conftest import Written

IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
            "AccessionNumber", "StudyID")


def test_secondary_capture_per_lesion(written: Written, content: ReportContent):
    assert len(written.sc) == len(content.lesions)
    series = set()
    ref = content.source.t1ce[0]
    for i, path in enumerate(written.sc, start=1):
        ds = pydicom.dcmread(path)
        for keyword in IDENTITY:
            assert ds.get(keyword) == ref.get(keyword), keyword
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert ds.InstanceNumber == i
        assert ds.BurnedInAnnotation == "YES" and "research" in ds.SeriesDescription.lower()
        pixels = ds.pixel_array
        assert pixels.shape == (960, 1280, 3) and pixels.dtype == np.uint8
        banner = pixels[15:50, 200:1000]
        red = (banner[..., 0] > 150) & (banner[..., 1] < 90) & (banner[..., 2] < 90)
        assert red.mean() > 0.3  # the red disclaimer banner is burned in
        series.add(ds.SeriesInstanceUID)
    assert len(series) == 1
    assert series.isdisjoint({d.SeriesInstanceUID for d in content.source.evidence})


def test_encapsulated_pdf(written: Written, content: ReportContent):
    ds = pydicom.dcmread(written.pdf)
    for keyword in IDENTITY:
        assert ds.get(keyword) == content.source.t1ce[0].get(keyword), keyword
    assert (ds.SOPClassUID, ds.Modality) == ("1.2.840.10008.5.1.4.1.1.104.1", "DOC")
    doc = bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength]
    assert doc.startswith(b"%PDF") and doc.rstrip().endswith(b"%%EOF")
    assert doc.count(b"/Type /Page\n") + doc.count(b"/Type /Page ") + doc.count(b"/Type/Page") >= 1
    assert ds.SeriesInstanceUID != pydicom.dcmread(written.sc[0]).SeriesInstanceUID


def test_rle_lossless_secondary_capture(content: ReportContent, tmp_path: Path):
    plain, rle = (build_companion_sc(content, transfer_syntax_uid=ts)[0]
                  for ts in (ExplicitVRLittleEndian, RLELossless))
    path = write_instance(rle, tmp_path)
    assert validate_object(path) == []
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(back.pixel_array, plain.pixel_array)  # lossless; pages render deterministically
    assert path.stat().st_size < len(plain.PixelData) / 4


def test_configurable_kinds(content: ReportContent, tmp_path: Path):
    only_pdf = write_companions(content, tmp_path / "pdf", kinds=(Companion.PDF,))
    assert [p.name.split("_")[0] for p in only_pdf] == ["DOC"]
    only_sc = write_companions(content, tmp_path / "sc", kinds=(Companion.SECONDARY_CAPTURE,))
    assert [p.name.split("_")[0] for p in only_sc] == ["OT", "OT"]


def test_render_png_for_review(content: ReportContent, tmp_path: Path):
    path = render_png(content, content.lesions[1], tmp_path / "page.png")
    assert path.stat().st_size > 20_000
    assert "RESEARCH USE ONLY" in BANNER
