"""The 2-D slices of the QC key image (issue 11, item 2): the preprocessed T1CE through each lesion and through the
intensity reference, with the masks that are outlined on them.

Only these small 2-D arrays leave the pipeline (:attr:`node.imaging.pipeline.FeatureRun.key_slices`); the job
turns them into :class:`node.sr.keyimage.QcView` for the companion (``node/sr`` must not import this room).

Conventions of every :class:`KeySlice` (radiological display of an axial slice):

* the volume is viewed in patient LPS axes without resampling (axes permuted and flipped to the nearest LPS
  axes, so an oblique or sagittal acquisition is shown as its nearest axial plane);
* rows run anterior -> posterior, columns patient right -> patient left (patient left on image right);
* a lesion is shown on the axial slice of its largest cross-section (the first such slice from inferior);
  the reference region on the slice of its largest cross-section;
* every slice is cropped to the same box: the brain mask's extent plus a margin;
* ``window`` is the 1st-99.5th percentile of the T1CE inside the brain mask (one window for all views).

The reference view is also made when the reference failed its QC: the region that was found and rejected
(:attr:`node.imaging.types.PonsReference.candidate`) is drawn and the view is marked ``failed``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from node.imaging.types import PreprocessedStudy

#: percentiles of the T1CE inside the brain mask that set the display window
WINDOW_PERCENTILES = (1.0, 99.5)
#: margin (voxels) around the brain mask's extent kept in every view
CROP_MARGIN = 8

Role = Literal["lesion", "other lesion", "reference", "rejected reference"]


@dataclass(frozen=True)
class KeySlice:
    """One axial slice with the regions to outline (filled 2-D masks, same shape as ``image``)."""

    kind: Literal["lesion", "reference"]
    title: str
    image: npt.NDArray[np.float32]
    regions: tuple[tuple[Role, npt.NDArray[np.bool_]], ...]
    pixel_spacing_mm: tuple[float, float]  # (row, column)
    slice_index: int  # along inferior -> superior in the LPS view of the volume
    slice_position_mm: float  # patient z (superior positive) of the slice centre
    window: tuple[float, float]
    failed: bool = False
    segment_number: int | None = None
    note: str = ""


@dataclass(frozen=True)
class LpsView:
    """How to read an ITK array ``[k, j, i]`` as ``[S, P, L]`` without copying (nearest LPS axes)."""

    axes: tuple[int, int, int]  # index axis (0=i, 1=j, 2=k) nearest to L, P, S
    flips: tuple[bool, bool, bool]  # whether that index axis runs against L, P, S
    spacing: tuple[float, float, float]  # mm along L, P, S

    @classmethod
    def of(cls, image: sitk.Image) -> LpsView:
        d = np.abs(np.array(image.GetDirection(), dtype=float).reshape(3, 3))  # d[physical, index]
        axes = max(itertools.permutations(range(3)), key=lambda p: float(d[0, p[0]] * d[1, p[1]] * d[2, p[2]]))
        signed = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        flips = tuple(bool(signed[r, axes[r]] < 0) for r in range(3))
        spacing = tuple(float(image.GetSpacing()[axes[r]]) for r in range(3))
        return cls((axes[0], axes[1], axes[2]), (flips[0], flips[1], flips[2]), (spacing[0], spacing[1], spacing[2]))

    def apply(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``array`` (ITK order ``[k, j, i]``) as ``[S, P, L]`` (a view, no copy)."""
        out = array.transpose(2 - self.axes[2], 2 - self.axes[1], 2 - self.axes[0])
        for axis, flip in zip((2, 1, 0), self.flips, strict=True):  # flips are given for L, P, S
            if flip:
                out = np.flip(out, axis=axis)
        return out

    def z_mm(self, image: sitk.Image, slice_index: int) -> float:
        """Patient z of the centre of LPS-view slice ``slice_index``."""
        size = image.GetSize()
        index = [(s - 1) / 2.0 for s in size]
        k_axis = self.axes[2]
        index[k_axis] = float(size[k_axis] - 1 - slice_index if self.flips[2] else slice_index)
        return float(image.TransformContinuousIndexToPhysicalPoint(index)[2])


