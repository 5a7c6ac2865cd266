# mypy: allow-untyped-calls
"""Resampling, N4 and registration primitives (docs/method.md §1.2) on SimpleITK images, with an ANTs backend.

* :func:`resample_to_spacing` puts an image on an isotropic grid with the same orientation and field of view.
* :func:`n4_correct` fits the N4 bias field on a shrunk copy and applies its log field at full resolution.
* :func:`register_rigid` aligns T2 to T1CE (Mattes mutual information, multi-resolution); the returned
  transform maps T1CE points to T2 points (ITK resampling convention). Backend "simpleitk" (default, fast) or
  "ants" (``ants.registration(type_of_transform="Rigid")``, the method's tool).
* :func:`register_affine` aligns a template (moving) to a subject (fixed); used for the automatic pons ROI.

Divergence (a final metric worse than the threshold, an absurd rotation or shift) raises ProcessingError.
Size: the resampling, N4 and the two registration back-ends share their parameter objects and QC; they read
best together.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import SimpleITK as sitk

from node.errors import ProcessingError
from node.imaging.types import RegistrationResult

logger = logging.getLogger(__name__)

Interpolator = Literal["linear", "bspline", "nearest"]
Initialiser = Literal["identity", "geometry", "moments"]

_INTERPOLATORS: dict[str, int] = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "nearest": sitk.sitkNearestNeighbor,
}


def resample_to_spacing(image: sitk.Image, spacing_mm: float, interpolator: Interpolator) -> sitk.Image:
    """Resample to isotropic ``spacing_mm`` keeping direction and the physical extent (corner-aligned grid)."""
    old_spacing = np.array(image.GetSpacing(), dtype=float)
    old_size = np.array(image.GetSize(), dtype=float)
    new_spacing = np.full(3, float(spacing_mm))
    new_size = np.maximum(np.round(old_size * old_spacing / new_spacing), 1).astype(int)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    # the first voxel's outer corner stays put: origin moves by half the spacing difference along each axis
    shift = direction @ ((new_spacing - old_spacing) / 2.0)
    origin = np.array(image.GetOrigin(), dtype=float) + shift
    pixel = sitk.sitkUInt8 if interpolator == "nearest" else sitk.sitkFloat32
    out: sitk.Image = sitk.Resample(
        image,
        [int(v) for v in new_size],
        sitk.Transform(),
        _INTERPOLATORS[interpolator],
        [float(v) for v in origin],
        [float(v) for v in new_spacing],
        image.GetDirection(),
        0.0,
        pixel,
    )
    return out


def resample_onto(image: sitk.Image, reference: sitk.Image, interpolator: Interpolator,
                  transform: sitk.Transform | None = None) -> sitk.Image:  # fmt: skip
    """Resample ``image`` onto ``reference``'s grid (``transform`` maps reference points to image points)."""
    pixel = sitk.sitkUInt8 if interpolator == "nearest" else sitk.sitkFloat32
    out: sitk.Image = sitk.Resample(
        image, reference, transform or sitk.Transform(), _INTERPOLATORS[interpolator], 0.0, pixel
    )
    return out


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


@contextmanager
def single_threaded_itk() -> Iterator[None]:
    """ITK filters created inside run on one thread (ITK's global default); the last thread to leave restores it.

    The registrations need it to be reproducible: with several threads, ITK 5.4's Mattes mutual information
    combines the threads' partial sums in whatever order they finish, so the same input gave a bitwise-different
    transform (and, through the pons ROI and the T2 resampling, different features) from run to run; one thread
    gives one answer. Several threads may hold it at once (:mod:`node.imaging.preprocess` runs the two
    registrations side by side); no other ITK work should run meanwhile, since it would be single-threaded too.
    """
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_threads_saved)


@dataclass(frozen=True)
class N4Params:
    shrink_factor: int = 6
    iterations: tuple[int, ...] = (50, 50, 30)
    convergence_threshold: float = 1e-3
    control_points: int = 4
    spline_order: int = 3
    #: the log bias field is evaluated on a grid this many times coarser (same extent) and linearly upsampled;
    #: 1 evaluates the B-spline at every voxel (the field is smooth: 3 differs by < 1e-4 in log intensity)
    field_shrink: int = 3


