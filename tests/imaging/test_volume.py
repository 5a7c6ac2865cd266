# mypy: disable-error-code="no-untyped-call"
"""read_series_volume: every pixel encoding, orientation and multi-frame variant round-trips."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from node.errors import CorruptInstanceError, GeometryError
from node.imaging.study import scan_study
from node.imaging.types import SeriesRef
from node.imaging.volume import read_series_volume
from node.synth.dicom_series import write_mr_series
from tests.imaging import factory


def _only_series(folder: Path) -> SeriesRef:
    series = scan_study(folder)
    assert len(series) == 1
    return series[0]


def _write(tmp_path: Path, image: sitk.Image, **overrides: object) -> list[Path]:
    return write_mr_series(image, factory.header("vol", 7, "T1 +C", **overrides), tmp_path / "s", uid_seed="v")


def _assert_same_volume(read: sitk.Image, written: sitk.Image, atol: float = 0.51) -> None:
    assert read.GetSize() == written.GetSize()
    assert np.allclose(read.GetSpacing(), written.GetSpacing(), atol=1e-6)
    assert np.allclose(read.GetOrigin(), written.GetOrigin(), atol=1e-4)
    assert np.allclose(read.GetDirection(), written.GetDirection(), atol=1e-6)
    assert read.GetPixelID() == sitk.sitkFloat32
    diff = np.abs(sitk.GetArrayFromImage(read) - sitk.GetArrayFromImage(written))
    assert float(diff.max()) <= atol


def test_single_frame_round_trip_in_any_file_order(tmp_path: Path) -> None:
    image = factory.phantom()
    files = _write(tmp_path, image)
    ref = _only_series(tmp_path / "s")
    shuffled = SeriesRef(**{**ref.__dict__, "files": tuple(reversed(files))})
    _assert_same_volume(read_series_volume(shuffled), image)


@pytest.mark.parametrize(
    "direction",
    [factory.SAGITTAL, factory.CORONAL, factory.oblique_direction(20.0)],
    ids=["sagittal", "coronal", "oblique"],
)
def test_orientations_round_trip_values_and_positions(tmp_path: Path, direction: tuple[float, ...]) -> None:
    image = factory.phantom(direction=direction, origin=(30.0, -40.0, 25.0))
    _write(tmp_path, image)
    read = read_series_volume(_only_series(tmp_path / "s"))
    _assert_same_volume(read, image)
    # a known voxel maps to the same physical point, and holds the same value there
    index = (5, 9, 13)
    point = image.TransformIndexToPhysicalPoint(index)
    assert np.allclose(read.TransformIndexToPhysicalPoint(index), point, atol=1e-4)
    assert read.TransformPhysicalPointToIndex(point) == index
    assert abs(read[index] - image[index]) <= 0.51


def test_signed_pixels_with_rescale(tmp_path: Path) -> None:
    image = factory.phantom(scale=300.0) - 200.0  # negative values
    files = _write(tmp_path, image, signed=True, rescale_slope=0.5, rescale_intercept=-100.0)
    ds = pydicom.dcmread(files[0])
    assert ds.PixelRepresentation == 1 and float(ds.RescaleSlope) == 0.5
    read = read_series_volume(_only_series(tmp_path / "s"))
    assert float(sitk.GetArrayViewFromImage(read).min()) < 0
    _assert_same_volume(read, image, atol=0.26)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_compressed_transfer_syntaxes(tmp_path: Path, syntax: pydicom.uid.UID) -> None:
    image = factory.phantom(size=(40, 36, 6))  # JPEG 2000 needs >= 32 pixels for its 6 resolutions
    files = _write(tmp_path, image)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == syntax
    _assert_same_volume(read_series_volume(_only_series(tmp_path / "s")), image)


def test_jpeg_lossless_process_14_sv1(tmp_path: Path, require_tool) -> None:
    dcmcjpeg = require_tool("dcmcjpeg")
    image = factory.phantom(size=(24, 20, 5))
    files = _write(tmp_path, image)
    for path in files:
        subprocess.run([dcmcjpeg, "+e1", str(path), str(path)], check=True, capture_output=True)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    _assert_same_volume(read_series_volume(_only_series(tmp_path / "s")), image)


def _multiframe(tmp_path: Path, image: sitk.Image, enhanced: bool) -> Path:
    files = _write(tmp_path, image, rescale_slope=2.0, rescale_intercept=10.0)
    legacy = [pydicom.dcmread(f) for f in files]
    mf = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=legacy,
        series_instance_uid=factory.series_uid("multiframe"),
        series_number=8,
        sop_instance_uid=str(pydicom.uid.generate_uid(entropy_srcs=["multiframe"])),
        instance_number=1,
    )
    if enhanced:
        mf.SOPClassUID = EnhancedMRImageStorage
        mf.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    out = tmp_path / "mf" / "mf.dcm"
    out.parent.mkdir()
    mf.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("enhanced", [False, True], ids=["legacy-converted", "enhanced"])
def test_multiframe_enhanced_and_legacy_converted(tmp_path: Path, enhanced: bool) -> None:
    image = factory.phantom(direction=factory.oblique_direction(15.0))
    path = _multiframe(tmp_path, image, enhanced)
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == image.GetSize()[2]
    ref = _only_series(tmp_path / "mf")
    assert ref.sop_class_uid == (EnhancedMRImageStorage if enhanced else ds.SOPClassUID)
    _assert_same_volume(read_series_volume(ref), image, atol=1.01)


@pytest.mark.parametrize(
    ("charset", "description", "name"),
    [("ISO_IR 192", "T1 ΜΠ +C", "Δοκιμή^Ασθενής"), ("ISO_IR 100", "T1 Kontrastmittel Gehirn ü", "Müller^Jörg")],
)
def test_non_ascii_character_sets(tmp_path: Path, charset: str, description: str, name: str) -> None:
    image = factory.phantom(size=(12, 10, 4))
    write_mr_series(
        image,
        factory.header("cs", 9, description, specific_character_set=charset, patient_name=name),
        tmp_path / "s",
        uid_seed="cs",
    )
    ref = _only_series(tmp_path / "s")
    assert ref.series_description == description
    _assert_same_volume(read_series_volume(ref), image)


def test_missing_slice_is_a_gap(tmp_path: Path) -> None:
    files = _write(tmp_path, factory.phantom())
    files[7].unlink()
    with pytest.raises(GeometryError, match=r"irregular slice spacing.*0006\.dcm"):
        read_series_volume(_only_series(tmp_path / "s"))


def test_duplicate_position(tmp_path: Path) -> None:
    files = _write(tmp_path, factory.phantom(size=(12, 10, 5)))
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = pydicom.dcmread(files[2]).ImagePositionPatient
    ds.save_as(files[3])
    with pytest.raises(GeometryError, match="same position"):
        read_series_volume(_only_series(tmp_path / "s"))


def test_mixed_orientation(tmp_path: Path) -> None:
    files = _write(tmp_path, factory.phantom(size=(12, 10, 5)))
    ds = pydicom.dcmread(files[4])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(files[4])
    with pytest.raises(GeometryError, match=r"mixes slice orientations.*0004\.dcm"):
        read_series_volume(_only_series(tmp_path / "s"))


def test_truncated_pixel_data_is_corrupt(tmp_path: Path) -> None:
    files = _write(tmp_path, factory.phantom(size=(12, 10, 5)))
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 50])
    with pytest.raises(CorruptInstanceError, match=r"0002\.dcm"):
        read_series_volume(_only_series(tmp_path / "s"))


def test_file_without_preamble_is_read(tmp_path: Path) -> None:
    image = factory.phantom(size=(12, 10, 4))
    files = _write(tmp_path, image)
    ds = pydicom.dcmread(files[1])
    ds.preamble = None
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    pydicom.dcmwrite(files[1], ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert files[1].read_bytes()[128:132] != b"DICM"
    _assert_same_volume(read_series_volume(_only_series(tmp_path / "s")), image)


# -- the pixel pass reuses the scan's headers ---------------------------------------------------------------


def _encode(path: Path, syntax: pydicom.uid.UID) -> None:
    """Rewrite one file in ``syntax`` (big endian: the 16-bit pixel data swapped as the syntax says)."""
    ds = pydicom.dcmread(path)
    if syntax == ExplicitVRBigEndian:
        pixels = ds.pixel_array
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    elif syntax.is_compressed:
        ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True, implicit_vr=syntax.is_implicit_VR, little_endian=True)


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless, DeflatedExplicitVRLittleEndian],
    ids=lambda s: s.name,
)
def test_pixels_are_read_without_parsing_the_header_again(
    tmp_path: Path, syntax: pydicom.uid.UID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study scan's headers (no pixel data) and the offset where their pixel data starts give the volume a
    whole-file read gives, without another ``dcmread`` (a deflated file, whose offset is in the inflated stream,
    is read whole); the headers stay without pixel data (they are the SR's evidence)."""
    image = factory.phantom(size=(16, 12, 5))
    files = _write(tmp_path, image)
    for path in files:
        _encode(path, syntax)
    ref = _only_series(tmp_path / "s")
    assert [h.path for h in ref.headers] == list(ref.files)
    whole = read_series_volume(dataclasses.replace(ref, headers=()))  # no headers kept: every file read whole
    reads = factory.count_reads(monkeypatch)
    volume = read_series_volume(ref)
    assert sum(reads.values()) == (len(files) if syntax == DeflatedExplicitVRLittleEndian else 0)
    assert np.array_equal(sitk.GetArrayFromImage(volume), sitk.GetArrayFromImage(whole))
    assert volume.GetOrigin() == whole.GetOrigin() and volume.GetSpacing() == whole.GetSpacing()
    assert volume.GetDirection() == whole.GetDirection()
    _assert_same_volume(volume, image)
    assert all("PixelData" not in h.dataset for h in ref.headers)


