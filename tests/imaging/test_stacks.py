# mypy: disable-error-code="no-untyped-call"
"""What scanners really send: an Enhanced MR object holding several stacks is split into its stacks (the finest
one is the volume, a note says which), not refused; MONOCHROME1 is inverted before use. Generated objects go
through the real reading code (read_series_volume) and loading code (load_study)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage

from node.errors import GeometryError, UnsupportedInstanceError
from node.imaging.loading import load_study
from node.imaging.series_rules import SeriesRules
from node.imaging.study import scan_study
from node.imaging.volume import read_series_volume
from node.synth.dicom_series import SegmentSpec, write_mr_series, write_segmentation
from tests.imaging import factory

AXIAL_FINE = factory.phantom(size=(24, 20, 14), spacing=(1.0, 1.0, 1.0), seed=3)
SAGITTAL_COARSE = factory.phantom(size=(24, 20, 8), spacing=(1.0, 1.0, 2.5), direction=factory.SAGITTAL, seed=4,
                                  origin=(-6.0, -15.0, -10.0))
_PER_FRAME = ("PlaneOrientationSequence", "PixelMeasuresSequence", "PixelValueTransformationSequence")


def _single_frames(image: sitk.Image, folder: Path, name: str, **overrides: object) -> list[Path]:
    header = factory.header(name, 5, "T1 MPRAGE KM", contrast_bolus_agent="Gadovist", **overrides)
    return write_mr_series(image, header, folder, uid_seed=name)


def enhanced_with_stacks(stacks: Sequence[tuple[str, Sequence[Path]]], out: Path, series: str = "enh") -> Path:
    """One Enhanced MR instance holding every stack (``(StackID, single-frame files)``), frames in stack order:
    per-frame plane orientation, pixel measures and rescale; FrameContentSequence StackID / InStackPositionNumber."""
    converted = [
        hd.legacy.LegacyConvertedEnhancedMRImage(
            legacy_datasets=[pydicom.dcmread(f) for f in files], series_instance_uid=factory.series_uid(series),
            series_number=5, sop_instance_uid=str(pydicom.uid.generate_uid(entropy_srcs=[series, sid])),
            instance_number=1,
        )
        for sid, files in stacks
    ]
    base = converted[0]
    per_frame: list[Dataset] = []
    for (sid, _), mf in zip(stacks, converted, strict=True):
        shared = mf.SharedFunctionalGroupsSequence[0]
        for position, item in enumerate(mf.PerFrameFunctionalGroupsSequence, start=1):
            item = copy.deepcopy(item)
            for keyword in _PER_FRAME:
                if keyword in shared and keyword not in item:
                    setattr(item, keyword, copy.deepcopy(shared[keyword].value))
            content = item.FrameContentSequence[0] if "FrameContentSequence" in item else Dataset()
            content.StackID = sid
            content.InStackPositionNumber = position
            item.FrameContentSequence = [content]
            per_frame.append(item)
    pixels = np.concatenate([mf.pixel_array for mf in converted]).astype(base.pixel_array.dtype)
    shared = base.SharedFunctionalGroupsSequence[0]
    for keyword in _PER_FRAME:
        if keyword in shared:
            delattr(shared, keyword)
    base.PerFrameFunctionalGroupsSequence = per_frame
    base.NumberOfFrames = len(per_frame)
    base.PixelData = pixels.tobytes()
    base.SOPClassUID = EnhancedMRImageStorage
    base.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    out.parent.mkdir(parents=True, exist_ok=True)
    base.save_as(out, enforce_file_format=True)
    return out


def _assert_volume(read: sitk.Image, written: sitk.Image) -> None:
    assert read.GetSize() == written.GetSize()
    assert np.allclose(read.GetSpacing(), written.GetSpacing(), atol=1e-6)
    assert np.allclose(read.GetOrigin(), written.GetOrigin(), atol=1e-4)
    assert np.allclose(read.GetDirection(), written.GetDirection(), atol=1e-6)
    assert float(np.abs(sitk.GetArrayFromImage(read) - sitk.GetArrayFromImage(written)).max()) <= 0.51


def _only(folder: Path) -> object:
    (ref,) = scan_study(folder)
    return ref


@pytest.mark.parametrize("fine_first", [True, False], ids=["fine-stack-first", "fine-stack-second"])
def test_two_orientation_stacks_are_split_and_the_finest_used(tmp_path: Path, fine_first: bool) -> None:
    fine = _single_frames(AXIAL_FINE, tmp_path / "a", "ax")
    coarse = _single_frames(SAGITTAL_COARSE, tmp_path / "s", "sag")
    stacks = [("1", fine), ("2", coarse)] if fine_first else [("1", coarse), ("2", fine)]
    path = enhanced_with_stacks(stacks, tmp_path / "mf" / "mf.dcm")
    assert int(pydicom.dcmread(path).NumberOfFrames) == 14 + 8
    notes: list[str] = []
    volume = read_series_volume(_only(tmp_path / "mf"), notes)  # type: ignore[arg-type]
    _assert_volume(volume, AXIAL_FINE)
    (note,) = notes
    fine_id = "1" if fine_first else "2"
    assert f"holds 2 stacks (Enhanced MR); stack {fine_id} (14 frames, orientation axial) was used" in note


def test_series_like_stacks_at_the_same_positions_are_split(tmp_path: Path) -> None:
    """Two stacks over the same slice positions (e.g. two contrast phases in one object) used to read as
    duplicate positions; they are told apart by StackID. Equal voxels: the stack with more slices wins."""
    thin = _single_frames(AXIAL_FINE, tmp_path / "a", "ax")
    partial = factory.phantom(size=(24, 20, 10), spacing=(1.0, 1.0, 1.0), seed=9)
    other = _single_frames(partial, tmp_path / "b", "ax2")
    path = enhanced_with_stacks([("7", other), ("3", thin)], tmp_path / "mf" / "mf.dcm")
    notes: list[str] = []
    _assert_volume(read_series_volume(_only(path.parent), notes), AXIAL_FINE)  # type: ignore[arg-type]
    assert "stack 3 (14 frames" in notes[0]


def test_no_regular_stack_is_refused_with_reasons(tmp_path: Path) -> None:
    one = _single_frames(factory.phantom(size=(24, 20, 1)), tmp_path / "a", "one")
    other = _single_frames(factory.phantom(size=(24, 20, 1), direction=factory.CORONAL), tmp_path / "b", "two")
    path = enhanced_with_stacks([("1", one), ("2", other)], tmp_path / "mf" / "mf.dcm")
    with pytest.raises(GeometryError, match="holds 2 stacks and none is a regular 3-D volume"):
        read_series_volume(_only(path.parent))  # type: ignore[arg-type]


def test_single_frame_series_with_mixed_orientations_is_still_refused(tmp_path: Path) -> None:
    files = [*_single_frames(AXIAL_FINE, tmp_path / "s", "mix"),
             *_single_frames(SAGITTAL_COARSE, tmp_path / "s2", "mix")]
    ref = _only(tmp_path / "s")
    ref = type(ref)(**{**ref.__dict__, "files": tuple(files)})
    with pytest.raises(GeometryError, match="mixes slice orientations"):
        read_series_volume(ref)  # type: ignore[arg-type]


def _to_monochrome1(path: Path) -> None:
    ds = pydicom.dcmread(path)
    maximum = (1 << int(ds.BitsStored)) - 1
    assert int(ds.PixelRepresentation) == 0
    ds.PixelData = (maximum - ds.pixel_array.astype(np.int64)).astype(ds.pixel_array.dtype).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path, enforce_file_format=True)


def test_monochrome1_is_inverted_single_and_multi_frame(tmp_path: Path) -> None:
    files = _single_frames(AXIAL_FINE, tmp_path / "s", "m1")
    plain = read_series_volume(_only(tmp_path / "s"))  # type: ignore[arg-type]
    path = enhanced_with_stacks([("1", files)], tmp_path / "mf" / "mf.dcm")
    _to_monochrome1(path)
    for path in files:
        _to_monochrome1(path)
    assert pydicom.dcmread(files[0]).PhotometricInterpretation == "MONOCHROME1"
    inverted = read_series_volume(_only(tmp_path / "s"))  # type: ignore[arg-type]
    assert np.array_equal(sitk.GetArrayFromImage(inverted), sitk.GetArrayFromImage(plain))
    # the bright sphere stays bright (higher = brighter, as in MONOCHROME2)
    centre = tuple(s // 2 for s in AXIAL_FINE.GetSize())
    assert inverted[centre] > inverted[(1, 1, 1)]
    mf = tmp_path / "mf" / "mf.dcm"
    assert pydicom.dcmread(mf).PhotometricInterpretation == "MONOCHROME1"
    _assert_volume(read_series_volume(_only(mf.parent)), AXIAL_FINE)  # type: ignore[arg-type]


def test_colour_photometric_is_not_an_mr_image(tmp_path: Path) -> None:
    files = _single_frames(AXIAL_FINE, tmp_path / "s", "pal")
    ds = pydicom.dcmread(files[0])
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(files[0], enforce_file_format=True)
    with pytest.raises(UnsupportedInstanceError, match="PALETTE COLOR is not a grey-scale MR image"):
        read_series_volume(_only(tmp_path / "s"))  # type: ignore[arg-type]


def test_load_study_with_a_two_stack_enhanced_t1ce(tmp_path: Path, series_rules: SeriesRules) -> None:
    """load_study: the T1CE is one Enhanced MR object (axial 1 mm + sagittal 2.5 mm reformat), the SEG drawn on the
    axial stack; the axial stack is the volume, the lesion maps onto it, and the study warnings say so."""
    fine = _single_frames(AXIAL_FINE, tmp_path.parent / f"{tmp_path.name}-ax", "enh")  # the SEG references it
    coarse = _single_frames(SAGITTAL_COARSE, tmp_path.parent / f"{tmp_path.name}-sag", "sag")
    enhanced_with_stacks([("1", coarse), ("2", fine)], tmp_path / "t1ce" / "mf.dcm")
    write_mr_series(
        factory.phantom(size=(30, 26, 8), spacing=(1.2, 1.2, 4.0)),
        factory.header("t2", 3, "T2 TSE tra", scanning_sequence="SE", mr_acquisition_type="2D"),
        tmp_path / "t2", uid_seed="t2",
    )
    lesion = factory.sphere_mask(AXIAL_FINE, 4.0)
    write_segmentation(
        fine, [SegmentSpec("Metastasis 1", lesion, "lesion")], tmp_path / "seg" / "seg.dcm",
        series_number=100, series_description="SEG", manufacturer="Test", uid_seed="seg",
    )
    loaded = load_study(tmp_path, series_rules)
    assert loaded.identity.t1ce_series_uid == factory.series_uid("enh")
    _assert_volume(loaded.t1ce, AXIAL_FINE)
    assert np.array_equal(sitk.GetArrayFromImage(loaded.lesions[0].mask), sitk.GetArrayFromImage(lesion))
    assert any("holds 2 stacks (Enhanced MR); stack 2 (14 frames, orientation axial)" in w for w in loaded.warnings)
