"""The imaging pipeline as one ordered call: DICOM study folder -> 200 radiomic features per lesion.

Steps, in order (each a function with typed input and output):

1. ``load``        :func:`node.imaging.loading.load_study` - group, identify and read T1CE, T2 and SEG.
2. ``preprocess``  :func:`node.imaging.preprocess.preprocess` - 1 mm, N4, T2->T1CE, pons z-score.
3. ``features``    :func:`node.imaging.features.extract_features` - pyradiomics, 200 named features.

Contract: every step MUST raise a :class:`node.errors.NodeError` subclass for a problem it can explain; the
pipeline MUST NOT swallow errors; results MUST carry no patient name or ID (the ``case`` column is the study
folder's name, chosen by whoever laid the folders out).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from node import log
from node.imaging.crops import LesionCrop, lesion_crops
from node.imaging.features import (
    FEATURE_NAMES,
    RadiomicsParams,
    extract_features,
    feature_names,
    load_radiomics_params,
)
from node.imaging.keyslices import KeySlice, key_slices
from node.imaging.loading import load_study
from node.imaging.preprocess import PreprocessSettings, load_preprocess_settings, preprocess
from node.imaging.scope import ScopeParams, load_scope_params
from node.imaging.series_rules import SeriesRules, load_rules
from node.imaging.sites import attach_sites
from node.imaging.table import QC_COLUMNS
from node.imaging.types import LesionFeatures, SeriesFiles, StudyIdentity

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline reads from ``config/``, loaded once and reused across studies."""

    rules: SeriesRules
    preprocess: PreprocessSettings
    radiomics: RadiomicsParams
    #: the scope checks before prediction (``scope`` block of pipeline.yaml; node.imaging.scope)
    scope: ScopeParams = field(default_factory=ScopeParams)

    @classmethod
    def load(
        cls,
        rules_path: Path | None = None,
        pipeline_path: Path | None = None,
        radiomics_path: Path | None = None,
    ) -> PipelineConfig:
        return cls(
            rules=load_rules(rules_path),
            preprocess=load_preprocess_settings(pipeline_path),
            radiomics=load_radiomics_params(radiomics_path),
            scope=load_scope_params(pipeline_path),
        )


@dataclass(frozen=True)
class FeatureRun:
    """The outcome of the pipeline on one study."""

    case: str
    identity: StudyIdentity
    lesions: tuple[LesionFeatures, ...]
    pons_method: str
    pons_qc: dict[str, float | str | bool]
    registration_metric: float
    registration_method: str
    timings: dict[str, float]
    warnings: tuple[str, ...] = field(default=())
    provenance: dict[str, str] = field(default_factory=dict)
    #: the 2-D slices of the QC key image (reference, then every lesion mask), :mod:`node.imaging.keyslices`
    key_slices: tuple[KeySlice, ...] = field(default=())
    #: per SEG segment number, the deep model's lesion-centred crop and site (:mod:`node.imaging.crops`)
    crops: dict[int, LesionCrop] = field(default_factory=dict)
    #: the intensity reference the images were z-scored with: t1ce_mean, t1ce_sd, t2_mean, t2_sd
    pons_stats: dict[str, float] = field(default_factory=dict)
    #: the files the study was read from (the SR's evidence reads their headers without a second folder scan)
    files: SeriesFiles | None = None

    def rows(self) -> Iterator[dict[str, object]]:
        """One CSV row per lesion: QC columns then the features (core 200 first, extras after)."""
        pons_mm3 = self.pons_qc.get("volume_mm3")
        pons_volume = round(float(pons_mm3) / 1000.0, 4) if isinstance(pons_mm3, int | float) else ""
        for lesion in self.lesions:
            row: dict[str, object] = {
                "case": self.case,
                "study_instance_uid": self.identity.study_instance_uid,
                "segment_number": lesion.segment_number,
                "segment_label": lesion.label,
                "tracking_uid": lesion.qc.get("tracking_uid", ""),
                "lesion_volume_ml": lesion.qc.get("volume_ml", ""),
                "lesion_voxels": lesion.qc.get("voxel_count", ""),
                "pons_method": self.pons_method,
                "pons_volume_ml": pons_volume,
                "registration_metric": round(self.registration_metric, 6),
                "registration_method": self.registration_method,
                "qc_error": lesion.qc.get("error") or "",
            }
            row.update(lesion.features)
            yield row

    def summary(self) -> dict[str, object]:
        """The JSON summary printed by ``ainode features`` (no PHI)."""
        return {
            "case": self.case,
            "study_instance_uid": self.identity.study_instance_uid,
            "lesions": len(self.lesions),
            "features_per_lesion": len(FEATURE_NAMES),
            "lesions_with_errors": sum(1 for lesion in self.lesions if lesion.qc.get("error")),
            "pons_method": self.pons_method,
            "registration_metric": round(self.registration_metric, 6),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
            "provenance": dict(self.provenance),
        }


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = time.perf_counter() - start


