"""Frozen, validated value objects the result SR and its companions are built from (strict on encode).

* :class:`SourceStudy` — the analysed T1CE, T2 and SEG headers (read from paths, pixel data skipped): patient
  and study identity, the evidence, and each SEG segment's number, label and tracking identifiers.
* :class:`HeadResult` — one classifier head's output (subtype, ER, PR, HER2 or HER2 3-tier): label, class
  probabilities, out-of-distribution flag.
* :class:`ShapExplanation` — the top SHAP contributions (feature, raw value, contribution) and base value.
* :class:`LesionResult` — everything reported for one SEG segment.
* :class:`ModelInfo` / :class:`AlgorithmInfo` — provenance (docs/engineering.md §3.8), from :mod:`node.model.bundle`.
* :class:`ReportContent` — the whole report: source, lesions, algorithm, subtype-model variant, pons summary,
  disclaimer.

:func:`lesion_result_from_predictions` builds a :class:`LesionResult` from per-head predictions (any object with the
:class:`Prediction` protocol's attributes, e.g. :class:`node.model.prediction.Prediction`).
Research use only, not for diagnosis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from pydicom.uid import generate_uid

from node import __version__
from node.sr.assessment import NotAssessedLesion
from node.sr.deep import DeepResults
from node.sr.identity import ResultIdentity
from node.sr.keyimage import QcView
from node.sr.patient import PatientLevel
from node.sr.provenance import manifest_provenance
from node.sr.source import SourceStudy
from node.vocabulary import BINARY_CLASSES, DISCLAIMER, HER2_TIER_CLASSES, SUBTYPE_CLASSES, LesionSite

HEAD_CLASSES: dict[str, tuple[str, ...]] = {
    "subtype": SUBTYPE_CLASSES,
    "er": BINARY_CLASSES,
    "pr": BINARY_CLASSES,
    "her2": BINARY_CLASSES,
    "her2-3tier": HER2_TIER_CLASSES,
}


class Prediction(Protocol):
    """What the report needs of one head's prediction (:class:`node.model.prediction.Prediction` has it).

    A protocol, so that the report layer does not depend on the model layer: the job hands its predictions
    over and the SR reads only these attributes.
    """

    @property
    def label(self) -> str: ...
    @property
    def probabilities(self) -> Mapping[str, float]: ...
    @property
    def out_of_distribution(self) -> bool: ...
    @property
    def ood_reasons(self) -> tuple[str, ...]: ...
    @property
    def shap_base_value(self) -> float: ...
    @property
    def shap_units(self) -> str: ...

    def top_features(self, n: int = 5) -> list[tuple[str, float]]: ...


class TaskLike(Protocol):
    @property
    def value(self) -> str: ...


class Bundle(Protocol):
    """What the report needs of a loaded model bundle (:class:`node.model.bundle.Bundle` has it)."""

    @property
    def task(self) -> TaskLike: ...
    @property
    def manifest(self) -> dict[str, Any]: ...
    @property
    def manifest_sha256(self) -> str: ...
class SubtypeModel(StrEnum):
    """Which subtype model produced the subtype: with the primary-tumour subtype as input, or without."""

    WITH_PRIMARY = "subtype"
    WITHOUT_PRIMARY = "subtype-noprimary"


@dataclass(frozen=True)
class HeadResult:
    """One classifier head's output for one lesion."""

    task: str
    label: str
    probabilities: Mapping[str, float]
    out_of_distribution: bool = False
    ood_reasons: tuple[str, ...] = ()
    calibrated: bool = False  # probabilities calibrated to the training prevalence (node.model.calibration)
    confidence_threshold: float | None = None  # "low confidence" below this top probability (from CV)

    def __post_init__(self) -> None:
        classes = HEAD_CLASSES.get(self.task)
        if classes is None:
            raise ValueError(f"unknown head {self.task!r}; expected one of {', '.join(HEAD_CLASSES)}")
        if set(self.probabilities) != set(classes):
            raise ValueError(f"{self.task} probabilities must cover exactly {classes}, got {tuple(self.probabilities)}")
        if self.label not in classes:
            raise ValueError(f"{self.task} label {self.label!r} is not one of {classes}")
        if any(not (0.0 <= p <= 1.0) or not math.isfinite(p) for p in self.probabilities.values()):
            raise ValueError(f"{self.task} probabilities must lie in [0, 1]")
        total = sum(self.probabilities.values())
        if not math.isclose(total, 1.0, abs_tol=1e-4):
            raise ValueError(f"{self.task} probabilities sum to {total}, not 1")
        if self.out_of_distribution and not self.ood_reasons:
            raise ValueError("an out-of-distribution flag needs at least one reason")

    @property
    def probability(self) -> float:
        return float(self.probabilities[self.label])

    @property
    def low_confidence(self) -> bool | None:
        """True below the model's CV threshold; None when the model has no confidence rule."""
        return None if self.confidence_threshold is None else self.probability < self.confidence_threshold

    @classmethod
    def from_prediction(cls, task: str, prediction: Prediction) -> HeadResult:
        """From a :class:`Prediction`; float32 round-off outside [0, 1] (e.g. 1.0000001) is clipped."""
        return cls(
            task=task,
            label=prediction.label,
            probabilities={k: min(max(float(v), 0.0), 1.0) for k, v in prediction.probabilities.items()},
            out_of_distribution=prediction.out_of_distribution,
            ood_reasons=tuple(prediction.ood_reasons),
            calibrated=bool(getattr(prediction, "calibrated", False)),
            confidence_threshold=getattr(prediction, "confidence_threshold", None),
        )


