"""Before prediction: which lesions the node refuses to assess, and which warnings the SR must carry.

:func:`check_scope` turns the imaging run (pons reference outcome, per-lesion volume and label) and the
analysed T1CE's header into a :class:`ScopeDecision`: the not-assessed lesions, each with a coded reason
(:class:`~node.sr.assessment.NotAssessedLesion`), and the warnings of the checks that did not refuse. The checks
and thresholds are :mod:`node.imaging.scope` (``scope`` block of config/pipeline.yaml); the pons reference's
refusal comes from :mod:`node.imaging.pons` (``qc["refusal"]``: no reference, no prediction).

For each lesion the first refusal wins, in this order: the segment is not a lesion (oedema, necrosis, ...);
the study has no usable intensity reference; the T1CE is out of scope (slice thickness, 2D when refused); the
lesion is below the minimum volume. A study none of whose lesions is assessed still gets its SR (saying so)
and is delivered: it is a result, not a failed job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pydicom.dataset import Dataset

from node.imaging.pipeline import FeatureRun
from node.imaging.scope import (
    Finding,
    ScopeParams,
    acquisition_findings,
    segment_type_finding,
    volume_finding,
)
from node.sr.assessment import NotAssessedLesion
from node.sr.source import SourceStudy
from node.vocabulary import NotAssessedReason


@dataclass(frozen=True)
class ScopeDecision:
    """The lesions refused before prediction and the warnings for the SR (study-level first)."""

    not_assessed: tuple[NotAssessedLesion, ...] = ()
    warnings: tuple[str, ...] = ()

    def admitted(self, run: FeatureRun) -> FeatureRun:
        """``run`` with only the lesions that may be predicted."""
        refused = {item.segment_number for item in self.not_assessed}
        return dataclasses.replace(run, lesions=tuple(x for x in run.lesions if x.segment_number not in refused))


def property_types(seg: Dataset) -> dict[int, str]:
    """``scheme:value`` of each SEG segment's SegmentedPropertyType, by segment number."""
    out: dict[int, str] = {}
    for item in seg.get("SegmentSequence", []):
        for code in item.get("SegmentedPropertyTypeCodeSequence", [])[:1]:
            out[int(item.SegmentNumber)] = f"{code.CodingSchemeDesignator}:{code.CodeValue}"
    return out


def reference_refusal(run: FeatureRun) -> Finding | None:
    """The pons reference's refusal (:mod:`node.imaging.pons`), if the study has no usable reference."""
    refusal = run.pons_qc.get("refusal")
    if not refusal:
        return None
    gates = str(run.pons_qc.get("failed_gates") or "the reference failed its checks")
    return Finding(f"no usable pons intensity reference: {gates}", NotAssessedReason(str(refusal)))


def check_scope(run: FeatureRun, source: SourceStudy, params: ScopeParams) -> ScopeDecision:
    """The scope decision for every lesion of ``run`` (see the module docstring for the order)."""
    study = acquisition_findings(source.t1ce[0], params)
    warnings = [f"scope: {f.text}" for f in study if not f.refuses]
    study_refusals = [f for f in (reference_refusal(run), *study) if f is not None and f.refuses]
    types = property_types(source.seg)
    refused: list[NotAssessedLesion] = []
    for lesion in run.lesions:
        raw_volume = lesion.qc.get("volume_ml")
        volume = float(raw_volume) if isinstance(raw_volume, int | float) and raw_volume > 0 else None
        size = volume_finding(volume, params)
        kind = segment_type_finding(lesion.label, types.get(lesion.segment_number))
        finding = kind or next(iter(study_refusals), None) or (size if size is not None and size.refuses else None)
        if finding is not None and finding.reason is not None:
            refused.append(NotAssessedLesion(lesion.segment_number, lesion.label, finding.reason, finding.text, volume))
        elif size is not None:
            warnings.append(f"scope: segment {lesion.segment_number} ('{lesion.label}'): {size.text}")
    return ScopeDecision(tuple(refused), tuple(warnings))
