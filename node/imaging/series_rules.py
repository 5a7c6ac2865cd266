"""Configurable rules that recognise the T1CE, T2 and SEG series of a study (``config/series_rules.yaml``).

The YAML file is validated into frozen dataclasses; a bad or missing key raises :class:`ConfigError` naming it.
The matching helpers here are pure functions of a few header values, so they are easy to test on their own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from node.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_RULES_PATH = Path(__file__).resolve().parents[2] / "config" / "series_rules.yaml"

ContrastPolicy = Literal["required", "forbidden", "any"]
UnrecognisedPolicy = Literal["lesion", "ignore", "error"]
ROLE_NAMES = ("t1ce", "t2")


@dataclass(frozen=True)
class RoleRules:
    """How one image role (T1CE or T2) is recognised."""

    name: str
    description_include: tuple[re.Pattern[str], ...]
    description_exclude: tuple[re.Pattern[str], ...]
    contrast: ContrastPolicy
    require: Mapping[str, tuple[str, ...]]
    prefer: Mapping[str, tuple[str, ...]]
    accept_unconfirmed_if_referenced: bool


@dataclass(frozen=True)
class ContrastRules:
    """Evidence that a series was acquired after contrast injection."""

    use_contrast_bolus_agent: bool
    description_positive: tuple[re.Pattern[str], ...]
    description_negative: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class SegmentKindRules:
    """Labels and SegmentedPropertyType codes ("SCT:14799000") of one kind of segment."""

    label: tuple[re.Pattern[str], ...]
    property_type: frozenset[tuple[str, str]]


@dataclass(frozen=True)
class SegmentationRules:
    prefer_referenced_series: bool
    fractional_threshold: float
    unrecognised: UnrecognisedPolicy
    lesion: SegmentKindRules
    pons: SegmentKindRules


@dataclass(frozen=True)
class SeriesRules:
    """The validated content of ``series_rules.yaml``."""

    source: Path
    mr_sop_classes: frozenset[str]
    seg_sop_classes: frozenset[str]
    exclude_image_types: frozenset[str]
    exclude_descriptions: tuple[re.Pattern[str], ...]
    contrast: ContrastRules
    t1ce: RoleRules
    t2: RoleRules
    segmentation: SegmentationRules
    #: Two series equally good for a role: ``fail`` (refuse, the reason is shown at once) or ``latest`` (the one
    #: with the highest SeriesNumber — a re-acquired sequence — then the one with more instances).
    tie_break: Literal["fail", "latest"] = "fail"


# ---------------------------------------------------------------------------------------------------------
# matching helpers


def matches_any(patterns: Sequence[re.Pattern[str]], text: str) -> bool:
    """True when any pattern is found anywhere in ``text``."""
    return any(p.search(text) for p in patterns)


def has_contrast_evidence(rules: ContrastRules, description: str, contrast_agent: str) -> bool | None:
    """True (post-contrast), False (explicitly pre-contrast / native) or None (no evidence either way)."""
    if matches_any(rules.description_negative, description):
        return False
    if rules.use_contrast_bolus_agent and contrast_agent.strip():
        return True
    if matches_any(rules.description_positive, description):
        return True
    return None


def attribute_matches(values: Sequence[str], accepted: Sequence[str]) -> bool:
    """Any (upper-cased) value of a possibly multi-valued attribute is among ``accepted``."""
    wanted = {a.upper() for a in accepted}
    return any(v.strip().upper() in wanted for v in values)


def segment_kind(
    rules: SegmentationRules, label: str, property_type: tuple[str, str] | None
) -> Literal["lesion", "pons"] | None:
    """Classify a segment by its SegmentedPropertyType code first, then by its label; None = unrecognised."""
    if property_type is not None:
        if property_type in rules.pons.property_type:
            return "pons"
        if property_type in rules.lesion.property_type:
            return "lesion"
    if matches_any(rules.pons.label, label):
        return "pons"
    if matches_any(rules.lesion.label, label):
        return "lesion"
    return None


# ---------------------------------------------------------------------------------------------------------
# loading and validation


class _Reader:
    """Typed access to the parsed YAML that names the offending key in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"series rules {self.path}: key '{key}' {problem}")

    def mapping(self, parent: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> dict[str, Any]:
        full = f"{where}.{key}" if where else key
        if key not in parent:
            if optional:
                return {}
            raise self.fail(full, "is missing")
        value = parent[key]
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise self.fail(full, f"must be a mapping, got {type(value).__name__}")
        return value

    def strings(self, parent: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> tuple[str, ...]:
        full = f"{where}.{key}" if where else key
        if key not in parent:
            if optional:
                return ()
            raise self.fail(full, "is missing")
        value = parent[key]
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
            raise self.fail(full, "must be a list of strings")
        return tuple(str(v) for v in value)

    def patterns(self, parent: Mapping[str, Any], key: str, where: str) -> tuple[re.Pattern[str], ...]:
        compiled = []
        for text in self.strings(parent, key, where):
            try:
                compiled.append(re.compile(text, re.IGNORECASE))
            except re.error as exc:
                raise self.fail(f"{where}.{key}", f"has an invalid regular expression {text!r}: {exc}") from exc
        return tuple(compiled)

    def boolean(self, parent: Mapping[str, Any], key: str, where: str, default: bool | None = None) -> bool:
        full = f"{where}.{key}"
        if key not in parent and default is not None:
            return default
        value = parent.get(key)
        if not isinstance(value, bool):
            raise self.fail(full, "must be true or false")
        return value

    def choice(self, parent: Mapping[str, Any], key: str, where: str, allowed: Sequence[str], default: str) -> str:
        value = parent.get(key, default)
        if value not in allowed:
            raise self.fail(f"{where}.{key}", f"must be one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    def attribute_map(self, parent: Mapping[str, Any], key: str, where: str) -> dict[str, tuple[str, ...]]:
        raw = self.mapping(parent, key, where, optional=True)
        return {str(name): self.strings(raw, name, f"{where}.{key}") for name in raw}

    def codes(self, parent: Mapping[str, Any], key: str, where: str) -> frozenset[tuple[str, str]]:
        out = set()
        for text in self.strings(parent, key, where, optional=True):
            scheme, sep, value = text.partition(":")
            if not sep or not scheme.strip() or not value.strip():
                raise self.fail(f"{where}.{key}", f"entries must look like 'SCT:14799000', got {text!r}")
            out.add((scheme.strip().upper(), value.strip()))
        return frozenset(out)

    def check_keys(self, parent: Mapping[str, Any], where: str, allowed: Sequence[str]) -> None:
        for key in parent:
            if key not in allowed:
                raise self.fail(f"{where}.{key}" if where else str(key), f"is not a known key ({', '.join(allowed)})")


def _role(reader: _Reader, roles: Mapping[str, Any], name: str) -> RoleRules:
    raw = reader.mapping(roles, name, "roles")
    where = f"roles.{name}"
    reader.check_keys(
        raw,
        where,
        ("description_include", "description_exclude", "contrast", "require", "prefer",
         "accept_unconfirmed_if_referenced"),
    )
    contrast = reader.choice(raw, "contrast", where, ("required", "forbidden", "any"), "any")
    return RoleRules(
        name=name,
        description_include=reader.patterns(raw, "description_include", where),
        description_exclude=reader.patterns(raw, "description_exclude", where) if "description_exclude" in raw else (),
        contrast=contrast,  # type: ignore[arg-type]
        require=reader.attribute_map(raw, "require", where),
        prefer=reader.attribute_map(raw, "prefer", where),
        accept_unconfirmed_if_referenced=reader.boolean(raw, "accept_unconfirmed_if_referenced", where, False),
    )


def _segment_kind_rules(reader: _Reader, parent: Mapping[str, Any], key: str) -> SegmentKindRules:
    raw = reader.mapping(parent, key, "segmentation")
    where = f"segmentation.{key}"
    reader.check_keys(raw, where, ("label", "property_type"))
    return SegmentKindRules(
        label=reader.patterns(raw, "label", where), property_type=reader.codes(raw, "property_type", where)
    )


def parse_rules(data: Any, source: Path) -> SeriesRules:
    """Validate parsed YAML into :class:`SeriesRules` (raises :class:`ConfigError` naming the bad key)."""
    reader = _Reader(source)
    if not isinstance(data, dict):
        raise ConfigError(f"series rules {source}: the file must hold a mapping at top level")
    reader.check_keys(data, "", ("version", "sop_classes", "exclude", "contrast", "roles", "segmentation", "tie_break"))
    if data.get("version") != 1:
        raise reader.fail("version", f"must be 1, got {data.get('version')!r}")
    sop = reader.mapping(data, "sop_classes", "")
    reader.check_keys(sop, "sop_classes", ("mr", "seg"))
    exclude = reader.mapping(data, "exclude", "", optional=True)
    reader.check_keys(exclude, "exclude", ("image_type", "description"))
    contrast = reader.mapping(data, "contrast", "")
    reader.check_keys(
        contrast, "contrast", ("use_contrast_bolus_agent", "description_positive", "description_negative")
    )
    tie_break = reader.choice(data, "tie_break", "top level", ("fail", "latest"), "fail")
    roles = reader.mapping(data, "roles", "")
    reader.check_keys(roles, "roles", ROLE_NAMES)
    seg = reader.mapping(data, "segmentation", "")
    reader.check_keys(
        seg, "segmentation", ("prefer_referenced_series", "fractional_threshold", "unrecognised", "lesion", "pons")
    )
    threshold = seg.get("fractional_threshold", 0.5)
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0.0 < float(threshold) <= 1.0:
        raise reader.fail("segmentation.fractional_threshold", f"must be a number in (0, 1], got {threshold!r}")
    mr_classes = frozenset(reader.strings(sop, "mr", "sop_classes"))
    seg_classes = frozenset(reader.strings(sop, "seg", "sop_classes"))
    if not mr_classes:
        raise reader.fail("sop_classes.mr", "must list at least one SOP Class UID")
    if not seg_classes:
        raise reader.fail("sop_classes.seg", "must list at least one SOP Class UID")
    return SeriesRules(
        source=source,
        mr_sop_classes=mr_classes,
        seg_sop_classes=seg_classes,
        exclude_image_types=frozenset(
            v.upper() for v in reader.strings(exclude, "image_type", "exclude", optional=True)
        ),
        exclude_descriptions=reader.patterns(exclude, "description", "exclude") if "description" in exclude else (),
        contrast=ContrastRules(
            use_contrast_bolus_agent=reader.boolean(contrast, "use_contrast_bolus_agent", "contrast", True),
            description_positive=reader.patterns(contrast, "description_positive", "contrast"),
            description_negative=reader.patterns(contrast, "description_negative", "contrast"),
        ),
        t1ce=_role(reader, roles, "t1ce"),
        t2=_role(reader, roles, "t2"),
        segmentation=SegmentationRules(
            prefer_referenced_series=reader.boolean(seg, "prefer_referenced_series", "segmentation", True),
            fractional_threshold=float(threshold),
            unrecognised=reader.choice(  # type: ignore[arg-type]
                seg, "unrecognised", "segmentation", ("lesion", "ignore", "error"), "lesion"
            ),
            lesion=_segment_kind_rules(reader, seg, "lesion"),
            pons=_segment_kind_rules(reader, seg, "pons"),
        ),
        tie_break=tie_break,  # type: ignore[arg-type]
    )


def load_rules(path: Path | None = None) -> SeriesRules:
    """Load and validate the series rules from ``path`` (an override) or ``config/series_rules.yaml``.

    The default is the file of this repository checkout (``Path(__file__).parents[2] / "config"``), else
    ``./config/series_rules.yaml`` of the working directory.
    """
    if path is None:
        # repository checkout first; an installed package falls back to ./config of the working directory
        cwd_rules = Path.cwd() / "config" / "series_rules.yaml"
        path = DEFAULT_RULES_PATH if DEFAULT_RULES_PATH.is_file() or not cwd_rules.is_file() else cwd_rules
    source = path.resolve()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"series rules file {source} cannot be read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"series rules file {source} is not valid YAML: {exc}") from exc
    rules = parse_rules(data, source)
    logger.debug("loaded series rules from %s", source)
    return rules
