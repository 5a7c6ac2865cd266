"""One study folder -> features -> predictions -> a validated TID 1500 SR (+ companions) on disk.

:func:`process_study` is what the job layer (Celery task) and ``ainode analyse`` call; it runs offline (no
network). Steps: load the model set (fail fast on a configuration problem), run the imaging pipeline
(:func:`node.imaging.pipeline.run_features`), choose the subtype model (with the primary-tumour subtype when it
is known, from the argument or the study's headers, see :func:`primary_subtype_from_headers`), predict every
lesion with every installed head, build the :class:`~node.sr.content.ReportContent` and write + validate the SR
and its companions (:func:`node.sr.validate.write_results`). Objects are written into a staging folder inside
``out_dir`` and moved into ``out_dir`` only once all of them passed validation, so ``out_dir`` never holds a
half-written or invalid result (a rejected set is kept in ``out_dir/rejected-*`` for inspection).

:func:`write_failure_report` writes the short "not processed" SR for a study that failed.
Research use only, not for diagnosis.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node import log
from node.errors import ConfigError, InvalidStudyError, NodeError, ProcessingError
from node.imaging.pipeline import FeatureRun, PipelineConfig, run_features
from node.imaging.study import scan_study
from node.imaging.types import LesionFeatures, SeriesRef
from node.jobs.model_set import ModelSet, load_model_set
from node.labels import normalise_subtype
from node.model.bundle import Bundle
from node.model.prediction import Prediction
from node.model.tasks import Task
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
from node.sr.failure import FailureContent, build_failure_report
from node.sr.report import write_instance
from node.sr.source import SourceStudy
from node.sr.validate import FAST_SR_CHECKS, validate_sr, write_results

logger = logging.getLogger(__name__)

#: Header attributes searched for the primary-tumour subtype, in order (override: AINODE_PRIMARY_SUBTYPE_ATTRIBUTES,
#: comma-separated DICOM keywords). The value must contain "primary subtype: <class>", e.g.
#: "primary subtype: HR+/HER2-" (case-insensitive; "primary-subtype", "=" also accepted).
PRIMARY_SUBTYPE_ATTRIBUTES: tuple[str, ...] = ("AdditionalPatientHistory", "PatientComments")
_PRIMARY_PATTERN = re.compile(r"primary[ _-]*subtype\s*[:=]\s*(HR\s*[+-]\s*/\s*HER2\s*[+-]|TN|triple[ -]negative)",
                              re.IGNORECASE)
TOP_FEATURES = 10

#: ``(study UID, accession number, patient ID) -> (subtype, source) | None``: entries set beforehand.
PrimaryLookup = Callable[[str, str | None, str | None], tuple[str, str] | None]


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value).strip() or None if value is not None else None


@dataclass(frozen=True)
class ProcessResult:
    """What one processed study produced (JSON-able apart from the paths)."""

    study_instance_uid: str
    sr_path: Path
    companion_paths: tuple[Path, ...]
    lesions: tuple[dict[str, object], ...]  # per lesion: segment number, label, subtype, probabilities, SHAP, OOD
    subtype_model: str  # "with-primary" | "without-primary"
    warnings: tuple[str, ...]
    timings: dict[str, float]
    primary_source: str | None = None  # where the primary subtype the subtype model used came from

    @property
    def paths(self) -> tuple[Path, ...]:
        """The SR first, then the companions: what is sent to the PACS."""
        return (self.sr_path, *self.companion_paths)


def primary_subtype_from_headers(
    datasets: Iterable[Dataset], attributes: Sequence[str] | None = None
) -> tuple[str | None, list[str]]:
    """The primary-tumour subtype stated in the headers, and warnings (conflicting statements -> ``None``)."""
    found: set[str] = set()
    for ds in datasets:
        for keyword in attributes or PRIMARY_SUBTYPE_ATTRIBUTES:
            value = ds.get(keyword)
            if value is None or value == "":
                continue
            match = _PRIMARY_PATTERN.search(str(value))
            if match is not None:
                found.add(normalise_subtype(match.group(1)))
    if len(found) > 1:
        return None, [f"the study states conflicting primary subtypes ({', '.join(sorted(found))}); ignored"]
    return (found.pop() if found else None), []


def _series_files(refs: Sequence[SeriesRef], series_uid: str, role: str) -> tuple[Path, ...]:
    for ref in refs:
        if ref.series_instance_uid == series_uid:
            return ref.files
    raise ProcessingError(f"the {role} series {series_uid} vanished from the study folder during processing")


def source_study(study_dir: Path, run: FeatureRun) -> SourceStudy:
    """The SR's evidence: the exact T1CE, T2 and SEG series the pipeline analysed."""
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


