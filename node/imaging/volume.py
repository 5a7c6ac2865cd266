# mypy: disable-error-code="no-untyped-call"
"""Read one MR series (single-frame or multi-frame, any transfer syntax) into a float32 SimpleITK volume.

Frames are placed by ImagePositionPatient along the slice normal (row cosine × column cosine), so arrival order,
file names and InstanceNumber do not matter. The result follows ``node.imaging.types``: ITK x = column,
y = row, z = slice; direction columns = row cosine, column cosine, normal; rescale slope/intercept applied.
Irregular stacks (gaps, duplicate positions, mixed orientations or sizes) raise :class:`GeometryError`.
A multi-frame object holding several stacks (StackID, orientations) is split and the finest stack used
(:mod:`node.imaging.stacks`); MONOCHROME1 is inverted before the rescale (:mod:`node.imaging.photometric`).
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from node.errors import CorruptInstanceError, GeometryError, UnsupportedInstanceError
from node.imaging.photometric import to_monochrome2
from node.imaging.stacks import choose_volume, split_stacks
from node.imaging.types import InstanceHeader, SeriesRef

logger = logging.getLogger(__name__)

ORIENTATION_ATOL = 1e-4
SPACING_RTOL = 0.01


@dataclass(frozen=True)
class _Frame:
    position: npt.NDArray[np.float64]
    orientation: npt.NDArray[np.float64]  # 6 values: row cosine, column cosine
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    pixels: npt.NDArray[np.float32]  # rows x columns, real-world values
    source: str
    stack: str | None = None  # multi-frame: the frame's StackID ("" when none); None: a single-frame file


_READ_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, IndexError, struct.error)
#: Pixel Data, Float Pixel Data, Double Float Pixel Data: where ``stop_before_pixels`` stops
_PIXEL_TAGS = (Tag(0x7FE0, 0x0010), Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009))


def read_instance(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Read one DICOM file; files without the 128-byte preamble are accepted if they parse as an instance.

    Raises :class:`CorruptInstanceError` naming the file when it is not readable DICOM.
    """
    return _read(Path(path), stop_before_pixels)[0]


def read_header(path: Path) -> InstanceHeader:
    """The file's header (:func:`read_instance` with ``stop_before_pixels``, same errors) and where its pixel data
    element starts, for :func:`_dataset` to add the pixels later without parsing the header again."""
    ds, offset = _read(Path(path), True)
    deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian  # offset in the inflated
    return InstanceHeader(path, ds, None if deflated else offset)


def _read(path: Path, stop_before_pixels: bool) -> tuple[Dataset, int]:
    """The dataset and the file position where reading stopped (``stop_before_pixels``: the pixel data element)."""
    try:
        with path.open("rb") as fp:
            try:
                return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels), fp.tell()
            except InvalidDicomError:
                pass
    except _READ_ERRORS as exc:
        raise CorruptInstanceError(f"{path} is not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    try:  # no preamble / "DICM" prefix: some exporters write the bare dataset
        with warnings.catch_warnings(), path.open("rb") as fp:
            warnings.simplefilter("ignore")  # pydicom guesses at VR/encoding of non-DICOM bytes
            ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=True)
            offset = fp.tell()
    except _READ_ERRORS as exc:
        raise CorruptInstanceError(f"{path} is not a DICOM file (no DICOM header: {exc})") from exc
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise CorruptInstanceError(f"{path} is not a DICOM file (no DICOM header, no SOP Class/Instance UID)")
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    logger.info("%s has no DICOM preamble; read it as a bare dataset", path)
    return ds, offset


