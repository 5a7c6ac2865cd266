"""Which BCBM-RadioGenomics masks are metastases: a rule table over the free-text mask names (docs/method.md §3.1).

The collection's masks are Gamma Knife plan structures named by hand (``Plan1_TgtA_220Gy80``, ``tumor``,
``met2``, ``Lt_frontal``, ``bs``, ``right_motor_strip``, ``cavity``...). Only metastases may become training
lesions, so every name is classified by the first matching rule of :data:`RULES`, in order:

====================  ===========  ==========================================================================
rule                  category     matches (on the normalised name: lower case, ``_`` between tokens)
====================  ===========  ==========================================================================
``override``          (per name)   exact names settled by hand (:data:`OVERRIDES`)
``cavity``            cavity       cavity, bed, resection, post-op: a treated surgical bed, not a tumour
``other-pathology``   other        aneurysm, AVM, angioma, meningioma, schwannoma...: not a metastasis
``treatment-target``  target       plan / tgt / target / ptv / gtv / a dose in Gy: a Gamma Knife target
``structure``         structure    organs at risk: brainstem, ``bs``, optic, chiasm, cochlea, ventricles...
``lesion-term``       lesion       tumor / tumour / tum / met / mets / metastasis / lesion / nodule
``numbered``          lesion       a bare number or a number first (``1``, ``2_left``)
``location``          lesion       a brain location (frontal, parietal, cerebellar, thalamic, ``lt_frntl``...)
``unknown``           unknown      nothing matched: left out and listed for review
====================  ===========  ==========================================================================

Categories ``lesion`` and ``target`` are lesions (a Gamma Knife target of this cohort is a treated
metastasis); ``structure``, ``cavity``, ``other`` and ``unknown`` are not. The komari6 curation keeps
"target" apart from "lesion"; here both count, and the per-category counts let a user see the difference.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Category = Literal["lesion", "target", "structure", "cavity", "other", "unknown"]
LESION_CATEGORIES: frozenset[str] = frozenset({"lesion", "target"})


@dataclass(frozen=True)
class Rule:
    """One row of the rule table: a regular expression over the normalised name."""

    name: str
    category: Category
    pattern: re.Pattern[str]


def _tokens(*words: str) -> str:
    """A pattern matching any of ``words`` as a whole token of the normalised name."""
    return r"(?:^|_)(?:" + "|".join(words) + r")(?:_|$)"


def _stems(*stems: str) -> str:
    """A pattern matching any of ``stems`` anywhere in the normalised name."""
    return "(?:" + "|".join(stems) + ")"


#: Exact normalised names decided by hand (ambiguous abbreviations seen in the collection; komari6 step 03).
OVERRIDES: dict[str, Category] = {
    "bs": "structure",
    "leftvent": "structure",
    "rlatvent": "structure",
    "rtlatcllum": "structure",
    "r_infpar": "structure",
    "r_hiccpocampus": "structure",
    "right_foramen_of_monro": "structure",
    "right_motor_strip": "structure",
    "left_motor_strip": "structure",
    "pineal_region": "lesion",
    "left_fp": "lesion",
}

_RULE_TABLE: tuple[tuple[str, Category, str], ...] = (
        ("cavity", "cavity", _stems("cavity", "resect", "postop", "post_op", "surg") + "|" + _tokens("bed", "rc")),
        ("other-pathology", "other", _stems("aneurysm", "angioma", "avm", "mening", "schwann", "neuroma",
                                            "trigem", "tn_", "adenoma", "glioma", "hemangio")),
        ("treatment-target", "target", _tokens(r"plan\d*", r"tgt\w*", "target", "ptv", "ctv", "gtv", r"\d*gy\d*")),
        ("structure", "structure", _stems("brainstem", "brain_stem", "brnstm", "optic", "chiasm", "cochlea",
                                          "hippocamp", "hiccpocamp", "motor_strip", "motorstrip", "monro",
                                          "pituitar", "callosum", "cllum", "medulla", "orbit", "globe",
                                          r"vent(?!ral)", "latvent")
         + "|" + _tokens("bs", "bst", "opt", "lens", "eye", "eyes", "on", "oc", "chi")),
        ("lesion-term", "lesion", _stems("tum", "metast", "lesion", "nodule", "enhanc")
         + "|" + _tokens(r"mets?\d*", r"les\d*", r"lsn\d*")),
        ("numbered", "lesion", r"^\d+(?:_|$)"),
        ("location", "lesion", _stems("front", "frntl", "fro", "pariet", "parie", "occ", "temp", "cereb", "cerb",
                                      "cbl", "crbl", "cbm", "thal", "caud", "ganglia", "basal", "capsul", "insul",
                                      "sylv", "pons", "pontine", "midbrain", "vermis", "tentor", "perivent",
                                      "paravent", "cortex", "cortical", "sup", "inf", "post", "ant", "med", "lat")),
)
RULES: tuple[Rule, ...] = tuple(Rule(name, category, re.compile(pattern)) for name, category, pattern in _RULE_TABLE)


@dataclass(frozen=True)
class MaskDecision:
    """How one mask name was classified."""

    name: str
    normalised: str
    category: Category
    rule: str

    @property
    def is_lesion(self) -> bool:
        return self.category in LESION_CATEGORIES


def normalise_name(name: str) -> str:
    """Lower-case tokens joined by ``_``: camel case, letter/digit boundaries and punctuation separate tokens.

    ``Plan1_TgtA_220Gy80`` -> ``plan_1_tgt_a_220_gy_80``; ``LeftVent`` -> ``left_vent``; ``met2`` -> ``met_2``.
    """
    spaced = re.sub(r"([a-z])([A-Z])", r"\1_\2", name.strip())
    spaced = re.sub(r"([A-Za-z])(\d)", r"\1_\2", spaced)
    spaced = re.sub(r"(\d)([A-Za-z])", r"\1_\2", spaced)
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", spaced.lower())).strip("_")


def _compact(name: str) -> str:
    """The name lower-cased with punctuation only replaced (``LeftVent`` -> ``leftvent``), for overrides."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", name.strip().lower())).strip("_")


def classify_mask_name(name: str) -> MaskDecision:
    """The category of one mask name (the part after ``_mask_`` in the file name)."""
    compact = _compact(name)
    normalised = normalise_name(name)
    if compact in OVERRIDES:
        return MaskDecision(name, normalised, OVERRIDES[compact], "override")
    for candidate in dict.fromkeys((normalised, compact)):  # tokenised first, then as written
        for rule in RULES:
            if rule.pattern.search(candidate):
                return MaskDecision(name, normalised, rule.category, rule.name)
    return MaskDecision(name, normalised, "unknown", "unknown")


def decision_counts(decisions: Iterable[MaskDecision]) -> dict[str, Any]:
    """Counts by category and by rule, for the import summary."""
    items = list(decisions)
    return {
        "by_category": dict(sorted(Counter(d.category for d in items).items())),
        "by_rule": dict(sorted(Counter(d.rule for d in items).items())),
        "lesion": sum(1 for d in items if d.is_lesion),
        "not_lesion": sum(1 for d in items if not d.is_lesion),
    }
