# mypy: allow-untyped-calls
"""The pons intensity reference (docs/method.md §1.3, §6): from the SEG, automatic from MNI, or whole brain.

Order of preference:

1. ``"seg"``: the study's pons segment, when the DICOM-SEG provides one.
2. ``"auto"``: the MNI152 2009a template bundled in the nilearn wheel is registered to the preprocessed
   T1CE (similarity, then affine; 6 then 3 mm), and the method's ROI (an MNI cylinder x = 0, y = -25,
   z = -36...-30 mm, radius 7.5 mm: 1,239 voxels) is mapped nearest-neighbour onto the T1CE grid. MNI
   coordinates are RAS; ITK reads the NIfTI into LPS, so the ROI is built in LPS as x = 0, y = +25.
   QC gates (docs/method.md §6.3 step 5): volume within tolerance of 1,239 mm³, no voxel within a margin of any
   lesion, coefficient of variation of both sequences below a limit, centroid near the brain's left-right
   midline, ROI inside the T2 field of view; the registration metric is recorded.
When a gate fails there is **no reference, so no prediction**: ``method`` is ``"none"``, ``qc["refusal"]``
holds the :class:`~node.vocabulary.NotAssessedReason` (reference outside the field of view, QC failed, supplied
segment implausible, no reference) and ``qc["failed_gates"]`` the gates in words; the job layer then reports
every lesion as "not assessed" (:mod:`node.jobs.scope`). The statistics of such a reference are those of the
brain minus the (dilated) lesions, only so that the imaging pipeline can finish (volumes, QC); they are never
used for a prediction.

3. ``"whole-brain"``: only with the research setting ``pons.fallback: whole-brain`` (config/pipeline.yaml):
   when a gate fails, the brain mask minus the (dilated) lesions, with a warning naming the failed gate and the
   SR naming the whole-brain reference. This is a documented deviation from the method (oedema and scalp move
   the first-order features).

A SEG segment labelled pons / brain stem / reference is checked as well (it used to be taken as drawn): its
volume must lie within ``seg_min_volume_mm3``..``seg_max_volume_mm3``, its centroid near the brain's left-right
midline and, when the automatic localisation is enabled, within ``max_seg_atlas_distance_mm`` of the
MNI-registered pons; its intensity CV below ``max_cv``; it must stay clear of the lesions and inside the T2.

All QC values land in ``PonsReference.qc``. The returned statistics are those of the *un-normalised* images;
:mod:`node.imaging.preprocess` z-scores with them.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from node.errors import ProcessingError
from node.imaging.brain import array_to_mask, dilate_mm, mask_union
from node.imaging.registration import AffineParams, register_affine
from node.imaging.types import PonsMethod, PonsReference
from node.vocabulary import NotAssessedReason

logger = logging.getLogger(__name__)

TEMPLATE_RESOURCE = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
# docs/method.md §6.2, MNI (RAS) millimetres
PONS_CENTRE_RAS: tuple[float, float] = (0.0, -25.0)
PONS_Z_RANGE_MM: tuple[float, float] = (-36.0, -30.0)
PONS_RADIUS_MM = 7.5
PONS_EXPECTED_VOLUME_MM3 = 1239.0
#: values of ``pons.fallback``: "none" (no reference, no prediction; the default) or the research fallback
PONS_FALLBACKS: tuple[str, ...] = ("none", "whole-brain")

QcValue = float | str | bool


@dataclass(frozen=True)
class PonsParams:
    """How the pons reference is found and checked (``pons`` block of config/pipeline.yaml)."""

    auto: bool = True
    expected_volume_mm3: float = PONS_EXPECTED_VOLUME_MM3
    volume_tolerance: float = 0.20
    min_head_volume_ratio: float = 0.6
    max_head_volume_ratio: float = 1.6
    lesion_margin_mm: float = 3.0
    max_cv: float = 0.30
    max_midline_offset_mm: float = 10.0
    min_seg_voxels: int = 50
    template_mask_margin_mm: float = 5.0
    registration: AffineParams = field(default_factory=AffineParams)
    #: what a failed reference leads to: "none" (lesions not assessed) or "whole-brain" (research only)
    fallback: str = "none"
    #: plausible volume of a SEG reference segment (the method's ROI is 1,239 mm³; a whole pons ~15-25 mL)
    seg_min_volume_mm3: float = 300.0
    seg_max_volume_mm3: float = 30000.0
    #: a SEG reference segment's centroid may lie at most this far from the MNI-registered pons ROI's centroid
    max_seg_atlas_distance_mm: float = 20.0

    def __post_init__(self) -> None:
        if self.fallback not in PONS_FALLBACKS:
            raise ValueError(f"pons fallback must be one of {PONS_FALLBACKS}, got {self.fallback!r}")
        if not 0 < self.seg_min_volume_mm3 < self.seg_max_volume_mm3 or self.max_seg_atlas_distance_mm <= 0:
            raise ValueError("pons seg volume limits must satisfy 0 < min < max; the atlas distance must be > 0")
        if not 0 < self.volume_tolerance < 1:
            raise ValueError(f"pons volume_tolerance must be in (0, 1), got {self.volume_tolerance}")
        if self.expected_volume_mm3 <= 0 or self.max_cv <= 0 or self.max_midline_offset_mm <= 0:
            raise ValueError("pons expected_volume_mm3, max_cv and max_midline_offset_mm must be positive")
        if not 0 < self.min_head_volume_ratio < 1 < self.max_head_volume_ratio:
            raise ValueError("pons head volume ratio limits must satisfy 0 < min < 1 < max")
        if self.lesion_margin_mm < 0:
            raise ValueError(f"pons lesion_margin_mm must be >= 0, got {self.lesion_margin_mm}")


@functools.lru_cache(maxsize=1)
def mni_template() -> sitk.Image:
    """The MNI152 2009a symmetric T1 template from the nilearn wheel, float32, in LPS (no download)."""
    resource = importlib.resources.files("nilearn") / TEMPLATE_RESOURCE
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise ProcessingError(f"the MNI template is missing from the nilearn installation ({path})")
        image: sitk.Image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    return image


def pons_roi_on(reference: sitk.Image) -> sitk.Image:
    """The method's pons cylinder rasterised on ``reference``'s grid, taken as MNI space (LPS)."""
    x_lps, y_lps = -PONS_CENTRE_RAS[0], -PONS_CENTRE_RAS[1]  # RAS -> LPS flips x and y
    r = PONS_RADIUS_MM
    corners = [
        (x_lps + dx, y_lps + dy, z) for dx in (-r, r) for dy in (-r, r) for z in PONS_Z_RANGE_MM
    ]
    cidx = np.array([reference.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.array(reference.GetSize())
    lo = np.clip(np.floor(cidx.min(axis=0)).astype(int) - 1, 0, size - 1)
    hi = np.clip(np.ceil(cidx.max(axis=0)).astype(int) + 1, 0, size - 1)
    ii, jj, kk = np.meshgrid(*(np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)), indexing="ij")
    ijk = np.stack([ii, jj, kk], axis=-1).astype(float)
    direction = np.array(reference.GetDirection(), dtype=float).reshape(3, 3)
    phys = np.array(reference.GetOrigin()) + (ijk * np.array(reference.GetSpacing())) @ direction.T
    radial = (phys[..., 0] - x_lps) ** 2 + (phys[..., 1] - y_lps) ** 2
    inside = (radial <= r**2 + 1e-6) & (phys[..., 2] >= PONS_Z_RANGE_MM[0] - 1e-6)
    inside &= phys[..., 2] <= PONS_Z_RANGE_MM[1] + 1e-6
    full = np.zeros((size[2], size[1], size[0]), dtype=bool)
    full[lo[2] : hi[2] + 1, lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] = inside.transpose(2, 1, 0)
    return array_to_mask(full, reference)


@functools.lru_cache(maxsize=1)
def _template_roi() -> sitk.Image:
    return pons_roi_on(mni_template())


@functools.lru_cache(maxsize=4)
def template_brain_mask(margin_mm: float) -> sitk.Image:
    """The template's (skull-stripped) brain grown by ``margin_mm``: where the atlas metric may sample."""
    brain = sitk.GetArrayFromImage(mni_template()) > 5.0
    return array_to_mask(dilate_mm(brain, mni_template().GetSpacing(), margin_mm), mni_template())