def _dataset(path: Path, header: InstanceHeader | None) -> Dataset:
    """The file's whole dataset: the scan's header with the pixel data element (and anything after it) read from
    the recorded offset, parsed as a full read parses it, so the header is parsed once. A full read
    (:func:`read_instance`, its errors) when no header was kept or the rest of the file is not a pixel data
    element. The result shares the header's elements (read, never changed) but not the header itself, which stays
    without pixel data (the SR's evidence)."""
    if header is None or header.pixel_offset is None:
        return read_instance(path)
    head = header.dataset
    implicit, little = head.original_encoding
    try:
        with path.open("rb") as fp:
            fp.seek(header.pixel_offset)
            tail = read_dataset(fp, bool(implicit), bool(little), parent_encoding=head.original_character_set)
    except _READ_ERRORS:
        return read_instance(path)
    if not any(tag in tail for tag in _PIXEL_TAGS):
        return read_instance(path)
    full = Dataset({**dict(head.items()), **dict(tail.items())})
    full.file_meta = head.file_meta
    return full


def _decode(ds: Dataset, path: Path) -> npt.NDArray[np.generic]:
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedInstanceError(f"{path}: colour images (SamplesPerPixel > 1) are not MR intensity images")
    try:
        return np.asarray(ds.pixel_array)
    except NotImplementedError as exc:
        raise UnsupportedInstanceError(
            f"{path}: cannot decode transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')} ({exc})"
        ) from exc
    except (AttributeError, ValueError, RuntimeError, EOFError, OSError, KeyError, TypeError) as exc:
        raise CorruptInstanceError(f"{path}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc


def _item(ds: Dataset, keyword: str) -> Dataset | None:
    """First item of a functional-group sequence in ``ds`` (None when absent)."""
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _group(per_frame: Dataset | None, shared: Dataset | None, keyword: str) -> Dataset | None:
    for holder in (per_frame, shared):
        if holder is not None and (found := _item(holder, keyword)) is not None:
            return found
    return None


def _floats(value: object, count: int, what: str, path: Path) -> npt.NDArray[np.float64]:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise CorruptInstanceError(f"{path}: {what} is missing or not numeric") from exc
    if arr.size != count:
        raise CorruptInstanceError(f"{path}: {what} has {arr.size} values, expected {count}")
    return arr


def _single_frames(ds: Dataset, path: Path) -> Iterator[_Frame]:
    pixels = _decode(ds, path)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", path)
    yield _Frame(
        position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", path),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        pixels=(to_monochrome2(ds, pixels, path) * slope + intercept).astype(np.float32),
        source=path.name,
    )


def _multi_frames(ds: Dataset, path: Path) -> Iterator[_Frame]:
    pixels = _decode(ds, path)
    count = int(ds.get("NumberOfFrames", 1))
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    if len(per_frame) != count or pixels.shape[0] != count:
        raise CorruptInstanceError(
            f"{path}: {count} frames declared, {len(per_frame)} per-frame groups, {pixels.shape[0]} frames decoded"
        )
    for index, groups in enumerate(per_frame):
        plane = _group(groups, shared, "PlanePositionSequence")
        orient = _group(groups, shared, "PlaneOrientationSequence")
        measures = _group(groups, shared, "PixelMeasuresSequence")
        if plane is None or orient is None or measures is None:
            raise CorruptInstanceError(
                f"{path}: frame {index + 1} lacks plane position, plane orientation or pixel measures"
            )
        transform = _group(groups, shared, "PixelValueTransformationSequence")
        slope = float(transform.get("RescaleSlope", 1.0)) if transform is not None else 1.0
        intercept = float(transform.get("RescaleIntercept", 0.0)) if transform is not None else 0.0
        spacing = _floats(measures.get("PixelSpacing"), 2, "PixelSpacing", path)
        content = _group(groups, None, "FrameContentSequence")
        yield _Frame(
            position=_floats(plane.get("ImagePositionPatient"), 3, "ImagePositionPatient", path),
            orientation=_floats(orient.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path),
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            pixels=(to_monochrome2(ds, pixels[index], path) * slope + intercept).astype(np.float32),
            source=f"{path.name} frame {index + 1}",
            stack=str(content.get("StackID", "") or "").strip() if content is not None else "",
        )


def _frames(ref: SeriesRef) -> list[_Frame]:
    frames: list[_Frame] = []
    headers = {h.path: h for h in ref.headers}  # what the scan read (by path: a ref may reorder its files)
    for path in ref.files:
        ds = _dataset(path, headers.get(path))
        multi = "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1
        frames.extend(_multi_frames(ds, path) if multi else _single_frames(ds, path))
    return frames


def _check_consistent(ref: SeriesRef, frames: list[_Frame]) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if not np.allclose(frame.orientation, first.orientation, atol=ORIENTATION_ATOL):
            raise GeometryError(
                f"series {ref.describe()} mixes slice orientations ({frame.source} differs from {first.source}); "
                "send a single-orientation acquisition"
            )
        if frame.pixels.shape != first.pixels.shape:
            raise GeometryError(
                f"series {ref.describe()} mixes image sizes ({frame.pixels.shape} in {frame.source}, "
                f"{first.pixels.shape} in {first.source})"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise GeometryError(f"series {ref.describe()} mixes pixel spacings ({frame.source})")


def read_series_volume(ref: SeriesRef, notes: list[str] | None = None) -> sitk.Image:
    """Read ``ref`` into a float32 image in ITK-conventional axes and LPS coordinates; a multi-frame object with
    several stacks gives its finest stack, and a note saying so is appended to ``notes``."""
    frames = _frames(ref)
    if any(f.stack is not None for f in frames):
        stacks = split_stacks(frames, lambda f: f.stack or "", lambda f: f.orientation)
        if len(stacks) > 1:
            candidates = [(stack, partial(_volume, ref, list(stack.frames))) for stack in stacks]
            image, note = choose_volume(candidates, f"series {ref.describe()}")
            logger.info("%s", note)
            if notes is not None:
                notes.append(note)
            return image
    return _volume(ref, frames)


def _volume(ref: SeriesRef, frames: list[_Frame]) -> sitk.Image:
    """The volume of one stack of frames (all one orientation and size, regularly spaced)."""
    if len(frames) < 2:
        raise GeometryError(f"series {ref.describe()} has {len(frames)} slice(s); a 3-D volume needs at least 2")
    _check_consistent(ref, frames)
    row = frames[0].orientation[:3]
    col = frames[0].orientation[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3) or abs(float(np.dot(row, col))) > 1e-3:
        raise GeometryError(f"series {ref.describe()} has a non-orthonormal ImageOrientationPatient")
    frames.sort(key=lambda f: float(np.dot(f.position, normal)))
    along = np.array([float(np.dot(f.position, normal)) for f in frames])
    steps = np.diff(along)
    if float(steps.min()) < 1e-3:
        dup = int(np.argmin(steps))
        raise GeometryError(
            f"series {ref.describe()} has two slices at the same position ({frames[dup].source} and "
            f"{frames[dup + 1].source}); it may hold several acquisitions or echoes"
        )
    spacing_z = float(np.median(steps))
    if float(np.abs(steps - spacing_z).max()) > SPACING_RTOL * spacing_z + 1e-3:
        worst = int(np.argmax(np.abs(steps - spacing_z)))
        raise GeometryError(
            f"series {ref.describe()} has irregular slice spacing: {steps[worst]:.3f} mm between "
            f"{frames[worst].source} and {frames[worst + 1].source}, {spacing_z:.3f} mm elsewhere (missing slices?)"
        )
    origin = frames[0].position
    offsets = np.array([f.position - origin - (a - along[0]) * normal for f, a in zip(frames, along, strict=True)])
    if float(np.abs(offsets).max()) > 0.01 * spacing_z + 1e-2:
        raise GeometryError(
            f"series {ref.describe()}: slice positions do not lie along the slice normal (sheared stack)"
        )
    volume = np.stack([f.pixels for f in frames])
    image = sitk.GetImageFromArray(volume.astype(np.float32, copy=False))
    row_spacing, col_spacing = frames[0].pixel_spacing
    image.SetSpacing((col_spacing, row_spacing, spacing_z))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    logger.debug("read %s: size %s spacing %s", ref.describe(), image.GetSize(), image.GetSpacing())
    return image
