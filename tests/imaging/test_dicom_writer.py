# mypy: disable-error-code="no-untyped-call"
"""node.synth.dicom_series: valid, deterministic MR and SEG files with the geometry of the image."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from node.synth.dicom_series import SegmentSpec, write_mr_series, write_segmentation
from tests.imaging import factory


def _dciodvfy_errors(tool: str, path: Path) -> list[str]:
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
def test_dciodvfy_has_no_errors(tmp_path: Path, require_tool, fractional: bool) -> None:
    tool = require_tool("dciodvfy")
    image = factory.phantom(direction=factory.oblique_direction(10.0))
    study = factory.write_study(
        tmp_path, t1ce_image=image, fractional=fractional,
        t1ce_overrides={"specific_character_set": "ISO_IR 192", "patient_name": "Δοκιμή^Ασθενής",
                        "scanning_sequence": "GR\\IR", "inversion_time": 900.0},
    )
    assert _dciodvfy_errors(tool, study.t1ce_files[0]) == []
    assert _dciodvfy_errors(tool, study.t2_files[0]) == []
    assert _dciodvfy_errors(tool, study.seg_path) == []


def test_header_geometry_and_pixels(tmp_path: Path) -> None:
    image = factory.phantom(size=(12, 10, 4), spacing=(0.9, 0.8, 2.5), direction=factory.SAGITTAL,
                            origin=(50.0, -10.0, 20.0))
    files = write_mr_series(
        image, factory.header("g", 4, "T1 +C", rescale_slope=2.0, rescale_intercept=-50.0), tmp_path, uid_seed="g"
    )
    assert [f.name for f in files] == ["0000.dcm", "0001.dcm", "0002.dcm", "0003.dcm"]
    ds = pydicom.dcmread(files[2])
    assert np.allclose([float(v) for v in ds.ImageOrientationPatient], [0, 1, 0, 0, 0, -1])
    assert np.allclose([float(v) for v in ds.ImagePositionPatient], image.TransformIndexToPhysicalPoint((0, 0, 2)))
    assert np.allclose([float(v) for v in ds.PixelSpacing], [0.8, 0.9])
    assert float(ds.SliceThickness) == 2.5 and ds.Rows == 10 and ds.Columns == 12
    assert ds.InstanceNumber == 3
    expected = np.rint((sitk.GetArrayFromImage(image)[2] + 50.0) / 2.0)
    assert np.array_equal(ds.pixel_array.astype(np.float64), expected)
    assert float(ds.WindowWidth) > 0


def test_output_is_deterministic(tmp_path: Path) -> None:
    image = factory.phantom(size=(12, 10, 4))
    mask = factory.sphere_mask(image, 3.0)
    outputs = []
    for run in ("a", "b"):
        files = write_mr_series(image, factory.header("d", 4, "T1 +C"), tmp_path / run, uid_seed="seed")
        seg = write_segmentation(
            files, [SegmentSpec("Lesion 1", mask, "lesion")], tmp_path / run / "seg" / "seg.dcm",
            series_number=9, series_description="SEG", manufacturer="Test", uid_seed="seed",
        )
        outputs.append([f.read_bytes() for f in [*files, seg]])
    assert outputs[0] == outputs[1]
    other = write_mr_series(image, factory.header("d", 4, "T1 +C"), tmp_path / "c", uid_seed="other")
    assert pydicom.dcmread(other[0]).SOPInstanceUID != pydicom.dcmread(tmp_path / "a" / "0000.dcm").SOPInstanceUID


def test_segmentation_codes_and_identity(tmp_path: Path) -> None:
    image = factory.phantom(size=(12, 10, 6))
    specs = [
        SegmentSpec("Lesion 1", factory.sphere_mask(image, 3.0, (3, 3, 2)), "lesion"),
        SegmentSpec("Pons reference", factory.sphere_mask(image, 3.0, (8, 6, 3)), "pons"),
    ]
    study = factory.write_study(tmp_path, t1ce_image=image, segments=specs)
    seg = pydicom.dcmread(study.seg_path)
    source = pydicom.dcmread(study.t1ce_files[0])
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    types = [item.SegmentedPropertyTypeCodeSequence[0].CodeValue for item in seg.SegmentSequence]
    categories = [item.SegmentedPropertyCategoryCodeSequence[0].CodeValue for item in seg.SegmentSequence]
    assert types == ["14799000", "119238007"] and categories == ["49755003", "91723000"]
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Lesion 1", "Pons reference"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


def test_mask_off_the_source_grid_is_refused(tmp_path: Path) -> None:
    image = factory.phantom(size=(12, 10, 4))
    files = write_mr_series(image, factory.header("o", 4, "T1 +C"), tmp_path, uid_seed="o")
    shifted = factory.sphere_mask(image, 3.0)
    shifted.SetOrigin((0.0, 0.0, 0.3))
    with pytest.raises(ValueError, match="does not match the source image slices"):
        write_segmentation(
            files, [SegmentSpec("Lesion 1", shifted, "lesion")], tmp_path / "seg.dcm", series_number=9,
            series_description="SEG", manufacturer="Test", uid_seed="o",
        )
