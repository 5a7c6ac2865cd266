# mypy: disable-error-code="no-untyped-call"
"""config/series_rules.yaml: validation into frozen dataclasses and the matching helpers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.errors import ConfigError
from node.imaging.series_rules import (
    DEFAULT_RULES_PATH,
    SeriesRules,
    has_contrast_evidence,
    load_rules,
    segment_kind,
)


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _default_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_RULES_PATH.read_text(encoding="utf-8"))
    return data


def test_default_rules_load_and_are_frozen(series_rules: SeriesRules) -> None:
    assert series_rules.source == DEFAULT_RULES_PATH.resolve()
    assert "1.2.840.10008.5.1.4.1.1.4.1" in series_rules.mr_sop_classes
    assert series_rules.t1ce.contrast == "required"
    assert series_rules.segmentation.fractional_threshold == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        series_rules.t1ce = series_rules.t2  # type: ignore[misc]


def test_override_path(tmp_path: Path) -> None:
    data = _default_data()
    data["segmentation"]["fractional_threshold"] = 0.3
    rules = load_rules(_write(tmp_path, data))
    assert rules.segmentation.fractional_threshold == 0.3
    assert rules.source == (tmp_path / "rules.yaml").resolve()


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d["roles"]["t1ce"].update(contrast="maybe"), "roles.t1ce.contrast"),
        (lambda d: d["roles"]["t2"].update(descriptin_include=["t2"]), "roles.t2.descriptin_include"),
        (lambda d: d["roles"].pop("t2"), "roles.t2"),
        (lambda d: d["exclude"].update(description=["(unclosed"]), "exclude.description"),
        (lambda d: d["segmentation"]["lesion"].update(property_type=["14799000"]), "segmentation.lesion.property_type"),
        (lambda d: d["segmentation"].update(fractional_threshold=2), "segmentation.fractional_threshold"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d["contrast"].update(use_contrast_bolus_agent="yes"), "contrast.use_contrast_bolus_agent"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, mutate, key: str) -> None:
    data = _default_data()
    mutate(data)
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_rules(_write(tmp_path, data))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_rules(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("roles: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rules(bad)


@pytest.mark.parametrize(
    ("description", "agent", "expected"),
    [
        ("t1_mprage_sag_p2_iso +C", "", True),
        ("T1 MPRAGE KM", "", True),
        ("Sag 3D BRAVO +C", "", True),
        ("T1W_3D_TFE Gd", "", True),
        ("T1 Kontrastmittel Gehirn ü", "", True),
        ("T1 ΜΠ +C", "", True),
        ("T1 3D post", "", True),
        ("T1 3D", "Gadobutrol", True),
        ("T1 3D", "", None),
        ("T1 MPRAGE nativ", "", False),
        ("T1 pre-contrast", "Gadobutrol", False),
        ("T1 +C pre-op", "", True),
        ("Ax T2 FSE", "", None),
    ],
)
def test_contrast_evidence(series_rules: SeriesRules, description: str, agent: str, expected: bool | None) -> None:
    assert has_contrast_evidence(series_rules.contrast, description, agent) is expected


@pytest.mark.parametrize(
    ("label", "code", "expected"),
    [
        ("Lesion 1", ("SCT", "14799000"), "lesion"),
        ("Segment_1", ("SCT", "14799000"), "lesion"),
        ("Pons reference", ("SCT", "119238007"), "pons"),
        ("Pons", ("SCT", "85756007"), "pons"),
        ("Metastasis 2", ("SCT", "85756007"), "lesion"),
        ("Segment_1", ("SCT", "85756007"), None),
        ("Brain stem ref", None, "pons"),
    ],
)
def test_segment_kind(
    series_rules: SeriesRules, label: str, code: tuple[str, str] | None, expected: str | None
) -> None:
    assert segment_kind(series_rules.segmentation, label, code) == expected
