"""The patient-level answer of one study: the index lesion, its subtype, and whether it differs from the primary.

The method analysed one lesion per patient, so one *index lesion* per study carries the patient-level prediction
(chosen in :mod:`node.jobs.index`); the other lesions keep their own rows. :class:`PatientLevel` is the value
object; the functions here turn it into SR content items and into the words of the text summary and companion:

* each lesion's classification group gets ``INDEXLESION`` = Yes / No (:func:`lesion_items`);
* the document-level "Qualitative Evaluations" container (TID 1500 row 12) gets, after the TEXT comments,
  ``PATSUBTYPE`` (the index lesion's predicted subtype), ``INDEXRULE`` (how the index lesion was chosen) and, when
  the primary-tumour subtype is known, ``PRIMREF`` (that subtype) and ``DISCORDANT`` = Yes / No
  (:func:`document_items`), and the statement of :func:`statement` as the TEXT comment right after the report
  summary (which stays the container's first item), before the per-lesion lines.

Research use only, not for diagnosis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import CodeContentItem, CodedConcept
from highdicom.sr import RelationshipTypeValues as RT

from node.sr import codes as C
from node.vocabulary import SUBTYPE_CLASSES

INDEX_LESION = C.private("INDEXLESION", "Index lesion (carries the patient-level answer)")
PATIENT_SUBTYPE = C.private("PATSUBTYPE", "Patient-level predicted subtype (index lesion)")
INDEX_RULE = C.private("INDEXRULE", "Index lesion selection rule")
INDEX_RULE_CODES: dict[str, CodedConcept] = {
    "largest": C.private("IDX_LARGEST", "Largest enhancing lesion by volume"),
    "seg": C.private("IDX_SEG", "Segment named as index in the segmentation"),
}
PRIMARY_REFERENCE = C.private("PRIMREF", "Known primary tumour subtype")
DISCORDANT = C.private("DISCORDANT", "Predicted subtype differs from primary tumour")

#: The fixed private concepts of this module (docs/sr.md lists them).
PATIENT_CODES: tuple[CodedConcept, ...] = (
    INDEX_LESION, PATIENT_SUBTYPE, INDEX_RULE, *INDEX_RULE_CODES.values(), PRIMARY_REFERENCE, DISCORDANT,
)  # fmt: skip


@dataclass(frozen=True)
class PatientLevel:
    """The index lesion (its SEG segment number and label), how it was chosen (``rule``: ``largest`` or ``seg``,
    the rule actually applied), its predicted subtype and probability, and the known primary subtype (None:
    unknown, no discordance statement)."""

    index_segment: int
    rule: str
    subtype: str
    probability: float
    primary_subtype: str | None = None
    index_label: str = ""

    def __post_init__(self) -> None:
        if self.index_segment < 1:
            raise ValueError("segment numbers start at 1")
        if self.rule not in INDEX_RULE_CODES:
            raise ValueError(f"unknown index rule {self.rule!r}; expected one of {', '.join(INDEX_RULE_CODES)}")
        for name, value in (("subtype", self.subtype), ("primary subtype", self.primary_subtype)):
            if value is not None and value not in SUBTYPE_CLASSES:
                raise ValueError(f"unknown {name} {value!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must lie in [0, 1], got {self.probability}")

    @property
    def discordant(self) -> bool | None:
        """True when the predicted subtype differs from the known primary's; None when the primary is unknown."""
        return None if self.primary_subtype is None else self.subtype != self.primary_subtype

    def check(self, segment_numbers: Iterable[int]) -> None:
        """Raise unless the index lesion is one of the reported (predicted) lesions."""
        if self.index_segment not in set(segment_numbers):
            raise ValueError(f"the index lesion (segment {self.index_segment}) is not a reported lesion")

    def index_name(self) -> str:
        return f"SEG segment {self.index_segment}" + (f" ({self.index_label})" if self.index_label else "")

    def rule_text(self) -> str:
        return "largest enhancing lesion" if self.rule == "largest" else "named as index in the SEG"

    def discordance_text(self) -> str | None:
        """The discordance sentence, None when the primary subtype is unknown."""
        if self.primary_subtype is None:
            return None
        if self.discordant:
            return (f"DISCORDANT with the primary tumour: the metastasis is predicted {self.subtype}, the primary "
                    f"tumour is {self.primary_subtype}")
        return f"Concordant with the primary tumour ({self.primary_subtype})"

    def to_json(self) -> dict[str, object]:
        """The ``patient`` entry of the result JSON (node.jobs.summary)."""
        return {
            "index_segment": self.index_segment,
            "index_label": self.index_label,
            "rule": self.rule,
            "subtype": self.subtype,
            "probability": round(self.probability, 4),
            "primary_subtype": self.primary_subtype,
            "discordant": self.discordant,
        }


def statement(patient: PatientLevel | None) -> list[str]:
    """The patient-level sentence(s) of the text summary: after the report summary in the SR's comments, first in
    the PDF summary and the ``ainode analyse`` text."""
    if patient is None:
        return []
    text = (f"Patient-level predicted subtype: {patient.subtype} (p={patient.probability:.2f}), from the index "
            f"lesion {patient.index_name()}, {patient.rule_text()}.")
    if (discordance := patient.discordance_text()) is not None:
        text += f" {discordance}."
    return [text]


def companion_lines(patient: PatientLevel | None) -> list[str]:
    """The lines a companion page starts with (the patient-level answer first)."""
    if patient is None:
        return []
    label = patient.index_label if len(patient.index_label) <= 24 else patient.index_label[:23] + "…"
    rule = "largest" if patient.rule == "largest" else "named in SEG"
    lines = [f"PATIENT LEVEL: predicted subtype {patient.subtype} (p = {patient.probability:.2f})  -  index lesion: "
             f"segment {patient.index_segment}" + (f" ({label})" if label else "") + f", {rule}"]
    if (discordance := patient.discordance_text()) is not None:
        lines.append(discordance)
    return lines


def lesion_items(patient: PatientLevel | None, segment_number: int) -> list[hd.sr.QualitativeEvaluation]:
    """``INDEXLESION`` Yes / No for one lesion's classification group (nothing without a patient-level answer)."""
    if patient is None:
        return []
    return [hd.sr.QualitativeEvaluation(INDEX_LESION, C.YES if segment_number == patient.index_segment else C.NO)]


def document_items(patient: PatientLevel | None) -> list[CodeContentItem]:
    """The coded patient-level statement for the document-level Qualitative Evaluations container."""
    if patient is None:
        return []
    items = [
        CodeContentItem(name=PATIENT_SUBTYPE, value=C.SUBTYPE_CODES[patient.subtype], relationship_type=RT.CONTAINS),
        CodeContentItem(name=INDEX_RULE, value=INDEX_RULE_CODES[patient.rule], relationship_type=RT.CONTAINS),
    ]
    if patient.primary_subtype is not None:
        items.append(CodeContentItem(name=PRIMARY_REFERENCE, value=C.SUBTYPE_CODES[patient.primary_subtype],
                                     relationship_type=RT.CONTAINS))
        items.append(CodeContentItem(name=DISCORDANT, value=C.YES if patient.discordant else C.NO,
                                     relationship_type=RT.CONTAINS))
    return items