def run_features(study_dir: Path, config: PipelineConfig | None = None) -> FeatureRun:
    """Run load -> preprocess -> features on one study folder."""
    config = config or PipelineConfig.load()
    timings: dict[str, float] = {}
    total_start = time.perf_counter()
    with _timed(timings, "load"):
        study = load_study(study_dir, config.rules)
    with log.correlated(study=log.study_key(study.identity.study_instance_uid)):
        logger.info("loaded study: %d lesion segment(s)", len(study.lesions))
        with _timed(timings, "preprocess"):
            pre = preprocess(study, config.preprocess)
        with _timed(timings, "features"):
            lesions = extract_features(pre, config.radiomics, shells_mm=config.preprocess.shells_mm)
        with _timed(timings, "sites"):
            lesions = attach_sites(lesions, pre)
        for lesion, segment in zip(lesions, pre.lesions, strict=True):
            lesion.qc.setdefault("tracking_uid", segment.tracking_uid or "")
        with _timed(timings, "crops"):
            crops = lesion_crops(pre, lesions)
        stage_timings = {f"preprocess.{k}": v for k, v in pre.timings.items()}
        timings.update(stage_timings)
        timings["total"] = time.perf_counter() - total_start
        logger.info("features extracted in %.1f s", timings["total"])
    return FeatureRun(
        case=study_dir.name,
        identity=study.identity,
        files=study.files,
        lesions=tuple(lesions),
        pons_method=pre.pons.method,
        pons_qc=dict(pre.pons.qc),
        registration_metric=pre.registration.metric,
        registration_method=pre.registration.method,
        timings=timings,
        warnings=tuple(study.warnings) + tuple(pre.warnings),
        provenance={**pre.provenance, "radiomics_params_sha256": config.radiomics.sha256},
        key_slices=key_slices(pre),
        crops=crops,
        pons_stats={
            "t1ce_mean": pre.pons.t1ce_mean,
            "t1ce_sd": pre.pons.t1ce_sd,
            "t2_mean": pre.pons.t2_mean,
            "t2_sd": pre.pons.t2_sd,
        },
    )


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _format(value: object) -> object:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def write_feature_table(runs: Sequence[FeatureRun], out: Path, shells_mm: Sequence[int] = ()) -> int:
    """Write one row per lesion of every run to ``out`` (CSV) atomically; returns the row count.

    Columns: :data:`QC_COLUMNS`, then the feature names in their canonical order (core 200, then shells).
    """
    fieldnames: list[str] = [*QC_COLUMNS, *feature_names(shells_mm)]
    seen = set(fieldnames)
    for run in runs:
        for lesion in run.lesions:
            for name in lesion.features:
                if name not in seen:
                    seen.add(name)
                    fieldnames.append(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    rows = 0
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames, restval="")
            writer.writeheader()
            for run in runs:
                for row in run.rows():
                    writer.writerow({k: _format(v) for k, v in row.items()})
                    rows += 1
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp_name).replace(out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return rows
