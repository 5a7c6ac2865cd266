# mypy: disable-error-code="no-untyped-call"
"""identify_series on typical vendor series lists, and the errors for studies that cannot be used."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage

from node.errors import (
    AmbiguousSeriesError,
    CorruptInstanceError,
    InvalidStudyError,
    MissingSeriesError,
    SegmentationError,
    UnsupportedInstanceError,
)
from node.imaging.series_rules import SeriesRules
from node.imaging.study import identify_series, scan_study
from node.synth.dicom_series import SegmentSpec, write_mr_series, write_segmentation
from tests.imaging import factory

T2_ATTRS = {"scanning_sequence": "SE", "sequence_variant": "SK", "mr_acquisition_type": "2D"}
GRE_2D = {"scanning_sequence": "GR", "mr_acquisition_type": "2D"}


def _tiny(root: Path, name: str, number: int, description: str, **overrides: object) -> list[Path]:
    image = factory.phantom(size=(10, 8, 4), seed=number)
    return write_mr_series(
        image, factory.header(name, number, description, **overrides), root / name, uid_seed=name
    )


def _seg(root: Path, source: list[Path], name: str = "seg") -> Path:
    image = factory.phantom(size=(10, 8, 4))
    mask = factory.sphere_mask(image, 2.0)
    return write_segmentation(
        source, [SegmentSpec("Lesion 1", mask, "lesion")], root / name / "seg.dcm", series_number=99,
        series_description="Segmentation", manufacturer="Test", uid_seed=name,
    )


VENDOR_STUDIES = {
    "siemens": (
        "t1_mprage_sag_p2_iso +C",
        "t2_tse_tra",
        [("t1_mprage_sag_p2_iso", {}), ("t2_tirm_tra_dark-fluid", T2_ATTRS), ("t2_swi_tra_p2", GRE_2D),
         ("ep2d_diff_3scan_trace_p2", {"scanning_sequence": "EP"}), ("ep2d_diff_3scan_trace_p2_ADC", {}),
         ("AAHead_Scout_64ch-head-coil", {})],
    ),
    "siemens-de": (
        "T1 MPRAGE KM",
        "T2 TSE tra",
        [("T1 MPRAGE nativ", {}), ("T2* FL2D hemo", GRE_2D), ("DWI b1000", {}), ("Localizer", {})],
    ),
    "ge": (
        "Sag 3D BRAVO +C",
        "Ax T2 FSE",
        [("Sag 3D BRAVO", {}), ("Ax T2 FLAIR", T2_ATTRS), ("Ax SWAN", GRE_2D), ("Ax T2* GRE", GRE_2D),
         ("3-Plane Loc", {}), ("Ax DWI Asset", {})],
    ),
    "philips": (
        "T1W_3D_TFE Gd",
        "T2W_TSE",
        [("T1W_3D_TFE", {}), ("T2W_FLAIR", T2_ATTRS), ("T2*_FFE", GRE_2D), ("DWI_SENSE", {}), ("Survey", {})],
    ),
}


@pytest.mark.parametrize("vendor", sorted(VENDOR_STUDIES))
def test_vendor_series_names(tmp_path: Path, series_rules: SeriesRules, vendor: str) -> None:
    t1ce_desc, t2_desc, distractors = VENDOR_STUDIES[vendor]
    t1ce = _tiny(tmp_path, "t1ce", 10, t1ce_desc)  # no ContrastBolusAgent: the description must do
    _tiny(tmp_path, "t2", 11, t2_desc, **T2_ATTRS)
    for number, (description, attrs) in enumerate(distractors, start=20):
        _tiny(tmp_path, f"other{number}", number, description, **attrs)
    _seg(tmp_path, t1ce)
    found = identify_series(scan_study(tmp_path), series_rules)
    assert found.t1ce.series_description == t1ce_desc
    assert found.t2.series_description == t2_desc
    assert found.seg.modality == "SEG"
    assert len(found.ignored) == len(distractors)
    assert found.warnings == ()


def test_contrast_bolus_agent_is_evidence(tmp_path: Path, series_rules: SeriesRules) -> None:
    t1ce = _tiny(tmp_path, "t1ce", 5, "T1 3D", contrast_bolus_agent="GADOBUTROL")
    _tiny(tmp_path, "t1pre", 4, "T1 3D")
    _tiny(tmp_path, "t2", 3, "T2 TSE", **T2_ATTRS)
    _seg(tmp_path, t1ce)
    assert identify_series(scan_study(tmp_path), series_rules).t1ce.series_number == 5


def test_localizer_image_type_is_excluded(tmp_path: Path, series_rules: SeriesRules) -> None:
    t1ce = _tiny(tmp_path, "t1ce", 5, "T1 MPRAGE +C")
    _tiny(tmp_path, "t2", 3, "T2 TSE", **T2_ATTRS)
    for path in _tiny(tmp_path, "loc", 1, "T2 haste", **T2_ATTRS):  # would tie with the T2 without ImageType
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(path)
    _seg(tmp_path, t1ce)
    found = identify_series(scan_study(tmp_path), series_rules)
    assert found.t2.series_number == 3


def test_seg_reference_breaks_a_tie(tmp_path: Path, series_rules: SeriesRules) -> None:
    _tiny(tmp_path, "t1a", 5, "T1 MPRAGE +C")
    t1b = _tiny(tmp_path, "t1b", 6, "T1 VIBE +C")
    _tiny(tmp_path, "t2", 3, "T2 TSE", **T2_ATTRS)
    _seg(tmp_path, t1b)
    assert identify_series(scan_study(tmp_path), series_rules).t1ce.series_number == 6


def test_unconfirmed_t1_referenced_by_seg_is_used_with_a_warning(tmp_path: Path, series_rules: SeriesRules) -> None:
    t1 = _tiny(tmp_path, "t1", 5, "T1 MPRAGE")
    _tiny(tmp_path, "t2", 3, "T2 TSE", **T2_ATTRS)
    _seg(tmp_path, t1)
    found = identify_series(scan_study(tmp_path), series_rules)
    assert found.t1ce.series_number == 5
    assert len(found.warnings) == 1 and "contrast" in found.warnings[0]


def test_no_t1ce_lists_what_was_received(tmp_path: Path, series_rules: SeriesRules) -> None:
    t1 = _tiny(tmp_path, "t1", 5, "T1 MPRAGE nativ")
    _tiny(tmp_path, "t2", 3, "T2 TSE", **T2_ATTRS)
    _seg(tmp_path, t1)
    with pytest.raises(MissingSeriesError, match=r"no post-contrast T1.*'T1 MPRAGE nativ' \(series 5.*pre-contrast"):
        identify_series(scan_study(tmp_path), series_rules)


def test_no_t2(tmp_path: Path, series_rules: SeriesRules) -> None:
    t1 = _tiny(tmp_path, "t1", 5, "T1 MPRAGE +C")
    _tiny(tmp_path, "flair", 4, "T2 FLAIR", **T2_ATTRS)
    _seg(tmp_path, t1)
    with pytest.raises(MissingSeriesError, match=r"no T2 series found.*'T2 FLAIR' \(series 4"):
        identify_series(scan_study(tmp_path), series_rules)


def test_no_seg(tmp_path: Path, series_rules: SeriesRules) -> None:
    _tiny(tmp_path, "t1", 5, "T1 MPRAGE +C")
    _tiny(tmp_path, "t2", 3, "T2 TSE", **T2_ATTRS)
    with pytest.raises(MissingSeriesError, match=r"no DICOM-SEG.*'T1 MPRAGE \+C' \(series 5"):
        identify_series(scan_study(tmp_path), series_rules)


def test_two_equal_t2_are_ambiguous(tmp_path: Path, series_rules: SeriesRules) -> None:
    t1 = _tiny(tmp_path, "t1", 5, "T1 MPRAGE +C")
    _tiny(tmp_path, "t2a", 3, "Ax T2 FSE", **T2_ATTRS)
    _tiny(tmp_path, "t2b", 4, "Cor T2 FSE", **T2_ATTRS)
    _seg(tmp_path, t1)
    with pytest.raises(AmbiguousSeriesError, match=r"'Ax T2 FSE' \(series 3.*'Cor T2 FSE' \(series 4.*series_rules"):
        identify_series(scan_study(tmp_path), series_rules)


def test_seg_referencing_a_series_not_received(tmp_path: Path, series_rules: SeriesRules) -> None:
    t1 = _tiny(tmp_path, "t1", 5, "T1 MPRAGE +C")
    _tiny(tmp_path, "t2", 3, "T2 TSE", **T2_ATTRS)
    seg = _seg(tmp_path, t1)
    ds = pydicom.dcmread(seg)
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4.5.6"
    ds.save_as(seg)
    with pytest.raises(SegmentationError, match=r"references series 1\.2\.3\.4\.5\.6, which was not received"):
        identify_series(scan_study(tmp_path), series_rules)


def _as_ct(paths: list[Path]) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.Modality = "CT"
        ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.save_as(path)


def test_ct_series_is_ignored_when_mr_is_complete(tmp_path: Path, series_rules: SeriesRules) -> None:
    t1 = _tiny(tmp_path, "t1", 5, "T1 MPRAGE +C")
    _tiny(tmp_path, "t2", 3, "T2 TSE", **T2_ATTRS)
    _as_ct(_tiny(tmp_path, "ct", 2, "T1 head +C"))
    _seg(tmp_path, t1)
    found = identify_series(scan_study(tmp_path), series_rules)
    assert [s.modality for s in found.ignored] == ["CT"]


def test_ct_only_study_is_not_mr(tmp_path: Path, series_rules: SeriesRules) -> None:
    _as_ct(_tiny(tmp_path, "ct", 2, "Head routine"))
    with pytest.raises(UnsupportedInstanceError, match=r"not an MR study: received CT.*'Head routine'"):
        identify_series(scan_study(tmp_path), series_rules)


def test_non_dicom_file_is_not_skipped(tmp_path: Path) -> None:
    _tiny(tmp_path, "t1", 5, "T1 MPRAGE +C")
    (tmp_path / "t1" / "notes.txt").write_text("not DICOM")
    with pytest.raises(CorruptInstanceError, match=r"notes\.txt"):
        scan_study(tmp_path)


def test_two_studies_in_one_folder(tmp_path: Path, series_rules: SeriesRules) -> None:
    _tiny(tmp_path, "t1", 5, "T1 MPRAGE +C")
    _tiny(tmp_path, "t2", 3, "T2 TSE", study_instance_uid="1.2.3.4.5.6.7", **T2_ATTRS)
    with pytest.raises(InvalidStudyError, match=r"2 studies"):
        identify_series(scan_study(tmp_path), series_rules)


def test_scan_groups_recursively_and_ignores_file_names(tmp_path: Path) -> None:
    files = _tiny(tmp_path / "a" / "b", "t1", 5, "T1 MPRAGE +C")
    files[0].rename(tmp_path / "stray.bin")
    (series,) = scan_study(tmp_path)
    assert len(series.files) == 4 and series.series_number == 5 and series.modality == "MR"


def test_original_preferred_over_derived_reformat(tmp_path: Path, series_rules: SeriesRules) -> None:
    t1 = _tiny(tmp_path, "t1", 5, "t1_mprage_sag_p2_iso +C")
    for path in _tiny(tmp_path, "mpr", 6, "t1_mprage_sag_p2_iso +C_MPR_tra"):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["DERIVED", "SECONDARY", "MPR"]
        ds.save_as(path)
    _tiny(tmp_path, "t2", 3, "t2_tse_tra", **T2_ATTRS)
    seg = _seg(tmp_path, t1)
    ds = pydicom.dcmread(seg)
    del ds.ReferencedSeriesSequence  # no SEG reference to break the tie: ImageType decides
    ds.save_as(seg)
    found = identify_series(scan_study(tmp_path), series_rules)
    assert found.t1ce.series_number == 5
    assert any("does not say which series" in w for w in found.warnings)
