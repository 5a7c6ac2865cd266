"""The steps :func:`node.jobs.process.process_study` runs on one study, in order; each a function with typed input
and output (frozen dataclasses or the value objects of the layers below).

1. ``options``   :func:`check_options` -> :class:`ProcessOptions`: companions, the given primary subtype and the
   header attributes checked before any work (a configuration problem fails before the pipeline).
2. ``models``    :func:`node.jobs.model_set.load_model_set` -> :class:`~node.jobs.model_set.ModelSet`, verified.
3. ``features``  :func:`node.imaging.pipeline.run_features` -> :class:`~node.imaging.pipeline.FeatureRun`.
4. ``source``    :func:`source_study` -> :class:`~node.sr.content.SourceStudy`: the headers of the exact T1CE,
   T2 and SEG series the pipeline analysed (the SR's evidence).
5. ``primary``   :func:`node.jobs.primary.choose_primary` -> :class:`~node.jobs.primary.PrimaryChoice`: given >
   entry set beforehand (ledger lookup) > the study's headers.
6. ``choice``    :func:`choose_models` -> :class:`ModelChoice`: the subtype model (with / without the primary) and
   the receptor heads.
6b. ``scope``   :func:`node.jobs.scope.check_scope` -> :class:`~node.jobs.scope.ScopeDecision`: lesions refused
   before prediction (no pons reference, not a lesion, too small, T1CE out of scope) and the scope warnings.
7. ``predict``   :func:`predict_lesions` -> :class:`LesionPredictions`: one SR
   :class:`~node.sr.content.LesionResult` per analysable lesion and the
   :class:`~node.jobs.lesions.LesionSummary` derived from it; the others as not assessed, with the reason.
8. ``content``   :func:`build_content` -> :class:`~node.sr.content.ReportContent`.
9. ``write``     :func:`write_outputs` -> :class:`WrittenObjects`: SR + companions written into a staging folder,
   validated, then moved into ``out_dir`` (a rejected set is kept in ``out_dir/rejected-*``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom

from node.errors import ConfigError, InvalidStudyError, ProcessingError
from node.imaging.pipeline import FeatureRun
from node.imaging.study import scan_study
from node.imaging.types import SeriesRef
from node.jobs.lesions import LesionSummary
from node.jobs.model_set import ModelSet
from node.jobs.primary import PrimaryChoice, check_primary_attributes
from node.jobs.scope import ScopeDecision
from node.labels import normalise_subtype
from node.model.bundle import Bundle
from node.model.tasks import Task
from node.sr.assessment import NotAssessedLesion
from node.sr.companion import Companion
from node.sr.content import (
    AlgorithmInfo,
    LesionResult,
    ModelInfo,
    PonsSummary,
    ReportContent,
    SubtypeModel,
    lesion_result_from_predictions,
)
from node.sr.identity import ResultIdentity
from node.sr.keyimage import QcView
from node.sr.source import SourceStudy
from node.sr.validate import write_results
from node.vocabulary import NotAssessedReason

logger = logging.getLogger(__name__)

#: SHAP contributions per lesion in the SR.
TOP_FEATURES = 10


# -- 1. options ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessOptions:
    """What the caller chose, checked: companion kinds, the given primary subtype (normalised), header attributes."""

    companions: tuple[Companion, ...]
    primary_subtype: str | None
    primary_attributes: tuple[str, ...]


def check_options(companions: Sequence[str], primary_subtype: str | None,
                  primary_attributes: Sequence[str]) -> ProcessOptions:
    """Raises :class:`~node.errors.ConfigError` for an unknown companion kind, subtype or DICOM keyword."""
    try:
        kinds = tuple(Companion(k) for k in companions)
    except ValueError as exc:
        raise ConfigError(f"unknown companion kind in {list(companions)}; expected 'sc' and/or 'pdf'") from exc
    primary = normalise_subtype(primary_subtype) if primary_subtype else None
    return ProcessOptions(kinds, primary, check_primary_attributes(primary_attributes, source="primary_attributes"))


# -- 4. source ----------------------------------------------------------------------------------------------


def _series_files(refs: Sequence[SeriesRef], series_uid: str, role: str) -> tuple[Path, ...]:
    for ref in refs:
        if ref.series_instance_uid == series_uid:
            return ref.files
    raise ProcessingError(f"the {role} series {series_uid} vanished from the study folder during processing")


def source_study(study_dir: Path, run: FeatureRun) -> SourceStudy:
    """The SR's evidence: the exact T1CE, T2 and SEG series the pipeline analysed (the files the loader read,
    with the headers it parsed: no file is read again; a folder scan only for a run that does not carry them)."""
    if run.files is not None:
        return SourceStudy.from_files(run.files.t1ce, run.files.t2, run.files.seg, run.files.headers)
    refs = scan_study(study_dir)
    ident = run.identity
    seg_files = _series_files(refs, ident.seg_series_uid, "SEG")
    seg_file = next(
        (p for p in seg_files if str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
         == ident.seg_sop_instance_uid),
        seg_files[0],
    )
    return SourceStudy.from_files(
        _series_files(refs, ident.t1ce_series_uid, "T1CE"), _series_files(refs, ident.t2_series_uid, "T2"), seg_file
    )


# -- 6. model choice ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """The bundles that predict this study: the subtype model, which variant it is, the receptor heads."""

    subtype: Bundle
    variant: SubtypeModel
    receptors: Mapping[Task, Bundle]
    warnings: tuple[str, ...] = ()

    @property
    def algorithm(self) -> AlgorithmInfo:
        """The SR's provenance: every model used, the subtype model first."""
        return AlgorithmInfo(
            models=tuple(ModelInfo.from_bundle(b) for b in (self.subtype, *self.receptors.values())),
            shap_units=self.subtype.shap_units,
        )


