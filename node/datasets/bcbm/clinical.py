"""The BCBM-RadioGenomics clinical workbook: receptor status per scan, turned into per-lesion label rows.

Sheet ``Clinical+Genetics`` has one row per scan and exactly these columns (docs/method.md §3.1): ``ID`` (written
``"ID      "``, trailing spaces), ``Age``, ``Year``, ``Pixel Spacing``, ``Manufacturer``, ``Magnetic Field
Strength ID``, ``Sex``, ``ER``, ``PR``, ``HER2``. Headers are matched after stripping spaces. Receptor values
are ``'+'`` -> 1, ``'-'`` -> 0, blank -> missing; any other value is treated as missing and counted.

Labels are binary only and effectively patient-level: a patient's scans are merged, and a receptor whose
scans disagree is set missing for that patient (counted as a conflict). The 4-class subtype is derived with
:func:`node.labels.subtype_from_receptors` only when determinable: HER2 known, and HR+ (ER+ or PR+) or HR-
(ER- and PR-). ``primary_subtype``, ``her2_ihc``, ``her2_ish`` and ``her2_3tier`` stay blank: the workbook
has none of them. Whether the labels come from the primary tumour or the metastasis is not documented.
"""

from __future__ import annotations

import logging
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from node.datasets.bcbm.layout import DatasetLayoutError
from node.labels import subtype_from_receptors

logger = logging.getLogger(__name__)

SHEET = "Clinical+Genetics"
ID_COLUMN = "ID"
RECEPTORS: tuple[str, ...] = ("ER", "PR", "HER2")
FIELD_STRENGTH_COLUMN = "Magnetic Field Strength ID"
MANUFACTURER_COLUMN = "Manufacturer"
LABEL_COLUMNS: tuple[str, ...] = (
    "patient", "lesion", "site", "metastasis_subtype", "primary_subtype",
    "er", "pr", "her2", "her2_ihc", "her2_ish", "her2_3tier",
)  # fmt: skip


@dataclass(frozen=True)
class ScanClinical:
    """One workbook row: receptor status (True/False/None) and acquisition facts of a scan."""

    scan_id: str
    receptors: dict[str, bool | None]
    field_strength: str
    manufacturer: str


@dataclass
class ClinicalTable:
    """Rows by scan id, plus counts of what was odd in the workbook."""

    scans: dict[str, ScanClinical]
    unrecognised_values: Counter[str] = field(default_factory=Counter)
    duplicate_ids: int = 0


def _status(value: object, unrecognised: Counter[str]) -> bool | None:
    if value is None:
        return None
    text = str(value).strip()
    if text == "+":
        return True
    if text == "-":
        return False
    if text:
        unrecognised[text] += 1
    return None


def _field_strength(value: object) -> str:
    if value is None or str(value).strip() == "":
        return "unknown"
    text = str(value).strip().upper().removesuffix("T").strip()
    try:
        return f"{float(text):g}T"
    except ValueError:
        return text or "unknown"


