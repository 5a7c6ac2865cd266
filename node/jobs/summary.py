"""A processed job's summary as JSON: what ``ainode analyse --json`` prints and the dashboard reads back."""

from __future__ import annotations

from node.jobs.process import ProcessResult
from node.vocabulary import DISCLAIMER


def result_json(result: ProcessResult) -> dict[str, object]:
    return {
        "study_instance_uid": result.study_instance_uid,
        "sr": str(result.sr_path),
        "companions": [str(p) for p in result.companion_paths],
        "subtype_model": result.subtype_model,
        "lesions": [lesion.to_json() for lesion in result.lesions],
        "not_assessed": [item.to_json() for item in result.not_assessed],
        "patient": result.patient.to_json() if result.patient is not None else None,
        "warnings": list(result.warnings),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "disclaimer": DISCLAIMER,
    }
