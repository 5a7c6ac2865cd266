"""Choose the index lesion of a study and state the patient-level answer (issue 11, item 4).

The method analysed one lesion per patient; the node predicts every SEG segment, so one *index lesion* per study
carries the patient-level prediction and the other lesions keep their own rows. Only lesions that were actually
predicted (the :class:`~node.sr.content.LesionResult` rows of the report) can be the index lesion. The rule is the
setting ``index_lesion`` (:class:`~node.config.IndexLesionRule`):

* ``largest`` (default): the largest lesion by volume (ties: the lower segment number);
* ``seg``: the segment whose SegmentLabel or SegmentDescription contains the word "index" or "target"
  (case-insensitive, whole word: "Index lesion", "target_1", "TARGET"); several named: the largest of them, with a
  warning; none named (or none of the named ones predicted): the largest lesion, with a warning.

When the primary-tumour subtype is known (:mod:`node.jobs.primary`, from any source) the patient-level answer
says whether the metastasis is predicted to differ from it (:attr:`~node.sr.patient.PatientLevel.discordant`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence

from node.config import IndexLesionRule
from node.jobs.lesions import LesionSummary
from node.sr.content import LesionResult, ReportContent
from node.sr.patient import PatientLevel
from node.sr.source import SourceStudy

logger = logging.getLogger(__name__)

#: A SEG segment whose label or description matches this names the index lesion (rule ``seg``).
INDEX_NAME = re.compile(r"(?<![a-z])(index|target)(?![a-z])", re.IGNORECASE)


def named_segments(source: SourceStudy) -> tuple[int, ...]:
    """The SEG segments whose SegmentLabel or SegmentDescription names them index / target, in SEG order."""
    named = []
    for item in source.seg.get("SegmentSequence", []):
        text = f"{item.get('SegmentLabel', '')} {item.get('SegmentDescription', '')}"
        if INDEX_NAME.search(text):
            named.append(int(item.SegmentNumber))
    return tuple(named)


def _largest(results: Sequence[LesionResult]) -> LesionResult:
    return max(results, key=lambda r: (r.volume_ml, -r.segment_number))


def choose_index(results: Sequence[LesionResult], source: SourceStudy,
                 rule: IndexLesionRule | str = IndexLesionRule.LARGEST) -> tuple[LesionResult, str, tuple[str, ...]]:
    """The index lesion among ``results``, the rule applied (``largest`` / ``seg``) and warnings."""
    results = [r for r in results if getattr(r, "subtype", None) is not None]  # predicted lesions only
    if not results:
        raise ValueError("no predicted lesion to choose an index lesion from")
    rule = IndexLesionRule(rule)
    if rule is IndexLesionRule.LARGEST:
        return _largest(results), "largest", ()
    named = named_segments(source)
    candidates = [r for r in results if r.segment_number in named]
    warnings: list[str] = []
    if not candidates:
        if named:
            text = ", ".join(str(n) for n in named)
            warnings.append(f"the SEG names segment(s) {text} as index lesion but none was predicted; "
                            "the largest predicted lesion is the index lesion")
        else:
            warnings.append("no SEG segment is named 'index' or 'target'; the largest lesion is the index lesion")
        return _largest(results), "largest", tuple(warnings)
    if len(candidates) > 1:
        text = ", ".join(str(r.segment_number) for r in candidates)
        warnings.append(f"the SEG names several segments ({text}) as index lesion; the largest of them is used")
    return _largest(candidates), "seg", tuple(warnings)


def patient_level(content: ReportContent, primary_subtype: str | None,
                  rule: IndexLesionRule | str = IndexLesionRule.LARGEST) -> ReportContent:
    """``content`` with its patient-level answer (and the choice's warnings appended); ``primary_subtype`` is the
    known primary-tumour subtype (whichever subtype model ran), None when unknown. A report without any predicted
    lesion (every lesion not assessed) states no patient-level answer: ``content`` is returned as it is."""
    if not any(getattr(lesion, "subtype", None) is not None for lesion in content.lesions):
        return content
    index, applied, warnings = choose_index(content.lesions, content.source, rule)
    patient = PatientLevel(
        index_segment=index.segment_number, rule=applied, subtype=index.subtype.label,
        probability=index.subtype.probability, primary_subtype=primary_subtype,
        index_label=content.source.segment(index.segment_number).label,
    )
    if patient.discordant:
        logger.info("index lesion predicted discordant with the primary tumour")
    return dataclasses.replace(content, patient=patient,
                               warnings=tuple(dict.fromkeys((*content.warnings, *warnings))))


def mark_index(summaries: Sequence[LesionSummary], patient: PatientLevel | None) -> tuple[LesionSummary, ...]:
    """The lesion summaries with the index lesion marked (``index: true`` in the result JSON)."""
    if patient is None:
        return tuple(summaries)
    return tuple(dataclasses.replace(s, index=s.segment_number == patient.index_segment) for s in summaries)