def _stats(values: np.ndarray) -> tuple[float, float]:
    if values.size < 2:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1))


def _cv(mean: float, sd: float) -> float:
    return float(sd / abs(mean)) if mean else float("inf")


def _centroid_mm(mask: np.ndarray, image: sitk.Image) -> np.ndarray:
    zyx = np.argwhere(mask).mean(axis=0)
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))


def _midline_offset_mm(roi: np.ndarray, brain: np.ndarray, image: sitk.Image) -> float:
    """Left-right distance between the ROI centroid and the centre of the brain in the ROI's axial slab."""
    centroid = _centroid_mm(roi, image)
    flat = np.flatnonzero(brain)  # the order of np.argwhere, one index array instead of three
    if flat.size == 0:
        return float("inf")
    # physical coordinates of the brain voxels (subsampled: the centre needs few)
    zyx = np.column_stack(np.unravel_index(flat[:: max(1, flat.size // 200_000)], brain.shape))
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    phys = np.array(image.GetOrigin()) + (zyx[:, ::-1] * np.array(image.GetSpacing())) @ direction.T
    slab = np.abs(phys[:, 2] - centroid[2]) <= 10.0
    if not np.any(slab):
        return float("inf")
    lr = phys[slab, 0]
    brain_centre_x = (float(np.percentile(lr, 1)) + float(np.percentile(lr, 99))) / 2.0
    return float(abs(centroid[0] - brain_centre_x))


def _fov_fraction(transform: sitk.Transform, image: sitk.Image) -> float:
    """The fraction of the template pons ROI's voxels that the affine maps inside ``image``'s extent."""
    template = _template_roi()
    zyx = np.argwhere(sitk.GetArrayViewFromImage(template) > 0)
    if zyx.size == 0:
        return 0.0
    inverse = transform.GetInverse()
    size = np.array(image.GetSize(), dtype=float)
    inside = 0
    for k, j, i in zyx:
        point = inverse.TransformPoint(template.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))
        index = np.array(image.TransformPhysicalPointToContinuousIndex(point))
        inside += bool(np.all(index >= -0.5) and np.all(index <= size - 0.5))
    return inside / len(zyx)


@dataclass(frozen=True)
class AtlasFit:
    """The MNI template registered to one T1CE and the method's pons ROI mapped through it."""

    #: the warped ROI on the T1CE grid (boolean ``[z, y, x]``)
    roi: np.ndarray
    metric: float
    #: subject/template volume ratio of the affine
    volume_ratio: float
    #: the fraction of the template ROI that lands inside the T1CE's field of view
    fov_fraction: float
    #: T1CE points -> template points
    transform: sitk.Transform


def fit_atlas(t1ce: sitk.Image, params: PonsParams) -> AtlasFit:
    """Register the MNI template to ``t1ce`` (the preprocessed, bias-corrected T1CE) and map the pons ROI.

    It needs only the T1CE, so :mod:`node.imaging.preprocess` runs it while the T2 is still being corrected and
    registered, and hands the result to :func:`pons_reference` (and, through it, to :mod:`node.imaging.sites`).
    """
    moving_mask = template_brain_mask(params.template_mask_margin_mm)
    transform, metric = register_affine(t1ce, mni_template(), params.registration, moving_mask=moving_mask)
    roi = sitk.Resample(_template_roi(), t1ce, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    volume_ratio = 1.0 / abs(float(np.linalg.det(np.array(transform.GetMatrix()).reshape(3, 3))))
    return AtlasFit(sitk.GetArrayFromImage(roi) > 0, metric, volume_ratio, _fov_fraction(transform, t1ce), transform)


def pons_reference(
    t1ce: sitk.Image,
    t2: sitk.Image,
    brain: sitk.Image,
    lesions: list[sitk.Image],
    provided: sitk.Image | None,
    params: PonsParams,
    t2_coverage: sitk.Image | None = None,
    atlas: AtlasFit | None = None,
) -> PonsReference:
    """Find the reference region (seg, else auto; see the module for failures) and its statistics.

    All images share the T1CE 1 mm grid; ``t2`` is already registered into it and ``t2_coverage`` marks the
    voxels inside the T2 field of view (thick-slice T2 series often cover less than the T1CE). ``atlas`` is
    :func:`fit_atlas` on this ``t1ce`` when the caller already ran it; otherwise it runs here when needed.
    """
    t1 = sitk.GetArrayViewFromImage(t1ce)
    t2a = sitk.GetArrayViewFromImage(t2)
    brain_a = sitk.GetArrayViewFromImage(brain) > 0
    voxel_mm3 = float(np.prod(t1ce.GetSpacing()))
    lesion_a = mask_union(lesions, t1ce)
    covered = (
        sitk.GetArrayViewFromImage(t2_coverage) > 0 if t2_coverage is not None else np.ones(t1.shape, dtype=bool)
    )
    qc: dict[str, QcValue] = {}
    failures: list[str] = []
    method: PonsMethod
    roi: np.ndarray | None = None
    template_transform: sitk.Transform | None = None  # reused by node.imaging.sites

    reason: NotAssessedReason | None = None
    if provided is not None:
        seg = sitk.GetArrayViewFromImage(provided) > 0
        qc["seg_voxel_count"] = int(seg.sum())
        roi, method = seg.copy(), "seg"
        if int(seg.sum()) < params.min_seg_voxels:
            failures.append(f"the pons segment has only {int(seg.sum())} voxel(s) at 1 mm")
        if params.auto and roi.any():
            atlas = atlas or fit_atlas(t1ce, params)
            atlas_roi, metric, ratio, transform = atlas.roi, atlas.metric, atlas.volume_ratio, atlas.transform
            qc["registration_metric"] = metric
            # judged only against a plausible atlas registration (a failed one says nothing about the segment)
            if atlas_roi.any() and params.min_head_volume_ratio <= ratio <= params.max_head_volume_ratio:
                template_transform = transform  # plausible: node.imaging.sites reuses it
                distance = float(np.linalg.norm(_centroid_mm(roi, t1ce) - _centroid_mm(atlas_roi, t1ce)))
                qc["seg_atlas_distance_mm"] = distance
                if distance > params.max_seg_atlas_distance_mm:
                    failures.append(
                        f"the reference segment's centroid is {distance:.0f} mm from the atlas pons "
                        f"(limit {params.max_seg_atlas_distance_mm:.0f} mm)"
                    )
    elif params.auto:
        atlas = atlas or fit_atlas(t1ce, params)
        roi, metric, volume_ratio = atlas.roi, atlas.metric, atlas.volume_ratio
        fov_fraction, template_transform = atlas.fov_fraction, atlas.transform
        method = "auto"
        qc["registration_metric"] = metric
        qc["subject_to_template_volume_ratio"] = volume_ratio
        qc["t1ce_fov_fraction"] = fov_fraction
        if fov_fraction < 0.99:
            failures.append(f"only {100 * fov_fraction:.0f} % of the pons ROI is inside the T1CE field of view")
            reason = NotAssessedReason.REFERENCE_OUTSIDE_FOV
    if roi is not None:
        volume = float(roi.sum()) * voxel_mm3
        m1, s1 = _stats(t1[roi])
        m2, s2 = _stats(t2a[roi])
        near_lesion = dilate_mm(lesion_a, t1ce.GetSpacing(), params.lesion_margin_mm) & roi
        qc.update(
            volume_mm3=volume,
            lesion_overlap_voxels=int(near_lesion.sum()),
            t1ce_cv=_cv(m1, s1),
            t2_cv=_cv(m2, s2),
            midline_offset_mm=_midline_offset_mm(roi, brain_a, t1ce) if roi.any() else float("inf"),
            t2_coverage_fraction=float(covered[roi].mean()) if roi.any() else 0.0,
        )
        if method == "auto":
            # The warped ROI grows and shrinks with the head: judge its volume against the method's 1,239 mm³
            # scaled by the affine's volume ratio (a clipped or degenerate ROI still fails), and judge the head
            # scale itself separately (an implausible scale means the atlas registration failed).
            ratio = float(qc["subject_to_template_volume_ratio"])
            expected = params.expected_volume_mm3 * ratio
            qc["expected_volume_mm3"] = expected
            low, high = expected * (1 - params.volume_tolerance), expected * (1 + params.volume_tolerance)
            if not low <= volume <= high:
                failures.append(f"ROI volume {volume:.0f} mm³ outside {low:.0f}-{high:.0f} mm³")
            if not params.min_head_volume_ratio <= ratio <= params.max_head_volume_ratio:
                failures.append(
                    f"subject/template volume ratio {ratio:.2f} outside {params.min_head_volume_ratio:.2f}-"
                    f"{params.max_head_volume_ratio:.2f} (atlas registration implausible)"
                )
        elif not params.seg_min_volume_mm3 <= volume <= params.seg_max_volume_mm3:
            failures.append(
                f"reference segment volume {volume:.0f} mm³ outside {params.seg_min_volume_mm3:.0f}-"
                f"{params.seg_max_volume_mm3:.0f} mm³"
            )
        if float(qc["midline_offset_mm"]) > params.max_midline_offset_mm:
            failures.append(
                f"ROI centroid {float(qc['midline_offset_mm']):.1f} mm from the midline "
                f"(limit {params.max_midline_offset_mm:.0f} mm)"
            )
        if float(qc["t2_coverage_fraction"]) < 0.99:
            covered_pct = 100 * float(qc["t2_coverage_fraction"])
            failures.append(f"only {covered_pct:.0f} % of the ROI is inside the T2 field of view")
            if method == "auto":
                reason = NotAssessedReason.REFERENCE_OUTSIDE_FOV
        if near_lesion.any():
            failures.append(
                f"ROI overlaps a lesion or its {params.lesion_margin_mm:g} mm margin "
                f"({int(near_lesion.sum())} voxels)"
            )
        for seq, cv in (("T1CE", float(qc["t1ce_cv"])), ("T2", float(qc["t2_cv"]))):
            if not cv <= params.max_cv:
                failures.append(f"{seq} intensity CV {cv:.2f} in the ROI above {params.max_cv:.2f}")
        if failures and method == "seg":
            reason = NotAssessedReason.REFERENCE_SEGMENT_IMPLAUSIBLE
        elif failures and reason is None:
            reason = NotAssessedReason.REFERENCE_QC_FAILED
    else:
        failures.append("automatic pons localisation is disabled and the SEG has no reference segment")
        reason = NotAssessedReason.NO_REFERENCE

    candidate: sitk.Image | None = None
    if failures:
        assert reason is not None
        qc["failed_gates"] = "; ".join(failures)
        qc["rejected_method"] = method if roi is not None else "none"
        candidate = array_to_mask(roi, t1ce) if roi is not None else None  # for the QC key image
        if params.fallback == "whole-brain":
            qc["fallback"] = "whole-brain"
            qc["warning"] = (
                "pons reference QC failed (" + "; ".join(failures) + "): intensities z-scored against the "
                "whole brain minus lesions instead (research fallback, deviation from the method)"
            )
            method = "whole-brain"
        else:
            qc["refusal"] = reason.value
            qc["warning"] = (
                "pons reference QC failed (" + "; ".join(failures) + "): no intensity reference, so no lesion "
                "is assessed"
            )
            method = "none"
        logger.warning("%s", qc["warning"])
        roi = brain_a & covered & ~dilate_mm(lesion_a, t1ce.GetSpacing(), params.lesion_margin_mm)
        if roi.sum() < 2:
            raise ProcessingError("no reference region: the brain mask is empty once lesions are removed")
    assert roi is not None
    qc["passed"] = method in ("seg", "auto")
    qc["voxel_count"] = int(roi.sum())
    m1, s1 = _stats(t1[roi])
    m2, s2 = _stats(t2a[roi])
    logger.info("pons reference %s: %d voxels, T1CE %.3g±%.3g, T2 %.3g±%.3g", method, int(roi.sum()),
                m1, s1, m2, s2)  # fmt: skip
    return PonsReference(
        method=method,
        mask=array_to_mask(roi, t1ce),
        t1ce_mean=m1,
        t1ce_sd=s1,
        t2_mean=m2,
        t2_sd=s2,
        qc=qc,
        candidate=candidate,
        template_transform=template_transform,
    )
