"""What the reader needs to weigh the answer: confidence per head, head agreement, the experimental HER2
three-tier head, and each model's provenance (training data, validation, date) — coded and in words.

Hooks called from :mod:`node.sr.report` (SR content) and :mod:`node.sr.companion` (companion lines):

* :func:`lesion_evaluations` — per lesion, in the classification group: one "Confidence of the <head>
  prediction" CODE per head that has a confidence rule (low / not low), "Classifier heads consistent" Yes/No,
  and "Experimental head" for the HER2 three-tier head;
* :func:`extend_qualitative` — in the report's Qualitative Evaluations container: one "Model training data"
  CODE per kind of training data, one TEXT per model (provenance) and one TEXT per lesion (confidence and
  agreement);
* :func:`lesion_lines` / :func:`provenance_lines` — the same in words for the companion pages.

The confidence rule: a head is "low confidence" when its top calibrated probability is below the threshold
stored in its bundle, chosen on patient-grouped cross-validation (node.training.calibrate).
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from highdicom.sr import CodeContentItem, CodedConcept, TextContentItem
from highdicom.sr import RelationshipTypeValues as RT

from node.sr import codes as C
from node.sr.consistency import check_heads
from node.sr.content import HeadResult, LesionResult, ModelInfo, ReportContent
from node.sr.provenance import SYNTHETIC

HEAD_NAMES = {"subtype": "subtype", "er": "ER", "pr": "PR", "her2": "HER2", "her2-3tier": "HER2 3-tier"}
CONFIDENCE: dict[str, CodedConcept] = {
    "subtype": C.private("CONF_SUBTYPE", "Confidence of the subtype prediction"),
    "er": C.private("CONF_ER", "Confidence of the ER prediction"),
    "pr": C.private("CONF_PR", "Confidence of the PR prediction"),
    "her2": C.private("CONF_HER2", "Confidence of the HER2 prediction"),
    "her2-3tier": C.private("CONF_HER2_3TIER", "Confidence of the HER2 three-tier prediction"),
}
LOW_CONFIDENCE = C.private("LOWCONF", "Low confidence (below the cross-validated threshold)")
NOT_LOW_CONFIDENCE = C.private("CONFOK", "Not low confidence (at or above the CV threshold)")
HEADS_CONSISTENT = C.private("HEADSAGREE", "Classifier heads consistent")
EXPERIMENTAL_HEAD = C.private("EXPERIMENTAL", "Experimental head")
HER2_3TIER_EXPERIMENTAL = C.private("HER2_3TIER_EXP", "HER2 3-tier head (developed on primary breast tumours)")
TRAINING_DATA = C.private("TRAINDATA", "Model training data")
TRAINING_DATA_CODES: dict[str, CodedConcept] = {
    SYNTHETIC: C.private("SYNTHDATA", "Synthetic training data - demonstration only"),
    "clinical": C.private("CLINDATA", "Clinical training data"),
}
TRAINING_DATA_NOT_STATED = C.private("TRAINDATA_NS", "Training data not stated")
EXPERIMENTAL_TEXT = (
    "EXPERIMENTAL: the HER2 three-tier method was developed on primary breast tumours on breast MRI, "
    "not on brain metastases"
)


def all_codes() -> list[CodedConcept]:
    """Every private concept of this module (the published table, tests)."""
    return [*CONFIDENCE.values(), LOW_CONFIDENCE, NOT_LOW_CONFIDENCE, HEADS_CONSISTENT, EXPERIMENTAL_HEAD,
            HER2_3TIER_EXPERIMENTAL, TRAINING_DATA, *TRAINING_DATA_CODES.values(), TRAINING_DATA_NOT_STATED]


def lesion_evaluations(lesion: LesionResult) -> list[Any]:
    """Qualitative evaluations for the lesion's classification group."""
    out: list[Any] = []
    for head in lesion.heads:
        if head.low_confidence is not None:
            value = LOW_CONFIDENCE if head.low_confidence else NOT_LOW_CONFIDENCE
            out.append(hd.sr.QualitativeEvaluation(CONFIDENCE[head.task], value))
    out.append(hd.sr.QualitativeEvaluation(HEADS_CONSISTENT, C.NO if check_heads(lesion) else C.YES))
    if lesion.her2_tier is not None:
        out.append(hd.sr.QualitativeEvaluation(EXPERIMENTAL_HEAD, HER2_3TIER_EXPERIMENTAL))
    return out


