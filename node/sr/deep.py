"""The deep model's results in the SR and the companions: a separately identified algorithm beside the radiomics
model (issue 13).

Per predicted lesion the SR gets one more TID 1411 group (Volumetric ROI Measurements and Qualitative
Evaluations) for the same SEG segment and tracking identifiers as the radiomics groups, carrying its **own**
Algorithm Identification (TID 4019: the deep model's name and version, its manifest SHA-256 and the decision
rule as parameters): the ER / PR / HER2 status (CODE, the same concepts as the radiomics heads) and the
probability of the positive class (NUM). The report's text and the companion page add one line per lesion.
Only the heads enabled for the deployment (setting ``dl_heads``) are reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import highdicom as hd

from node.sr import codes as C

NAMES = {"er": "ER", "pr": "PR", "her2": "HER2"}


@dataclass(frozen=True)
class DeepModelInfo:
    """The deep model as the report names it."""

    name: str
    version: str
    sha256: str
    training_data_statement: str = "training data not stated"

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError("deep model sha256 must be 64 lower-case hex digits")
        if not self.name or not self.version:
            raise ValueError("the deep model needs a name and a version")

    def parameter(self) -> str:
        return f"model[deep]={self.name} {self.version} sha256={self.sha256}"


@dataclass(frozen=True)
class DeepLesionResult:
    """P(positive) per enabled head (``er``, ``pr``, ``her2``) for one SEG segment."""

    segment_number: int
    probabilities: Mapping[str, float]

    def __post_init__(self) -> None:
        if not self.probabilities or set(self.probabilities) - set(NAMES):
            raise ValueError(f"deep heads must be among {tuple(NAMES)}, got {tuple(self.probabilities)}")
        if any(not (0.0 <= p <= 1.0) or not math.isfinite(p) for p in self.probabilities.values()):
            raise ValueError("deep-model probabilities must lie in [0, 1]")

    def label(self, task: str) -> str:
        return "positive" if self.probabilities[task] >= 0.5 else "negative"


@dataclass(frozen=True)
class DeepResults:
    """The deep model and its per-lesion results (lesions it could not run on are absent)."""

    model: DeepModelInfo
    lesions: tuple[DeepLesionResult, ...]

    def for_segment(self, segment_number: int) -> DeepLesionResult | None:
        return next((r for r in self.lesions if r.segment_number == segment_number), None)


def algorithm_identification(model: DeepModelInfo) -> Any:
    return hd.sr.AlgorithmIdentification(
        name=model.name[:64], version=model.version[:16], family=C.ALGORITHM_FAMILY_AI,
        parameters=[f"sha256={model.sha256}", "decision=positive if p>=0.5",
                    "inputs=T1CE/T2/mask crop, radiomic features, lesion site"],
    )


def deep_groups(deep: DeepResults | None, segment_number: int, common: dict[str, Any]) -> list[Any]:
    """The deep model's group for one lesion (none without a result); ``common`` are the radiomics group's
    tracking, segment and finding items, whose Algorithm Identification is replaced by the deep model's."""
    result = deep.for_segment(segment_number) if deep is not None else None
    if deep is None or result is None:
        return []
    qual, nums = [], []
    for task, p in result.probabilities.items():
        codes = C.BINARY_HEADS[task]
        qual.append(hd.sr.QualitativeEvaluation(codes.status, codes.answer(result.label(task))))
        nums.append(hd.sr.Measurement(name=codes.probability, value=float(p), unit=C.UNIT_NONE))
    return [hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        **{**common, "algorithm_id": algorithm_identification(deep.model)}, qualitative_evaluations=qual,
        measurements=nums,
    )]


def deep_line(deep: DeepResults | None, segment_number: int) -> str | None:
    """One line for the text and the companion: the deep model's heads for this lesion."""
    result = deep.for_segment(segment_number) if deep is not None else None
    if deep is None or result is None:
        return None
    heads = ", ".join(f"{NAMES[t]} {result.label(t)} (p positive={p:.2f})" for t, p in result.probabilities.items())
    return f"Deep model {deep.model.name} {deep.model.version} (separate algorithm), segment {segment_number}: {heads}."
