"""The TID 1500 "Imaging Measurement Report" of one analysed study, built through highdicom templates.

Content tree (docs/sr-design.md §1.2; the full tree and code table are in ``docs/sr.md``): per lesion three
TID 1411 Volumetric ROI groups sharing the SEG segment's tracking identifiers and the same segment reference:
(1) classification — CODE decisions and NUM probabilities, (2) SHAP — top-k contributions and the base value,
(3) raw values — lesion volume and the raw values of the explained features. A report-level TID 1500 row-12
"Qualitative Evaluations" container holds the human-readable TEXT summary. Every CONTAINER is SEPARATE so text
renderers (dsr2html, Weasis, OHIF's text view) print concept names (docs/sr-design.md §5.3). The deep model adds
its own group per lesion (:mod:`node.sr.deep`).
Size: the report builder and its groups read best in one place; helpers live in the modules it imports.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from pathlib import Path
from typing import Any

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodeContentItem, CodedConcept, ContainerContentItem, TextContentItem
from highdicom.sr import RelationshipTypeValues as RT
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.sr import codes as C
from node.sr.assessment import not_assessed_group, reference_evaluation
from node.sr.content import AlgorithmInfo, HeadResult, LesionResult, ReportContent, SubtypeModel
from node.sr.deep import deep_groups, deep_line
from node.sr.identity import PriorDocument, report_uids, superseded, supersession_text
from node.sr.patient import document_items, lesion_items, statement
from node.sr.sites import finding_site
from node.sr.source import SourceStudy
from node.sr.trust import extend_qualitative, lesion_evaluations

SERIES_DESCRIPTION = "AI BC subtype of brain metastasis (research use)"
SR_SERIES_NUMBER = 900
PROCESSING_EQUIPMENT_DESCRIPTION = "AI subtype prediction (research use only)"

Measurement = Any  # hd.sr.Measurement (highdicom is untyped for mypy here)


class SrSopClass(StrEnum):
    """SR storage classes carrying the identical content tree (no SCOORD3D); 88.34 is what IHE AIR asks for."""

    COMPREHENSIVE_3D = "1.2.840.10008.5.1.4.1.1.88.34"
    COMPREHENSIVE = "1.2.840.10008.5.1.4.1.1.88.33"
    ENHANCED = "1.2.840.10008.5.1.4.1.1.88.22"


_SR_CLASSES: dict[SrSopClass, Any] = {
    SrSopClass.COMPREHENSIVE_3D: hd.sr.Comprehensive3DSR,
    SrSopClass.COMPREHENSIVE: hd.sr.ComprehensiveSR,
    SrSopClass.ENHANCED: hd.sr.EnhancedSR,
}


def coding_scheme() -> CodingSchemeIdentificationItem:
    return CodingSchemeIdentificationItem(
        designator=C.PRIVATE_DESIGNATOR,
        name=C.PRIVATE_SCHEME_NAME,
        responsible_organization=C.PRIVATE_SCHEME_ORGANIZATION,
    )


def add_modifier(measurement: Measurement, name: CodedConcept, value: CodedConcept) -> Measurement:
    """Append a HAS CONCEPT MOD CODE child to a NUM (TID 300 row; highdicom has no argument for it)."""
    item = measurement[0]
    if "ContentSequence" not in item:
        item.ContentSequence = hd.sr.ContentSequence()
    item.ContentSequence.append(CodeContentItem(name=name, value=value, relationship_type=RT.HAS_CONCEPT_MOD))
    return measurement


def set_separate(item: Dataset) -> None:
    """ContinuityOfContent = SEPARATE on ``item`` and every nested CONTAINER."""
    if getattr(item, "ValueType", None) == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in getattr(item, "ContentSequence", []):
        set_separate(child)


def observation_context(a: AlgorithmInfo) -> Any:
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=C.DEVICE_OBSERVER,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=a.device_uid, name=a.name, manufacturer_name=a.manufacturer, model_name=a.version
            ),
        )
    )


def algorithm_identification(a: AlgorithmInfo) -> Any:
    return hd.sr.AlgorithmIdentification(
        name=a.name,
        version=a.version,
        manufacturer=a.manufacturer,
        parameters=a.parameters,
        family=C.ALGORITHM_FAMILY_AI,
    )


def referenced_segment(source: SourceStudy, segment_number: int) -> Any:
    """Segment reference; highdicom's ``from_segmentation`` fails when the Segment Identification is in the
    Shared Functional Groups (one-segment highdicom SEGs, docs/sr-design.md §1.4), so build it explicitly."""
    seg = source.seg
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(source.segmentation_source_series_uid),
    )


def tracking_identifier(source: SourceStudy, segment_number: int) -> Any:
    """The SEG segment's TrackingUID / TrackingID, else a UID derived from the SEG instance and segment."""
    s = source.segment(segment_number)
    uid = s.tracking_uid or str(generate_uid(entropy_srcs=[f"{source.seg.SOPInstanceUID}|{segment_number}"]))
    return hd.sr.TrackingIdentifier(uid=uid, identifier=s.tracking_id or s.label or f"Lesion {segment_number}")


