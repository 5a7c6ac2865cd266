"""Checks that text (logs, command output) holds none of the synthetic patients' identifiers.

``patient_identifiers(folder)`` reads the identifiers from the DICOM files a test generated (``ainode synth``,
:func:`node.synth.generate.generate_cohort`, or any other DICOM folder): patient name and ID, birth date,
accession number, other patient IDs / names. ``assert_no_phi(text, identifiers)`` fails, naming the identifier and
quoting the line, when any of them or one of its variants appears:

* every identifier case-insensitively, as a whole token (not preceded or followed by a letter or digit, so the
  ID ``123`` is not found in ``41234``);
* a person name (``Family^Given^Middle^Prefix^Suffix``) also with ``^`` written as a space or ``", "``, given name
  first, and each component of at least :data:`MIN_NAME_PART` characters on its own (so ``Case0000`` in
  ``Synthetic^Case0000`` is caught in ``.../case0000/...``);
* a DA birth date ``YYYYMMDD`` also as ``YYYY-MM-DD`` and ``YYYY/MM/DD``.

``allowed_words`` exempts name components that are ordinary words of the output (the synthetic family name
``Synthetic`` is also the manufacturer "Synthetic Segmentation Lab" and the demo's "Synthetic ground truth");
the full names and the other components stay checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

MIN_NAME_PART = 3
#: Header attributes that identify the patient (values collected by :func:`patient_identifiers`).
PATIENT_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs", "OtherPatientNames",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator",
)  # fmt: skip
_PERSON_NAMES = {"PatientName", "OtherPatientNames", "PatientMotherBirthName"}


@dataclass(frozen=True)
class Identifier:
    """One identifying value and the attribute it came from (``PatientName`` values are person names)."""

    value: str
    attribute: str = "PatientID"

    @property
    def is_person_name(self) -> bool:
        return self.attribute in _PERSON_NAMES or "^" in self.value


@dataclass(frozen=True)
class PhiHit:
    identifier: Identifier
    variant: str
    line: str


def _values(element_value: object) -> list[str]:
    if element_value is None:
        return []
    if isinstance(element_value, list | tuple | pydicom.multival.MultiValue):
        return [str(v).strip() for v in element_value if str(v).strip()]
    text = str(element_value).strip()
    return [text] if text else []


def patient_identifiers(folder: Path) -> list[Identifier]:
    """The patient-identifying values of every DICOM file under ``folder`` (headers only), deduplicated."""
    found: dict[tuple[str, str], Identifier] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(PATIENT_ATTRIBUTES))
        except (InvalidDicomError, OSError, ValueError):
            continue
        for attribute in PATIENT_ATTRIBUTES:
            for value in _values(ds.get(attribute)):
                found.setdefault((attribute, value), Identifier(value, attribute))
    if not found:
        raise AssertionError(f"no patient identifiers found under {folder}: not a DICOM folder?")
    return list(found.values())


def variants(identifier: Identifier | str) -> list[tuple[str, bool]]:
    """(text, is_name_component) pairs searched for one identifier; see the module docstring."""
    ident = identifier if isinstance(identifier, Identifier) else Identifier(identifier)
    value = ident.value
    out: list[tuple[str, bool]] = [(value, False)]
    if ident.is_person_name:
        parts = [p.strip() for p in value.split("^")]
        named = [p for p in parts if p]
        out += [(" ".join(named), False), (", ".join(named), False)]
        if len(named) >= 2:
            out.append((" ".join([*named[1:], named[0]]), False))
        out += [(p, True) for p in named if len(p) >= MIN_NAME_PART]
    if ident.attribute == "PatientBirthDate" and re.fullmatch(r"\d{8}", value):
        out += [(f"{value[:4]}-{value[4:6]}-{value[6:]}", False), (f"{value[:4]}/{value[4:6]}/{value[6:]}", False)]
    return list(dict.fromkeys(v for v in out if v[0]))


def find_phi(
    text: str, identifiers: Iterable[Identifier | str], *, allowed_words: Iterable[str] = ()
) -> list[PhiHit]:
    """Every occurrence of an identifier variant in ``text`` (one hit per identifier variant and line)."""
    allowed = {w.lower() for w in allowed_words}
    hits: list[PhiHit] = []
    lines = text.splitlines()
    for item in identifiers:
        ident = item if isinstance(item, Identifier) else Identifier(item)
        for variant, component in variants(ident):
            if component and variant.lower() in allowed:
                continue
            body = re.escape(variant)
            pattern = re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", re.IGNORECASE)
            hits += [PhiHit(ident, variant, line) for line in lines if pattern.search(line)]
    return hits


def assert_no_phi(text: str, identifiers: Iterable[Identifier | str], *, allowed_words: Iterable[str] = ()) -> None:
    """Fail with the offending lines when ``text`` holds any identifier (or variant) in ``identifiers``."""
    items = list(identifiers)
    assert items, "no identifiers to look for: the check would pass vacuously"
    hits = find_phi(text, items, allowed_words=allowed_words)
    if hits:
        shown = "\n".join(f"  {h.identifier.attribute} {h.variant!r}: {h.line[:300]}" for h in hits[:20])
        raise AssertionError(f"{len(hits)} patient identifier occurrence(s) in the output:\n{shown}")