def read_clinical(path: Path) -> ClinicalTable:
    """Read the ``Clinical+Genetics`` sheet; DatasetLayoutError when the file, sheet or columns are wrong."""
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    if not path.is_file():
        raise DatasetLayoutError(f"clinical workbook {path} not found")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, OSError, KeyError) as exc:
        raise DatasetLayoutError(f"clinical workbook {path} is not a readable .xlsx file: {exc}") from exc
    try:
        if SHEET not in book.sheetnames:
            raise DatasetLayoutError(
                f"clinical workbook {path.name} has no sheet {SHEET!r} (sheets: {', '.join(book.sheetnames)})"
            )
        rows = book[SHEET].iter_rows(values_only=True)
        header = next(rows, None) or ()
        columns = {str(h).strip(): i for i, h in enumerate(header) if h is not None}
        missing = [c for c in (ID_COLUMN, *RECEPTORS) if c not in columns]
        if missing:
            raise DatasetLayoutError(
                f"sheet {SHEET!r} of {path.name} lacks the column(s) {', '.join(missing)} "
                f"(found: {', '.join(columns)})"
            )
        table = ClinicalTable(scans={})
        for row in rows:
            cells = list(row) + [None] * (len(header) - len(row))
            scan_id = cells[columns[ID_COLUMN]]
            if scan_id is None or str(scan_id).strip() == "":
                continue
            scan_id = str(scan_id).strip()
            if scan_id in table.scans:
                table.duplicate_ids += 1
                logger.warning("clinical workbook: scan %s appears more than once; the first row is used", scan_id)
                continue
            receptors = {r: _status(cells[columns[r]], table.unrecognised_values) for r in RECEPTORS}
            fs = cells[columns[FIELD_STRENGTH_COLUMN]] if FIELD_STRENGTH_COLUMN in columns else None
            maker = cells[columns[MANUFACTURER_COLUMN]] if MANUFACTURER_COLUMN in columns else None
            table.scans[scan_id] = ScanClinical(scan_id, receptors, _field_strength(fs),
                                                str(maker).strip() if maker is not None else "")
    finally:
        book.close()
    if table.unrecognised_values:
        logger.warning("clinical workbook: receptor values other than '+', '-' or blank were left missing: %s",
                       dict(table.unrecognised_values))
    return table


@dataclass(frozen=True)
class PatientLabels:
    patient: str
    er: bool | None
    pr: bool | None
    her2: bool | None
    conflicts: tuple[str, ...] = ()

    @property
    def subtype(self) -> str | None:
        """The 4-class subtype when determinable (HER2 known; HR+ from ER+ or PR+, HR- needs ER- and PR-)."""
        if self.her2 is None:
            return None
        if self.er or self.pr:
            return subtype_from_receptors(bool(self.er), bool(self.pr), self.her2).value
        if self.er is False and self.pr is False:
            return subtype_from_receptors(False, False, self.her2).value
        return None


def patient_labels(patient: str, scans: Iterable[ScanClinical]) -> PatientLabels:
    """Merge a patient's scan rows; a receptor on which the scans disagree becomes missing."""
    merged: dict[str, bool | None] = {}
    conflicts: list[str] = []
    rows = list(scans)
    for receptor in RECEPTORS:
        values = {r.receptors[receptor] for r in rows} - {None}
        if len(values) > 1:
            conflicts.append(receptor)
            merged[receptor] = None
        else:
            merged[receptor] = next(iter(values), None)
    if conflicts:
        logger.warning("clinical workbook: a patient's scans disagree on %s; left missing", ", ".join(conflicts))
    return PatientLabels(patient, merged["ER"], merged["PR"], merged["HER2"], tuple(conflicts))


def _flag(value: bool | None) -> str:
    return "" if value is None else str(int(value))


def label_row(labels: PatientLabels, lesion: int, site: str) -> dict[str, str]:
    """One row of the node/learn labels table for one lesion of the patient."""
    return {
        "patient": labels.patient,
        "lesion": str(lesion),
        "site": site,
        "metastasis_subtype": labels.subtype or "",
        "primary_subtype": "",
        "er": _flag(labels.er),
        "pr": _flag(labels.pr),
        "her2": _flag(labels.her2),
        "her2_ihc": "",
        "her2_ish": "",
        "her2_3tier": "",
    }


def site_of(scan: ScanClinical | None) -> str:
    """The batch a scan belongs to: one institution, split by field strength (a known batch variable,
    docs/method.md §3.1)."""
    return f"bcbm-{scan.field_strength if scan is not None else 'unknown'}"


def all_patient_labels(patients: Iterable[str], scans_of: Mapping[str, list[str]],
                       table: ClinicalTable) -> dict[str, PatientLabels]:  # fmt: skip
    """Labels of every patient from the rows of its scans (scans without a workbook row contribute nothing)."""
    return {
        p: patient_labels(p, [table.scans[s] for s in scans_of.get(p, []) if s in table.scans]) for p in patients
    }