def _crop_box(brain: npt.NDArray[np.bool_], shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the brain's extent (all slices) plus the margin; the whole slice without a brain."""
    footprint = brain.any(axis=0)
    if not footprint.any():
        return slice(0, shape[0]), slice(0, shape[1])
    rows, cols = np.nonzero(footprint)
    return (
        slice(max(int(rows.min()) - CROP_MARGIN, 0), min(int(rows.max()) + CROP_MARGIN + 1, shape[0])),
        slice(max(int(cols.min()) - CROP_MARGIN, 0), min(int(cols.max()) + CROP_MARGIN + 1, shape[1])),
    )


def _window(t1: npt.NDArray[Any], brain: npt.NDArray[np.bool_]) -> tuple[float, float]:
    values = t1[brain] if brain.any() else t1.ravel()
    lo, hi = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def largest_section(mask: npt.NDArray[np.bool_]) -> int:
    """The index (first axis) of the slice with the largest cross-section of ``mask`` (first one on ties)."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


@dataclass(frozen=True)
class _Slicer:
    """Cuts views out of the LPS view of one preprocessed study."""

    image: sitk.Image
    view: LpsView
    t1: npt.NDArray[Any]
    rows: slice
    cols: slice
    window: tuple[float, float]

    def make(self, kind: Literal["lesion", "reference"], k: int, title: str,
             regions: list[tuple[Role, npt.NDArray[np.bool_]]], *, failed: bool = False,
             segment_number: int | None = None, note: str = "") -> KeySlice:
        return KeySlice(
            kind=kind, title=title, image=np.array(self.t1[k, self.rows, self.cols], dtype=np.float32),
            regions=tuple((role, np.array(m[k, self.rows, self.cols], dtype=bool)) for role, m in regions),
            pixel_spacing_mm=(self.view.spacing[1], self.view.spacing[0]), slice_index=k,
            slice_position_mm=self.view.z_mm(self.image, k), window=self.window, failed=failed,
            segment_number=segment_number, note=note,
        )


def key_slices(pre: PreprocessedStudy) -> tuple[KeySlice, ...]:
    """The reference view, then one view per lesion mask of the pipeline (predicted or not), in SEG order; other
    lesions cut by a view's slice are outlined on it too."""
    view = LpsView.of(pre.t1ce)
    t1 = view.apply(sitk.GetArrayViewFromImage(pre.t1ce))
    brain = view.apply(sitk.GetArrayViewFromImage(pre.brain_mask)) > 0
    rows, cols = _crop_box(brain, (t1.shape[1], t1.shape[2]))
    slicer = _Slicer(pre.t1ce, view, t1, rows, cols, _window(t1, brain))
    lesions = [(s, view.apply(sitk.GetArrayViewFromImage(s.mask)) > 0) for s in pre.lesions]

    def others(k: int, shown: object = None) -> list[tuple[Role, npt.NDArray[np.bool_]]]:
        return [("other lesion", m) for s, m in lesions if s is not shown and m[k].any()]

    out = [_reference_slice(pre, slicer, brain, others)]
    for segment, mask in lesions:
        if not mask.any():
            continue  # vanished at 1 mm: the pipeline warns about it
        k = largest_section(mask)
        area = float(mask[k].sum()) * view.spacing[0] * view.spacing[1]
        title = f"Lesion - SEG segment {segment.segment_number} ({segment.label or 'unlabelled'})"
        out.append(slicer.make("lesion", k, title, [("lesion", mask), *others(k, segment)],
                               segment_number=segment.segment_number, note=f"largest cross-section {area:.0f} mm²"))
    return tuple(out)


def _reference_slice(pre: PreprocessedStudy, slicer: _Slicer, brain: npt.NDArray[np.bool_],
                     others: Callable[[int], list[tuple[Role, npt.NDArray[np.bool_]]]]) -> KeySlice:
    """The reference region's view: the ROI used, or the rejected candidate (``failed``), or none found."""
    ref = pre.pons
    passed = ref.method in ("seg", "auto") and bool(ref.qc.get("passed", True))
    names = {"seg": "pons from SEG", "auto": "automatic pons (MNI atlas)"}
    if passed:
        roi = slicer.view.apply(sitk.GetArrayViewFromImage(ref.mask)) > 0
        k = largest_section(roi)
        findings = str(ref.qc.get("warning", ""))  # a SEG pons is used despite QC findings: say which
        verdict = "used despite QC findings" if findings else "QC passed"
        title = f"Intensity reference - {names.get(ref.method, ref.method)} - {verdict}"
        note = findings.split(": ", 1)[-1] if findings else f"{int(roi.sum())} voxels"
        return slicer.make("reference", k, title, [("reference", roi), *others(k)], note=note)
    reason = str(ref.qc.get("failed_gates", "")) or "QC failed"
    rejected = str(ref.qc.get("rejected_method", "none"))
    if ref.candidate is not None:
        roi = slicer.view.apply(sitk.GetArrayViewFromImage(ref.candidate)) > 0
        if roi.any():
            k = largest_section(roi)
            title = f"Intensity reference FAILED QC - {names.get(rejected, rejected)} found here, not used"
            return slicer.make("reference", k, title, [("rejected reference", roi), *others(k)], failed=True,
                               note=reason)
    # nothing was found to draw: the slice of the brain's largest cross-section, marked failed
    k = largest_section(brain) if brain.any() else brain.shape[0] // 2
    return slicer.make("reference", k, "Intensity reference FAILED - no pons region found", others(k),
                       failed=True, note=reason)