def _field_grid(image: sitk.Image, factor: int) -> sitk.Image:
    """An empty grid ``factor`` times coarser than ``image`` whose first and last voxel centres are ``image``'s.

    The B-spline lattice of N4 is parametrised from the first to the last voxel centre of the grid it is
    evaluated on, so a coarser grid with the same end points samples exactly the same field.
    """
    size = [max(2, math.ceil((n - 1) / factor) + 1) if n > 1 else 1 for n in image.GetSize()]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    grid.SetSpacing([s * (n - 1) / (m - 1) if m > 1 else s
                     for s, n, m in zip(image.GetSpacing(), image.GetSize(), size, strict=True)])  # fmt: skip
    return grid


def log_bias_field(corrector: sitk.N4BiasFieldCorrectionImageFilter, image: sitk.Image, factor: int) -> sitk.Image:
    """The fitted log bias field on ``image``'s grid, evaluated every ``factor`` voxels and linearly upsampled."""
    if factor <= 1:
        field: sitk.Image = corrector.GetLogBiasFieldAsImage(image)
        return field
    coarse = corrector.GetLogBiasFieldAsImage(_field_grid(image, factor))
    full: sitk.Image = sitk.Resample(coarse, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32,
                                     useNearestNeighborExtrapolator=True)  # fmt: skip
    return full