def test_multiframe_pixels_from_the_scan_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = factory.phantom(direction=factory.oblique_direction(15.0))
    _multiframe(tmp_path, image, enhanced=True)
    ref = _only_series(tmp_path / "mf")
    whole = read_series_volume(dataclasses.replace(ref, headers=()))
    reads = factory.count_reads(monkeypatch)
    volume = read_series_volume(ref)
    assert not reads
    assert np.array_equal(sitk.GetArrayFromImage(volume), sitk.GetArrayFromImage(whole))


@pytest.mark.parametrize("cut", [50, 600], ids=["pixel-data-short", "into-the-header"])
def test_a_bad_file_gives_the_same_error_with_or_without_the_scan_header(tmp_path: Path, cut: int) -> None:
    """A file cut short after the scan (pixel data short, or the header itself) fails as a whole-file read does."""
    files = _write(tmp_path, factory.phantom(size=(12, 10, 5)))
    ref = _only_series(tmp_path / "s")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - cut] if cut < 100 else data[:cut])
    with pytest.raises(CorruptInstanceError, match=r"0002\.dcm") as whole:
        read_series_volume(dataclasses.replace(ref, headers=()))
    with pytest.raises(CorruptInstanceError, match=r"0002\.dcm") as scanned:
        read_series_volume(ref)
    assert str(scanned.value) == str(whole.value)