def _probability(name: CodedConcept, value: float, cls: CodedConcept | None) -> Measurement:
    m = hd.sr.Measurement(name=name, value=float(value), unit=C.UNIT_NONE)
    if cls is not None:
        add_modifier(m, C.CLASSIFICATION_CATEGORY, cls)
    return m


def _head_items(head: HeadResult) -> tuple[list[Any], list[Measurement]]:
    """(qualitative evaluations, probability NUMs) for one head."""
    if head.task == "subtype":
        qual = [hd.sr.QualitativeEvaluation(C.PREDICTED_SUBTYPE, C.SUBTYPE_CODES[head.label])]
        nums = [_probability(C.SUBTYPE_PROBABILITY[k], p, C.SUBTYPE_CODES[k]) for k, p in head.probabilities.items()]
    elif head.task == "her2-3tier":
        qual = [hd.sr.QualitativeEvaluation(C.HER2_CATEGORY, C.HER2_TIER_CODES[head.label])]
        nums = [
            _probability(C.HER2_TIER_PROBABILITY[k], p, C.HER2_TIER_CODES[k]) for k, p in head.probabilities.items()
        ]
    else:
        codes = C.BINARY_HEADS[head.task]
        qual = [hd.sr.QualitativeEvaluation(codes.status, codes.answer(head.label))]
        nums = [_probability(codes.probability, head.probabilities["positive"], None)]
    return qual, nums


def _common(content: ReportContent, lesion: LesionResult) -> dict[str, Any]:
    source = content.source
    return {
        "tracking_identifier": tracking_identifier(source, lesion.segment_number),
        "referenced_segment": referenced_segment(source, lesion.segment_number),
        "algorithm_id": algorithm_identification(content.algorithm),
        "finding_type": C.FINDING_SECONDARY_NEOPLASM,
        "finding_category": C.FINDING_CATEGORY_ABNORMAL_STRUCTURE,
        "finding_sites": [finding_site(lesion.site)],
    }


def _segment_common(content: ReportContent, segment_number: int) -> dict[str, Any]:
    """:func:`_common` for a segment that has no :class:`LesionResult` (a not-assessed lesion)."""
    source = content.source
    return {
        "tracking_identifier": tracking_identifier(source, segment_number),
        "referenced_segment": referenced_segment(source, segment_number),
        "algorithm_id": algorithm_identification(content.algorithm),
        "finding_category": C.FINDING_CATEGORY_ABNORMAL_STRUCTURE,
        "finding_sites": [hd.sr.FindingSite(C.FINDING_SITE_BRAIN)],
    }


def classification_group(content: ReportContent, lesion: LesionResult) -> Any:
    """Group 1: decisions (CODE), probabilities (NUM), model variant, primary subtype, OOD flag."""
    qual: list[Any] = []
    nums: list[Measurement] = []
    for head in lesion.heads:
        q, n = _head_items(head)
        qual += q
        nums += n
    variant = (
        C.SUBTYPE_MODEL_WITH_PRIMARY
        if content.subtype_model is SubtypeModel.WITH_PRIMARY
        else C.SUBTYPE_MODEL_WITHOUT_PRIMARY
    )
    qual.append(hd.sr.QualitativeEvaluation(C.SUBTYPE_MODEL, variant))
    if content.primary_subtype is not None:
        qual.append(hd.sr.QualitativeEvaluation(C.PRIMARY_SUBTYPE, C.SUBTYPE_CODES[content.primary_subtype]))
    qual.append(hd.sr.QualitativeEvaluation(C.OOD_FLAG, C.YES if lesion.out_of_distribution else C.NO))
    qual += reference_evaluation(content.pons.method)
    qual += lesion_items(content.patient, lesion.segment_number)
    qual += lesion_evaluations(lesion)  # confidence, head agreement, experimental head (node.sr.trust)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        **_common(content, lesion), qualitative_evaluations=qual, measurements=nums
    )


