"""A processed job's result summary (predictions, warnings, stage timings) as the job layer wrote it.

:func:`node.jobs.tasks.write_result_json` keeps it beside the job's result folder
(``<spool>/results/<hashed study uid>/job-<id>.json``). Results never change once written, so each file is read
once per process (cached by path, size and modification time).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.spool import result_dir, result_json_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    subtype_model: str
    lesions: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...]
    timings_s: dict[str, float]
    disclaimer: str
    sr: str
    companions: tuple[str, ...] = field(default=())
    #: segments the node refused to predict, with the reason (``node.sr.assessment.NotAssessedLesion.to_json``)
    not_assessed: tuple[dict[str, Any], ...] = field(default=())
    #: the patient-level answer (node.sr.patient.PatientLevel.to_json): index lesion, subtype, discordance
    patient: dict[str, Any] | None = None

    @property
    def summary(self) -> str:
        """One line for the studies list: "not assessed" with the reasons when no lesion was predicted; else the
        patient-level answer (the index lesion's subtype) when stated, else the subtype of the most confident
        lesion; and how many lesions."""
        if not self.lesions and self.not_assessed:
            reasons = sorted({str(n.get("reason_meaning", n.get("reason", "?"))) for n in self.not_assessed})
            return "not assessed: " + "; ".join(reasons)
        if not self.lesions:
            return "no lesion analysed"
        if self.patient is not None:
            text = patient_text(self.patient) + (f" ({len(self.lesions)} lesions)" if len(self.lesions) > 1 else "")
            return text + (f", {len(self.not_assessed)} not assessed" if self.not_assessed else "")
        best = max(self.lesions, key=lambda lesion: float(lesion.get("probability", 0.0)))
        text = f"{best.get('subtype', '?')} (p={float(best.get('probability', 0.0)):.2f})"
        others = len(self.lesions) - 1
        text += f" + {others} more lesion{'s' if others > 1 else ''}" if others else ""
        return text + (f", {len(self.not_assessed)} not assessed" if self.not_assessed else "")

    def as_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary, "subtype_model": self.subtype_model, "lesions": list(self.lesions),
            "warnings": list(self.warnings), "timings_s": self.timings_s, "disclaimer": self.disclaimer,
            "sr": Path(self.sr).name, "companions": [Path(c).name for c in self.companions],
            "not_assessed": list(self.not_assessed),
            "patient": self.patient,
        }


def parse_result(data: Any) -> JobResult:
    """A :class:`JobResult` from the JSON written by ``node.jobs.tasks.write_result_json``."""
    if not isinstance(data, dict):
        raise ValueError("a result summary must be a JSON object")
    lesions = data.get("lesions", [])
    timings = data.get("timings_s", {})
    if not isinstance(lesions, list) or not isinstance(timings, dict):
        raise ValueError("'lesions' must be a list and 'timings_s' an object")
    return JobResult(
        subtype_model=str(data.get("subtype_model", "")),
        lesions=tuple(lesion for lesion in lesions if isinstance(lesion, dict)),
        warnings=tuple(str(w) for w in data.get("warnings", [])),
        timings_s={str(k): float(v) for k, v in timings.items()},
        disclaimer=str(data.get("disclaimer", "")),
        sr=str(data.get("sr", "")),
        companions=tuple(str(c) for c in data.get("companions", [])),
        not_assessed=tuple(n for n in data.get("not_assessed", []) or [] if isinstance(n, dict)),
        patient=data["patient"] if isinstance(data.get("patient"), dict) else None,
    )


def patient_text(patient: dict[str, Any]) -> str:
    """"patient: TN (p=0.61), index segment 2; DISCORDANT with primary HR+/HER2-" (the dashboard's words)."""
    text = (f"patient: {patient.get('subtype', '?')} (p={float(patient.get('probability', 0.0)):.2f}), "
            f"index segment {patient.get('index_segment', '?')}")
    if patient.get("discordant") is True:
        text += f"; DISCORDANT with primary {patient.get('primary_subtype', '?')}"
    elif patient.get("discordant") is False:
        text += f"; concordant with primary {patient.get('primary_subtype', '?')}"
    return text


class ResultReader:
    """Reads result summaries under one spool folder, caching each file once."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self._cache: dict[tuple[Path, int, int], JobResult | None] = {}
        self._lock = threading.Lock()

    def path(self, study_instance_uid: str, job_id: int) -> Path:
        return result_json_path(result_dir(self.spool_dir, study_instance_uid, job_id))

    def read(self, study_instance_uid: str, job_id: int) -> JobResult | None:
        """The job's result, or ``None`` when it has none (not processed, failed) or it cannot be read."""
        path = self.path(study_instance_uid, job_id)
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (path, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        try:
            result: JobResult | None = parse_result(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("result summary of job %d cannot be read: %s", job_id, exc)
            result = None
        with self._lock:
            self._cache[key] = result
        return result
