"""Every written SR and companion passes every installed validator, and each validator catches the defect it
is meant to catch (so a green result means something). PixelMed takes ~25 s per SR: marked slow."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pydicom
import pytest
from pydicom.dataset import Dataset

from node.errors import ProcessingError, SegmentationError
from node.sr import validate
from node.sr.content import ReportContent
from node.sr.failure import FailureContent, build_failure_report
from node.sr.report import write_instance
from node.sr.validate import (
    Validation,
    available_tools,
    check_dciodvfy,
    check_dsrdump,
    check_pixelmed,
    check_roundtrip_object,
    check_roundtrip_sr,
    check_tid1500reader,
    require_valid,
    validate_object,
    validate_sr,
    write_results,
)

from .conftest import Written, algorithm


@pytest.fixture(scope="module")
def small_sr(study_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = sorted((study_dir / "t1ce").glob("*.dcm"))[:1]
    failure = FailureContent.from_error(SegmentationError("empty segment"), files, algorithm(("subtype",)))
    return write_instance(build_failure_report(failure), tmp_path_factory.mktemp("small"))

CHECKS: dict[str, Callable[[Path], list[str]]] = {
    "roundtrip": check_roundtrip_sr,
    "dsrdump": check_dsrdump,
    "dciodvfy": check_dciodvfy,
    "pixelmed": check_pixelmed,
    "tid1500reader": check_tid1500reader,
}
SLOW = {"pixelmed"}


def _require(tool: str) -> None:
    if not available_tools()[tool]:
        pytest.skip(f"{tool} is not installed (Debian dcmtk / dicom3tools / pixelmed-apps, pip dcmqi)")


def _params() -> list[object]:
    return [pytest.param(t, marks=pytest.mark.slow) if t in SLOW else t for t in CHECKS]


@pytest.mark.parametrize("tool", _params())
def test_good_sr_passes(written: Written, tool: str):
    _require(tool)
    assert CHECKS[tool](written.sr) == []


@pytest.mark.parametrize("kind", ["sc", "pdf"])
def test_companions_pass(written: Written, kind: str):
    _require("dciodvfy")
    paths = written.sc if kind == "sc" else (written.pdf,)
    for path in paths:
        assert validate_object(path) == []


def _first_num(ds: Dataset) -> Dataset:
    def walk(item: Dataset) -> Dataset | None:
        for child in item.get("ContentSequence", []):
            if child.ValueType == "NUM":
                return cast(Dataset, child)
            found = walk(child)
            if found is not None:
                return found
        return None

    num = walk(ds)
    assert num is not None
    return num


def _mutated(path: Path, tmp_path: Path, change: Callable[[Dataset], None]) -> Path:
    ds = pydicom.dcmread(path)
    change(ds)
    out = tmp_path / "mutated.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _drop_units(ds: Dataset) -> None:
    del _first_num(ds).MeasuredValueSequence[0].MeasurementUnitsCodeSequence


def _text_child_of_num(ds: Dataset) -> None:
    num = _first_num(ds)
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121106", "DCM", "Comment"
    text.ConceptNameCodeSequence = [code]
    text.TextValue = "illegal"
    num.ContentSequence.append(text)


def _brain_mri_procedure(ds: Dataset) -> None:
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "121058":
            item.ConceptCodeSequence[0].CodeValue = "24590-2"
            item.ConceptCodeSequence[0].CodeMeaning = "MR Brain"


def _no_content(ds: Dataset) -> None:
    del ds.ContentSequence


@pytest.mark.parametrize(
    ("tool", "change"),
    [
        ("dciodvfy", _drop_units),
        ("dsrdump", _text_child_of_num),
        pytest.param("pixelmed", _brain_mri_procedure, marks=pytest.mark.slow),
        ("roundtrip", _no_content),
        ("tid1500reader", _no_content),
    ],
)
def test_each_validator_catches_its_defect(written: Written, small_sr: Path, tmp_path: Path, tool: str, change):
    _require(tool)
    # PixelMed takes ~1 s per content item: give it the small (failure) SR, which has the same root template
    bad = _mutated(small_sr if tool == "pixelmed" else written.sr, tmp_path, change)
    problems = validate_sr(bad, checks=(tool,))
    assert problems, f"{tool} did not notice the defect"


def test_companion_defect_is_caught(written: Written, tmp_path: Path):
    _require("dciodvfy")
    bad = _mutated(written.pdf, tmp_path, lambda ds: delattr(ds, "MIMETypeOfEncapsulatedDocument"))
    assert any("MIMETypeOfEncapsulatedDocument" in p or "MIME" in p for p in validate_object(bad))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(written.sc[0].read_bytes()[:2000])
    assert check_roundtrip_object(truncated)


def test_write_results_writes_and_validates_everything(content: ReportContent, tmp_path: Path):
    paths = write_results(content, tmp_path / "out")
    assert [p.name.split("_")[0] for p in paths] == ["SR", "OT", "OT", "DOC"]
    assert all(p.is_file() for p in paths)
    only_sr = write_results(content, tmp_path / "sr", companions=())
    assert len(only_sr) == 1


def test_require_valid_refuses_invalid_output(written: Written, tmp_path: Path):
    _require("dsrdump")
    require_valid(written.sr, (*written.sc, written.pdf))
    bad_sr = _mutated(written.sr, tmp_path, _text_child_of_num)  # an illegal relationship dsrdump rejects
    with pytest.raises(ProcessingError, match="dsrdump"):
        require_valid(bad_sr, ())
    bad_pdf = _mutated(written.pdf, tmp_path, lambda ds: delattr(ds, "MIMETypeOfEncapsulatedDocument"))
    with pytest.raises(ProcessingError, match="dciodvfy"):
        require_valid(written.sr, (bad_pdf,))


def _first_group(ds: Dataset) -> Dataset:
    measurements = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    return cast(Dataset, measurements.ContentSequence[0])


def _drop_items(code_value: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        group = _first_group(ds)
        kept = [i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue != code_value]
        assert len(kept) < len(group.ContentSequence)
        group.ContentSequence = kept

    return change


def _add_source_image(ds: Dataset) -> None:
    group = _first_group(ds)
    segment = next(i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121191")
    image = Dataset()
    image.RelationshipType, image.ValueType = "CONTAINS", "IMAGE"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121233", "DCM", "Source image for segmentation"
    image.ConceptNameCodeSequence = [code]
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ref.ReferencedSOPInstanceUID = segment.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    image.ReferencedSOPSequence = [ref]
    group.ContentSequence.append(image)


@pytest.mark.parametrize(
    ("change", "finding"),
    [
        (_drop_items("112040"), "no Tracking Unique Identifier"),  # the tracking UID
        (_drop_items("121191"), "does not reference a segment"),  # the Referenced Segment item
        (_drop_items("121232"), "does not reference a segment"),  # its source series
        (_add_source_image, "does not reference a segment"),  # source image and source series both
    ],
)
def test_roundtrip_checks_every_volumetric_group(written: Written, tmp_path: Path, change, finding: str):
    assert check_roundtrip_sr(written.sr) == []
    problems = check_roundtrip_sr(_mutated(written.sr, tmp_path, change))
    assert any(finding in p for p in problems), problems


def test_roundtrip_refuses_a_document_that_is_not_tid_1500(written: Written, tmp_path: Path):
    def other_template(ds: Dataset) -> None:
        ds.ContentTemplateSequence[0].TemplateIdentifier = "2000"

    problems = check_roundtrip_sr(_mutated(written.sr, tmp_path, other_template))
    assert problems and "TID 1500" in problems[0]


def test_validation_runs_the_tools_at_once_and_reports_in_order(written: Written, monkeypatch: pytest.MonkeyPatch):
    """Two tools that wait for each other finish only when they run at the same time; the problems still come
    back file by file, re-read first, then the tools in check order."""
    both = threading.Barrier(2, timeout=20)

    def tool(name: str) -> Callable[[Path], list[str]]:
        def run(path: Path) -> list[str]:
            both.wait()
            return [f"{name} {path.name}"]

        return run

    monkeypatch.setattr(validate, "_CHECKS", {"dsrdump": tool("dsrdump"), "dciodvfy": tool("dciodvfy")})
    monkeypatch.setattr(validate, "available_tools", lambda: {"roundtrip": True, "dsrdump": True, "dciodvfy": True})
    monkeypatch.setattr(validate, "check_roundtrip_sr", lambda path: [f"roundtrip {path.name}"])
    with Validation() as validation:
        validation.add_sr(written.sr, ("roundtrip", "dsrdump", "dciodvfy"))
        problems = validation.problems()
    sr = written.sr.name
    assert problems == [f"roundtrip {sr}", f"dsrdump {sr}", f"dciodvfy {sr}"]