def shap_group(content: ReportContent, lesion: LesionResult) -> Any | None:
    """Group 2: one NUM per top-k SHAP contribution (+ EXPLFEAT / EXPLSEQ / EXPLCLASS) and the base value."""
    e = lesion.explanation
    if e is None:
        return None
    cls = C.SUBTYPE_CODES[e.explained_class]
    nums = []
    for c in e.contributions:
        fc = C.feature_code(c.feature)
        m = hd.sr.Measurement(name=C.shap_code(c.feature, e.explained_class), value=c.contribution, unit=C.UNIT_NONE)
        add_modifier(m, C.EXPLAINED_FEATURE, fc.concept)
        if fc.source is not None:
            add_modifier(m, C.FEATURE_SOURCE, fc.source)
        add_modifier(m, C.EXPLAINED_CLASS, cls)
        nums.append(m)
    base = hd.sr.Measurement(name=C.SHAP_BASE, value=e.base_value, unit=C.UNIT_NONE)
    nums.append(add_modifier(base, C.EXPLAINED_CLASS, cls))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(**_common(content, lesion), measurements=nums)


_SHAPE_UNITS = {
    "shape_VoxelVolume": C.UNIT_MM3,
    "shape_MeshVolume": C.UNIT_MM3,
    "shape_SurfaceArea": CodedConcept("mm2", "UCUM", "square millimeter"),
    "shape_SurfaceVolumeRatio": CodedConcept("/mm", "UCUM", "per millimeter"),
}
_MM = CodedConcept("mm", "UCUM", "millimeter")


def feature_unit(name: str) -> CodedConcept:
    if name in _SHAPE_UNITS:
        return _SHAPE_UNITS[name]
    if name.startswith("shape_") and ("Length" in name or "Diameter" in name):
        return _MM
    return C.UNIT_NONE  # ratios, texture features and z-scored intensities are dimensionless


def raw_value_group(content: ReportContent, lesion: LesionResult) -> Any:
    """Group 3: the lesion volume and the raw values of the explained radiomic features."""
    volume = hd.sr.Measurement(name=C.LESION_VOLUME, value=lesion.volume_ml * 1000.0, unit=C.UNIT_MM3)
    nums = [volume]
    for c in lesion.explanation.contributions if lesion.explanation else ():
        fc = C.feature_code(c.feature)
        if fc.source is None and not c.feature.startswith("shape_"):
            continue  # clinical one-hot input, not an image measurement
        m = hd.sr.Measurement(name=fc.concept, value=c.value, unit=feature_unit(c.feature))
        if fc.source is not None:
            add_modifier(m, C.FEATURE_SOURCE, fc.source)
        nums.append(m)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(**_common(content, lesion), measurements=nums)


def _pct(p: float) -> str:
    return f"{100.0 * p:.0f}%"


def lesion_summary(content: ReportContent, lesion: LesionResult) -> str:
    """One line of plain text per lesion (what every text renderer shows)."""
    seg = content.source.segment(lesion.segment_number)
    parts = [
        f"{seg.label or 'Lesion'} (SEG segment {lesion.segment_number}, {lesion.volume_ml:.2f} mL): "
        f"subtype {lesion.subtype.label} (p={lesion.subtype.probability:.2f})"
    ]
    for head, name in ((lesion.er, "ER"), (lesion.pr, "PR"), (lesion.her2, "HER2")):
        if head is not None:
            parts.append(f"{name} {head.label} (p positive={head.probabilities['positive']:.2f})")
    if lesion.her2_tier is not None:
        parts.append(f"HER2 3-tier {lesion.her2_tier.label} (p={lesion.her2_tier.probability:.2f})")
    if lesion.explanation is not None:
        top = ", ".join(
            f"{C.feature_code(c.feature).label} {c.contribution:+.2f}" for c in lesion.explanation.contributions[:3]
        )
        parts.append(f"main SHAP contributions: {top}")
    if lesion.out_of_distribution:
        parts.append("OUT OF TRAINING DISTRIBUTION: " + "; ".join(lesion.ood_reasons))
    return "; ".join(parts) + "."


def report_summary(content: ReportContent) -> str:
    model = (
        f"with the primary-tumour subtype ({content.primary_subtype})"
        if content.subtype_model is SubtypeModel.WITH_PRIMARY
        else "without the primary-tumour subtype"
    )
    text = (
        f"AI prediction - {content.disclaimer}. Not verified by a physician. "
        f"Subtype model {model}. Intensity reference: {content.pons.describe()}."
    )
    if content.not_assessed:
        text += (f" {len(content.not_assessed)} segment(s) NOT ASSESSED (no prediction; reasons below)."
                 if content.lesions else " NO LESION WAS ASSESSED: this report carries no subtype prediction.")
    if content.warnings:
        text += " Warnings: " + "; ".join(content.warnings) + "."
    if (replaces := supersession_text(content)) is not None:
        text += " " + replaces
    return text


