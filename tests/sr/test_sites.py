"""Finding Site with region and laterality in the SR (node/sr/sites.py) and the companion's site line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from node.sr.companion import _result_lines
from node.sr.content import ReportContent
from node.sr.report import build_report, write_instance
from node.sr.sites import REGION_CODES, finding_site, site_line
from node.sr.validate import FAST_SR_CHECKS, validate_sr
from node.vocabulary import BrainRegion, Hemisphere, LesionSite

LEFT_FRONTAL = LesionSite(BrainRegion.FRONTAL, Hemisphere.LEFT, 0.82, (-30.2, 35.0, 30.4))
BRAINSTEM = LesionSite(BrainRegion.BRAINSTEM, Hemisphere.MIDLINE, 1.0, (0.4, -28.0, -14.0))


def _finding_sites(ds: Dataset) -> list[Dataset]:
    found: list[Dataset] = []

    def walk(item: Dataset) -> None:
        for child in item.get("ContentSequence", []):
            if "ConceptNameCodeSequence" in child and child.ConceptNameCodeSequence[0].CodeValue == "363698007":
                found.append(child)
            walk(child)

    walk(ds)
    return found


def _described(site: Dataset) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(site code, ((modifier name, modifier code), ...))."""
    modifiers = tuple((str(m.ConceptNameCodeSequence[0].CodeMeaning), str(m.ConceptCodeSequence[0].CodeValue))
                      for m in site.get("ContentSequence", []))  # fmt: skip
    return str(site.ConceptCodeSequence[0].CodeValue), modifiers


@pytest.fixture(scope="module")
def sited(content: ReportContent) -> ReportContent:
    one, two = content.lesions
    return dataclasses.replace(content, lesions=(dataclasses.replace(one, site=LEFT_FRONTAL),
                                                 dataclasses.replace(two, site=BRAINSTEM)))  # fmt: skip


def test_sr_carries_region_and_laterality_and_validates(sited: ReportContent, tmp_path: Path) -> None:
    path = write_instance(build_report(sited), tmp_path)
    assert validate_sr(path, FAST_SR_CHECKS) == []  # dciodvfy, dsrdump -v, TID 1500 re-read
    sites = {_described(s) for s in _finding_sites(pydicom.dcmread(path))}
    assert sites == {
        ("83251001", (("Laterality", "7771000"),)),  # frontal lobe, left
        ("119238007", (("Topographical modifier", "130290"),)),  # brain stem, median
    }


def test_without_a_site_the_finding_site_stays_brain(content: ReportContent, tmp_path: Path) -> None:
    path = write_instance(build_report(content), tmp_path)
    assert {_described(s) for s in _finding_sites(pydicom.dcmread(path))} == {("12738006", ())}


def test_every_region_has_a_distinct_snomed_code() -> None:
    assert set(REGION_CODES) == set(BrainRegion)
    values = [c.value for c in REGION_CODES.values()]
    assert len(set(values)) == len(values) and all(c.scheme_designator == "SCT" for c in REGION_CODES.values())
    right = finding_site(dataclasses.replace(LEFT_FRONTAL, hemisphere=Hemisphere.RIGHT))
    assert right.ContentSequence[0].ConceptCodeSequence[0].CodeValue == "24028007"


def test_companion_names_the_site_in_words(sited: ReportContent) -> None:
    one, two = (_result_lines(sited, lesion) for lesion in sited.lesions)
    assert one[1] == ("Site (AAL3 atlas, approximate): left frontal lobe (82 % of the lesion); "
                      "MNI centroid x -30, y 35, z 30 mm")  # fmt: skip
    assert "brainstem, midline (100 % of the lesion)" in two[1]
    assert site_line(None).startswith("Site: not determined")
