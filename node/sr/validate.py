"""Re-read and validate written result objects (docs/sr-design.md §6). Each check returns a list of problems.

=================  ===========================================================================================
check              what it catches
=================  ===========================================================================================
``roundtrip``      pydicom re-read; for SRs highdicom ``srread`` (the whole TID 1500 tree parsed into its content
                   item types) and every TID 1411 group of it: a tracking UID and one complete segment reference
``dsrdump``        dcmtk ``dsrdump -v``: SR encoding and relationship constraints (``E:`` lines, exit status)
``dciodvfy``       dicom3tools: IOD / module / attribute errors (``Error`` lines; 99BCMETS "unrecognized" dropped)
``pixelmed``       PixelMed ``DicomSRValidator``: SR *templates* (TID 1500/1411/300; ``Error:`` lines)
``tid1500reader``  dcmqi (3D Slicer's parser) reads the TID 1500 tree
=================  ===========================================================================================

A check whose tool is not installed is skipped (see :func:`available_tools`); callers that require a tool ask
:func:`available_tools` first. The external tools of every file given to one :class:`Validation` run at once, in
the background (each is its own process: they use another core while this process re-reads the files, or goes
on rendering the companions in :func:`write_results`); the problems come back in a fixed order. Research use
only, not for diagnosis.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from node.errors import ProcessingError
from node.sr.companion import Companion, write_companions
from node.sr.content import ReportContent
from node.sr.report import build_report, write_instance

logger = logging.getLogger(__name__)

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
# JDK >= 17 refuses PixelMed's XPath expressions without these (JAXP0801003 ... exceeds the '10,000' limit)
JAVA_FLAGS = ("-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0")
TIMEOUT_S = 300.0
SR_CHECKS: tuple[str, ...] = ("roundtrip", "dsrdump", "dciodvfy", "pixelmed", "tid1500reader")
OBJECT_CHECKS: tuple[str, ...] = ("roundtrip", "dciodvfy")
#: external validators running at once (an SR's three tools plus a companion's dciodvfy)
PARALLEL_TOOLS = 4


def _tid1500reader() -> str | None:
    found = shutil.which("tid1500reader")
    if found is None:  # installed in the virtualenv next to the interpreter, which may not be on PATH
        candidate = Path(sys.executable).parent / "tid1500reader"
        found = str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None
    return found


def available_tools() -> dict[str, bool]:
    """Which external validators are installed on this machine."""
    return {
        "roundtrip": True,
        "dsrdump": shutil.which("dsrdump") is not None,
        "dciodvfy": shutil.which("dciodvfy") is not None,
        "pixelmed": shutil.which("java") is not None and PIXELMED_JAR.is_file(),
        "tid1500reader": _tid1500reader() is not None,
    }


def _run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def _children(item: Dataset, name: Code, value_type: str, relationship: str | None = None) -> list[Dataset]:
    """The content items directly under ``item`` with this concept name, value type (and relationship)."""
    found = []
    for child in item.get("ContentSequence", []):
        concept = child.ConceptNameCodeSequence[0]
        if (concept.get("CodeValue"), concept.CodingSchemeDesignator, child.ValueType) == (
            name.value, name.scheme_designator, value_type
        ) and relationship in (None, child.get("RelationshipType")):
            found.append(child)
    return found


def _volumetric_groups(root: Dataset) -> list[Dataset]:
    """The TID 1411 groups under Imaging Measurements: template 1411, or no template and a segment reference."""
    groups = []
    for container in _children(root, codes.DCM.ImagingMeasurements, "CONTAINER"):
        for group in _children(container, codes.DCM.MeasurementGroup, "CONTAINER"):
            templates = [str(t.TemplateIdentifier) for t in group.get("ContentTemplateSequence", [])]
            if templates == ["1411"] or (not templates and _children(group, codes.DCM.ReferencedSegment, "IMAGE")):
                groups.append(group)
    return groups


def _group_problems(group: Dataset) -> list[str]:
    """A tracking UID, and one Referenced Segment (SEG instance and segment number) with its source: image(s) or
    one series, not both (what highdicom's ``ReferencedSegment`` requires)."""
    uids = [str(i.UID) for i in _children(group, codes.DCM.TrackingUniqueIdentifier, "UIDREF") if i.get("UID")]
    problems = [] if uids else ["a measurement group has no Tracking Unique Identifier"]
    segments = [
        ref for i in _children(group, codes.DCM.ReferencedSegment, "IMAGE", "CONTAINS")
        for ref in i.get("ReferencedSOPSequence", [])[:1]
        if ref.get("ReferencedSOPInstanceUID") and ref.get("ReferencedSegmentNumber") is not None
    ]
    images = _children(group, codes.DCM.SourceImageForSegmentation, "IMAGE", "CONTAINS")
    series = _children(group, codes.DCM.SourceSeriesForSegmentation, "UIDREF", "CONTAINS")
    if len(segments) != 1 or bool(images) == bool(series) or len(series) > 1:
        problems.append(f"group {uids[0] if uids else '(no tracking UID)'} does not reference a segment "
                        f"({len(segments)} segment reference(s), {len(images)} source image(s), "
                        f"{len(series)} source series)")
    return problems


def check_roundtrip_sr(path: Path) -> list[str]:
    """highdicom ``srread`` of the file (every content item parsed into its highdicom type, the root as a TID 1500
    Measurement Report) and, on the parsed tree, every TID 1411 group: a tracking UID and a SEG segment reference.
    """
    try:
        sr: Any = hd.sr.srread(path)
        if not isinstance(sr.content, hd.sr.MeasurementReport):
            return ["highdicom srread: the document is not a TID 1500 Measurement Report"]
        groups = _volumetric_groups(sr.content[0])
        return [problem for group in groups for problem in _group_problems(group)]
    except Exception as exc:  # noqa: BLE001 - a validator reports any parser failure as the finding itself
        return [f"highdicom srread failed: {type(exc).__name__}: {exc}"]


def check_roundtrip_object(path: Path) -> list[str]:
    """pydicom re-read; images decode to Rows x Columns; a PDF starts with ``%PDF`` and has its stated length."""
    try:
        ds = pydicom.dcmread(path)
        if "PixelData" in ds:
            shape = ds.pixel_array.shape
            if shape[:2] != (ds.Rows, ds.Columns):
                return [f"{path.name}: pixel array {shape} does not match Rows x Columns"]
            return []
        doc = bytes(ds.EncapsulatedDocument)
    except Exception as exc:  # noqa: BLE001 - a validator reports any parser failure as the finding itself
        return [f"pydicom cannot re-read {path.name}: {type(exc).__name__}: {exc}"]
    if not doc.startswith(b"%PDF") or len(doc) - int(ds.EncapsulatedDocumentLength) not in (0, 1):
        return [f"{path.name}: encapsulated document is not a PDF of the stated length"]
    return []


def check_dsrdump(path: Path) -> list[str]:
    proc = _run(["dsrdump", "-v", str(path)])
    problems = [f"dsrdump: {line}" for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("E:")]
    if proc.returncode != 0 and not problems:
        problems.append(f"dsrdump exited with status {proc.returncode}")
    return problems


def check_dciodvfy(path: Path) -> list[str]:
    proc = _run(["dciodvfy", str(path)])
    lines = (proc.stdout + proc.stderr).splitlines()
    return [f"dciodvfy: {line.strip()}" for line in lines if "Error" in line and "99BCMETS" not in line]


def check_pixelmed(path: Path) -> list[str]:
    cmd = ["java", *JAVA_FLAGS, "-cp", str(PIXELMED_JAR), "com.pixelmed.validate.DicomSRValidator", str(path)]
    proc = _run(cmd)
    out = proc.stdout + proc.stderr
    problems = [f"pixelmed: {line}" for line in out.splitlines() if line.startswith("Error")]
    if "Root Template Validation Complete" not in out and not problems:
        problems.append(f"pixelmed did not complete template validation: {out.strip()[-300:]}")
    return problems


def check_tid1500reader(path: Path) -> list[str]:
    exe = _tid1500reader()
    if exe is None:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sr.json"
        proc = _run([exe, "--inputDICOM", str(path), "--outputMetadata", str(out)])
        if proc.returncode != 0 or not out.is_file():
            return [f"tid1500reader failed (status {proc.returncode}): {proc.stderr.strip()[-300:]}"]
        data = json.loads(out.read_text(encoding="utf-8"))
    if not data.get("Measurements"):
        return ["tid1500reader found no measurement groups"]
    return []


_CHECKS: dict[str, Callable[[Path], list[str]]] = {
    "dsrdump": check_dsrdump,
    "dciodvfy": check_dciodvfy,
    "pixelmed": check_pixelmed,
    "tid1500reader": check_tid1500reader,
}


class Validation:
    """Validate written files; the external tools of every file added run at once in the background (threads
    waiting on the tools' processes), the re-reads in this thread when :meth:`problems` is asked.

    Use as a context manager (the threads end on leaving it)::

        with Validation() as validation:
            validation.add_sr(sr_path)          # its tools start now
            ...                                 # write more objects meanwhile
            validation.add_object(sc_path)
            problems = validation.problems()    # every re-read, then every tool's findings, file by file
    """

    def __init__(self) -> None:
        self._tools = available_tools()
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL_TOOLS, thread_name_prefix="validate")
        self._files: list[tuple[Path, Callable[[Path], list[str]] | None, list[Future[list[str]]]]] = []

    def __enter__(self) -> Validation:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _add(self, path: Path, roundtrip: Callable[[Path], list[str]], checks: Sequence[str]) -> None:
        futures = []
        for name in checks:
            if name == "roundtrip":
                continue
            if not self._tools[name]:
                logger.info("validator %s not installed: skipped for %s", name, path.name)
                continue
            futures.append(self._pool.submit(_CHECKS[name], path))
        self._files.append((path, roundtrip if "roundtrip" in checks else None, futures))

    def add_sr(self, path: Path, checks: Sequence[str] = SR_CHECKS) -> None:
        """Start the SR's external checks (``roundtrip`` runs in :meth:`problems`)."""
        self._add(path, check_roundtrip_sr, checks)

    def add_object(self, path: Path, checks: Sequence[str] = OBJECT_CHECKS) -> None:
        """Start a Secondary Capture's or Encapsulated PDF's external checks."""
        self._add(path, check_roundtrip_object, checks)

    def problems(self) -> list[str]:
        """Every problem found, file by file in the order added: the re-read first, then each tool in check
        order (waits for the tools; an exception of a check is raised here)."""
        problems: list[str] = []
        for path, roundtrip, futures in self._files:
            if roundtrip is not None:
                problems += roundtrip(path)
            for future in futures:
                problems += future.result()
        return problems


