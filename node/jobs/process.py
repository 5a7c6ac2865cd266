"""One study folder -> features -> predictions -> a validated TID 1500 SR (+ companions) on disk.

:func:`process_study` is what the job layer (Celery task) and ``ainode analyse`` call; it runs offline (no
network). It runs the steps of :mod:`node.jobs.steps` in order and records how long each took: check the options,
load the model set (fail fast on a configuration problem), run the imaging pipeline
(:func:`node.imaging.pipeline.run_features`), read the analysed series' headers, choose the primary-tumour subtype
(:mod:`node.jobs.primary`: argument > entry set beforehand > the study's headers), choose the subtype model, check
the scope (:mod:`node.jobs.scope`: lesions refused as "not assessed" with a reason, warnings), predict every
admitted lesion with every installed head, build the :class:`~node.sr.content.ReportContent` and write + validate the
SR and its companions (:func:`node.sr.validate.write_results`). Objects are written into a staging folder inside
``out_dir`` and moved into ``out_dir`` only once all of them passed validation, so ``out_dir`` never holds a
half-written or invalid result (a rejected set is kept in ``out_dir/rejected-*`` for inspection).

:func:`write_failure_report` writes the short "not processed" SR for a study that failed.
Research use only, not for diagnosis.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from node import log
from node.config import IndexLesionRule
from node.errors import NodeError
from node.imaging.pipeline import PipelineConfig, run_features
from node.jobs.deep import load_deep_model, predict_deep
from node.jobs.index import mark_index, patient_level
from node.jobs.lesions import LesionSummary
from node.jobs.model_set import load_model_set
from node.jobs.primary import (
    DEFAULT_PRIMARY_ATTRIBUTES,
    PrimaryLookup,
    choose_primary,
    primary_subtype_from_headers,
)
from node.jobs.scope import check_scope
from node.jobs.steps import (
    build_content,
    check_options,
    choose_models,
    predict_lesions,
    publish,
    source_study,
    write_outputs,
)
from node.sr.assessment import NotAssessedLesion
from node.sr.content import AlgorithmInfo, ModelInfo, SubtypeModel
from node.sr.failure import FailureContent, build_failure_report
from node.sr.identity import ResultIdentity
from node.sr.patient import PatientLevel
from node.sr.report import write_instance
from node.sr.validate import FAST_SR_CHECKS, validate_sr

__all__ = [
    "DEFAULT_PRIMARY_ATTRIBUTES",
    "LesionSummary",
    "PrimaryLookup",
    "ProcessResult",
    "primary_subtype_from_headers",
    "process_study",
    "write_failure_report",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessResult:
    """What one processed study produced (JSON-able apart from the paths: :func:`node.jobs.summary.result_json`)."""

    study_instance_uid: str
    sr_path: Path
    companion_paths: tuple[Path, ...]
    lesions: tuple[LesionSummary, ...]  # per analysed lesion: segment, label, subtype, probabilities, SHAP, OOD
    subtype_model: str  # "with-primary" | "without-primary"
    warnings: tuple[str, ...]
    timings: dict[str, float]
    primary_source: str | None = None  # where the primary subtype the subtype model used came from
    not_assessed: tuple[NotAssessedLesion, ...] = ()  # segments refused, each with its reason (coded and text)
    patient: PatientLevel | None = None  # the patient-level answer: index lesion, discordance (node.jobs.index)

    @property
    def paths(self) -> tuple[Path, ...]:
        """The SR first, then the companions: what is sent to the PACS."""
        return (self.sr_path, *self.companion_paths)


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - start


def process_study(
    study_dir: Path,
    out_dir: Path,
    *,
    models_dir: Path | None = None,
    primary_subtype: str | None = None,
    primary_lookup: PrimaryLookup | None = None,
    config: PipelineConfig | None = None,
    companions: Sequence[str] = ("sc",),
    primary_attributes: tuple[str, ...] = DEFAULT_PRIMARY_ATTRIBUTES,
    identity: ResultIdentity | None = None,
    index_rule: IndexLesionRule | str = IndexLesionRule.LARGEST,
    her2_three_tier: bool = False,
    dl_model_dir: Path | None = None,
    dl_heads: Sequence[str] = ("er", "pr", "her2"),
) -> ProcessResult:
    """Analyse the study in ``study_dir`` and write the validated SR and companions into ``out_dir``.

    The primary-tumour subtype is, in order: ``primary_subtype``; what ``primary_lookup(study UID, accession
    number, patient ID)`` returns (the node passes the entries set with ``ainode primary``), as ``(subtype,
    source)``; the subtype stated in the study's headers, in the DICOM attributes ``primary_attributes``
    (the setting ``primary_subtype_attributes``). ``ProcessResult.primary_source``
    says which. ``identity`` (the job's study version and the SR it supersedes, :mod:`node.sr.identity`) fixes the
    result's UIDs; without it they are derived from the evidence instances. ``her2_three_tier`` runs the
    experimental HER2 three-tier head (off by default; the SR marks it experimental). ``dl_model_dir`` (setting
    ``dl_model_dir``) runs the multimodal deep model's ONNX bundle beside the radiomics models, its heads
    ``dl_heads`` reported as a separate algorithm (:mod:`node.jobs.deep`, :mod:`node.sr.deep`).

    Timings (seconds): ``models``, ``pipeline.*`` (the imaging pipeline's own), ``predict`` (headers, primary
    subtype, model choice, predictions), ``deep`` (the deep model), ``sr`` (write, validate, publish), ``total``.

    Raises :class:`~node.errors.InvalidStudyError` (permanent: the study), :class:`~node.errors.ConfigError`
    (models, settings) or :class:`~node.errors.ProcessingError` (pipeline or validation failure).
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    options = check_options(companions, primary_subtype, primary_attributes)
    config = config or PipelineConfig.load()
    with _timed(timings, "models"):
        model_set = load_model_set(models_dir, config.radiomics.sha256 or None)
        deep_model = load_deep_model(dl_model_dir)
    run = run_features(study_dir, config)
    timings.update({f"pipeline.{k}": v for k, v in run.timings.items()})
    with log.correlated(study=log.study_key(run.identity.study_instance_uid)):
        with _timed(timings, "predict"):
            source = source_study(study_dir, run)
            primary = choose_primary(source, given=options.primary_subtype, lookup=primary_lookup,
                                     attributes=options.primary_attributes)
            models = choose_models(model_set, primary.subtype, her2_three_tier=her2_three_tier)
            scope = check_scope(run, source, config.scope)
            predictions = predict_lesions(scope.admitted(run), models, primary.subtype)
        with _timed(timings, "deep"):
            deep, deep_warnings = predict_deep(run, predictions.results, deep_model, tuple(dl_heads))
        content = build_content(source, run, primary, models, predictions, identity, scope)
        if deep is not None:
            algorithm = replace(content.algorithm,
                                extra_parameters=(*content.algorithm.extra_parameters, deep.model.parameter()))
            content = replace(content, deep=deep, algorithm=algorithm,
                              warnings=tuple(dict.fromkeys((*content.warnings, *deep_warnings))))
        content = patient_level(content, primary.subtype, index_rule)  # the index lesion (setting index_lesion)
        with _timed(timings, "sr"):
            written = write_outputs(content, out_dir, options.companions)
        timings["total"] = time.perf_counter() - start
        logger.info("study processed in %.1f s: %d lesion(s), SR %s", timings["total"], len(content.lesions),
                    written.sr_path.name)
    with_primary = content.subtype_model is SubtypeModel.WITH_PRIMARY
    return ProcessResult(
        study_instance_uid=run.identity.study_instance_uid,
        sr_path=written.sr_path,
        companion_paths=written.companion_paths,
        lesions=mark_index(predictions.summaries, content.patient),
        subtype_model="with-primary" if with_primary else "without-primary",
        warnings=content.warnings,
        timings=timings,
        primary_source=primary.source if content.primary_subtype is not None else None,
        not_assessed=content.not_assessed,
        patient=content.patient,
    )


def _evidence_files(study_dir: Path) -> list[Path]:
    """Every readable DICOM instance of the study's majority StudyInstanceUID (headers only are read)."""
    by_study: dict[str, list[Path]] = {}
    if not study_dir.is_dir():
        return []
    for path in sorted(p for p in study_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uid = str(ds.StudyInstanceUID)
            str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        except (InvalidDicomError, OSError, AttributeError, ValueError, TypeError, KeyError):
            continue
        if str(ds.SOPClassUID) == "1.2.840.10008.1.3.10":  # DICOMDIR
            continue
        by_study.setdefault(uid, []).append(path)
    return max(by_study.values(), key=len) if by_study else []


def write_failure_report(study_dir: Path, out_dir: Path, error: NodeError, *,
                         models_dir: Path | None = None, identity: ResultIdentity | None = None) -> Path | None:
    """The short "not processed" SR for ``study_dir`` in ``out_dir``; ``None`` when none can be made (no
    readable instance to take the patient/study identity from, no model to name, or it failed validation).
    ``identity`` fixes its UIDs and names the SR it supersedes, as for the result SR."""
    evidence = _evidence_files(study_dir)
    if not evidence:
        logger.warning("no failure SR: %s holds no readable DICOM instance", study_dir)
        return None
    try:
        model_set = load_model_set(models_dir)
        algorithm = AlgorithmInfo(models=tuple(ModelInfo.from_bundle(b) for b in model_set.bundles.values()))
        failure = FailureContent.from_error(error, evidence, algorithm, identity)
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
        path = write_instance(build_failure_report(failure), staging)
    except (NodeError, ValueError, OSError) as exc:
        logger.warning("no failure SR for %s: %s", study_dir, exc)
        return None
    problems = validate_sr(path, FAST_SR_CHECKS)
    if problems:
        logger.error("the failure SR failed validation (not kept): %s", "; ".join(problems[:3]))
        shutil.rmtree(staging, ignore_errors=True)
        return None
    return publish(staging, out_dir, [path])[0]
