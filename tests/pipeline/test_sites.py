"""Lesion sites end to end: a synthetic study with lesions placed at known MNI coordinates goes through the real
pipeline (template registration reused from the pons step), the SR names each lesion's region and side in its
Finding Site, and the SR still passes every validator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from node.jobs.process import ProcessResult, process_study
from node.model.tasks import Task
from node.sr.validate import validate_sr
from node.synth.located import PlacedLesion, synthesize_located_case, write_located_case

FINDING_SITE = "363698007"
LATERALITY = "272741003"
TOPOGRAPHICAL_MODIFIER = "106233006"
REFERENCED_SEGMENT = "121191"


@dataclass(frozen=True)
class Expected:
    lesion: PlacedLesion
    site_code: str  # SNOMED CT
    laterality: str | None  # SNOMED CT Left 7771000 / Right 24028007; None: midline


LEFT, RIGHT = "7771000", "24028007"
#: segment n is EXPECTED[n - 1]; MNI RAS millimetres (x < 0 is the patient's left)
EXPECTED = (
    Expected(PlacedLesion((-30.0, 35.0, 30.0), 7.0), "83251001", LEFT),  # frontal lobe
    Expected(PlacedLesion((35.0, -55.0, 45.0), 7.0), "16630005", RIGHT),  # parietal lobe
    Expected(PlacedLesion((-50.0, -20.0, -12.0), 6.0), "78277001", LEFT),  # temporal lobe
    Expected(PlacedLesion((22.0, -88.0, 8.0), 6.0), "31065004", RIGHT),  # occipital lobe
    Expected(PlacedLesion((-28.0, -65.0, -38.0), 7.0), "113305005", LEFT),  # cerebellum
    Expected(PlacedLesion((0.0, -28.0, -14.0), 4.0), "119238007", None),  # brainstem (midbrain), midline
    Expected(PlacedLesion((12.0, -18.0, 8.0), 5.0), "42695009", RIGHT),  # thalamus
    Expected(PlacedLesion((-38.0, 2.0, 6.0), 4.0), "36169008", LEFT),  # insula
)


@pytest.fixture(scope="module")
def site_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model_factory import train_tiny_bundles

    return train_tiny_bundles(tmp_path_factory.mktemp("site-models"), Task, k=8, learning_rate=0.3)


@pytest.fixture(scope="module")
def located(site_models: Path, tmp_path_factory: pytest.TempPathFactory) -> ProcessResult:
    case = synthesize_located_case([e.lesion for e in EXPECTED], seed=5)
    study = write_located_case(case, tmp_path_factory.mktemp("located-study"), seed=5)
    return process_study(study, tmp_path_factory.mktemp("located-out"), models_dir=site_models,
                         primary_subtype="hr+/her2-")  # fmt: skip


def _code(item: Dataset, sequence: str = "ConceptNameCodeSequence") -> str:
    return str(item[sequence][0].CodeValue) if sequence in item else ""


def _groups(ds: Dataset) -> list[Dataset]:
    """Every CONTAINER in the content tree that has a Finding Site directly under it (TID 1411 groups)."""
    found: list[Dataset] = []

    def walk(item: Dataset) -> None:
        children = item.get("ContentSequence", [])
        if item.get("ValueType") == "CONTAINER" and any(_code(c) == FINDING_SITE for c in children):
            found.append(item)
        for child in children:
            walk(child)

    walk(ds)
    return found


def _sites_by_segment(ds: Dataset) -> dict[int, set[tuple[str, str | None, str | None]]]:
    """segment number -> {(site code, laterality code, topographical modifier code)} over its groups."""
    out: dict[int, set[tuple[str, str | None, str | None]]] = {}
    for group in _groups(ds):
        children = group.ContentSequence
        [segment] = [int(c.ReferencedSOPSequence[0].ReferencedSegmentNumber) for c in children
                     if _code(c) == REFERENCED_SEGMENT]  # fmt: skip
        for site in (c for c in children if _code(c) == FINDING_SITE):
            modifiers = {_code(m): _code(m, "ConceptCodeSequence") for m in site.get("ContentSequence", [])}
            out.setdefault(segment, set()).add(
                (_code(site, "ConceptCodeSequence"), modifiers.get(LATERALITY), modifiers.get(TOPOGRAPHICAL_MODIFIER))
            )
    return out


@pytest.mark.slow  # synthesis, the imaging pipeline and PixelMed: ~1 min on the shared machine
def test_sites_of_lesions_at_known_mni_positions_are_coded_in_the_sr(located: ProcessResult) -> None:
    assert validate_sr(located.sr_path) == []  # dciodvfy, dsrdump -v, PixelMed, TID 1500 re-read
    sites = _sites_by_segment(pydicom.dcmread(located.sr_path))
    assert sorted(sites) == list(range(1, len(EXPECTED) + 1)), located.warnings
    for number, expected in enumerate(EXPECTED, start=1):
        median = "130290" if expected.laterality is None else None
        assert sites[number] == {(expected.site_code, expected.laterality, median)}, f"segment {number}"
    regions = {e.site_code for e in EXPECTED}
    assert len(regions) >= 6 and {e.laterality for e in EXPECTED} >= {LEFT, RIGHT, None}
