"""Do the heads of one lesion tell the same story? Subtype vs ER / PR / HER2 / HER2 three-tier.

The subtype is defined by the receptors (HR+ = ER+ or PR+; HER2+ = HER2 positive), but the heads are separate
models and may contradict each other. Each contradiction is reported (coded and as text in the SR, in words on
the companion) rather than resolved: the reader must know that the model is unsure of the story.

Rules (only heads that were run are compared):

* subtype hormone-receptor negative (HR-/HER2+, TN) but ER positive, or PR positive;
* subtype hormone-receptor positive (HR+/HER2-, HR+/HER2+) but ER and PR both negative (both heads run);
* subtype HER2 positive (HR+/HER2+, HR-/HER2+) but HER2 negative, or HER2 negative (HR+/HER2-, TN) but HER2
  positive (binary head);
* HER2 three-tier "positive" against a HER2-negative subtype or binary head, "zero"/"low" against a
  HER2-positive one.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.sr.content import LesionResult

HR_POSITIVE_SUBTYPES = frozenset({"HR+/HER2-", "HR+/HER2+"})
HER2_POSITIVE_SUBTYPES = frozenset({"HR+/HER2+", "HR-/HER2+"})


@dataclass(frozen=True)
class Disagreement:
    """Two heads that contradict each other, and a sentence saying how."""

    heads: tuple[str, str]
    text: str


def check_heads(lesion: LesionResult) -> tuple[Disagreement, ...]:
    """Every contradiction between the lesion's heads (empty: consistent)."""
    out: list[Disagreement] = []
    subtype = lesion.subtype.label
    hr_pos = subtype in HR_POSITIVE_SUBTYPES
    her2_pos = subtype in HER2_POSITIVE_SUBTYPES
    er, pr, her2, tier = lesion.er, lesion.pr, lesion.her2, lesion.her2_tier
    for head, name in ((er, "ER"), (pr, "PR")):
        if head is not None and not hr_pos and head.label == "positive":
            out.append(Disagreement(("subtype", head.task),
                                    f"subtype {subtype} is hormone-receptor negative but {name} is predicted positive"))
    if hr_pos and er is not None and pr is not None and er.label == "negative" and pr.label == "negative":
        out.append(Disagreement(("subtype", "er"),
                                f"subtype {subtype} is hormone-receptor positive but ER and PR are both predicted "
                                "negative"))
    if her2 is not None and her2_pos != (her2.label == "positive"):
        out.append(Disagreement(("subtype", "her2"),
                                f"subtype {subtype} is HER2 {'positive' if her2_pos else 'negative'} but the HER2 "
                                f"head predicts HER2 {her2.label}"))
    if tier is not None:
        tier_pos = tier.label == "positive"
        if tier_pos != her2_pos:
            out.append(Disagreement(("subtype", "her2-3tier"),
                                    f"subtype {subtype} is HER2 {'positive' if her2_pos else 'negative'} but the "
                                    f"experimental HER2 three-tier head predicts HER2-{tier.label}"))
        if her2 is not None and tier_pos != (her2.label == "positive"):
            out.append(Disagreement(("her2", "her2-3tier"),
                                    f"the HER2 head predicts {her2.label} but the experimental HER2 three-tier head "
                                    f"predicts HER2-{tier.label}"))
    return tuple(out)
