# mypy: allow-untyped-calls
"""T1CE-only radiomic features of one BCBM-RadioGenomics scan, with the node's settings (docs/method.md §1.2-1.4).

Per scan: read the NIfTI T1CE (SimpleITK reads it into LPS) and its lesion masks; check that each mask has
the image's geometry and is not empty; resample the image to 1 mm (``config/pipeline.yaml`` interpolator) and
the masks nearest-neighbour onto that grid; brain mask; optional N4 (the collection is N4-corrected upstream,
so it is off by default); the pons reference (:func:`node.imaging.pons.pons_reference`: MNI cylinder with its
QC gates, else whole brain minus lesions: this research import always allows that fallback and records it in
``pons_method``, while the node refuses such lesions); z-score; then PyRadiomics with ``config/radiomics.yaml`` through
:func:`node.imaging.features.compute_region_features` on the T1CE alone: 14 ``shape_*`` + 93 ``t1ce_*`` = 107
features, named exactly like the first 107 of the node's 200.

There is no T2: the pons QC receives the T1CE in the T2 slot, so its "T2" gates repeat the T1CE ones.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from node.datasets.bcbm.layout import MaskFile
from node.errors import GeometryError, InvalidStudyError, ProcessingError, SegmentationError
from node.imaging.brain import brain_mask
from node.imaging.crops import LesionCrop, cut_crop, write_crop
from node.imaging.features import (
    FEATURE_NAMES,
    Extractors,
    RadiomicsParams,
    compute_region_features,
    load_radiomics_params,
    make_extractors,
)
from node.imaging.pons import pons_reference
from node.imaging.preprocess import PreprocessSettings, load_preprocess_settings
from node.imaging.registration import n4_correct, resample_onto, resample_to_spacing

logger = logging.getLogger(__name__)

T1CE_FEATURES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n.startswith(("shape_", "t1ce_")))
"""The 107 features a T1CE-only scan yields: 14 shape + 93 T1CE intensity/texture, in the node's order."""

PonsChoice = Literal["auto", "whole-brain"]
SPACING_RTOL = 1e-3
ORIGIN_ATOL_MM = 1e-2
DIRECTION_ATOL = 1e-4


@dataclass(frozen=True)
class ExtractOptions:
    """How scans are processed (picklable: it travels to worker processes)."""

    pons: PonsChoice = "auto"
    n4: bool = False
    skip_invalid_masks: bool = False  # record a bad mask in qc_error instead of stopping the import
    pipeline_config: Path | None = None
    radiomics_config: Path | None = None
    threads: int | None = None
    #: write the deep model's lesion crops (T1CE only, no site) as ``<crops_dir>/by-scan/<scan>_<mask>.npz``
    crops_dir: Path | None = None


@dataclass(frozen=True)
class ScanJob:
    scan_id: str
    patient: str
    image: Path
    lesions: tuple[MaskFile, ...]


@dataclass(frozen=True)
class LesionResult:
    segment_number: int
    label: str
    features: dict[str, float]
    voxels: int | None = None
    volume_ml: float | None = None
    error: str = ""