@dataclass(frozen=True)
class ShapContribution:
    feature: str
    value: float
    contribution: float

    def __post_init__(self) -> None:
        if not self.feature or not math.isfinite(self.contribution) or not math.isfinite(self.value):
            raise ValueError(f"invalid SHAP contribution {self!r}")


@dataclass(frozen=True)
class ShapExplanation:
    """Top-k SHAP contributions to ``explained_class`` (sorted by |contribution|) with the base value."""

    explained_class: str
    base_value: float
    units: str
    contributions: tuple[ShapContribution, ...]

    def __post_init__(self) -> None:
        if not self.contributions:
            raise ValueError("a SHAP explanation needs at least one contribution")
        if not math.isfinite(self.base_value):
            raise ValueError("the SHAP base value must be finite")
        names = [c.feature for c in self.contributions]
        if len(set(names)) != len(names):
            raise ValueError("duplicate feature in the SHAP contributions")


@dataclass(frozen=True)
class LesionResult:
    """Everything reported for one SEG segment."""

    segment_number: int
    subtype: HeadResult
    volume_ml: float
    explanation: ShapExplanation | None = None
    er: HeadResult | None = None
    pr: HeadResult | None = None
    her2: HeadResult | None = None
    her2_tier: HeadResult | None = None
    #: where the lesion is (atlas region and side); None -> finding site "Brain" (node/sr/sites.py)
    site: LesionSite | None = None

    def __post_init__(self) -> None:
        if self.segment_number < 1:
            raise ValueError("segment numbers start at 1")
        if not (self.volume_ml > 0 and math.isfinite(self.volume_ml)):
            raise ValueError(f"lesion volume must be positive, got {self.volume_ml}")
        expected = {"subtype": self.subtype, "er": self.er, "pr": self.pr, "her2": self.her2}
        expected["her2-3tier"] = self.her2_tier
        for task, head in expected.items():
            if head is not None and head.task != task:
                raise ValueError(f"the {task} slot holds a {head.task} result")
        if self.explanation is not None and self.explanation.explained_class != self.subtype.label:
            raise ValueError("the SHAP explanation must explain the predicted subtype")

    @property
    def heads(self) -> tuple[HeadResult, ...]:
        return tuple(h for h in (self.subtype, self.er, self.pr, self.her2, self.her2_tier) if h is not None)

    @property
    def out_of_distribution(self) -> bool:
        return any(h.out_of_distribution for h in self.heads)

    @property
    def ood_reasons(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r for h in self.heads for r in h.ood_reasons))


