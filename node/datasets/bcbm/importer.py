"""Import the TCIA BCBM-RadioGenomics collection as node/learn tables, and train its T1CE-only models.

:func:`import_bcbm` runs, in order:

1. ``discover``  :func:`node.datasets.bcbm.layout.discover` - scans, images, masks and the clinical workbook.
2. ``clinical``  :func:`node.datasets.bcbm.clinical.read_clinical` - receptor status per scan.
3. ``classify``  :func:`node.datasets.bcbm.masks.classify_mask_name` on every mask; only lesions go on.
4. ``extract``   :func:`node.datasets.bcbm.features.extract_scan` per scan (optionally in worker processes).
5. ``write``     into the output folder:

   * ``features.csv``: :data:`node.imaging.table.QC_COLUMNS` then the 107 T1CE features, one row per
     lesion. ``case`` is the patient (``BCBM-RadioGenomics-<p>``) so that every scan and lesion of a patient
     stays in one CV group; ``study_instance_uid`` is the scan id; ``segment_number`` is
     ``1000 × <scan number> + <mask index within the scan>`` (unique per patient, as the join needs);
     ``segment_label`` is the mask name.
   * ``labels.csv``: the node/learn labels table (:data:`node.datasets.bcbm.clinical.LABEL_COLUMNS`).
   * ``masks.csv``: every mask with its classification (category and rule).
   * ``import_summary.json``: counts of every decision, label coverage, pons methods, timings.

Training on the result is :func:`node.datasets.bcbm.train.train_bcbm`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.datasets.bcbm.clinical import (
    LABEL_COLUMNS,
    ClinicalTable,
    PatientLabels,
    all_patient_labels,
    label_row,
    read_clinical,
    site_of,
)
from node.datasets.bcbm.features import T1CE_FEATURES, ExtractOptions, ScanJob, ScanResult, extract_scan
from node.datasets.bcbm.layout import BcbmLayout, discover
from node.datasets.bcbm.masks import MaskDecision, classify_mask_name, decision_counts
from node.errors import ConfigError
from node.imaging.crops import crop_name
from node.imaging.table import QC_COLUMNS

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("er", "pr", "her2")
SCAN_FACTOR = 1000
FEATURES_CSV = "features.csv"
LABELS_CSV = "labels.csv"
MASKS_CSV = "masks.csv"
SUMMARY_JSON = "import_summary.json"
MASK_COLUMNS: tuple[str, ...] = ("scan", "patient", "mask_index", "segment_number", "mask_name", "normalised",
                                 "category", "rule", "is_lesion")  # fmt: skip


def segment_number(scan_number: int, mask_index: int) -> int:
    """The lesion number of the feature and label tables: unique within a patient across its scans."""
    if not 0 < mask_index < SCAN_FACTOR:
        raise ConfigError(f"a scan with {mask_index} masks is beyond the importer's numbering ({SCAN_FACTOR - 1})")
    return SCAN_FACTOR * scan_number + mask_index


@dataclass(frozen=True)
class ImportOptions:
    workers: int = 1
    extract: ExtractOptions = field(default_factory=ExtractOptions)
    workbook: Path | None = None  # default: PATH / BCBM-RadioGenomics-Clinical-data.xlsx
    progress: Callable[[str], None] | None = None


@dataclass(frozen=True)
class ImportResult:
    out: Path
    features_csv: Path
    labels_csv: Path
    masks_csv: Path
    summary_json: Path
    summary: dict[str, Any]


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> int:
    """Write rows atomically (temporary file, then rename); returns the row count."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                count += 1
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _fmt(value: float | None, digits: int | None = None) -> object:
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    return round(value, digits) if digits is not None else repr(float(value))


