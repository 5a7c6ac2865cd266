"""Lesions the node did not assess, and why: :class:`NotAssessedLesion`, the reason codes, their SR group.

A lesion is "not assessed" when the node refuses to predict it (docs/sr.md, "Not assessed and scope
warnings"): no usable intensity reference (the pons), a segment that is not an enhancing lesion (oedema,
necrosis, ...), a lesion below the minimum volume, a T1CE outside the method's scope, or features / a model
that could not run. It gets **no** subtype and **no** receptor prediction. In the SR it still has its TID 1411
Volumetric ROI group (same tracking identifiers and segment reference as a predicted lesion) holding:

* Qualitative evaluation ``(99BCMETS, AIASSESSMENT, "AI assessment")`` = ``(SCT, 373121007, "Not evaluated")``;
* Qualitative evaluation ``(99BCMETS, NOTASSESSEDWHY, "Reason not assessed")`` = the reason code: standard SNOMED
  CT where one exists (the tissue of a non-lesion segment: Edema 79654002, Necrosis 6574001, Cyst 367643001,
  Hemorrhage 50960005), else a code of the node's private ``99BCMETS`` scheme;
* the lesion volume (NUM, mm³) when it was measured;

and one TEXT line in the report's Qualitative Evaluations container says it in words. A predicted lesion's group
carries ``AIASSESSMENT`` = ``(99BCMETS, ASSESSED, "Assessed")`` only implicitly (it has a subtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept

from node.sr import codes as C
from node.vocabulary import NotAssessedReason

AI_ASSESSMENT = C.private("AIASSESSMENT", "AI assessment")
NOT_EVALUATED = CodedConcept("373121007", "SCT", "Not evaluated")
NOT_ASSESSED_REASON = C.private("NOTASSESSEDWHY", "Reason not assessed")
INTENSITY_REFERENCE = C.private("INTENSITYREF", "Intensity reference region")

#: the SR code of each reason (standard SNOMED CT where one exists, else the private scheme)
REASON_CODES: dict[NotAssessedReason, CodedConcept] = {
    NotAssessedReason.REFERENCE_OUTSIDE_FOV: C.private("REFOUTSIDEFOV", "Pons reference outside the field of view"),
    NotAssessedReason.REFERENCE_QC_FAILED: C.private("REFQCFAILED", "Pons reference failed quality control"),
    NotAssessedReason.REFERENCE_SEGMENT_IMPLAUSIBLE: C.private(
        "REFSEGIMPLAUS", "Supplied reference segment implausible"
    ),
    NotAssessedReason.NO_REFERENCE: C.private("NOREFERENCE", "No intensity reference available"),
    NotAssessedReason.SEGMENT_OEDEMA: CodedConcept("79654002", "SCT", "Edema"),
    NotAssessedReason.SEGMENT_NECROSIS: CodedConcept("6574001", "SCT", "Necrosis"),
    NotAssessedReason.SEGMENT_CYST: CodedConcept("367643001", "SCT", "Cyst"),
    NotAssessedReason.SEGMENT_HAEMORRHAGE: CodedConcept("50960005", "SCT", "Hemorrhage"),
    NotAssessedReason.SEGMENT_CAVITY: C.private("SEGCAVITY", "Segment is a cavity, not a lesion"),
    NotAssessedReason.LESION_TOO_SMALL: C.private("LESIONTOOSMALL", "Lesion below the minimum volume"),
    NotAssessedReason.SLICE_TOO_THICK: C.private("SLICETOOTHICK", "T1CE slice thickness above the limit"),
    NotAssessedReason.NOT_3D: C.private("T1CENOT3D", "T1CE is not a 3D acquisition"),
    NotAssessedReason.FEATURES_FAILED: C.private("FEATURESFAILED", "Radiomic features could not be computed"),
    NotAssessedReason.MODEL_REFUSED: C.private("MODELREFUSED", "Model refused the lesion's inputs"),
}
#: the intensity reference actually used, coded (the research fallback names the whole brain)
REFERENCE_CODES: dict[str, CodedConcept] = {
    "seg": C.private("REFPONSSEG", "Pons reference from the segmentation"),
    "auto": C.private("REFPONSAUTO", "Pons reference from the MNI atlas"),
    "whole-brain": C.private("REFWHOLEBRAIN", "Whole brain minus lesions (research fallback)"),
}


@dataclass(frozen=True)
class NotAssessedLesion:
    """One SEG segment the node did not predict: which, its volume if measured, and the reason (coded and text)."""

    segment_number: int
    label: str
    reason: NotAssessedReason
    text: str
    volume_ml: float | None = None

    def __post_init__(self) -> None:
        if self.segment_number < 1:
            raise ValueError("segment numbers start at 1")
        if not self.text.strip():
            raise ValueError("a not-assessed lesion needs the reason in words")
        if self.volume_ml is not None and not (self.volume_ml > 0 and math.isfinite(self.volume_ml)):
            raise ValueError(f"lesion volume must be positive, got {self.volume_ml}")

    @property
    def code(self) -> CodedConcept:
        return REASON_CODES[self.reason]

    def describe(self) -> str:
        """One line in words (SR TEXT, companion, console)."""
        volume = f", {self.volume_ml:.2f} mL" if self.volume_ml is not None else ""
        return (f"{self.label or 'Lesion'} (SEG segment {self.segment_number}{volume}): NOT ASSESSED - no subtype "
                f"or receptor prediction. Reason: {self.code.meaning} ({self.text}).")  # fmt: skip

    def to_json(self) -> dict[str, object]:
        """The entry in the job's result JSON (``not_assessed``), read by the dashboard."""
        return {
            "segment_number": self.segment_number,
            "label": self.label,
            "volume_ml": round(self.volume_ml, 3) if self.volume_ml is not None else None,
            "reason": self.reason.value,
            "reason_code": f"{self.code.scheme_designator}:{self.code.value}",
            "reason_meaning": self.code.meaning,
            "text": self.text,
        }


def not_assessed_group(item: NotAssessedLesion, **common: Any) -> Any:
    """The TID 1411 group of a not-assessed lesion; ``common`` holds tracking identifier, referenced segment,
    algorithm identification and finding sites (as for a predicted lesion: :func:`node.sr.report._common`)."""
    tissue = item.reason.value.startswith("segment-") and item.code.scheme_designator == "SCT"
    common["finding_type"] = item.code if tissue else C.FINDING_SECONDARY_NEOPLASM
    measurements = []
    if item.volume_ml is not None:
        measurements.append(hd.sr.Measurement(name=C.LESION_VOLUME, value=item.volume_ml * 1000.0, unit=C.UNIT_MM3))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        **common,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(AI_ASSESSMENT, NOT_EVALUATED),
            hd.sr.QualitativeEvaluation(NOT_ASSESSED_REASON, item.code),
        ],
        measurements=measurements or None,
    )


def reference_evaluation(method: str) -> list[Any]:
    """The coded intensity reference of a predicted lesion (empty for an unknown method)."""
    code = REFERENCE_CODES.get(method)
    return [hd.sr.QualitativeEvaluation(INTENSITY_REFERENCE, code)] if code is not None else []


def all_private_codes() -> list[CodedConcept]:
    """Every private concept of this module (for the published table and the one-to-one test)."""
    fixed = [AI_ASSESSMENT, NOT_ASSESSED_REASON, INTENSITY_REFERENCE, *REASON_CODES.values(), *REFERENCE_CODES.values()]
    return [c for c in fixed if c.scheme_designator == C.PRIVATE_DESIGNATOR]