@dataclass(frozen=True)
class ModelInfo:
    """One trained model: task, name, version and the SHA-256 of its bundle manifest (which pins every artefact)."""

    task: str
    name: str
    version: str
    sha256: str
    training_data: str = "unspecified"  # "synthetic" for demonstration models
    training_data_statement: str = "training data not stated"
    validation: str = "validation performance not stated"
    created: str = "unknown"

    def __post_init__(self) -> None:
        if self.task not in HEAD_CLASSES and self.task != SubtypeModel.WITHOUT_PRIMARY.value:
            raise ValueError(f"unknown model task {self.task!r}")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError("model sha256 must be 64 lower-case hex digits")

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ModelInfo:
        m = bundle.manifest
        return cls(
            task=bundle.task.value,
            name=str(m.get("name", f"bcbm-{bundle.task.value}")),
            version=str(m.get("version", "unknown")),
            sha256=bundle.manifest_sha256,
            **manifest_provenance(m),
        )

    def parameter(self) -> str:
        """One TID 4019 "Algorithm Parameters" value."""
        return f"model[{self.task}]={self.name} {self.version} sha256={self.sha256}"


@dataclass(frozen=True)
class AlgorithmInfo:
    """The node as a device and the models it ran (TID 4019, observer device, contributing equipment)."""

    models: tuple[ModelInfo, ...]
    name: str = "BCBM AI node"
    version: str = __version__
    manufacturer: str = "BCBM AI node project"
    device_uid: str = field(default_factory=lambda: str(generate_uid(entropy_srcs=["BCBM AI node device"])))
    shap_units: str = "log-odds margin"
    extra_parameters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one model must be named")
        tasks = [m.task for m in self.models]
        if len(set(tasks)) != len(tasks):
            raise ValueError("each model task may appear once")
        if not self.device_uid or len(self.device_uid) > 64:
            raise ValueError("device UID must be a UID of at most 64 characters")

    @property
    def parameters(self) -> list[str]:
        return [
            *(m.parameter() for m in self.models),
            "decision=argmax (subtype, HER2 3-tier); positive if p>=0.5 (ER, PR, HER2)",
            f"shap_output={self.shap_units}",
            *self.extra_parameters,
        ]


@dataclass(frozen=True)
class PonsSummary:
    """How the intensity reference was obtained (method ``seg``/``auto``/``whole-brain``/``none``) and a QC note."""

    method: str
    qc: str = ""

    def __post_init__(self) -> None:
        if self.method not in ("seg", "auto", "whole-brain", "none"):
            raise ValueError(f"unknown pons method {self.method!r}")

    def describe(self) -> str:
        text = {"seg": "pons from SEG", "auto": "automatic pons", "none": "none (pons reference refused)",
                "whole-brain": "whole brain minus lesions (research fallback: pons QC failed; not the method)"}
        return text[self.method] + (f"; {self.qc}" if self.qc else "")