@dataclass(frozen=True)
class ScanResult:
    scan_id: str
    patient: str
    pons_method: str
    pons_volume_ml: float | None
    lesions: tuple[LesionResult, ...]
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    provenance: dict[str, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def _config(pipeline_config: Path | None, radiomics_config: Path | None) -> tuple[PreprocessSettings, RadiomicsParams]:
    return load_preprocess_settings(pipeline_config), load_radiomics_params(radiomics_config)


@functools.lru_cache(maxsize=4)
def _extractors(pipeline_config: Path | None, radiomics_config: Path | None) -> Extractors:
    return make_extractors(_config(pipeline_config, radiomics_config)[1])


def read_nifti(path: Path, what: str, pixel: int = sitk.sitkFloat32) -> sitk.Image:
    """A NIfTI volume (float32 unless ``pixel`` says otherwise); InvalidStudyError if it cannot be read."""
    try:
        image: sitk.Image = sitk.ReadImage(str(path), pixel)
    except RuntimeError as exc:
        raise InvalidStudyError(f"{what} {path} is not a readable NIfTI file") from exc
    if image.GetDimension() != 3:
        raise InvalidStudyError(f"{what} {path} is {image.GetDimension()}-D, not a 3-D volume")
    return image


def check_mask_geometry(mask: sitk.Image, image: sitk.Image, path: Path) -> None:
    """GeometryError unless ``mask`` has the size, spacing, origin and direction of ``image``."""
    problems: list[str] = []
    if mask.GetSize() != image.GetSize():
        problems.append(f"size {mask.GetSize()} vs {image.GetSize()}")
    if not np.allclose(mask.GetSpacing(), image.GetSpacing(), rtol=SPACING_RTOL, atol=0.0):
        problems.append(f"spacing {mask.GetSpacing()} vs {image.GetSpacing()}")
    if not np.allclose(mask.GetOrigin(), image.GetOrigin(), rtol=0.0, atol=ORIGIN_ATOL_MM):
        problems.append(f"origin {mask.GetOrigin()} vs {image.GetOrigin()}")
    if not np.allclose(mask.GetDirection(), image.GetDirection(), rtol=0.0, atol=DIRECTION_ATOL):
        problems.append("direction differs")
    if problems:
        raise GeometryError(f"mask {path.name} does not lie on its image's grid: {'; '.join(problems)}")


def read_mask(path: Path, image: sitk.Image) -> sitk.Image:
    """A {0, 1} uint8 mask on ``image``'s grid; GeometryError / SegmentationError when unusable."""
    raw = read_nifti(path, "mask", sitk.sitkUnknown)  # stored type: no float copy of a 0.5 mm volume
    check_mask_geometry(raw, image, path)
    mask: sitk.Image = sitk.Cast(raw > 0.5, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        raise SegmentationError(f"mask {path.name} is empty (no voxel set)")
    return mask


def _zscore(image: sitk.Image, mean: float, sd: float, min_sd: float) -> sitk.Image:
    if not (math.isfinite(mean) and math.isfinite(sd)) or sd < min_sd * max(1.0, abs(mean)):
        raise ProcessingError(f"cannot normalise the T1CE: the reference region has no intensity spread (SD {sd:.3g})")
    arr = (sitk.GetArrayViewFromImage(image).astype(np.float32) - np.float32(mean)) / np.float32(sd)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def _lesion_features(
    mask: sitk.Image, image: sitk.Image, params: RadiomicsParams, extractors: Extractors
) -> tuple[dict[str, float], str]:
    features = dict.fromkeys(T1CE_FEATURES, math.nan)
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    if voxels < params.min_lesion_voxels:
        return features, (
            f"lesion too small for texture features: {voxels} voxel(s) at 1 mm "
            f"(minimum {params.min_lesion_voxels}); features left empty"
        )
    try:
        values = compute_region_features({"t1ce": image}, mask, params, extractors=extractors)
    except (ValueError, RuntimeError, ProcessingError) as exc:
        return features, f"feature extraction failed for this lesion: {exc}"
    features.update({k: v for k, v in values.items() if k in features})
    return features, ""


def extract_scan(job: ScanJob, options: ExtractOptions) -> ScanResult:
    """The 107 T1CE features of every lesion mask of one scan."""
    start = time.perf_counter()
    if options.threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(options.threads)
    settings, params = _config(options.pipeline_config, options.radiomics_config)
    extractors = _extractors(options.pipeline_config, options.radiomics_config)
    warnings: list[str] = []
    native = read_nifti(job.image, "image")
    spacing = settings.target_spacing_mm
    image = resample_to_spacing(native, spacing, settings.image_interpolator)
    resampled: dict[int, sitk.Image] = {}  # only 1 mm masks are kept: native ones can be 0.5 mm and many
    invalid: dict[int, str] = {}
    for lesion in job.lesions:
        try:
            resampled[lesion.index] = resample_onto(read_mask(lesion.path, native), image, "nearest")
        except InvalidStudyError as exc:
            if not options.skip_invalid_masks:
                raise
            invalid[lesion.index] = exc.message
            logger.warning("%s: %s", job.scan_id, exc.message)
    del native
    try:
        brain = brain_mask(image)
    except ValueError as exc:
        raise ProcessingError(f"{job.image.name}: cannot find the brain in the image: {exc}") from exc
    if options.n4:
        image = n4_correct(image, brain, settings.n4)
    # research import: a failed reference falls back to the whole brain minus lesions, recorded per row in
    # ``pons_method`` (the node itself refuses such lesions: node.imaging.pons, docs/sr.md "Not assessed")
    pons_params = dataclasses.replace(settings.pons, auto=options.pons == "auto", fallback="whole-brain")
    reference = pons_reference(image, image, brain, list(resampled.values()), None, pons_params)
    if "warning" in reference.qc:
        warnings.append(str(reference.qc["warning"]))
    normalised = _zscore(image, reference.t1ce_mean, reference.t1ce_sd, settings.min_reference_sd)

    voxel_ml = spacing**3 / 1000.0
    results: list[LesionResult] = []
    for lesion in job.lesions:
        if lesion.index in invalid:
            results.append(LesionResult(lesion.index, lesion.name, dict.fromkeys(T1CE_FEATURES, math.nan),
                                        error=invalid[lesion.index]))  # fmt: skip
            continue
        mask = resampled[lesion.index]
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        features, error = _lesion_features(mask, normalised, params, extractors)
        if options.crops_dir is not None and voxels:
            write_crop(options.crops_dir / "by-scan", job.scan_id, lesion.index,
                       LesionCrop(cut_crop(normalised, None, mask)))
        if error:
            logger.warning("%s mask %d: %s", job.scan_id, lesion.index, error)
        results.append(LesionResult(lesion.index, lesion.name, features, voxels, voxels * voxel_ml, error))
    volume = reference.qc.get("volume_mm3")
    provenance = {
        "target_spacing_mm": f"{spacing:g}",
        "image_interpolator": settings.image_interpolator,
        "n4": "applied" if options.n4 else "skipped (N4-corrected upstream)",
        "pons": options.pons,
        "radiomics_params_sha256": params.sha256,
    }
    return ScanResult(
        scan_id=job.scan_id,
        patient=job.patient,
        pons_method=reference.method,
        pons_volume_ml=float(volume) / 1000.0 if isinstance(volume, int | float) else None,
        lesions=tuple(results),
        warnings=tuple(warnings),
        seconds=time.perf_counter() - start,
        provenance=provenance,
    )
