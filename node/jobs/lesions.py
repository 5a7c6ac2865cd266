"""One analysed lesion as the console, the result JSON and the dashboard see it: :class:`LesionSummary`.

A summary is derived from the SR's value object (:meth:`LesionSummary.from_result` on a
:class:`node.sr.content.LesionResult`), never built from the predictions a second time, so what the SR reports
and what the summary shows cannot disagree. Values are rounded as shown (volume to 3 decimals, probabilities and
SHAP contributions to 4). :meth:`LesionSummary.to_json` gives the shape written into the job's result JSON
(``node.jobs.summary.result_json``), which ``node.web.results`` reads back:

``segment_number``, ``label``, ``volume_ml``, ``subtype``, ``probability``, ``probabilities``, ``heads``
(per receptor task: ``label``, ``probability``, ``probabilities``, ``out_of_distribution``), ``top_features``
(``[name, SHAP contribution]``, largest first), ``shap_units``, ``out_of_distribution``, ``ood_reasons``,
``index`` (true for the index lesion that carries the patient-level answer, :mod:`node.jobs.index`), ``site``
(the atlas site in words, ``""`` when not determined) and ``cautions`` (low-confidence heads and contradicting
heads, in words: :func:`cautions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.sr.consistency import check_heads
from node.sr.content import HeadResult, LesionResult

#: SHAP contributions a summary keeps (the SR keeps more).
SUMMARY_TOP_FEATURES = 5


def _probabilities(values: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): round(float(v), 4) for k, v in values.items()}


@dataclass(frozen=True)
class HeadSummary:
    """One receptor head's output for one lesion (ER, PR, HER2, HER2 3-tier)."""

    label: str
    probability: float
    probabilities: Mapping[str, float]
    out_of_distribution: bool = False

    @classmethod
    def from_head(cls, head: HeadResult) -> HeadSummary:
        return cls(head.label, round(head.probability, 4), _probabilities(head.probabilities), head.out_of_distribution)

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "probability": self.probability,
            "probabilities": dict(self.probabilities),
            "out_of_distribution": self.out_of_distribution,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeadSummary:
        return cls(str(data["label"]), float(data["probability"]), _probabilities(data.get("probabilities", {})),
                   bool(data.get("out_of_distribution", False)))


def cautions(result: LesionResult) -> tuple[str, ...]:
    """The SR's trust items in short words: each head below its cross-validated confidence threshold ("low
    confidence: subtype 0.59 < 0.80"), then each contradiction between heads
    (:func:`node.sr.consistency.check_heads`)."""
    low = [f"low confidence: {h.task} {h.probability:.2f} < {h.confidence_threshold:.2f}"
           for h in result.heads if h.low_confidence and h.confidence_threshold is not None]
    return (*low, *(f"heads disagree: {d.text}" for d in check_heads(result)))


@dataclass(frozen=True)
class LesionSummary:
    """Everything shown for one lesion: its SEG segment, the subtype prediction, the receptor heads (keyed by
    task: ``er``, ``pr``, ``her2``, ``her2-3tier``, in report order), the top SHAP contributions, the OOD flag."""

    segment_number: int
    label: str
    volume_ml: float
    subtype: str
    probability: float
    probabilities: Mapping[str, float]
    heads: Mapping[str, HeadSummary] = field(default_factory=dict)
    top_features: tuple[tuple[str, float], ...] = ()
    shap_units: str = ""
    out_of_distribution: bool = False
    ood_reasons: tuple[str, ...] = ()
    index: bool = False  # the index lesion: carries the patient-level answer (node.jobs.index)
    site: str = ""  # the atlas site in words (node.vocabulary.LesionSite.describe); "" when not determined
    #: what the reader must weigh: heads below their CV confidence threshold, heads that contradict each other
    cautions: tuple[str, ...] = ()

    @classmethod
    def from_result(cls, result: LesionResult, label: str, top: int = SUMMARY_TOP_FEATURES) -> LesionSummary:
        """The summary of what the SR reports for one lesion; ``label`` is its SEG segment label."""
        explanation = result.explanation
        return cls(
            segment_number=result.segment_number,
            label=label,
            volume_ml=round(result.volume_ml, 3),
            subtype=result.subtype.label,
            probability=round(result.subtype.probability, 4),
            probabilities=_probabilities(result.subtype.probabilities),
            heads={h.task: HeadSummary.from_head(h) for h in result.heads if h.task != "subtype"},
            top_features=tuple((c.feature, round(c.contribution, 4)) for c in explanation.contributions[:top])
            if explanation is not None else (),
            shap_units=explanation.units if explanation is not None else "",
            out_of_distribution=result.out_of_distribution or bool(result.ood_reasons),
            ood_reasons=result.ood_reasons,
            site=result.site.describe() if result.site is not None else "",
            cautions=cautions(result),
        )

    def to_json(self) -> dict[str, object]:
        """The lesion's entry in the result JSON (the shape documented above)."""
        return {
            "segment_number": self.segment_number,
            "label": self.label,
            "volume_ml": self.volume_ml,
            "subtype": self.subtype,
            "probability": self.probability,
            "probabilities": dict(self.probabilities),
            "heads": {task: head.to_json() for task, head in self.heads.items()},
            "top_features": [[name, value] for name, value in self.top_features],
            "shap_units": self.shap_units,
            "out_of_distribution": self.out_of_distribution,
            "ood_reasons": list(self.ood_reasons),
            "index": self.index,
            "site": self.site,
            "cautions": list(self.cautions),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LesionSummary:
        """Read :meth:`to_json`'s shape back (``KeyError`` / ``ValueError`` / ``TypeError`` when it is not)."""
        heads = data.get("heads") or {}
        return cls(
            segment_number=int(data["segment_number"]),
            label=str(data.get("label") or ""),
            volume_ml=float(data["volume_ml"]),
            subtype=str(data["subtype"]),
            probability=float(data["probability"]),
            probabilities=_probabilities(data.get("probabilities", {})),
            heads={str(task): HeadSummary.from_json(head) for task, head in heads.items()},
            top_features=tuple((str(name), float(value)) for name, value in data.get("top_features", [])),
            shap_units=str(data.get("shap_units", "")),
            out_of_distribution=bool(data.get("out_of_distribution", False)),
            ood_reasons=tuple(str(r) for r in data.get("ood_reasons", [])),
            index=bool(data.get("index", False)),
            site=str(data.get("site") or ""),
            cautions=tuple(str(c) for c in data.get("cautions", []) or []),
        )
