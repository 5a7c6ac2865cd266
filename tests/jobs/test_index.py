"""The index lesion and the patient-level answer (node.jobs.index): the rule (largest / SEG-named), the
discordance with a known primary, and the real pipeline on a two-lesion synthetic study whose re-read SR, result
JSON and companions state exactly one index lesion and the patient-level answer."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes

from node.config import IndexLesionRule, Settings
from node.jobs.index import choose_index, mark_index, named_segments, patient_level
from node.jobs.lesions import LesionSummary
from node.jobs.process import ProcessResult, process_study
from node.jobs.summary import result_json
from node.model.tasks import Task
from node.sr import codes as C
from node.sr import patient as P
from node.sr.content import PonsSummary, ReportContent, SubtypeModel, lesion_result_from_predictions
from node.sr.source import SourceStudy
from node.sr.validate import validate_sr
from tests.sr.conftest import FEATURES, algorithm, subtype_prediction
from tests.support.studies import SynthCase, synth_case

__all__ = ["synth_case"]


def _named_copy(synth_case: SynthCase, out: Path, labels: dict[int, str], description: str = "") -> Path:
    """A copy of the synthetic study whose SEG segments carry ``labels`` (and a SegmentDescription)."""
    shutil.copytree(synth_case.root, out)
    seg_path = out / "seg" / "seg.dcm"
    seg = pydicom.dcmread(seg_path)
    for item in seg.SegmentSequence:
        if int(item.SegmentNumber) in labels:
            item.SegmentLabel = labels[int(item.SegmentNumber)]
            if description:
                item.SegmentDescription = description
    seg.save_as(seg_path, enforce_file_format=True)
    return out


def _source(study: Path) -> SourceStudy:
    return SourceStudy.from_directories(study / "t1ce", study / "t2", study / "seg" / "seg.dcm")


def _content(source: SourceStudy, volumes: tuple[float, float] = (1.5, 0.42)) -> ReportContent:
    one = lesion_result_from_predictions(1, subtype_prediction("HR-/HER2+"), FEATURES, volumes[0], top_k=5)
    two = lesion_result_from_predictions(2, subtype_prediction("TN"), FEATURES, volumes[1], top_k=5)
    return ReportContent(source=source, lesions=(one, two), algorithm=algorithm(("subtype",)),
                         subtype_model=SubtypeModel.WITH_PRIMARY,
                         pons=PonsSummary("auto"), primary_subtype="HR-/HER2+")


def test_largest_lesion_is_the_default_index(synth_case: SynthCase) -> None:
    content = _content(_source(synth_case.root))
    assert Settings().index_lesion is IndexLesionRule.LARGEST
    index, rule, warnings = choose_index(content.lesions, content.source)
    assert (index.segment_number, rule, warnings) == (1, "largest", ())
    smaller_first = _content(content.source, volumes=(0.2, 0.9))
    assert choose_index(smaller_first.lesions, smaller_first.source)[0].segment_number == 2


def test_seg_rule_picks_the_named_segment_and_falls_back_with_a_warning(synth_case: SynthCase,
                                                                        tmp_path: Path) -> None:
    named = _source(_named_copy(synth_case, tmp_path / "named", {2: "Target lesion"}))
    assert named_segments(named) == (2,)
    content = _content(named)
    index, rule, warnings = choose_index(content.lesions, named, "seg")
    assert (index.segment_number, rule, warnings) == (2, "seg", ())  # the named one, though smaller
    assert choose_index(content.lesions, named, "largest")[0].segment_number == 1
    by_description = _source(_named_copy(synth_case, tmp_path / "desc", {2: "Met 2"}, description="INDEX"))
    assert named_segments(by_description) == (2,)
    unnamed = _source(synth_case.root)
    index, rule, warnings = choose_index(_content(unnamed).lesions, unnamed, "seg")
    assert (index.segment_number, rule) == (1, "largest")
    assert warnings == ("no SEG segment is named 'index' or 'target'; the largest lesion is the index lesion",)
    both = _source(_named_copy(synth_case, tmp_path / "both", {1: "index-1", 2: "index-2"}))
    index, rule, warnings = choose_index(_content(both).lesions, both, "seg")
    assert index.segment_number == 1 and "several segments (1, 2)" in warnings[0]
    # a word that merely contains "index" does not name the index lesion
    indexed = _source(_named_copy(synth_case, tmp_path / "word", {2: "Reindexed"}))
    assert named_segments(indexed) == ()


def test_named_segment_that_was_not_predicted_is_not_the_index(synth_case: SynthCase, tmp_path: Path) -> None:
    source = _source(_named_copy(synth_case, tmp_path / "named", {2: "index lesion"}))
    only_one = (_content(source).lesions[0],)  # segment 2 was not assessed: no prediction
    index, rule, warnings = choose_index(only_one, source, "seg")
    assert (index.segment_number, rule) == (1, "largest")
    assert "names segment(s) 2 as index lesion but none was predicted" in warnings[0]


def test_discordance_with_a_known_primary(synth_case: SynthCase) -> None:
    content = _content(_source(synth_case.root), volumes=(0.3, 2.0))  # index = segment 2, predicted TN
    discordant = patient_level(content, "HR+/HER2-")
    assert discordant.patient is not None and discordant.patient.index_segment == 2
    assert discordant.patient.discordant is True
    assert discordant.patient.to_json()["discordant"] is True
    concordant = patient_level(content, "TN")
    assert concordant.patient is not None and concordant.patient.discordant is False
    unknown = patient_level(content, None)
    assert unknown.patient is not None and unknown.patient.discordant is None
    with pytest.raises(ValueError, match="no predicted lesion"):
        choose_index((), content.source)
    summaries = tuple(LesionSummary.from_result(r, "") for r in content.lesions)
    assert [s.index for s in mark_index(summaries, discordant.patient)] == [False, True]


# -- the real pipeline ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model_factory import train_tiny_bundles

    return train_tiny_bundles(tmp_path_factory.mktemp("index-models"), [Task.SUBTYPE, Task.SUBTYPE_NOPRIMARY],
                              k=8, learning_rate=0.3)


def _index_flags(path: Path) -> dict[int, str]:
    sr: Any = hd.sr.srread(path)
    flags = {}
    for group in sr.content.get_volumetric_roi_measurement_groups(reference_type=codes.DCM.ReferencedSegment):
        values = {q.name.value: q.value.value for q in group.get_qualitative_evaluations()}
        if P.INDEX_LESION.value in values:
            flags[int(group.referenced_segment[0].ReferencedSOPSequence[0].ReferencedSegmentNumber)] = (
                values[P.INDEX_LESION.value])
    return flags


def _document_codes(path: Path) -> tuple[dict[str, str], list[str]]:
    ds = pydicom.dcmread(path)
    container = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375")
    coded = {c.ConceptNameCodeSequence[0].CodeValue: c.ConceptCodeSequence[0].CodeValue
             for c in container.ContentSequence if c.ValueType == "CODE"}
    texts = [c.TextValue for c in container.ContentSequence if c.ValueType == "TEXT"]
    return coded, texts


def _check_result(result: ProcessResult, index: int) -> dict[str, Any]:
    assert validate_sr(result.sr_path) == []  # dciodvfy, dsrdump -v, PixelMed, round trip
    flags = _index_flags(result.sr_path)
    assert len(flags) == 2 and [n for n, v in flags.items() if v == C.YES.value] == [index]
    assert result.patient is not None and result.patient.index_segment == index
    coded, texts = _document_codes(result.sr_path)
    assert coded[P.PATIENT_SUBTYPE.value] == C.SUBTYPE_CODES[result.patient.subtype].value
    assert texts[1].startswith(f"Patient-level predicted subtype: {result.patient.subtype}")
    data: dict[str, Any] = json.loads(json.dumps(result_json(result)))
    assert [lesion["index"] for lesion in data["lesions"]] == [n == index for n in (1, 2)]
    assert data["patient"]["index_segment"] == index
    index_lesion = next(lesion for lesion in data["lesions"] if lesion["index"])
    assert data["patient"]["subtype"] == index_lesion["subtype"]
    return data


@pytest.mark.slow  # the imaging pipeline on a real two-lesion study, twice
def test_two_lesion_study_has_one_index_lesion_and_the_discordance_flag(
    synth_case: SynthCase, models: Path, tmp_path: Path,
) -> None:
    result = process_study(synth_case.root, tmp_path / "largest", models_dir=models, primary_subtype="TN")
    volumes = {lesion.segment_number: lesion.volume_ml for lesion in result.lesions}
    largest = max(volumes, key=lambda n: volumes[n])
    data = _check_result(result, largest)
    assert result.patient is not None and result.patient.rule == "largest"
    coded, texts = _document_codes(result.sr_path)
    discordant = result.patient.subtype != "TN"
    assert data["patient"]["discordant"] is discordant
    assert coded[P.DISCORDANT.value] == (C.YES if discordant else C.NO).value
    assert coded[P.PRIMARY_REFERENCE.value] == C.SUBTYPE_CODES["TN"].value
    assert ("DISCORDANT with the primary tumour" in texts[1]) is discordant
    assert ("Concordant with the primary tumour (TN)" in texts[1]) is not discordant

    # the SEG names the smaller lesion as the target: with index_lesion=seg it is the index lesion
    smaller = 3 - largest
    study = _named_copy(synth_case, tmp_path / "named", {smaller: "Target lesion"})
    named = process_study(study, tmp_path / "seg", models_dir=models, index_rule="seg")
    data = _check_result(named, smaller)
    assert named.patient is not None and named.patient.rule == "seg" and named.patient.primary_subtype is None
    coded, _ = _document_codes(named.sr_path)
    assert coded[P.INDEX_RULE.value] == "IDX_SEG" and P.DISCORDANT.value not in coded
    assert data["patient"]["discordant"] is None
    assert dataclasses.asdict(named.patient)["index_label"] == "Target lesion"