def choose_models(model_set: ModelSet, primary_subtype: str | None, *, her2_three_tier: bool = False) -> ModelChoice:
    """With a known primary subtype the ``subtype`` model when installed, else ``subtype-noprimary``; the
    experimental HER2 three-tier head only with ``her2_three_tier`` (setting ``her2_three_tier``, off by default)."""
    bundle, variant, warnings = model_set.choose_subtype(primary_subtype)
    receptors = {t: b for t, b in model_set.receptor_bundles.items() if t is not Task.HER2_3TIER or her2_three_tier}
    return ModelChoice(bundle, variant, receptors, tuple(warnings))


# -- 7. predict ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionPredictions:
    """Per analysed lesion what the SR reports and its summary (derived from it); warnings for those left out."""

    results: tuple[LesionResult, ...]
    summaries: tuple[LesionSummary, ...]
    warnings: tuple[str, ...] = ()
    #: the lesions that could not be predicted (features failed, no volume, the model refused), with the reason
    not_assessed: tuple[NotAssessedLesion, ...] = ()


def predict_lesions(run: FeatureRun, models: ModelChoice, primary_subtype: str | None) -> LesionPredictions:
    """Predict every lesion with every model; a lesion that cannot be predicted is reported as not assessed, with
    the reason (a study with no predicted lesion still gets a report that says so: node.jobs.scope)."""
    results: list[LesionResult] = []
    summaries: list[LesionSummary] = []
    refused: list[NotAssessedLesion] = []
    for lesion in run.lesions:
        volume = lesion.qc.get("volume_ml")
        measured = float(volume) if isinstance(volume, int | float) and volume > 0 else None

        def refuse(reason: NotAssessedReason, text: str, segment: int = lesion.segment_number,
                   label: str = lesion.label, volume_ml: float | None = measured) -> None:
            refused.append(NotAssessedLesion(segment, label, reason, text, volume_ml))

        qc_error = lesion.qc.get("error")
        if qc_error:
            refuse(NotAssessedReason.FEATURES_FAILED, str(qc_error))
            continue
        try:
            subtype = models.subtype.predict(lesion.features, primary_subtype)
            # the SR explains the subtype model only: the receptor heads are not explained (TreeSHAP costs)
            heads = {task: b.predict(lesion.features, primary_subtype, explain=False)
                     for task, b in models.receptors.items()}
        except InvalidStudyError as exc:
            refuse(NotAssessedReason.MODEL_REFUSED, exc.message)
            continue
        if measured is None:
            refuse(NotAssessedReason.FEATURES_FAILED, "its volume could not be measured")
            continue
        result = lesion_result_from_predictions(
            lesion.segment_number, subtype, lesion.features, measured,
            er=heads.get(Task.ER), pr=heads.get(Task.PR), her2=heads.get(Task.HER2),
            her2_tier=heads.get(Task.HER2_3TIER), top_k=TOP_FEATURES,
            primary_subtype=primary_subtype if models.subtype.task.uses_primary else None,
        )
        result = replace(result, site=lesion.site)
        results.append(result)
        summaries.append(LesionSummary.from_result(result, lesion.label))
    return LesionPredictions(tuple(results), tuple(summaries), (), tuple(refused))