def _head_json(prediction: Prediction) -> dict[str, object]:
    return {
        "label": prediction.label,
        "probability": round(prediction.probability, 4),
        "probabilities": {k: round(float(v), 4) for k, v in prediction.probabilities.items()},
        "out_of_distribution": prediction.out_of_distribution,
    }


def _lesion_json(lesion: LesionFeatures, volume_ml: float, subtype: Prediction,
                 heads: dict[Task, Prediction]) -> dict[str, object]:
    reasons = list(dict.fromkeys(r for p in (subtype, *heads.values()) for r in p.ood_reasons))
    return {
        "segment_number": lesion.segment_number,
        "label": lesion.label,
        "volume_ml": round(volume_ml, 3),
        "subtype": subtype.label,
        "probability": round(subtype.probability, 4),
        "probabilities": {k: round(float(v), 4) for k, v in subtype.probabilities.items()},
        "heads": {task.value: _head_json(p) for task, p in heads.items()},
        "top_features": [[name, round(value, 4)] for name, value in subtype.top_features(5)],
        "shap_units": subtype.shap_units,
        "out_of_distribution": bool(reasons) or subtype.out_of_distribution
        or any(p.out_of_distribution for p in heads.values()),
        "ood_reasons": reasons,
    }


def predict_lesions(
    run: FeatureRun, subtype_bundle: Bundle, receptors: dict[Task, Bundle], primary: str | None
) -> tuple[list[LesionResult], list[dict[str, object]], list[str]]:
    """Predict every lesion; a lesion that cannot be predicted is reported in the warnings and left out."""
    results: list[LesionResult] = []
    summaries: list[dict[str, object]] = []
    warnings: list[str] = []
    for lesion in run.lesions:
        name = f"segment {lesion.segment_number} ({lesion.label or 'unlabelled'})"
        qc_error = lesion.qc.get("error")
        if qc_error:
            warnings.append(f"{name} not analysed: {qc_error}")
            continue
        volume = lesion.qc.get("volume_ml")
        try:
            subtype = subtype_bundle.predict(lesion.features, primary)
            heads = {task: bundle.predict(lesion.features, primary) for task, bundle in receptors.items()}
        except InvalidStudyError as exc:
            warnings.append(f"{name} not analysed: {exc.message}")
            continue
        if not isinstance(volume, int | float) or not volume > 0:
            warnings.append(f"{name} not analysed: its volume could not be measured")
            continue
        results.append(
            lesion_result_from_predictions(
                lesion.segment_number, subtype, lesion.features, float(volume),
                er=heads.get(Task.ER), pr=heads.get(Task.PR), her2=heads.get(Task.HER2),
                her2_tier=heads.get(Task.HER2_3TIER), top_k=TOP_FEATURES,
                primary_subtype=primary if subtype_bundle.task.uses_primary else None,
            )
        )
        summaries.append(_lesion_json(lesion, float(volume), subtype, heads))
    return results, summaries, warnings


def _companions(kinds: Sequence[str]) -> tuple[Companion, ...]:
    try:
        return tuple(Companion(k) for k in kinds)
    except ValueError as exc:
        raise ConfigError(f"unknown companion kind in {list(kinds)}; expected 'sc' and/or 'pdf'") from exc


def _pons(run: FeatureRun) -> PonsSummary:
    method = run.pons_method if run.pons_method in ("seg", "auto", "whole-brain") else "whole-brain"
    failed = run.pons_qc.get("failed_gates")  # the pons QC gates that failed (whole-brain fallback)
    return PonsSummary(method, f"failed QC: {failed}"[:200] if failed else "")


