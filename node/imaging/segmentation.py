# mypy: disable-error-code="no-untyped-call"
"""Read a DICOM-SEG (highdicom or dcmqi/3D Slicer; BINARY, FRACTIONAL or LABELMAP) onto the T1CE image grid.

Each SEG frame is placed by its ImagePositionPatient on the T1CE grid (omitted empty frames simply stay 0;
this needs no SpatialLocationsPreserved, which dcmqi does not write). When the SEG's grid differs from the
T1CE grid but shares its frame of reference, the segment's own volume (highdicom ``get_volume``) is
resampled nearest-neighbour onto the T1CE grid, and a warning says so. Segments are classified as lesion or
pons by SegmentedPropertyType code, then label (``SeriesRules.segmentation``); never by array index.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.errors import CorruptInstanceError, SegmentationError
from node.imaging.series_rules import SeriesRules, segment_kind
from node.imaging.types import Segment, SeriesRef

logger = logging.getLogger(__name__)

POSITION_TOL_VOXELS = 0.05
ORIENTATION_ATOL = 1e-4


@dataclass(frozen=True)
class _SegFrame:
    number: int  # 1-based frame number in the SEG
    segment: int
    position: npt.NDArray[np.float64]
    orientation: npt.NDArray[np.float64]
    pixel_spacing: npt.NDArray[np.float64]


def _item(holder: Dataset | None, keyword: str) -> Dataset | None:
    if holder is None:
        return None
    seq = holder.get(keyword)
    return seq[0] if seq else None


def _frame_info(seg: hd.seg.Segmentation, describe: str, labelmap: bool) -> list[_SegFrame]:
    """Geometry and segment number of every frame (segment 0 for LABELMAP frames, which hold all segments)."""
    shared = _item(seg, "SharedFunctionalGroupsSequence")
    frames = []
    for index, groups in enumerate(seg.get("PerFrameFunctionalGroupsSequence", [])):

        def find(keyword: str, groups: Dataset = groups) -> Dataset | None:
            return _item(groups, keyword) or _item(shared, keyword)

        ident, plane, orient, measures = (
            find("SegmentIdentificationSequence"),
            find("PlanePositionSequence"),
            find("PlaneOrientationSequence"),
            find("PixelMeasuresSequence"),
        )
        if (ident is None and not labelmap) or plane is None or orient is None or measures is None:
            raise SegmentationError(
                f"the SEG {describe}: frame {index + 1} lacks its segment number, plane position, orientation "
                "or pixel spacing"
            )
        frames.append(
            _SegFrame(
                number=index + 1,
                segment=0 if ident is None else int(ident.ReferencedSegmentNumber),
                position=np.asarray(plane.ImagePositionPatient, dtype=np.float64),
                orientation=np.asarray(orient.ImageOrientationPatient, dtype=np.float64),
                pixel_spacing=np.asarray(measures.PixelSpacing, dtype=np.float64),
            )
        )
    return frames


def _direct_slices(frames: Sequence[_SegFrame], seg: Dataset, grid: sitk.Image) -> list[int] | None:
    """T1CE slice index of every frame, or None when the SEG frames are not slices of the T1CE grid."""
    direction = np.asarray(grid.GetDirection(), dtype=np.float64).reshape(3, 3)
    size, spacing = grid.GetSize(), grid.GetSpacing()
    if int(seg.Rows) != size[1] or int(seg.Columns) != size[0]:
        return None
    in_plane = np.concatenate([direction[:, 0], direction[:, 1]])
    indices = []
    for frame in frames:
        if not np.allclose(frame.orientation, in_plane, atol=ORIENTATION_ATOL):
            return None
        if not np.allclose(frame.pixel_spacing, (spacing[1], spacing[0]), rtol=1e-4):
            return None
        cont = grid.TransformPhysicalPointToContinuousIndex([float(v) for v in frame.position])
        k = round(cont[2])
        if max(abs(cont[0]), abs(cont[1]), abs(cont[2] - k)) > POSITION_TOL_VOXELS or not 0 <= k < size[2]:
            return None
        indices.append(k)
    return indices


def _volume_to_sitk(volume: hd.Volume) -> sitk.Image:
    """A highdicom Volume (array [k, j, i], affine on those indices) as an ITK-axis SimpleITK image."""
    array = np.asarray(volume.array)
    if array.ndim == 4:
        array = array[..., 0]
    affine = np.asarray(volume.affine, dtype=np.float64)
    axes = affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)  # per array axis k, j, i
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    direction = np.column_stack([axes[:, 2] / spacing[2], axes[:, 1] / spacing[1], axes[:, 0] / spacing[0]])
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def _resampled_segment(
    seg: hd.seg.Segmentation, number: int, grid: sitk.Image, describe: str
) -> npt.NDArray[np.float32]:
    try:
        volume = seg.get_volume(segment_numbers=[number], rescale_fractional=True, dtype=np.float32)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise SegmentationError(
            f"the SEG {describe}: segment {number} does not form a regular volume that can be mapped onto the "
            f"T1CE ({exc})"
        ) from exc
    moved = sitk.Resample(_volume_to_sitk(volume), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    return sitk.GetArrayFromImage(moved).astype(np.float32)


def _read_seg(path_ref: SeriesRef) -> hd.seg.Segmentation:
    if len(path_ref.files) != 1:
        raise SegmentationError(
            f"the SEG series {path_ref.describe()} holds {len(path_ref.files)} instances; send one SEG instance"
        )
    path = path_ref.files[0]
    try:
        return hd.seg.segread(path)
    except (InvalidDicomError, EOFError, OSError) as exc:
        raise CorruptInstanceError(f"{path} is not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    except (ValueError, KeyError, AttributeError, TypeError, IndexError) as exc:
        raise SegmentationError(f"the SEG {path_ref.describe()} is not a valid segmentation: {exc}") from exc


def _property_type(desc: hd.seg.SegmentDescription) -> tuple[str, str] | None:
    try:
        code = desc.segmented_property_type
    except (AttributeError, IndexError):
        return None
    return str(code.scheme_designator).upper(), str(code.value)


def read_segments(
    seg: SeriesRef,
    t1ce: SeriesRef,
    t1ce_image: sitk.Image,
    rules: SeriesRules,
    *,
    warnings: list[str] | None = None,
) -> tuple[tuple[Segment, ...], Segment | None]:
    """Lesion segments and the pons segment (if any) of ``seg``, as uint8 masks on ``t1ce_image``'s grid.

    Notes for the result (FRACTIONAL thresholding, resampling, unrecognised segments) are appended to
    ``warnings`` when a list is given.
    """
    notes: list[str] = warnings if warnings is not None else []
    dataset = _read_seg(seg)
    describe = seg.describe()
    seg_for = str(dataset.get("FrameOfReferenceUID", ""))
    if t1ce.frame_of_reference_uid and seg_for != t1ce.frame_of_reference_uid:
        raise SegmentationError(
            f"the SEG {describe} is in frame of reference {seg_for or '(none)'}, the T1CE {t1ce.describe()} in "
            f"{t1ce.frame_of_reference_uid}; the segmentation must be drawn on the T1CE or a series registered to it"
        )
    seg_type = str(dataset.SegmentationType)
    if seg_type not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise SegmentationError(
            f"the SEG {describe} has SegmentationType {seg_type}; BINARY, FRACTIONAL or LABELMAP expected"
        )
    labelmap = seg_type == "LABELMAP"
    threshold = rules.segmentation.fractional_threshold
    max_value = float(dataset.get("MaximumFractionalValue", 1) or 1) if seg_type == "FRACTIONAL" else 1.0
    if seg_type == "FRACTIONAL":
        notes.append(f"the SEG is FRACTIONAL; segment masks are its values thresholded at >= {threshold:g}")

    frames = _frame_info(dataset, describe, labelmap)
    slices = _direct_slices(frames, dataset, t1ce_image)
    if slices is None:
        notes.append(
            "the SEG grid differs from the T1CE grid; its masks were resampled nearest-neighbour onto the T1CE"
        )
        logger.warning("SEG %s: grid differs from the T1CE grid, resampling nearest-neighbour", describe)
    shape = tuple(reversed(t1ce_image.GetSize()))
    lesions: list[Segment] = []
    pons: list[Segment] = []
    for number in dataset.segment_numbers:
        desc = dataset.get_segment_description(number)
        label = str(desc.segment_label)
        kind = segment_kind(rules.segmentation, label, _property_type(desc))
        if kind is None:
            policy = rules.segmentation.unrecognised
            if policy == "error":
                raise SegmentationError(
                    f"the SEG {describe}: segment {number} '{label}' is neither a lesion nor the pons reference "
                    f"by its label or type; adjust {rules.source}"
                )
            if policy == "ignore":
                notes.append(f"segment {number} '{label}' was ignored: neither a lesion nor the pons reference")
                continue
            notes.append(f"segment {number} '{label}' has an unrecognised label and type; it is treated as a lesion")
            kind = "lesion"
        if slices is not None:
            values = np.zeros(shape, dtype=np.float32)
            for frame, k in zip(frames, slices, strict=True):
                if labelmap:
                    stored = np.asarray(dataset.get_stored_frame(frame.number))
                    values[k] = np.maximum(values[k], (stored == number).astype(np.float32))
                elif frame.segment == number:
                    stored = np.asarray(dataset.get_stored_frame(frame.number), dtype=np.float32)
                    values[k] = np.maximum(values[k], stored / max_value)
        else:
            values = _resampled_segment(dataset, number, t1ce_image, describe)
        mask = (values >= threshold) if seg_type == "FRACTIONAL" else (values > 0)
        voxels = int(mask.sum())
        if voxels == 0:
            after = f" after thresholding at {threshold:g}" if seg_type == "FRACTIONAL" else ""
            raise SegmentationError(
                f"the SEG {describe}: segment {number} '{label}' is empty (no voxels on the T1CE grid{after})"
            )
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(t1ce_image)
        segment = Segment(
            segment_number=int(number),
            label=label,
            mask=image,
            tracking_uid=str(desc.tracking_uid) if desc.tracking_uid else None,
            tracking_id=str(desc.tracking_id) if desc.tracking_id else None,
        )
        (lesions if kind == "lesion" else pons).append(segment)
        logger.info("segment %d '%s': %s, %d voxels", number, label, kind, voxels)
    if not lesions:
        raise SegmentationError(f"the SEG {describe} holds no lesion segment; adjust {rules.source} if it should")
    if len(pons) > 1:
        raise SegmentationError(
            f"the SEG {describe} holds {len(pons)} pons reference segments "
            f"({', '.join(str(p.segment_number) for p in pons)}); send at most one"
        )
    return tuple(lesions), (pons[0] if pons else None)