# -- 8. content ---------------------------------------------------------------------------------------------


def _pons(run: FeatureRun) -> PonsSummary:
    method = run.pons_method if run.pons_method in ("seg", "auto", "whole-brain", "none") else "none"
    failed = run.pons_qc.get("failed_gates")  # the pons QC gates that failed (refusal or research fallback)
    return PonsSummary(method, f"failed QC: {failed}"[:200] if failed else "")


def build_content(source: SourceStudy, run: FeatureRun, primary: PrimaryChoice, models: ModelChoice,
                  predictions: LesionPredictions, identity: ResultIdentity | None = None,
                  scope: ScopeDecision | None = None) -> ReportContent:
    """The report: the primary subtype is named only when the model that used it ran; warnings of every step, in
    step order, each once; ``identity`` (study version, the SR it supersedes) fixes the result's UIDs; ``scope``
    adds the lesions refused before prediction and the scope warnings."""
    scope = scope or ScopeDecision()
    warnings = (*run.warnings, *scope.warnings, *primary.warnings, *models.warnings, *predictions.warnings)
    refused = sorted((*scope.not_assessed, *predictions.not_assessed), key=lambda item: item.segment_number)
    return ReportContent(
        source=source, lesions=predictions.results, algorithm=models.algorithm, subtype_model=models.variant,
        pons=_pons(run), primary_subtype=primary.subtype if models.variant is SubtypeModel.WITH_PRIMARY else None,
        warnings=tuple(dict.fromkeys(warnings)), identity=identity, not_assessed=tuple(refused),
        qc_views=qc_views(run),
    )


def qc_views(run: FeatureRun) -> tuple[QcView, ...]:
    """The QC key image's views (:mod:`node.sr.keyimage`) from the pipeline's key slices: reference, then every
    lesion mask, predicted or not."""
    return tuple(
        QcView(title=k.title, image=k.image, regions=tuple(k.regions), pixel_spacing_mm=k.pixel_spacing_mm,
               window=k.window, kind=k.kind, slice_index=k.slice_index, slice_position_mm=k.slice_position_mm,
               failed=k.failed, segment_number=k.segment_number, note=k.note)
        for k in run.key_slices
    )


# -- 9. write -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenObjects:
    """The validated objects in ``out_dir``: the SR, then the companions."""

    sr_path: Path
    companion_paths: tuple[Path, ...]


def publish(staging: Path, out_dir: Path, written: Sequence[Path]) -> list[Path]:
    """Move validated objects from the staging folder into ``out_dir`` (same file system: atomic renames)."""
    final = []
    for path in written:
        target = out_dir / path.name
        path.replace(target)
        final.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def write_outputs(content: ReportContent, out_dir: Path, companions: Sequence[Companion]) -> WrittenObjects:
    """Write and validate the SR and companions in a staging folder inside ``out_dir``, then publish them; a set
    that failed validation is kept in ``out_dir/rejected-<time>-<pid>`` and the error raised."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        written = write_results(content, staging, companions)
    except BaseException:
        rejected = out_dir / f"rejected-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        staging.rename(rejected)
        logger.error("result objects failed validation; kept in %s", rejected)
        raise
    paths = publish(staging, out_dir, written)
    return WrittenObjects(paths[0], tuple(paths[1:]))