@dataclass(frozen=True)
class ReportContent:
    """The whole result of one analysed study."""

    source: SourceStudy
    lesions: tuple[LesionResult, ...]
    algorithm: AlgorithmInfo
    subtype_model: SubtypeModel
    pons: PonsSummary
    primary_subtype: str | None = None
    disclaimer: str = DISCLAIMER
    warnings: tuple[str, ...] = field(default=())
    #: which document this is (deterministic UIDs, the SR it supersedes); None = derived from the evidence
    identity: ResultIdentity | None = None
    #: the QC key image's views (reference, then every lesion mask of the pipeline), :mod:`node.sr.keyimage`
    qc_views: tuple[QcView, ...] = ()
    #: the segments the node refused to predict, each with its reason (node.sr.assessment)
    not_assessed: tuple[NotAssessedLesion, ...] = ()
    #: the patient-level answer (index lesion, discordance with the primary); None = not stated
    patient: PatientLevel | None = None
    #: the deep model's results, a separately identified algorithm (node.sr.deep); None = not run
    deep: DeepResults | None = None

    def __post_init__(self) -> None:
        if not self.lesions and not self.not_assessed:
            raise ValueError("a report needs at least one lesion (use node.sr.failure for none)")
        numbers = [lesion.segment_number for lesion in self.lesions] + [n.segment_number for n in self.not_assessed]
        if len(set(numbers)) != len(numbers):
            raise ValueError("each SEG segment may be reported once")
        for n in numbers:
            self.source.segment(n)
        if self.primary_subtype is not None and self.primary_subtype not in SUBTYPE_CLASSES:
            raise ValueError(f"unknown primary subtype {self.primary_subtype!r}")
        if self.subtype_model is SubtypeModel.WITH_PRIMARY and self.primary_subtype is None:
            raise ValueError("the with-primary subtype model needs the primary subtype")
        if self.subtype_model.value not in {m.task for m in self.algorithm.models}:
            raise ValueError(f"the algorithm does not list the {self.subtype_model.value} model that was used")
        for lesion in self.lesions:
            check_models(self.algorithm.models, lesion)
        if "research use only" not in self.disclaimer.lower():
            raise ValueError("the disclaimer must say 'research use only'")
        if self.patient is not None:
            self.patient.check(lesion.segment_number for lesion in self.lesions)  # a predicted lesion
        if self.deep is not None and {r.segment_number for r in self.deep.lesions} - set(numbers[:len(self.lesions)]):
            raise ValueError("the deep model reports a segment that has no predicted lesion")


def top_contributions(
    prediction: Prediction, features: Mapping[str, float], top_k: int
) -> tuple[ShapContribution, ...]:
    """The ``top_k`` largest |SHAP| inputs of ``prediction``, with their raw values (one-hot inputs: 0/1)."""
    out = []
    for name, contribution in prediction.top_features(top_k):
        if name.startswith("primary_subtype="):
            value = 1.0 if features.get(name, 0.0) else 0.0
        elif name in features:
            value = float(features[name])
        else:
            raise ValueError(f"the feature values lack {name!r}, an input the model explains")
        out.append(ShapContribution(name, value, float(contribution)))
    return tuple(out)


def lesion_result_from_predictions(
    segment_number: int,
    subtype: Prediction,
    features: Mapping[str, float],
    volume_ml: float,
    *,
    er: Prediction | None = None,
    pr: Prediction | None = None,
    her2: Prediction | None = None,
    her2_tier: Prediction | None = None,
    top_k: int = 10,
    primary_subtype: str | None = None,
) -> LesionResult:
    """A :class:`LesionResult` from the per-head :class:`Prediction` objects of the model layer.

    ``features`` are the lesion's radiomic features (the feature-table row); ``primary_subtype`` fills the
    one-hot input values when the subtype model used it.
    """
    values: dict[str, float] = dict(features)
    if primary_subtype is not None:
        values.update({f"primary_subtype={c}": float(c == primary_subtype) for c in SUBTYPE_CLASSES})
    explanation = ShapExplanation(
        explained_class=subtype.label,
        base_value=float(subtype.shap_base_value),
        units=subtype.shap_units,
        contributions=top_contributions(subtype, values, top_k),
    )

    def head(task: str, p: Prediction | None) -> HeadResult | None:
        return HeadResult.from_prediction(task, p) if p is not None else None

    return LesionResult(
        segment_number=segment_number,
        subtype=HeadResult.from_prediction("subtype", subtype),
        volume_ml=float(volume_ml),
        explanation=explanation,
        er=head("er", er),
        pr=head("pr", pr),
        her2=head("her2", her2),
        her2_tier=head("her2-3tier", her2_tier),
    )


def check_models(models: Sequence[ModelInfo], lesion: LesionResult) -> None:
    """Raise if a lesion reports a head whose model is not listed (provenance must be complete)."""
    tasks = {m.task for m in models}
    for h in lesion.heads:
        if h.task != "subtype" and h.task not in tasks:
            raise ValueError(f"lesion {lesion.segment_number} reports {h.task} but no {h.task} model is listed")
