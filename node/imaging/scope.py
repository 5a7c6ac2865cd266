"""Scope checks: does a segment, a lesion and the T1CE fit the population the method was built on?

The method (docs/method.md §1.1, §4) analysed one enhancing metastasis per patient on a 3D gradient-echo
contrast T1 with 1 mm slices at 1.5 or 3 T; its lesions had a median volume of ~8-15 mL. Each check here
returns a refusal (a :class:`~node.vocabulary.NotAssessedReason`: the lesion gets no prediction) or a warning
(carried into the SR); none is silent. The thresholds are the ``scope`` block of ``config/pipeline.yaml``
(:func:`load_scope_params`):

* **segment type**: a segment whose SegmentedPropertyType or label says oedema, necrosis, cyst, haemorrhage or
  cavity is not the enhancing lesion the models were trained on: refused (the type code wins over the label).
* **lesion volume**: below ``min_lesion_volume_ml`` refused; below ``warn_lesion_volume_ml`` a warning.
* **3D T1CE**: ``MRAcquisitionType`` 2D is a warning (``refuse_2d: true`` makes it a refusal).
* **slice thickness** of the T1CE: above ``warn_slice_thickness_mm`` a warning, above
  ``max_slice_thickness_mm`` refused (texture on thick slices is not what the models learnt).
* **field strength** where the header states it: outside ``field_strengths_t`` a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from pydicom.dataset import Dataset

from node.errors import ConfigError
from node.vocabulary import NotAssessedReason

DEFAULT_PIPELINE_PATH = Path(__file__).parents[2] / "config" / "pipeline.yaml"

#: SegmentedPropertyType codes (scheme:value) of tissues that are not the enhancing lesion
NON_LESION_TYPES: dict[str, NotAssessedReason] = {
    "SCT:79654002": NotAssessedReason.SEGMENT_OEDEMA,  # Edema
    "SCT:6574001": NotAssessedReason.SEGMENT_NECROSIS,  # Necrosis
    "SCT:367643001": NotAssessedReason.SEGMENT_CYST,  # Cyst
    "SCT:50960005": NotAssessedReason.SEGMENT_HAEMORRHAGE,  # Hemorrhage
    "SCT:1386000": NotAssessedReason.SEGMENT_HAEMORRHAGE,  # Intracranial hemorrhage
}
#: label patterns (case-insensitive, anywhere) of tissues that are not the enhancing lesion, checked in order
NON_LESION_LABELS: tuple[tuple[re.Pattern[str], NotAssessedReason], ...] = (
    (re.compile(r"o?edema|(?<![a-z0-9])ed(?![a-z0-9])|flair|peritumou?ral", re.I), NotAssessedReason.SEGMENT_OEDEMA),
    (re.compile(r"necro|(?<![a-z0-9])ncr(?![a-z0-9])", re.I), NotAssessedReason.SEGMENT_NECROSIS),
    (re.compile(r"cyst", re.I), NotAssessedReason.SEGMENT_CYST),
    (re.compile(r"ha?emorrh|h(a)?emat|bleed|blood", re.I), NotAssessedReason.SEGMENT_HAEMORRHAGE),
    (re.compile(r"cavity|resect", re.I), NotAssessedReason.SEGMENT_CAVITY),
)


@dataclass(frozen=True)
class ScopeParams:
    """The ``scope`` block of config/pipeline.yaml (defaults: the values shipped there)."""

    min_lesion_volume_ml: float = 0.1
    warn_lesion_volume_ml: float = 1.0
    warn_slice_thickness_mm: float = 1.5
    max_slice_thickness_mm: float = 3.0
    refuse_2d: bool = False
    field_strengths_t: tuple[float, ...] = (1.5, 3.0)
    field_strength_tolerance_t: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.min_lesion_volume_ml <= self.warn_lesion_volume_ml:
            raise ValueError("scope: need 0 <= min_lesion_volume_ml <= warn_lesion_volume_ml")
        if not 0 < self.warn_slice_thickness_mm <= self.max_slice_thickness_mm:
            raise ValueError("scope: need 0 < warn_slice_thickness_mm <= max_slice_thickness_mm")
        if self.field_strength_tolerance_t < 0 or any(t <= 0 for t in self.field_strengths_t):
            raise ValueError("scope: field strengths must be positive and the tolerance >= 0")


def scope_params_from_mapping(values: dict[str, Any], where: str = "scope") -> ScopeParams:
    """Build :class:`ScopeParams` from a mapping; unknown keys and bad values raise ConfigError."""
    names = {f.name for f in fields(ScopeParams)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    args: dict[str, Any] = {k: tuple(float(x) for x in v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return ScopeParams(**args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_scope_params(path: Path | None = None) -> ScopeParams:
    """Read the ``scope`` block of ``config/pipeline.yaml`` (or ``path``); defaults when the block is absent."""
    path = path or DEFAULT_PIPELINE_PATH
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the scope block of {path}: {exc}") from exc
    block = doc.get("scope") if isinstance(doc, dict) else None
    if block is None:
        return ScopeParams()
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: 'scope' must be a mapping")
    return scope_params_from_mapping(block, f"{path}: scope")


@dataclass(frozen=True)
class Finding:
    """One scope finding: a refusal (``reason`` set) or a warning (``reason`` None), with its text."""

    text: str
    reason: NotAssessedReason | None = None

    @property
    def refuses(self) -> bool:
        return self.reason is not None


def segment_type_finding(label: str, property_type: str | None) -> Finding | None:
    """Refusal for a segment that is oedema, necrosis, cyst, haemorrhage or a cavity (type code before label)."""
    if property_type is not None and property_type in NON_LESION_TYPES:
        reason = NON_LESION_TYPES[property_type]
        return Finding(f"its segmented property type ({property_type}) is {_tissue(reason)}, not the enhancing "
                       "lesion the models were trained on", reason)  # fmt: skip
    for pattern, reason in NON_LESION_LABELS:
        if pattern.search(label or ""):
            return Finding(f"its label '{label}' names {_tissue(reason)}, not the enhancing lesion the models were "
                           "trained on", reason)  # fmt: skip
    return None


def _tissue(reason: NotAssessedReason) -> str:
    return reason.value.removeprefix("segment-").replace("-", " ")


def volume_finding(volume_ml: float | None, params: ScopeParams) -> Finding | None:
    """Refusal below the minimum volume, warning below the warning band."""
    if volume_ml is None:
        return None
    if volume_ml < params.min_lesion_volume_ml:
        return Finding(f"its volume {volume_ml:.3f} mL is below the minimum of {params.min_lesion_volume_ml:g} mL "
                       "(the method's lesions: median ~8-15 mL)", NotAssessedReason.LESION_TOO_SMALL)  # fmt: skip
    if volume_ml < params.warn_lesion_volume_ml:
        return Finding(f"its volume {volume_ml:.2f} mL is below {params.warn_lesion_volume_ml:g} mL: few voxels for "
                       "the texture features, a less reliable prediction")  # fmt: skip
    return None


def _first(ds: Dataset, keyword: str, macro: str) -> Any:
    """A header value at the top level, else in the shared functional groups' ``macro`` (Enhanced MR)."""
    if keyword in ds and ds.get(keyword) not in (None, ""):
        return ds.get(keyword)
    for group in ds.get("SharedFunctionalGroupsSequence", []):
        for item in group.get(macro, []):
            if keyword in item and item.get(keyword) not in (None, ""):
                return item.get(keyword)
    for group in ds.get("PerFrameFunctionalGroupsSequence", [])[:1]:
        for item in group.get(macro, []):
            if keyword in item and item.get(keyword) not in (None, ""):
                return item.get(keyword)
    return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def acquisition_findings(t1ce: Dataset, params: ScopeParams) -> list[Finding]:
    """Findings on the T1CE acquisition: 3D, slice thickness, field strength (from one T1CE header)."""
    out: list[Finding] = []
    acquisition = _first(t1ce, "MRAcquisitionType", "MRFOVGeometrySequence")
    if acquisition is not None and str(acquisition).upper() == "2D":
        text = "the T1CE is a 2D acquisition (the method used 3D gradient-echo contrast T1)"
        out.append(Finding(text, NotAssessedReason.NOT_3D if params.refuse_2d else None))
    thickness = _float(_first(t1ce, "SliceThickness", "PixelMeasuresSequence"))
    if thickness is not None:
        if thickness > params.max_slice_thickness_mm:
            out.append(Finding(f"the T1CE slice thickness {thickness:g} mm is above the limit of "
                               f"{params.max_slice_thickness_mm:g} mm (the method: 1 mm)",
                               NotAssessedReason.SLICE_TOO_THICK))  # fmt: skip
        elif thickness > params.warn_slice_thickness_mm:
            out.append(Finding(f"the T1CE slice thickness {thickness:g} mm is above {params.warn_slice_thickness_mm:g} "
                               "mm (the method: 1 mm): texture features are less comparable"))  # fmt: skip
    field = _float(t1ce.get("MagneticFieldStrength"))
    if field is not None and not any(abs(field - t) <= params.field_strength_tolerance_t
                                     for t in params.field_strengths_t):  # fmt: skip
        known = " / ".join(f"{t:g} T" for t in params.field_strengths_t)
        out.append(Finding(f"the T1CE was acquired at {field:g} T; the method's scanners were {known}"))
    return out
