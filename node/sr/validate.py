"""Re-read and validate written result objects (docs/sr-design.md §6). Each check returns a list of problems.

=================  ===========================================================================================
check              what it catches
=================  ===========================================================================================
``roundtrip``      pydicom re-read; for SRs highdicom ``srread`` and the TID 1411 groups parse (segment refs)
``dsrdump``        dcmtk ``dsrdump -v``: SR encoding and relationship constraints (``E:`` lines, exit status)
``dciodvfy``       dicom3tools: IOD / module / attribute errors (``Error`` lines; 99BCMETS "unrecognized" dropped)
``pixelmed``       PixelMed ``DicomSRValidator``: SR *templates* (TID 1500/1411/300; ``Error:`` lines)
``tid1500reader``  dcmqi (3D Slicer's parser) reads the TID 1500 tree
=================  ===========================================================================================

A check whose tool is not installed is skipped (see :func:`available_tools`); callers that require a tool ask
:func:`available_tools` first. Research use only, not for diagnosis.
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
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

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


def check_roundtrip_sr(path: Path) -> list[str]:
    """highdicom ``srread`` and the parsed content: every TID 1411 group references a SEG segment."""
    try:
        report: Any = hd.sr.srread(path).content  # a MeasurementReport for TID 1500 documents
        groups = report.get_volumetric_roi_measurement_groups(reference_type=codes.DCM.ReferencedSegment)
    except Exception as exc:  # noqa: BLE001 - a validator reports any parser failure as the finding itself
        return [f"highdicom srread failed: {type(exc).__name__}: {exc}"]
    problems = []
    for g in groups:
        if not g.tracking_uid:
            problems.append("a measurement group has no Tracking Unique Identifier")
        if not g.referenced_segment:
            problems.append(f"group {g.tracking_uid} does not reference a segment")
    return problems


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


def _validate(path: Path, roundtrip: Callable[[Path], list[str]], checks: Sequence[str]) -> list[str]:
    tools = available_tools()
    problems = roundtrip(path) if "roundtrip" in checks else []
    for name in checks:
        if name == "roundtrip":
            continue
        if not tools[name]:
            logger.info("validator %s not installed: skipped for %s", name, path.name)
            continue
        problems += _CHECKS[name](path)
    return problems


def validate_sr(path: Path, checks: Sequence[str] = SR_CHECKS) -> list[str]:
    """Problems found in a written SR by the re-read and every installed validator (empty list: valid)."""
    return _validate(path, check_roundtrip_sr, checks)


def validate_object(path: Path, checks: Sequence[str] = OBJECT_CHECKS) -> list[str]:
    """Problems in a written Secondary Capture or Encapsulated PDF (re-read + dciodvfy)."""
    return _validate(path, check_roundtrip_object, checks)


FAST_SR_CHECKS: tuple[str, ...] = ("roundtrip", "dsrdump", "dciodvfy", "tid1500reader")
"""The checks cheap enough for every job (PixelMed takes 15-45 s per SR: CI and spot checks)."""


def write_results(
    content: ReportContent,
    directory: Path,
    companions: Sequence[Companion] = (Companion.SECONDARY_CAPTURE, Companion.PDF),
    sr_checks: Sequence[str] = FAST_SR_CHECKS,
) -> list[Path]:
    """Build, write, re-read and validate the SR and the configured companions; SR first in the returned list.

    Raises :class:`~node.errors.ProcessingError` (see :func:`require_valid`) when an object fails a check.
    """
    sr_path = write_instance(build_report(content), directory)
    paths = [sr_path, *write_companions(content, directory, companions)]
    require_valid(sr_path, paths[1:], sr_checks)
    return paths


def require_valid(sr_path: Path, object_paths: Sequence[Path], sr_checks: Sequence[str] = FAST_SR_CHECKS) -> None:
    """Raise :class:`~node.errors.ProcessingError` naming the problems of any written object (nothing invalid
    should be sent to a PACS); the files stay where they are, for inspection."""
    problems = validate_sr(sr_path, sr_checks)
    for path in object_paths:
        problems += validate_object(path)
    if problems:
        raise ProcessingError(f"result objects in {sr_path.parent} failed validation: " + "; ".join(problems[:5]))
