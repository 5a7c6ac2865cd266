# mypy: allow-untyped-calls
"""The method's preprocessing recipe (docs/method.md §1.2-1.3) from a LoadedStudy to a PreprocessedStudy.

Steps, each timed in ``PreprocessedStudy.timings``:

1. ``resample``: T1CE and T2 to 1 mm on their own grids (linear or B-spline), lesion and pons masks onto the
   1 mm T1CE grid (nearest neighbour).
2. ``brain_mask``: Otsu + morphology + largest component on the T1CE (:mod:`node.imaging.brain`).
3. ``n4``: N4 bias-field correction of both sequences (fit on a shrunk copy, field applied at 1 mm).
4. ``registration``: rigid T2 -> T1CE (Mattes MI; SimpleITK by default, ANTs selectable), then T2 resampled
   into the 1 mm T1CE grid.
5. ``pons``: the intensity reference (:mod:`node.imaging.pons`: seg, else auto; none on QC failure).
6. ``normalise``: each sequence z-scored with its own reference mean and SD.

Settings come from ``config/pipeline.yaml`` (``preprocess`` block) via :func:`load_preprocess_settings`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import SimpleITK as sitk
import yaml

from node.errors import ConfigError, ProcessingError
from node.imaging.brain import brain_mask
from node.imaging.pons import PonsParams, fit_atlas, pons_reference
from node.imaging.registration import (
    AffineParams,
    N4Params,
    RigidParams,
    n4_correct,
    register_rigid,
    resample_onto,
    resample_to_spacing,
    single_threaded_itk,
)
from node.imaging.types import LoadedStudy, PreprocessedStudy, RegistrationResult, Segment

logger = logging.getLogger(__name__)

DEFAULT_PIPELINE_PATH = Path(__file__).parents[2] / "config" / "pipeline.yaml"


@dataclass(frozen=True)
class PreprocessSettings:
    """Every preprocessing choice, validated on construction (``preprocess`` block of config/pipeline.yaml)."""

    target_spacing_mm: float = 1.0
    image_interpolator: Literal["linear", "bspline"] = "linear"
    mask_interpolator: Literal["nearest"] = "nearest"
    n4: N4Params = field(default_factory=N4Params)
    registration: RigidParams = field(default_factory=RigidParams)
    pons: PonsParams = field(default_factory=PonsParams)
    shells_mm: tuple[int, ...] = ()
    min_reference_sd: float = 1e-6
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 0.1 <= self.target_spacing_mm <= 5.0:
            raise ConfigError(f"target_spacing_mm must be between 0.1 and 5 mm, got {self.target_spacing_mm}")
        if self.image_interpolator not in ("linear", "bspline"):
            raise ConfigError(f"image_interpolator must be 'linear' or 'bspline', got {self.image_interpolator!r}")
        if self.mask_interpolator != "nearest":
            raise ConfigError("mask_interpolator must be 'nearest' (masks stay binary)")
        n4 = self.n4
        if n4.shrink_factor < 1 or not n4.iterations or any(i < 1 for i in n4.iterations):
            raise ConfigError("n4: shrink_factor >= 1 and a non-empty list of positive iterations are required")
        if n4.control_points < n4.spline_order + 1:
            raise ConfigError("n4: control_points must exceed spline_order")
        if n4.field_shrink < 1:
            raise ConfigError("n4: field_shrink must be >= 1 (1 = evaluate the bias field at every voxel)")
        reg = self.registration
        if reg.backend not in ("simpleitk", "ants"):
            raise ConfigError(f"registration backend must be 'simpleitk' or 'ants', got {reg.backend!r}")
        if reg.initialiser not in ("identity", "geometry", "moments"):
            raise ConfigError(f"registration initialiser must be identity/geometry/moments, got {reg.initialiser!r}")
        for name, params in (("registration", reg), ("pons.registration", self.pons.registration)):
            if len(params.shrink_factors) != len(params.smoothing_sigmas_mm) or not params.shrink_factors:
                raise ConfigError(f"{name}: shrink_factors and smoothing_sigmas_mm need the same, non-zero length")
            if not 0 < params.sampling_fraction <= 1 or params.iterations < 1:
                raise ConfigError(f"{name}: sampling_fraction must be in (0, 1] and iterations >= 1")
        if any(d <= 0 for d in self.shells_mm):
            raise ConfigError(f"shells_mm must be positive distances, got {list(self.shells_mm)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads must be a positive integer (or null for all cores)")
        if self.min_reference_sd <= 0:
            raise ConfigError("min_reference_sd must be positive")


def _build(cls: type[Any], values: Mapping[str, Any], where: str) -> Any:
    """Instantiate a dataclass from a mapping, turning lists into tuples and rejecting unknown keys."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def settings_from_mapping(values: Mapping[str, Any]) -> PreprocessSettings:
    """Build settings from the ``preprocess`` mapping of pipeline.yaml (nested blocks are optional)."""
    values = dict(values)
    nested: dict[str, Any] = {}
    if "n4" in values:
        nested["n4"] = _build(N4Params, values.pop("n4"), "preprocess.n4")
    if "registration" in values:
        nested["registration"] = _build(RigidParams, values.pop("registration"), "preprocess.registration")
    if "pons" in values:
        pons = dict(values.pop("pons"))
        if "registration" in pons:
            pons["registration"] = _build(AffineParams, pons.pop("registration"), "preprocess.pons.registration")
        nested["pons"] = _build(PonsParams, pons, "preprocess.pons")
    settings: PreprocessSettings = _build(PreprocessSettings, {**values, **nested}, "preprocess")
    return settings


