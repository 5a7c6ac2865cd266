"""The shared labelling rules (docs/method.md §1.1) on hand-made cases."""

from __future__ import annotations

import pytest

from node.labels import her2_status, her2_three_tier, receptor_positive, subtype_from_assays, subtype_from_receptors
from node.vocabulary import Her2Tier, Subtype


@pytest.mark.parametrize(
    ("percent", "positive"), [(0.0, False), (0.5, False), (1.0, False), (1.01, True), (2.0, True), (90.0, True)]
)
def test_receptor_positive_strictly_above_one_percent(percent: float, positive: bool) -> None:
    assert receptor_positive(percent) is positive


def test_receptor_percent_out_of_range() -> None:
    with pytest.raises(ValueError):
        receptor_positive(120.0)


@pytest.mark.parametrize(
    ("ihc", "ish", "positive", "tier"),
    [
        (3, None, True, "positive"),
        (3, False, True, "positive"),
        (2, True, True, "positive"),
        (2, False, False, "low"),
        (1, None, False, "low"),
        (1, False, False, "low"),
        (0, None, False, "zero"),
    ],
)
def test_her2_status_and_tier(ihc: int, ish: bool | None, positive: bool, tier: str) -> None:
    assert her2_status(ihc, ish) is positive
    assert her2_three_tier(ihc, ish) == tier
    assert isinstance(her2_three_tier(ihc, ish), Her2Tier)


def test_her2_equivocal_without_ish() -> None:
    with pytest.raises(ValueError, match="equivocal"):
        her2_status(2, None)
    with pytest.raises(ValueError, match="equivocal"):
        her2_three_tier(2, None)


def test_her2_invalid_score() -> None:
    with pytest.raises(ValueError):
        her2_status(4, None)


@pytest.mark.parametrize(
    ("er", "pr", "her2", "expected"),
    [
        (True, False, False, "HR+/HER2-"),
        (False, True, False, "HR+/HER2-"),
        (True, True, True, "HR+/HER2+"),
        (False, True, True, "HR+/HER2+"),
        (False, False, True, "HR-/HER2+"),
        (False, False, False, "TN"),
    ],
)
def test_subtype_from_receptors(er: bool, pr: bool, her2: bool, expected: str) -> None:
    assert subtype_from_receptors(er, pr, her2) == expected
    assert subtype_from_receptors(er, pr, her2) is Subtype(expected)


def test_subtype_from_assays_boundaries() -> None:
    # ER exactly 1 % is negative; HER2 2+ amplified is positive -> HR-/HER2+
    assert subtype_from_assays(1.0, 0.0, 2, True) is Subtype.HR_NEG_HER2_POS
    # ER 5 %, HER2 2+ not amplified (HER2-low) -> HR+/HER2-
    assert subtype_from_assays(5.0, 0.0, 2, False) is Subtype.HR_POS_HER2_NEG
    assert subtype_from_assays(0.0, 1.0, 0, None) is Subtype.TN