def _feature_rows(results: Sequence[ScanResult], scan_numbers: dict[str, int]) -> Iterator[dict[str, object]]:
    for scan in results:
        for lesion in scan.lesions:
            row: dict[str, object] = {
                "case": scan.patient,
                "study_instance_uid": scan.scan_id,
                "segment_number": segment_number(scan_numbers[scan.scan_id], lesion.segment_number),
                "segment_label": lesion.label,
                "tracking_uid": "",
                "lesion_volume_ml": _fmt(lesion.volume_ml, 4),
                "lesion_voxels": "" if lesion.voxels is None else lesion.voxels,
                "pons_method": scan.pons_method,
                "pons_volume_ml": _fmt(scan.pons_volume_ml, 4),
                "registration_metric": "",
                "registration_method": "none (T1CE only)",
                "qc_error": lesion.error,
            }
            row.update({name: _fmt(lesion.features[name]) for name in T1CE_FEATURES})
            yield row


def _run_jobs(jobs: Sequence[ScanJob], options: ImportOptions) -> list[ScanResult]:
    """Extract every scan, in worker processes when ``workers > 1``; results in job order."""
    results: list[ScanResult] = []
    note = options.progress or (lambda _msg: None)
    if options.workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs, start=1):
            results.append(extract_scan(job, options.extract))
            note(f"scan {i}/{len(jobs)} done")
        return results
    threads = max(1, (os.cpu_count() or 1) // options.workers)
    extract = dataclasses.replace(options.extract, threads=options.extract.threads or threads)
    context = multiprocessing.get_context("spawn")  # no inherited ITK thread pools or locks
    pool = ProcessPoolExecutor(max_workers=options.workers, mp_context=context)
    try:
        for i, result in enumerate(pool.map(extract_scan, jobs, [extract] * len(jobs)), start=1):
            results.append(result)
            note(f"scan {i}/{len(jobs)} done")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, the queued scans are not run
    return results


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder")
    for name in (FEATURES_CSV, LABELS_CSV, "models"):
        if (out / name).exists():
            raise ConfigError(f"output folder {out} already holds {name}; choose an empty folder")


def _decisions(layout: BcbmLayout) -> dict[tuple[str, int], MaskDecision]:
    return {(s.scan_id, m.index): classify_mask_name(m.name) for s in layout.scans for m in s.masks}


def _mask_rows(layout: BcbmLayout, decisions: dict[tuple[str, int], MaskDecision]) -> list[dict[str, object]]:
    """One ``masks.csv`` row per mask (built before extraction: it also checks the numbering fits)."""
    rows: list[dict[str, object]] = []
    for s in layout.scans:
        for m in s.masks:
            d = decisions[(s.scan_id, m.index)]
            rows.append({
                "scan": s.scan_id, "patient": s.patient, "mask_index": m.index,
                "segment_number": segment_number(s.scan_number, m.index), "mask_name": m.name,
                "normalised": d.normalised, "category": d.category, "rule": d.rule, "is_lesion": int(d.is_lesion),
            })  # fmt: skip
    return rows


def import_bcbm(root: Path, out: Path, options: ImportOptions | None = None) -> ImportResult:
    """Discover, classify, extract and write the tables (module docstring); returns the paths and summary."""
    options = options or ImportOptions()
    start = time.perf_counter()
    _check_out(out)
    layout = discover(root, options.workbook)
    clinical = read_clinical(layout.workbook)
    decisions = _decisions(layout)
    mask_rows = _mask_rows(layout, decisions)
    scan_numbers = {s.scan_id: s.scan_number for s in layout.scans}
    jobs = [
        ScanJob(s.scan_id, s.patient, s.image, tuple(m for m in s.masks if decisions[(s.scan_id, m.index)].is_lesion))
        for s in layout.scans
    ]
    jobs_with_lesions = [j for j in jobs if j.lesions]
    logger.info("%d lesion mask(s) in %d scan(s) to extract", sum(len(j.lesions) for j in jobs),
                len(jobs_with_lesions))
    extract_start = time.perf_counter()
    results = _run_jobs(jobs_with_lesions, options)
    extract_s = time.perf_counter() - extract_start

    out.mkdir(parents=True, exist_ok=True)
    features_csv, labels_csv, masks_csv = out / FEATURES_CSV, out / LABELS_CSV, out / MASKS_CSV
    _write_csv(features_csv, [*QC_COLUMNS, *T1CE_FEATURES], _feature_rows(results, scan_numbers))
    scans_of: dict[str, list[str]] = {}
    for s in layout.scans:
        scans_of.setdefault(s.patient, []).append(s.scan_id)
    labels = all_patient_labels(layout.patients, scans_of, clinical)
    label_rows = [
        label_row(labels[r.patient], segment_number(scan_numbers[r.scan_id], lesion.segment_number),
                  site_of(clinical.scans.get(r.scan_id)))
        for r in results for lesion in r.lesions
    ]  # fmt: skip
    _write_csv(labels_csv, LABEL_COLUMNS, label_rows)
    _write_csv(masks_csv, MASK_COLUMNS, mask_rows)
    if options.extract.crops_dir is not None:  # name the crops as the tables name the lesions (node.imaging.crops)
        for r in results:
            for lesion in r.lesions:
                src = options.extract.crops_dir / "by-scan" / crop_name(r.scan_id, lesion.segment_number)
                if src.is_file():
                    number = segment_number(scan_numbers[r.scan_id], lesion.segment_number)
                    src.replace(options.extract.crops_dir / crop_name(r.patient, number))

    summary = _summary(layout, decisions, results, labels, label_rows, clinical)
    summary["timings_s"] = {
        "total": round(time.perf_counter() - start, 2),
        "extract": round(extract_s, 2),
        "per_scan_mean": round(sum(r.seconds for r in results) / len(results), 2) if results else None,
    }
    summary["workers"] = options.workers
    summary["extraction"] = results[0].provenance if results else {}
    summary_json = out / SUMMARY_JSON
    summary_json.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return ImportResult(out, features_csv, labels_csv, masks_csv, summary_json, summary)


def _summary(
    layout: BcbmLayout,
    decisions: dict[tuple[str, int], MaskDecision],
    results: Sequence[ScanResult],
    labels: Mapping[str, PatientLabels],
    label_rows: Sequence[Mapping[str, object]],
    clinical: ClinicalTable,
) -> dict[str, Any]:
    on_disk = {s.scan_id for s in layout.scans}
    in_book = set(clinical.scans)
    lesions = [lesion for r in results for lesion in r.lesions]
    unknown = Counter(d.normalised for d in decisions.values() if d.category == "unknown")
    receptor_counts = {
        task: dict(Counter({True: "positive", False: "negative", None: "missing"}[getattr(p, task)]
                           for p in labels.values()))
        for task in TASKS
    }  # fmt: skip
    lesion_label_counts = {
        task: dict(Counter(row[task] or "missing" for row in label_rows)) for task in (*TASKS, "metastasis_subtype")
    }
    return {
        "dataset": "TCIA BCBM-RadioGenomics (DOI 10.7937/RRSE-W278, CC BY 4.0)",
        "scans": len(layout.scans),
        "patients": len(layout.patients),
        "masks": {"total": len(decisions), **decision_counts(decisions.values())},
        "unknown_mask_names": dict(unknown.most_common()),
        "scans_without_lesion_masks": len(layout.scans) - len(results),
        "lesions": {
            "rows": len(lesions),
            "with_features": sum(1 for lesion in lesions if not lesion.error),
            "with_qc_error": sum(1 for lesion in lesions if lesion.error),
            "patients": len({r.patient for r in results}),
        },
        "features_per_lesion": len(T1CE_FEATURES),
        "pons_methods": dict(Counter(r.pons_method for r in results)),
        "workbook": {
            "rows": len(in_book),
            "scans_without_row": len(on_disk - in_book),
            "rows_without_scan": len(in_book - on_disk),
            "duplicate_ids": clinical.duplicate_ids,
            "unrecognised_values": dict(clinical.unrecognised_values),
            "patients_with_conflicting_labels": sum(1 for p in labels.values() if p.conflicts),
        },
        "patient_labels": receptor_counts,
        "lesion_labels": lesion_label_counts,
        "ignored_files": len(layout.ignored_files),
        "scans_without_image": list(layout.scans_without_image),
    }
