"""The primary-tumour subtype a study's subtype model uses, and where it came from (a step of :mod:`node.jobs.steps`).

In order: the subtype given to :func:`node.jobs.process.process_study` (``ainode analyse --primary-subtype``); the
entry set beforehand with ``ainode primary``, asked through a :data:`PrimaryLookup` (the job layer passes the
ledger's); the subtype the study's headers state (:func:`primary_subtype_from_headers`, in the header attributes
the caller configured: :data:`DEFAULT_PRIMARY_ATTRIBUTES` unless the settings name others).
Nothing here reads the environment: the attributes come in as a parameter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from node.config import Settings
from node.errors import ConfigError
from node.labels import normalise_subtype
from node.sr.source import SourceStudy

logger = logging.getLogger(__name__)

#: Header attributes searched for the primary-tumour subtype, in order. The value must contain
#: "primary subtype: <class>", e.g. "primary subtype: HR+/HER2-" (case-insensitive; "primary-subtype", "=" also
#: accepted).
#: The setting ``primary_subtype_attributes`` (``AINODE_PRIMARY_SUBTYPE_ATTRIBUTES``) overrides them.
DEFAULT_PRIMARY_ATTRIBUTES: tuple[str, ...] = Settings.primary_subtype_attributes
_PRIMARY_PATTERN = re.compile(r"primary[ _-]*subtype\s*[:=]\s*(HR\s*[+-]\s*/\s*HER2\s*[+-]|TN|triple[ -]negative)",
                              re.IGNORECASE)

#: ``(study UID, accession number, patient ID) -> (subtype, source) | None``: entries set beforehand.
PrimaryLookup = Callable[[str, str | None, str | None], tuple[str, str] | None]


def check_primary_attributes(names: Iterable[str], *, source: str = "primary_attributes") -> tuple[str, ...]:
    """``names`` as a tuple when each is a DICOM keyword; :class:`ConfigError` naming ``source`` otherwise."""
    names = tuple(names)
    unknown = [n for n in names if pydicom.datadict.tag_for_keyword(n) is None]
    if unknown:
        raise ConfigError(f"{source} names unknown DICOM keyword(s): {', '.join(unknown)}")
    return names


def primary_subtype_from_headers(
    datasets: Iterable[Dataset], attributes: Sequence[str] = DEFAULT_PRIMARY_ATTRIBUTES
) -> tuple[str | None, list[str]]:
    """The primary-tumour subtype stated in the headers, and warnings (conflicting statements -> ``None``)."""
    found: set[str] = set()
    for ds in datasets:
        for keyword in attributes:
            value = ds.get(keyword)
            if value is None or value == "":
                continue
            match = _PRIMARY_PATTERN.search(str(value))
            if match is not None:
                found.add(normalise_subtype(match.group(1)))
    if len(found) > 1:
        return None, [f"the study states conflicting primary subtypes ({', '.join(sorted(found))}); ignored"]
    return (found.pop() if found else None), []


@dataclass(frozen=True)
class PrimaryChoice:
    """The primary-tumour subtype for one study (``None``: unknown), where it came from, and warnings."""

    subtype: str | None
    source: str | None  # "given", the lookup's source, "the study's headers"; None when unknown
    warnings: tuple[str, ...] = ()


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value).strip() or None if value is not None else None


def choose_primary(
    source: SourceStudy,
    *,
    given: str | None = None,
    lookup: PrimaryLookup | None = None,
    attributes: Sequence[str] = DEFAULT_PRIMARY_ATTRIBUTES,
) -> PrimaryChoice:
    """The step: ``given`` (already normalised) > ``lookup(study UID, accession, patient ID)`` > the headers of the
    analysed T1CE (first instance) and SEG. A set value that differs from the headers' wins, with a warning."""
    first = source.t1ce[0]
    headers = [first, source.seg]
    primary, origin = given, ("given" if given is not None else None)
    if primary is None and lookup is not None:
        found = lookup(source.study_instance_uid, _text(first, "AccessionNumber"), _text(first, "PatientID"))
        if found is not None:
            primary, origin = normalise_subtype(found[0]), found[1]
    warnings: list[str] = []
    if primary is None:
        primary, notes = primary_subtype_from_headers(headers, attributes)
        warnings += notes
        origin = "the study's headers" if primary is not None else None
    else:
        stated, _ = primary_subtype_from_headers(headers, attributes)
        if stated is not None and stated != primary:
            warnings.append(f"the primary subtype {primary} ({origin}) differs from the one the study "
                            f"states ({stated}); {primary} was used")
    if primary is not None:
        logger.info("primary-tumour subtype %s from %s", primary, origin)
    return PrimaryChoice(primary, origin, tuple(warnings))