def qualitative_container(texts: list[str]) -> ContainerContentItem:
    """TID 1500 row 12 container with TEXT Comment items (CODE/TEXT only there)."""
    qe = ContainerContentItem(
        name=C.QUALITATIVE_EVALUATIONS, relationship_type=RT.CONTAINS, is_content_continuous=False
    )
    qe.ContentSequence = hd.sr.ContentSequence(
        [TextContentItem(name=C.COMMENT, value=t, relationship_type=RT.CONTAINS) for t in texts]
    )
    return qe


def build_report(
    content: ReportContent,
    *,
    sop_class: SrSopClass = SrSopClass.COMPREHENSIVE_3D,
    series_instance_uid: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    series_description: str = SERIES_DESCRIPTION,
    content_datetime: dt.datetime | None = None,
) -> Any:
    """The SR document (``hd.sr.Comprehensive3DSR`` by default): patient and study identity inherited from the
    evidence, UNVERIFIED / PRELIMINARY / COMPLETE; Series and SOP Instance UIDs derived from the content's
    identity (:func:`report_uids`) unless given; a superseding result references the SR it replaces in
    ``PredecessorDocumentsSequence`` and says so in its summary text."""
    derived_series, derived_sop = report_uids(content)
    prior = superseded(content)
    groups: list[Any] = []
    for lesion in content.lesions:
        groups.append(classification_group(content, lesion))
        shap = shap_group(content, lesion)
        if shap is not None:
            groups.append(shap)
        groups.append(raw_value_group(content, lesion))
        groups += deep_groups(content.deep, lesion.segment_number, _common(content, lesion))  # node.sr.deep
    groups += [not_assessed_group(n, **_segment_common(content, n.segment_number)) for n in content.not_assessed]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(content.algorithm),
        procedure_reported=C.PROCEDURE_MRI,
        imaging_measurements=groups,
        title=C.IMAGING_MEASUREMENT_REPORT,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            language=CodedConcept("en-US", "RFC5646", "English (United States)")
        ),
        referenced_images=None,
    )
    texts = [report_summary(content), *statement(content.patient),
             *(lesion_summary(content, lesion) for lesion in content.lesions)]
    texts += [t for lesion in content.lesions if (t := deep_line(content.deep, lesion.segment_number))]
    texts += [item.describe() for item in content.not_assessed]
    report[0].ContentSequence.append(qualitative_container(texts))
    qualitative = report[0].ContentSequence[-1]
    qualitative.ContentSequence.extend(document_items(content.patient))
    extend_qualitative(qualitative, content)  # provenance, confidence, agreement
    # one reading order: every TEXT (the summary first), then the coded items; a stable sort keeps each group's order
    qualitative.ContentSequence = sorted(qualitative.ContentSequence, key=lambda item: item.ValueType != "TEXT")
    return build_document(
        content.source.evidence,
        report,
        content.algorithm,
        sop_class=sop_class,
        series_instance_uid=series_instance_uid or derived_series,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or derived_sop,
        instance_number=instance_number,
        series_description=series_description,
        content_datetime=content_datetime,
        predecessor=prior,
    )


def build_document(
    evidence: list[Dataset],
    report: Any,
    algorithm: AlgorithmInfo,
    *,
    sop_class: SrSopClass,
    series_instance_uid: str | None,
    series_number: int,
    sop_instance_uid: str | None,
    instance_number: int,
    series_description: str,
    content_datetime: dt.datetime | None,
    predecessor: PriorDocument | None = None,
) -> Any:
    """The SR document around a TID 1500 ``report``: header flags, evidence, equipment, private scheme, SEPARATE;
    ``predecessor`` (the SR this one replaces) goes into ``PredecessorDocumentsSequence``."""
    equipment = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=C.PROCESSING_EQUIPMENT,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_description=PROCESSING_EQUIPMENT_DESCRIPTION,
    )
    extra: dict[str, Any] = {}
    if content_datetime is not None:
        extra["content_date"] = content_datetime.date()
        extra["content_time"] = content_datetime.time()
    if predecessor is not None:
        extra["previous_versions"] = [predecessor.reference()]
    sr = _SR_CLASSES[sop_class](
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[equipment],
        series_description=series_description,
        specific_character_set="ISO_IR 192",
        coding_schemes=[coding_scheme()],
        **extra,
    )
    sr.SoftwareVersions = algorithm.version
    sr.ManufacturerModelName = algorithm.name[:64]
    set_separate(sr)
    return sr


def write_instance(dataset: Dataset, directory: Path) -> Path:
    """Write ``dataset`` as ``<directory>/<Modality>_<SOPInstanceUID>.dcm`` (DICOM file format) and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dataset.Modality}_{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path