def validate_sr(path: Path, checks: Sequence[str] = SR_CHECKS) -> list[str]:
    """Problems found in a written SR by the re-read and every installed validator (empty list: valid)."""
    with Validation() as validation:
        validation.add_sr(path, checks)
        return validation.problems()


def validate_object(path: Path, checks: Sequence[str] = OBJECT_CHECKS) -> list[str]:
    """Problems in a written Secondary Capture or Encapsulated PDF (re-read + dciodvfy)."""
    with Validation() as validation:
        validation.add_object(path, checks)
        return validation.problems()


FAST_SR_CHECKS: tuple[str, ...] = ("roundtrip", "dsrdump", "dciodvfy", "tid1500reader")
"""The checks cheap enough for every job (PixelMed takes 15-45 s per SR: CI and spot checks)."""


def write_results(
    content: ReportContent,
    directory: Path,
    companions: Sequence[Companion] = (Companion.SECONDARY_CAPTURE, Companion.PDF),
    sr_checks: Sequence[str] = FAST_SR_CHECKS,
) -> list[Path]:
    """Build, write, re-read and validate the SR and the configured companions; SR first in the returned list.

    The SR's external validators start as soon as it is written and run while the companions are rendered.
    Raises :class:`~node.errors.ProcessingError` (see :func:`require_valid`) when an object fails a check.
    """
    sr_path = write_instance(build_report(content), directory)
    with Validation() as validation:
        validation.add_sr(sr_path, sr_checks)
        paths = [sr_path, *write_companions(content, directory, companions)]
        for path in paths[1:]:
            validation.add_object(path)
        _raise_on(validation.problems(), sr_path)
    return paths


def require_valid(sr_path: Path, object_paths: Sequence[Path], sr_checks: Sequence[str] = FAST_SR_CHECKS) -> None:
    """Raise :class:`~node.errors.ProcessingError` naming the problems of any written object (nothing invalid
    should be sent to a PACS); the files stay where they are, for inspection."""
    with Validation() as validation:
        validation.add_sr(sr_path, sr_checks)
        for path in object_paths:
            validation.add_object(path)
        _raise_on(validation.problems(), sr_path)


def _raise_on(problems: list[str], sr_path: Path) -> None:
    if problems:
        raise ProcessingError(f"result objects in {sr_path.parent} failed validation: " + "; ".join(problems[:5]))