def _publish(staging: Path, out_dir: Path, written: Sequence[Path]) -> list[Path]:
    """Move validated objects from the staging folder into ``out_dir`` (same file system: atomic renames)."""
    final = []
    for path in written:
        target = out_dir / path.name
        path.replace(target)
        final.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def process_study(
    study_dir: Path,
    out_dir: Path,
    *,
    models_dir: Path | None = None,
    primary_subtype: str | None = None,
    primary_lookup: PrimaryLookup | None = None,
    config: PipelineConfig | None = None,
    companions: Sequence[str] = ("sc",),
    primary_attributes: Sequence[str] = PRIMARY_SUBTYPE_ATTRIBUTES,
) -> ProcessResult:
    """Analyse the study in ``study_dir`` and write the validated SR and companions into ``out_dir``.

    The primary-tumour subtype is, in order: ``primary_subtype``; what ``primary_lookup(study UID, accession
    number, patient ID)`` returns (the node passes the entries set with ``ainode primary``), as ``(subtype,
    source)``; the subtype stated in the study's headers. ``ProcessResult.primary_source`` says which.

    Raises :class:`~node.errors.InvalidStudyError` (permanent: the study), :class:`~node.errors.ConfigError`
    (models, settings) or :class:`~node.errors.ProcessingError` (pipeline or validation failure).
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    kinds = _companions(companions)
    primary = normalise_subtype(primary_subtype) if primary_subtype else None
    config = config or PipelineConfig.load()
    t = time.perf_counter()
    model_set: ModelSet = load_model_set(models_dir, config.radiomics.sha256 or None)
    timings["models"] = time.perf_counter() - t
    run = run_features(study_dir, config)
    timings.update({f"pipeline.{k}": v for k, v in run.timings.items()})
    with log.correlated(study=log.study_key(run.identity.study_instance_uid)):
        t = time.perf_counter()
        source = source_study(study_dir, run)
        warnings: list[str] = list(run.warnings)
        primary_source = "given" if primary is not None else None
        if primary is None and primary_lookup is not None:
            first = source.t1ce[0]
            found = primary_lookup(run.identity.study_instance_uid, _text(first, "AccessionNumber"),
                                   _text(first, "PatientID"))
            if found is not None:
                primary, primary_source = normalise_subtype(found[0]), found[1]
        if primary is None:
            primary, notes = primary_subtype_from_headers([source.t1ce[0], source.seg], primary_attributes)
            warnings += notes
            primary_source = "the study's headers" if primary is not None else None
        else:
            stated, _ = primary_subtype_from_headers([source.t1ce[0], source.seg], primary_attributes)
            if stated is not None and stated != primary:
                warnings.append(f"the primary subtype {primary} ({primary_source}) differs from the one the study "
                                f"states ({stated}); {primary} was used")
        if primary is not None:
            logger.info("primary-tumour subtype %s from %s", primary, primary_source)
        subtype_bundle, variant, notes = model_set.choose_subtype(primary)
        warnings += notes
        receptors = model_set.receptor_bundles
        lesions, summaries, notes = predict_lesions(run, subtype_bundle, receptors, primary)
        warnings += notes
        if not lesions:
            raise InvalidStudyError("no lesion of the study could be analysed: " + "; ".join(notes or ["none found"]))
        timings["predict"] = time.perf_counter() - t
        used_primary = primary if variant is SubtypeModel.WITH_PRIMARY else None
        algorithm = AlgorithmInfo(
            models=tuple(ModelInfo.from_bundle(b) for b in (subtype_bundle, *receptors.values())),
            shap_units=subtype_bundle.shap_units,
        )
        content = ReportContent(
            source=source, lesions=tuple(lesions), algorithm=algorithm, subtype_model=variant, pons=_pons(run),
            primary_subtype=used_primary, warnings=tuple(dict.fromkeys(warnings)),
        )
        t = time.perf_counter()
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
        try:
            written = write_results(content, staging, kinds)
        except BaseException:
            rejected = out_dir / f"rejected-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            staging.rename(rejected)
            logger.error("result objects failed validation; kept in %s", rejected)
            raise
        paths = _publish(staging, out_dir, written)
        timings["sr"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        logger.info("study processed in %.1f s: %d lesion(s), SR %s", timings["total"], len(lesions), paths[0].name)
    return ProcessResult(
        study_instance_uid=run.identity.study_instance_uid,
        sr_path=paths[0],
        companion_paths=tuple(paths[1:]),
        lesions=tuple(summaries),
        subtype_model="with-primary" if variant is SubtypeModel.WITH_PRIMARY else "without-primary",
        warnings=content.warnings,
        timings=timings,
        primary_source=primary_source if used_primary is not None else None,
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
                         models_dir: Path | None = None) -> Path | None:
    """The short "not processed" SR for ``study_dir`` in ``out_dir``; ``None`` when none can be made (no
    readable instance to take the patient/study identity from, no model to name, or it failed validation)."""
    evidence = _evidence_files(study_dir)
    if not evidence:
        logger.warning("no failure SR: %s holds no readable DICOM instance", study_dir)
        return None
    try:
        model_set = load_model_set(models_dir)
        algorithm = AlgorithmInfo(models=tuple(ModelInfo.from_bundle(b) for b in model_set.bundles.values()))
        failure = FailureContent.from_error(error, evidence, algorithm)
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
    return _publish(staging, out_dir, [path])[0]