def head_confidence(head: HeadResult) -> str:
    """``subtype HR+/HER2- p=0.55 LOW CONFIDENCE (below 0.70, the model's cross-validated threshold)``."""
    text = f"{HEAD_NAMES[head.task]} {head.label} p={head.probability:.2f}"
    if not head.calibrated:
        text += " (not calibrated: read as a score)"
    if head.low_confidence is None:
        return text + ", no confidence rule"
    if head.low_confidence:
        return text + f" LOW CONFIDENCE (below {head.confidence_threshold:.2f}, the model's cross-validated threshold)"
    return text + f" (at or above the cross-validated threshold {head.confidence_threshold:.2f})"


def lesion_text(lesion: LesionResult) -> str:
    """One sentence block per lesion: confidence of each head, agreement, the experimental head."""
    parts = [f"Segment {lesion.segment_number} confidence: " + "; ".join(head_confidence(h) for h in lesion.heads)]
    disagreements = check_heads(lesion)
    if disagreements:
        parts.append("HEADS DISAGREE: " + "; ".join(d.text for d in disagreements))
    else:
        parts.append("the heads agree")
    if lesion.her2_tier is not None:
        parts.append(EXPERIMENTAL_TEXT)
    return ". ".join(parts) + "."


def model_text(model: ModelInfo) -> str:
    """``Model subtype: bcbm-subtype 0.4.0, created ...; <training data>; validation: ...``."""
    return (f"Model {model.task}: {model.name} {model.version}, created {model.created}; "
            f"{model.training_data_statement}; validation: {model.validation}.")


def provenance_texts(content: ReportContent) -> list[str]:
    texts = [model_text(m) for m in content.algorithm.models]
    if any(m.training_data == SYNTHETIC for m in content.algorithm.models):
        texts.insert(0, "DEMONSTRATION MODELS: trained on synthetic data, not on patients; the result has no "
                        "clinical meaning.")
    return texts


def extend_qualitative(container: Any, content: ReportContent) -> None:
    """Append the provenance CODEs and TEXTs and each lesion's confidence TEXT to the Qualitative Evaluations
    container of the report."""
    kinds = dict.fromkeys(m.training_data for m in content.algorithm.models)
    for kind in kinds:
        value = TRAINING_DATA_CODES.get(kind, TRAINING_DATA_NOT_STATED)
        item = CodeContentItem(name=TRAINING_DATA, value=value, relationship_type=RT.CONTAINS)
        container.ContentSequence.append(item)
    texts = [*provenance_texts(content), *(lesion_text(lesion) for lesion in content.lesions)]
    for text in texts:
        container.ContentSequence.append(TextContentItem(name=C.COMMENT, value=text, relationship_type=RT.CONTAINS))


def short_confidence(head: HeadResult) -> str:
    """``subtype LOW (0.45 < 0.60)``, ``ER ok (0.90 >= 0.70)``, ``HER2 3-tier: score only (not calibrated)``."""
    name = HEAD_NAMES[head.task]
    if head.low_confidence is None:
        return f"{name}: no rule" + ("" if head.calibrated else " (not calibrated)")
    if head.low_confidence:
        return f"{name} LOW ({head.probability:.2f} < {head.confidence_threshold:.2f})"
    return f"{name} ok ({head.probability:.2f} >= {head.confidence_threshold:.2f})"


def lesion_lines(lesion: LesionResult) -> list[str]:
    """Companion lines: confidence per head (one line), disagreement (a WARNING line each), the experimental head."""
    lines = ["Confidence (LOW = below the model's cross-validated threshold):",
             "   " + " | ".join(short_confidence(h) for h in lesion.heads)]
    if lesion.subtype.low_confidence:
        lines.append("WARNING - low confidence in the predicted subtype: the model does not know; do not rely on it")
    for d in check_heads(lesion):
        lines.append(f"WARNING - heads disagree: {d.text}")
    if lesion.her2_tier is not None:
        lines.append(EXPERIMENTAL_TEXT)
    return lines


def provenance_lines(content: ReportContent) -> list[str]:
    """Companion lines naming each model, its training data, validation and date (demo models first, loudly)."""
    lines = []
    if any(m.training_data == SYNTHETIC for m in content.algorithm.models):
        lines.append("WARNING - DEMONSTRATION MODELS: synthetic training data \u2014 demonstration only")
    subtype = next((m for m in content.algorithm.models if m.task == content.subtype_model.value), None)
    if subtype is not None:
        lines.append(f"Model: {subtype.name} {subtype.version} ({subtype.created[:10]}); "
                     f"{subtype.training_data_statement}")
        lines.append(f"Validation: {subtype.validation}")
    return lines
