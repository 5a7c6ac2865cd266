"""The one labelling function shared by training import, synthetic cohorts and evaluation.

Rules (docs/method.md §1.1): ER or PR is positive at **> 1 %** stained nuclei; HR+ = ER+ or PR+.
HER2+ = IHC 3+, or IHC 2+ with in-situ hybridisation (FISH/ISH/NGS) amplification; IHC 2+ without an ISH
result is *equivocal* and cannot be labelled. The four classes are HR+/HER2−, HR+/HER2+, HR−/HER2+ and TN
(HR−/HER2−). The HER2 three-tier grouping (study S3) is positive / low (IHC 1+, or 2+ not amplified) /
zero (IHC 0).
"""

from __future__ import annotations

import logging
import re

from node.errors import ConfigError
from node.vocabulary import Her2Tier, Subtype

logger = logging.getLogger(__name__)

RECEPTOR_POSITIVE_THRESHOLD_PERCENT = 1.0
"""ER/PR are positive strictly above this percentage of stained tumour nuclei."""

HER2_IHC_SCORES = (0, 1, 2, 3)


def receptor_positive(percent_stained: float) -> bool:
    """ER/PR status from the percentage of stained nuclei: positive strictly above 1 %."""
    if not 0.0 <= percent_stained <= 100.0:
        raise ValueError(f"receptor staining must be a percentage in 0..100, got {percent_stained}")
    return percent_stained > RECEPTOR_POSITIVE_THRESHOLD_PERCENT


def _check_ihc(ihc_score: int) -> None:
    if ihc_score not in HER2_IHC_SCORES:
        raise ValueError(f"HER2 IHC score must be 0, 1, 2 or 3 (for 0, 1+, 2+, 3+), got {ihc_score!r}")


def her2_status(ihc_score: int, ish_amplified: bool | None) -> bool:
    """HER2 positivity: IHC 3+, or IHC 2+ with ISH amplification.

    Raises ``ValueError`` for IHC 2+ without an ISH result (equivocal: the label is undetermined).
    """
    _check_ihc(ihc_score)
    if ihc_score == 3:
        return True
    if ihc_score == 2:
        if ish_amplified is None:
            raise ValueError("HER2 IHC 2+ is equivocal without an ISH/FISH result")
        return ish_amplified
    return False


def her2_three_tier(ihc_score: int, ish_amplified: bool | None) -> Her2Tier:
    """HER2 positive / low (IHC 1+, or 2+ not amplified) / zero (IHC 0)."""
    if her2_status(ihc_score, ish_amplified):
        return Her2Tier.POSITIVE
    return Her2Tier.ZERO if ihc_score == 0 else Her2Tier.LOW


def subtype_from_receptors(er_positive: bool, pr_positive: bool, her2_positive: bool) -> Subtype:
    """The four-class subtype from receptor statuses (HR+ = ER+ or PR+)."""
    hr_positive = er_positive or pr_positive
    if hr_positive:
        return Subtype.HR_POS_HER2_POS if her2_positive else Subtype.HR_POS_HER2_NEG
    return Subtype.HR_NEG_HER2_POS if her2_positive else Subtype.TN


def subtype_from_assays(
    er_percent: float, pr_percent: float, her2_ihc: int, her2_ish_amplified: bool | None
) -> Subtype:
    """The subtype straight from raw assay values (staining percentages, IHC score, ISH result)."""
    return subtype_from_receptors(
        receptor_positive(er_percent),
        receptor_positive(pr_percent),
        her2_status(her2_ihc, her2_ish_amplified),
    )


def normalise_subtype(value: str) -> str:
    """``"hr+/her2-"``, ``"HR+ / HER2-"``, ``"triple negative"`` -> the class name; ConfigError otherwise."""
    compact = re.sub(r"\s+", "", value).upper()
    if compact in ("TN", "TRIPLE-NEGATIVE", "TRIPLENEGATIVE"):
        return Subtype.TN.value
    for cls in Subtype:
        if compact == cls.value.upper():
            return cls.value
    raise ConfigError(f"unknown primary subtype {value!r}; expected one of {', '.join(s.value for s in Subtype)}")
