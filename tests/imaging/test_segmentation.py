# mypy: disable-error-code="no-untyped-call"
"""read_segments: highdicom and dcmqi SEGs, BINARY and FRACTIONAL, mapped exactly onto the T1CE grid."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from node.errors import SegmentationError
from node.imaging.series_rules import SeriesRules
from node.imaging.study import scan_study
from node.imaging.types import SeriesRef
from node.imaging.volume import read_series_volume
from node.synth.dicom_series import SegmentSpec, write_mr_series, write_segmentation
from tests.imaging import factory


def _ref(folder: Path) -> SeriesRef:
    (series,) = scan_study(folder)
    return series


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _assert_on_grid(mask: sitk.Image, grid: sitk.Image) -> None:
    assert mask.GetSize() == grid.GetSize()
    assert np.allclose(mask.GetOrigin(), grid.GetOrigin())
    assert np.allclose(mask.GetSpacing(), grid.GetSpacing())
    assert np.allclose(mask.GetDirection(), grid.GetDirection())
    assert mask.GetPixelID() == sitk.sitkUInt8


def _read(study: factory.Study, rules: SeriesRules, seg_dir: Path | None = None):
    from node.imaging.segmentation import read_segments

    t1ce = _ref(study.root / "t1ce")
    image = read_series_volume(t1ce)
    warnings: list[str] = []
    lesions, pons = read_segments(_ref(seg_dir or study.root / "seg"), t1ce, image, rules, warnings=warnings)
    return image, lesions, pons, warnings


def test_highdicom_binary_single_segment_is_exact(tmp_path: Path, series_rules: SeriesRules) -> None:
    study = factory.write_study(tmp_path, t1ce_image=factory.phantom(direction=factory.oblique_direction(25.0)))
    seg = hd.seg.segread(study.seg_path)
    assert int(seg.NumberOfFrames) < study.t1ce_image.GetSize()[2]  # empty frames were omitted
    image, lesions, pons, warnings = _read(study, series_rules)
    assert pons is None and warnings == []
    (lesion,) = lesions
    assert lesion.label == "Lesion 1" and lesion.segment_number == 1
    assert lesion.tracking_uid is not None and lesion.tracking_id == "Lesion 1"
    _assert_on_grid(lesion.mask, image)
    assert np.array_equal(_array(lesion.mask), _array(study.lesion))


def test_multi_segment_lesions_and_pons(tmp_path: Path, series_rules: SeriesRules) -> None:
    image = factory.phantom()
    lesion_a = factory.sphere_mask(image, 5.0, (8, 8, 6))
    lesion_b = factory.sphere_mask(image, 6.0, (22, 18, 12))
    pons = factory.sphere_mask(image, 4.0, (16, 14, 16))
    specs = [
        SegmentSpec("Lesion 1", lesion_a, "lesion"),
        SegmentSpec("Pons reference", pons, "pons"),
        SegmentSpec("Lesion 2", lesion_b, "lesion", tracking_id="met-2"),
    ]
    study = factory.write_study(tmp_path, t1ce_image=image, segments=specs)
    _, lesions, pons_segment, _ = _read(study, series_rules)
    assert [s.label for s in lesions] == ["Lesion 1", "Lesion 2"]
    assert [s.segment_number for s in lesions] == [1, 3]
    assert lesions[1].tracking_id == "met-2"
    assert np.array_equal(_array(lesions[0].mask), _array(lesion_a))
    assert np.array_equal(_array(lesions[1].mask), _array(lesion_b))
    assert pons_segment is not None and pons_segment.label == "Pons reference"
    assert np.array_equal(_array(pons_segment.mask), _array(pons))


def test_fractional_is_thresholded_and_says_so(tmp_path: Path, series_rules: SeriesRules) -> None:
    image = factory.phantom()
    soft = sitk.Cast(factory.sphere_mask(image, 8.0), sitk.sitkFloat32) * 0.8
    soft = soft + sitk.Cast(factory.sphere_mask(image, 10.0), sitk.sitkFloat32) * 0.2  # rim at 0.2: below 0.5
    study = factory.write_study(
        tmp_path, t1ce_image=image, segments=[SegmentSpec("Lesion 1", soft, "lesion")], fractional=True
    )
    assert pydicom.dcmread(study.seg_path).SegmentationType == "FRACTIONAL"
    _, (lesion,), _, warnings = _read(study, series_rules)
    assert np.array_equal(_array(lesion.mask), _array(factory.sphere_mask(image, 8.0)))
    assert any("FRACTIONAL" in w and "0.5" in w for w in warnings)


def test_empty_segment_is_an_error(tmp_path: Path, series_rules: SeriesRules) -> None:
    image = factory.phantom()
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    specs = [SegmentSpec("Lesion 1", factory.sphere_mask(image), "lesion"), SegmentSpec("Lesion 2", empty, "lesion")]
    study = factory.write_study(tmp_path, t1ce_image=image, segments=specs)
    with pytest.raises(SegmentationError, match="segment 2 'Lesion 2' is empty"):
        _read(study, series_rules)


def test_frame_of_reference_mismatch(tmp_path: Path, series_rules: SeriesRules) -> None:
    study = factory.write_study(tmp_path)
    ds = pydicom.dcmread(study.seg_path)
    ds.FrameOfReferenceUID = "1.2.3.999"
    ds.save_as(study.seg_path)
    with pytest.raises(SegmentationError, match=r"frame of reference 1\.2\.3\.999"):
        _read(study, series_rules)


def test_seg_on_another_grid_is_resampled(tmp_path: Path, series_rules: SeriesRules) -> None:
    """A SEG drawn on a 1 mm reformat (same frame of reference) maps onto the 1.5 mm T1CE by nearest neighbour."""
    study = factory.write_study(tmp_path)
    fine = sitk.Resample(
        study.t1ce_image, [48, 42, 30], sitk.Transform(), sitk.sitkLinear, study.t1ce_image.GetOrigin(),
        (1.0, 1.0, 1.0), study.t1ce_image.GetDirection(),
    )
    fine_files = write_mr_series(fine, factory.header("fine", 6, "T1 reformat"), tmp_path / "fine", uid_seed="fine")
    fine_lesion = sitk.Resample(study.lesion, fine, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    write_segmentation(
        fine_files, [SegmentSpec("Lesion 1", fine_lesion, "lesion")], tmp_path / "seg2" / "seg.dcm",
        series_number=101, series_description="SEG on reformat", manufacturer="Test", uid_seed="seg2",
    )
    image, (lesion,), _, warnings = _read(study, series_rules, seg_dir=tmp_path / "seg2")
    _assert_on_grid(lesion.mask, image)
    got, want = _array(lesion.mask).astype(bool), _array(study.lesion).astype(bool)
    dice = 2 * (got & want).sum() / (got.sum() + want.sum())
    assert dice > 0.85
    assert any("resampled nearest-neighbour" in w for w in warnings)


DCMQI_CODES = {
    "lesion": (
        {"CodeValue": "49755003", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Morphologically Abnormal Structure"},
        {"CodeValue": "14799000", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Neoplasm, Secondary"},
    ),
    "pons": (
        {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"},
        {"CodeValue": "119238007", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Brain Stem"},
    ),
}


def test_dcmqi_itkimage2segimage_seg(tmp_path: Path, series_rules: SeriesRules, require_tool) -> None:
    tool = require_tool("itkimage2segimage")
    image = factory.phantom(direction=factory.SAGITTAL)
    study = factory.write_study(tmp_path, t1ce_image=image)
    lesion_a = factory.sphere_mask(image, 5.0, (8, 8, 6))
    pons = factory.sphere_mask(image, 4.0, (20, 18, 14))
    labels = sitk.GetArrayFromImage(lesion_a) + 2 * sitk.GetArrayFromImage(pons)
    label_map = sitk.GetImageFromArray(labels.astype(np.uint16))
    label_map.CopyInformation(image)
    nrrd = tmp_path / "labels.nrrd"
    sitk.WriteImage(label_map, str(nrrd))
    segments = []
    for label_id, (name, kind) in enumerate([("Lesion 1", "lesion"), ("Pons reference", "pons")], start=1):
        category, prop_type = DCMQI_CODES[kind]
        segments.append({
            "labelID": label_id, "SegmentLabel": name, "SegmentDescription": name, "SegmentAlgorithmType": "MANUAL",
            "SegmentedPropertyCategoryCodeSequence": category, "SegmentedPropertyTypeCodeSequence": prop_type,
            "recommendedDisplayRGBValue": [255, 0, 0],
        })
    meta = {
        "ContentCreatorName": "Reader^One", "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "Slicer segmentation", "SeriesNumber": "300", "InstanceNumber": "1",
        "BodyPartExamined": "BRAIN", "segmentAttributes": [segments],
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "dcmqi" / "seg.dcm"
    out.parent.mkdir()
    subprocess.run(
        [tool, "--inputImageList", str(nrrd), "--inputDICOMDirectory", str(tmp_path / "t1ce"),
         "--inputMetadata", str(tmp_path / "meta.json"), "--outputDICOM", str(out)],
        check=True, capture_output=True, timeout=120,
    )
    ds = pydicom.dcmread(out)
    # the dcmqi pitfall this test is about: highdicom writes SpatialLocationsPreserved, dcmqi does not
    assert not any(elem.keyword == "SpatialLocationsPreserved" for elem in ds.iterall())
    assert any(elem.keyword == "SpatialLocationsPreserved" for elem in pydicom.dcmread(study.seg_path).iterall())
    _, lesions, pons_segment, _ = _read(study, series_rules, seg_dir=tmp_path / "dcmqi")
    (lesion,) = lesions
    assert lesion.label == "Lesion 1"
    assert np.array_equal(_array(lesion.mask), _array(lesion_a))
    assert pons_segment is not None and np.array_equal(_array(pons_segment.mask), _array(pons))


def test_seg_on_multiframe_source(tmp_path: Path, series_rules: SeriesRules) -> None:
    from node.imaging.segmentation import read_segments

    image = factory.phantom(direction=factory.CORONAL)
    files = write_mr_series(image, factory.header("t1", 5, "T1 +C"), tmp_path / "single", uid_seed="t1")
    mf = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=[pydicom.dcmread(f) for f in files],
        series_instance_uid=factory.series_uid("mf"),
        series_number=8,
        sop_instance_uid=str(pydicom.uid.generate_uid(entropy_srcs=["mf"])),
        instance_number=1,
    )
    (tmp_path / "mf").mkdir()
    mf_path = tmp_path / "mf" / "mf.dcm"
    mf.save_as(mf_path, enforce_file_format=True)
    lesion = factory.sphere_mask(image, 6.0)
    write_segmentation(
        [mf_path], [SegmentSpec("Lesion 1", lesion, "lesion")], tmp_path / "seg" / "seg.dcm",
        series_number=9, series_description="SEG", manufacturer="Test", uid_seed="mfseg",
    )
    t1ce = _ref(tmp_path / "mf")
    t1ce_image = read_series_volume(t1ce)
    (got,), _ = read_segments(_ref(tmp_path / "seg"), t1ce, t1ce_image, series_rules)
    _assert_on_grid(got.mask, t1ce_image)
    assert np.array_equal(_array(got.mask), _array(lesion))


def test_labelmap_seg(tmp_path: Path, series_rules: SeriesRules) -> None:
    from pydicom.sr.codedict import codes

    from node.imaging.segmentation import read_segments

    image = factory.phantom()
    study = factory.write_study(tmp_path, t1ce_image=image)
    lesion_a = factory.sphere_mask(image, 5.0, (8, 8, 6))
    lesion_b = factory.sphere_mask(image, 6.0, (22, 18, 12))
    labels = _array(lesion_a) + 2 * _array(lesion_b)
    descriptions = [
        hd.seg.SegmentDescription(
            n, f"Lesion {n}", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.NeoplasmSecondary, "MANUAL"
        )
        for n in (1, 2)
    ]
    source = [pydicom.dcmread(f) for f in study.t1ce_files]
    seg = hd.seg.Segmentation(
        source, labels.astype(np.uint8), "LABELMAP", descriptions, hd.UID(), 101, hd.UID(), 1,
        "Test", "Test", "1", "1",
    )
    (tmp_path / "labelmap").mkdir()
    seg.save_as(tmp_path / "labelmap" / "seg.dcm")
    t1ce = _ref(tmp_path / "t1ce")
    ref = _ref(tmp_path / "labelmap")
    assert ref.sop_class_uid in series_rules.seg_sop_classes
    lesions, _ = read_segments(ref, t1ce, read_series_volume(t1ce), series_rules)
    assert [s.label for s in lesions] == ["Lesion 1", "Lesion 2"]
    assert np.array_equal(_array(lesions[0].mask), _array(lesion_a))
    assert np.array_equal(_array(lesions[1].mask), _array(lesion_b))


def test_unrecognised_segments_follow_the_policy(tmp_path: Path, series_rules: SeriesRules) -> None:
    import dataclasses

    image = factory.phantom()
    study = factory.write_study(tmp_path, t1ce_image=image)
    ds = pydicom.dcmread(study.seg_path)
    item = ds.SegmentSequence[0]
    item.SegmentLabel = "Segment_1"
    item.SegmentedPropertyTypeCodeSequence[0].CodeValue = "85756007"  # Tissue: 3D Slicer's default
    item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning = "Tissue"
    ds.save_as(study.seg_path)
    _, (lesion,), _, warnings = _read(study, series_rules)
    assert lesion.label == "Segment_1"
    assert any("unrecognised" in w for w in warnings)
    strict = dataclasses.replace(
        series_rules, segmentation=dataclasses.replace(series_rules.segmentation, unrecognised="error")
    )
    with pytest.raises(SegmentationError, match="segment 1 'Segment_1' is neither a lesion nor the pons"):
        _read(study, strict)
    ignoring = dataclasses.replace(
        series_rules, segmentation=dataclasses.replace(series_rules.segmentation, unrecognised="ignore")
    )
    with pytest.raises(SegmentationError, match="holds no lesion segment"):
        _read(study, ignoring)