def load_preprocess_settings(path: Path | None = None) -> PreprocessSettings:
    """Read the ``preprocess`` block of ``config/pipeline.yaml`` (or ``path``); ConfigError if invalid."""
    path = path or DEFAULT_PIPELINE_PATH
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline configuration {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline configuration {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("preprocess", {}), dict):
        raise ConfigError(f"pipeline configuration {path} must be a mapping with a 'preprocess' mapping")
    try:
        return settings_from_mapping(doc.get("preprocess") or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc


def preprocessing_provenance(settings: PreprocessSettings) -> dict[str, str]:
    """The choices the model card and run manifest must record (interpolators, N4, registration)."""
    return {
        "target_spacing_mm": f"{settings.target_spacing_mm:g}",
        "image_interpolator": settings.image_interpolator,
        "mask_interpolator": settings.mask_interpolator,
        "n4": f"SimpleITK N4, shrink {settings.n4.shrink_factor}, iterations {list(settings.n4.iterations)}"
        + (f", field every {settings.n4.field_shrink} voxels" if settings.n4.field_shrink > 1 else ""),
        "registration": f"rigid T2->T1CE, {settings.registration.backend}, Mattes MI",
        "pons": "seg, else MNI152 2009a cylinder (0,-25,-36..-30 mm, r 7.5 mm) via affine; on QC failure "
        + ("whole brain (research fallback)" if settings.pons.fallback == "whole-brain" else "no prediction"),
    }


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 3)
        logger.debug("stage %s: %.2f s", stage, timings[stage])


def _zscore(image: sitk.Image, mean: float, sd: float, sequence: str, min_sd: float) -> sitk.Image:
    if not (math.isfinite(mean) and math.isfinite(sd)) or sd < min_sd * max(1.0, abs(mean)):
        raise ProcessingError(
            f"cannot normalise the {sequence}: the reference region has no intensity spread (SD {sd:.3g}); "
            "the series may be blank or saturated"
        )
    arr = (sitk.GetArrayViewFromImage(image).astype(np.float32) - np.float32(mean)) / np.float32(sd)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def _resample_segment(seg: Segment, reference: sitk.Image) -> Segment:
    mask = resample_onto(seg.mask, reference, "nearest")
    return dataclasses.replace(seg, mask=mask)


def _correct(image: sitk.Image, sequence: str, settings: PreprocessSettings,
             timings: dict[str, float]) -> tuple[sitk.Image, sitk.Image]:  # fmt: skip
    """One sequence's chain: 1 mm grid, its head mask, N4 inside that mask; returns (corrected, mask)."""
    with _timed(timings, f"resample.{sequence}"):
        resampled = resample_to_spacing(image, settings.target_spacing_mm, settings.image_interpolator)
    with _timed(timings, f"brain_mask.{sequence}"):
        try:
            mask = brain_mask(resampled)
        except ValueError as exc:
            raise ProcessingError(f"cannot find the head in the images: {exc}") from exc
    with _timed(timings, f"n4.{sequence}"):
        corrected = n4_correct(resampled, mask, settings.n4)
    return corrected, mask


def _t2_branch(study: LoadedStudy, settings: PreprocessSettings, timings: dict[str, float],
               t1ce_ready: Future[tuple[sitk.Image, sitk.Image]],
               registered: Future[tuple[sitk.Image, RegistrationResult]]) -> sitk.Image:  # fmt: skip
    """The T2 chain, then (once the T1CE chain is done) T2 -> T1CE, then the T2 resampled into the T1CE grid.

    ``registered`` receives the corrected T2 on its own grid and the registration as soon as they are known (the
    other branch computes the T2 field of view meanwhile); returns the registered T2 on the T1CE grid.
    """
    try:
        t2, _ = _correct(study.t2, "t2", settings, timings)
        t1ce, brain = t1ce_ready.result()
        with _timed(timings, "registration"):
            registration = register_rigid(t1ce, t2, brain, settings.registration)
    except BaseException as exc:
        registered.set_exception(exc)
        raise
    registered.set_result((t2, registration))
    with _timed(timings, "registration.resample"):
        return resample_onto(t2, t1ce, settings.image_interpolator, registration.transform)


def _sum_stages(timings: dict[str, float], stages: tuple[str, ...]) -> None:
    """``timings[stage]`` = the work of that stage over both sequences (the per-sequence keys stay)."""
    for stage in stages:
        parts = [v for k, v in timings.items() if k.startswith(f"{stage}.")]
        if parts:
            timings[stage] = round(sum(parts), 3)


def preprocess(study: LoadedStudy, settings: PreprocessSettings) -> PreprocessedStudy:
    """Run the recipe; raise ProcessingError when registration diverges or normalisation is impossible.

    ``timings`` holds each stage's work summed over both sequences (``n4``), per sequence (``n4.t1ce``), the
    template registration (``pons.atlas``) and the reference statistics (``pons.stats``). The two branches overlap
    (T1CE chain, ``pons.atlas``, ``resample.masks`` beside the T2 chain and ``registration``), so the stages add up
    to more than the elapsed time.
    """
    if settings.threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(settings.threads)
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(settings.threads)  # ANTs reads this
    timings: dict[str, float] = {}
    warnings = list(study.warnings)
    spacing = settings.target_spacing_mm
    wall = time.perf_counter()

    # Two branches side by side, every ITK filter in them single-threaded (registration.single_threaded_itk):
    # the T1CE chain then the MNI template registration (the pons ROI and the lesion sites) here, the T2 chain then
    # the T2 -> T1CE registration in a worker thread. One thread per filter is what makes the registrations
    # reproducible (multi-threaded Mattes MI is not, even alone: that, not the threads, is why two whole chains
    # in threads once gave run-to-run different features), and it gives each filter the same thread count
    # whatever the other branch is doing; two branches keep both cores of the node busy.
    with single_threaded_itk(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="t2") as pool:
        t1ce_ready: Future[tuple[sitk.Image, sitk.Image]] = Future()
        registered: Future[tuple[sitk.Image, RegistrationResult]] = Future()
        t2_branch = pool.submit(contextvars.copy_context().run, _t2_branch, study, settings, timings, t1ce_ready,
                                registered)  # fmt: skip
        try:
            t1ce, brain = _correct(study.t1ce, "t1ce", settings, timings)
        except BaseException as exc:
            t1ce_ready.set_exception(exc)
            raise
        t1ce_ready.set_result((t1ce, brain))
        atlas = _timed_call(timings, "pons.atlas", fit_atlas, t1ce, settings.pons) if settings.pons.auto else None
        with _timed(timings, "resample.masks"):
            lesions = tuple(_resample_segment(s, t1ce) for s in study.lesions)
            pons_seg = _resample_segment(study.pons, t1ce) if study.pons is not None else None
        t2_native, registration = registered.result()
        with _timed(timings, "registration.coverage"):  # the T1CE voxels inside the T2 field of view
            t2_fov = sitk.Cast(sitk.Image(t2_native.GetSize(), sitk.sitkUInt8) + 1, sitk.sitkUInt8)
            t2_fov.CopyInformation(t2_native)
            t2_coverage = resample_onto(t2_fov, t1ce, "nearest", registration.transform)
        t2 = t2_branch.result()
    timings["registration"] = round(sum(timings[k] for k in ("registration", "registration.resample",
                                                             "registration.coverage")), 3)  # fmt: skip
    _sum_stages(timings, ("resample", "brain_mask", "n4"))
    for seg in lesions:
        if not np.any(sitk.GetArrayViewFromImage(seg.mask)):
            warnings.append(f"segment {seg.segment_number} ('{seg.label}') vanished at {spacing:g} mm")

    with _timed(timings, "pons.stats"):
        reference = pons_reference(
            t1ce, t2, brain, [s.mask for s in lesions], pons_seg.mask if pons_seg else None, settings.pons,
            t2_coverage=t2_coverage, atlas=atlas,
        )
    _sum_stages(timings, ("pons",))
    if "warning" in reference.qc:
        warnings.append(str(reference.qc["warning"]))
    coverage_a = sitk.GetArrayViewFromImage(t2_coverage) > 0
    for seg in lesions:
        inside = sitk.GetArrayViewFromImage(seg.mask) > 0
        if inside.any() and not coverage_a[inside].all():
            outside = 100.0 * (1.0 - float(coverage_a[inside].mean()))
            warnings.append(
                f"segment {seg.segment_number} ('{seg.label}'): {outside:.0f} % of the lesion lies outside the "
                "T2 field of view; its T2 features are unreliable"
            )

    with _timed(timings, "normalise"):
        min_sd = settings.min_reference_sd
        t1ce = _zscore(t1ce, reference.t1ce_mean, reference.t1ce_sd, "T1CE", min_sd)
        t2 = _zscore(t2, reference.t2_mean, reference.t2_sd, "T2", min_sd)

    logger.info("preprocessing done in %.1f s (%s)", time.perf_counter() - wall, timings)
    return PreprocessedStudy(
        identity=study.identity,
        t1ce=t1ce,
        t2=t2,
        lesions=lesions,
        pons=reference,
        registration=registration,
        brain_mask=brain,
        timings=timings,
        warnings=tuple(warnings),
        provenance=preprocessing_provenance(settings),
    )


_R = TypeVar("_R")


def _timed_call(timings: dict[str, float], stage: str, func: Callable[..., _R], *args: Any) -> _R:
    with _timed(timings, stage):
        return func(*args)