def n4_correct(image: sitk.Image, mask: sitk.Image, params: N4Params) -> sitk.Image:
    """N4 bias-field correction: fit on a ``shrink_factor`` copy inside ``mask``, divide by the full field."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    # N4 works on log intensities: only strictly positive voxels of the mask take part in the fit
    positive = sitk.Cast(img > 0, sitk.sitkUInt8)
    fit_mask = sitk.And(sitk.Cast(mask, sitk.sitkUInt8), positive)
    shrink = [params.shrink_factor] * 3
    small = sitk.Shrink(img, shrink)
    small_mask = sitk.Shrink(fit_mask, shrink)
    if not np.any(sitk.GetArrayViewFromImage(small_mask)):
        raise ProcessingError("N4 bias-field correction found no positive tissue voxels in the brain mask")
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(params.iterations))
    corrector.SetConvergenceThreshold(params.convergence_threshold)
    corrector.SetNumberOfControlPoints([params.control_points] * 3)
    corrector.SetSplineOrder(params.spline_order)
    corrector.Execute(small, small_mask)
    log_bias = log_bias_field(corrector, img, params.field_shrink)
    corrected = img / sitk.Exp(log_bias)
    # the field's overall scale is arbitrary: keep the tissue mean of the input, so units stay readable
    inside = sitk.GetArrayViewFromImage(fit_mask) > 0
    before = float(sitk.GetArrayViewFromImage(img)[inside].mean())
    after = float(sitk.GetArrayViewFromImage(corrected)[inside].mean())
    out: sitk.Image = sitk.Cast(corrected * (before / after), sitk.sitkFloat32)
    return out


@dataclass(frozen=True)
class RigidParams:
    backend: Literal["simpleitk", "ants"] = "simpleitk"
    initialiser: Initialiser = "identity"
    shrink_factors: tuple[int, ...] = (4, 2)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0)
    sampling_fraction: float = 0.05
    iterations: int = 100
    histogram_bins: int = 32
    max_metric: float = -0.05
    max_rotation_deg: float = 20.0
    max_translation_mm: float = 40.0
    seed: int = 42


_B = TypeVar("_B", sitk.Euler3DTransform, sitk.Similarity3DTransform)


def _initial_transform(fixed: sitk.Image, moving: sitk.Image, kind: Initialiser, base: _B) -> _B:
    """``base`` centred on the fixed image (identity) or initialised by image geometry or moments."""
    if kind == "identity":
        # both series come from one examination (one frame of reference): start from no motion, rotating
        # about the centre of the fixed image
        centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()])
        base.SetCenter(centre)
        return base
    mode = (
        sitk.CenteredTransformInitializerFilter.GEOMETRY
        if kind == "geometry"
        else sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    init = sitk.CenteredTransformInitializer(fixed, moving, base, mode)
    base.SetFixedParameters(init.GetFixedParameters())
    base.SetParameters(init.GetParameters())
    return base


def _pyramid_base(
    fixed: sitk.Image,
    moving: sitk.Image,
    mask: sitk.Image | None,
    shrink_factors: tuple[int, ...],
) -> tuple[sitk.Image, sitk.Image, sitk.Image | None, list[int]]:
    """Block-average both images once by the finest shrink factor, so every level works on small images.

    Returns the reduced fixed and moving images, the reduced fixed mask and the remaining per-level factors.
    """
    base = max(1, min(shrink_factors))
    if base == 1:
        return fixed, moving, mask, list(shrink_factors)
    fixed_r = sitk.BinShrink(fixed, [base] * 3)
    moving_r = sitk.BinShrink(moving, [base] * 3)
    mask_r = None
    if mask is not None:
        mask_r = sitk.Cast(sitk.BinShrink(sitk.Cast(mask, sitk.sitkFloat32), [base] * 3) >= 0.5, sitk.sitkUInt8)
    return fixed_r, moving_r, mask_r, [max(1, round(f / base)) for f in shrink_factors]


def _configure(
    reg: sitk.ImageRegistrationMethod,
    *,
    bins: int,
    sampling: float,
    seed: int,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None = None,
    gradient_filter: bool = True,
) -> None:
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    # the moving image's gradient (Mattes MI uses no fixed-image gradient): precomputed by a whole-image
    # recursive-Gaussian filter at every level; central differences at the samples instead would save ~40 % of a
    # rigid registration but moved the T2 features beyond the tolerance of tests/pipeline/test_fast_pipeline.py
    reg.SetMetricUseMovingImageGradientFilter(gradient_filter)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        reg.SetMetricMovingMask(moving_mask)
    reg.SetInterpolator(sitk.sitkLinear)


def mattes_metric(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    *,
    fixed_mask: sitk.Image | None = None,
    bins: int = 32,
    sampling: float = 0.05,
    seed: int = 42,
    moving_mask: sitk.Image | None = None,
) -> float:
    """Mattes mutual information of ``moving`` under ``transform`` against ``fixed`` (more negative = better).

    The value needs no image gradient, so none is precomputed (the same value, a whole-image filter less).
    """
    reg = sitk.ImageRegistrationMethod()
    _configure(reg, bins=bins, sampling=sampling, seed=seed, fixed_mask=fixed_mask, moving_mask=moving_mask,
               gradient_filter=False)  # fmt: skip
    reg.SetInitialTransform(transform, inPlace=False)
    with single_threaded_itk():
        return float(reg.MetricEvaluate(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)))


def rotation_angle_deg(transform: sitk.Transform) -> float:
    """Rotation angle of the linear part (its closest rotation, for affine transforms), in degrees."""
    matrix = np.array(_as_affine(transform).GetMatrix(), dtype=float).reshape(3, 3)
    u, _, vt = np.linalg.svd(matrix)
    rot = u @ vt
    cos = (np.trace(rot) - 1.0) / 2.0
    return float(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))


def _as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """An affine view of a (composite of) linear transform(s)."""
    point = np.zeros(3)
    columns = []
    origin = np.array(transform.TransformPoint(point.tolist()))
    for axis in range(3):
        e = np.zeros(3)
        e[axis] = 1.0
        columns.append(np.array(transform.TransformPoint(e.tolist())) - origin)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(np.column_stack(columns).ravel().tolist())
    affine.SetTranslation(origin.tolist())
    return affine


def displacement_mm(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """How far ``transform`` moves each of ``points`` (N×3, physical mm)."""
    moved = np.array([transform.TransformPoint(p) for p in points.tolist()])
    return np.asarray(np.linalg.norm(moved - points, axis=1))


def validate_rigid(transform: sitk.Transform, metric: float, fixed: sitk.Image, params: RigidParams) -> None:
    """Raise ProcessingError for a failed (metric) or diverged (rotation, shift at the centre) registration."""
    angle = rotation_angle_deg(transform)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()])
    shift = float(displacement_mm(transform, np.array([centre]))[0])
    logger.info("T2->T1CE registration: metric %.4f, rotation %.2f deg, shift at centre %.2f mm",
                metric, angle, shift)  # fmt: skip
    if not math.isfinite(metric) or metric > params.max_metric:
        raise ProcessingError(
            f"T2-to-T1CE registration failed: final mutual information {metric:.4f} is worse than the "
            f"accepted {params.max_metric:.4f}; check that the T2 and T1CE series show the same head"
        )
    if angle > params.max_rotation_deg or shift > params.max_translation_mm:
        raise ProcessingError(
            f"T2-to-T1CE registration diverged: it found a rotation of {angle:.1f} degrees and a shift of "
            f"{shift:.1f} mm (limits {params.max_rotation_deg:.0f} degrees, {params.max_translation_mm:.0f} mm); "
            "check that both series belong to the same examination"
        )


def register_rigid(
    fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None, params: RigidParams
) -> RegistrationResult:
    """Rigidly register ``moving`` (T2) to ``fixed`` (T1CE); the transform maps fixed points to moving points."""
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    if params.backend == "ants":
        transform = _rigid_ants(fixed_f, moving_f, fixed_mask, params)
        method = "ants-rigid-mattes"
    else:
        transform = _rigid_sitk(fixed_f, moving_f, fixed_mask, params)
        method = "simpleitk-rigid-mattes"
    fixed_r, moving_r, mask_r, _ = _pyramid_base(fixed_f, moving_f, fixed_mask, params.shrink_factors)
    metric = mattes_metric(
        fixed_r, moving_r, transform, fixed_mask=mask_r, bins=params.histogram_bins,
        sampling=max(params.sampling_fraction, 0.05), seed=params.seed,
    )  # fmt: skip
    validate_rigid(transform, metric, fixed_f, params)
    return RegistrationResult(transform=transform, metric=metric, method=method)


def _rigid_sitk(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None, params: RigidParams
                ) -> sitk.Transform:  # fmt: skip
    fixed_r, moving_r, mask_r, shrinks = _pyramid_base(fixed, moving, fixed_mask, params.shrink_factors)
    init = _initial_transform(fixed_r, moving_r, params.initialiser, sitk.Euler3DTransform())
    reg = sitk.ImageRegistrationMethod()
    _configure(reg, bins=params.histogram_bins, sampling=params.sampling_fraction, seed=params.seed,
               fixed_mask=mask_r)  # fmt: skip
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=params.iterations, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )  # fmt: skip
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrinks)
    reg.SetSmoothingSigmasPerLevel(list(params.smoothing_sigmas_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=True)
    try:
        with single_threaded_itk():
            reg.Execute(fixed_r, moving_r)
    except RuntimeError as exc:
        raise ProcessingError(f"T2-to-T1CE registration failed inside SimpleITK: {exc}") from exc
    logger.debug("rigid registration stopped: %s", reg.GetOptimizerStopConditionDescription())
    return _as_affine(init)


def _to_ants(image: sitk.Image) -> object:
    import ants

    arr = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)  # ANTs arrays are [x, y, z]
    return ants.from_numpy(
        arr,
        origin=list(image.GetOrigin()),
        spacing=list(image.GetSpacing()),
        direction=np.array(image.GetDirection(), dtype=float).reshape(3, 3),
    )


def _rigid_ants(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None, params: RigidParams
                ) -> sitk.Transform:  # fmt: skip
    import ants
    import ants.config

    # ANTs takes its random-sampling seed from module state; set it for this call only (deterministic runs)
    saved_seed = ants.config._random_seed
    ants.config._random_seed = params.seed
    try:
        with tempfile.TemporaryDirectory(prefix="node-ants-") as tmp:
            reg = ants.registration(
                fixed=_to_ants(fixed),
                moving=_to_ants(moving),
                type_of_transform="Rigid",
                mask=_to_ants(fixed_mask) if fixed_mask is not None else None,
                aff_metric="mattes",
                aff_sampling=params.histogram_bins,
                aff_random_sampling_rate=params.sampling_fraction,
                aff_iterations=(params.iterations,) * len(params.shrink_factors),
                aff_shrink_factors=tuple(params.shrink_factors),
                aff_smoothing_sigmas=tuple(params.smoothing_sigmas_mm),
                smoothing_in_mm=True,
                outprefix=str(Path(tmp) / "t2_"),
            )
            transform = sitk.ReadTransform(reg["fwdtransforms"][0])
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ProcessingError(f"T2-to-T1CE registration failed inside ANTs: {exc}") from exc
    finally:
        ants.config._random_seed = saved_seed
    return _as_affine(transform)


@dataclass(frozen=True)
class AffineParams:
    shrink_factors: tuple[int, ...] = (6, 3)
    smoothing_sigmas_mm: tuple[float, ...] = (4.0, 2.0)
    sampling_fraction: float = 0.1
    iterations: int = 100
    histogram_bins: int = 32
    learning_rate: float = 0.5  # 2.0 oscillates on the 12 affine parameters
    seed: int = 42


def register_affine(
    fixed: sitk.Image,
    moving: sitk.Image,
    params: AffineParams,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
) -> tuple[sitk.AffineTransform, float]:
    """Affine ``moving`` -> ``fixed`` (moments start, similarity then affine); returns (fixed->moving, metric).

    ``moving_mask`` limits the metric to samples that land inside it: with a skull-stripped template and a
    head with skull, a template brain mask grown by a few mm keeps scalp and marrow from inflating the scale.
    """
    fixed_r, moving_r, mask_r, shrinks = _pyramid_base(
        sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32), fixed_mask, params.shrink_factors
    )
    init = _initial_transform(fixed_r, moving_r, "moments", sitk.Similarity3DTransform())
    # stage 1: similarity (rotation, shift, one scale) at the coarsest level; stage 2: full affine
    similar = _run_stage(
        fixed_r, moving_r, init, params, tuple(shrinks[:1]), params.smoothing_sigmas_mm[:1], mask_r, moving_mask
    )
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(similar.GetMatrix())
    affine.SetTranslation(similar.GetTranslation())
    affine.SetCenter(similar.GetCenter())
    _run_stage(fixed_r, moving_r, affine, params, tuple(shrinks), params.smoothing_sigmas_mm, mask_r, moving_mask)
    result = _as_affine(affine)
    metric = mattes_metric(fixed_r, moving_r, result, fixed_mask=mask_r, bins=params.histogram_bins,
                           sampling=params.sampling_fraction, seed=params.seed, moving_mask=moving_mask)  # fmt: skip
    return result, metric


_T = TypeVar("_T", sitk.Similarity3DTransform, sitk.AffineTransform)


def _run_stage(
    fixed: sitk.Image,
    moving: sitk.Image,
    initial: _T,
    params: AffineParams,
    shrinks: tuple[int, ...],
    sigmas: tuple[float, ...],
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None = None,
) -> _T:
    reg = sitk.ImageRegistrationMethod()
    _configure(reg, bins=params.histogram_bins, sampling=params.sampling_fraction, seed=params.seed,
               fixed_mask=fixed_mask, moving_mask=moving_mask)  # fmt: skip
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=params.learning_rate, minStep=1e-3, numberOfIterations=params.iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6,
    )  # fmt: skip
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrinks))
    reg.SetSmoothingSigmasPerLevel(list(sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=True)  # optimised in place: keeps the transform's type
    try:
        with single_threaded_itk():
            reg.Execute(fixed, moving)
    except RuntimeError as exc:
        raise ProcessingError(f"template-to-T1CE registration failed inside SimpleITK: {exc}") from exc
    logger.debug("affine stage stopped: %s", reg.GetOptimizerStopConditionDescription())
    return initial
