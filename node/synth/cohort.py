"""Synthetic patients: primary and metastasis subtypes, receptor assays and site assignment (no images).

Sampling model (per patient, from one ``numpy.random.Generator``):

* **Primary subtype** from :data:`PRIMARY_PREVALENCE`
  (HR+/HER2− 0.35, HR+/HER2+ 0.20, HR−/HER2+ 0.20, TN 0.25).
* **Conversion:** with probability ``conversion_rate`` (default 0.25, docs/method.md §1.1) the metastasis
  subtype is drawn among the *other* three subtypes, weighted by prevalence; otherwise it equals the
  primary subtype.
* **Receptor assays of the metastasis**, always consistent with its subtype under :mod:`node.labels`:

  ======================  ==============================================================================
  status                  assay values
  ======================  ==============================================================================
  HR+                     ER+ with p 0.9 (ER 10–95 %); PR+ with p 0.65 (PR 5–90 %), forced if ER−
  receptor negative       0 % (p 0.6), 0.5 % (p 0.2) or exactly 1 % (p 0.2: the boundary, still negative)
  HER2+                   IHC 3+ (p 0.7) or IHC 2+ with ISH amplified
  HER2−                   IHC 0 (p 0.35), 1+ (p 0.40) or 2+ with ISH not amplified (p 0.25)
  ======================  ==============================================================================

  ISH is recorded only for IHC 2+ (``None`` otherwise: not done).
* **Lesions:** 1–3 per patient (p 0.5 / 0.3 / 0.2), all of the metastasis subtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from node.labels import her2_status, her2_three_tier, receptor_positive, subtype_from_assays
from node.vocabulary import Her2Tier, Subtype

logger = logging.getLogger(__name__)

PRIMARY_PREVALENCE: dict[Subtype, float] = {
    Subtype.HR_POS_HER2_NEG: 0.35,
    Subtype.HR_POS_HER2_POS: 0.20,
    Subtype.HR_NEG_HER2_POS: 0.20,
    Subtype.TN: 0.25,
}
DEFAULT_CONVERSION_RATE = 0.25
LESION_COUNT_PROBABILITIES = (0.5, 0.3, 0.2)  # 1, 2, 3 lesions


@dataclass(frozen=True)
class ReceptorAssays:
    """Receptor results of the (resected or biopsied) metastasis."""

    er_percent: float
    pr_percent: float
    her2_ihc: int
    her2_ish_amplified: bool | None

    @property
    def er_positive(self) -> bool:
        return receptor_positive(self.er_percent)

    @property
    def pr_positive(self) -> bool:
        return receptor_positive(self.pr_percent)

    @property
    def her2_positive(self) -> bool:
        return her2_status(self.her2_ihc, self.her2_ish_amplified)

    @property
    def her2_tier(self) -> Her2Tier:
        return her2_three_tier(self.her2_ihc, self.her2_ish_amplified)

    @property
    def subtype(self) -> Subtype:
        return subtype_from_assays(self.er_percent, self.pr_percent, self.her2_ihc, self.her2_ish_amplified)


@dataclass(frozen=True)
class PatientSpec:
    """Everything about one synthetic patient that is decided before any image is made."""

    index: int
    case_id: str
    patient_id: str
    patient_name: str
    site_index: int
    primary_subtype: Subtype
    metastasis_subtype: Subtype
    receptors: ReceptorAssays
    n_lesions: int

    @property
    def converted(self) -> bool:
        return self.primary_subtype != self.metastasis_subtype


def case_id_for(index: int) -> str:
    """Folder name of a case: deliberately different from the patient ID (logs may show paths)."""
    return f"case{index:04d}"


def patient_identity(seed: int, index: int) -> tuple[str, str]:
    """Synthetic, distinctive (patient ID, patient name) — easy to grep for in logs."""
    return f"SYN-{seed}-{index:04d}", f"Synthetic^Case{index:04d}"


def _negative_percent(rng: np.random.Generator) -> float:
    return float(rng.choice([0.0, 0.5, 1.0], p=[0.6, 0.2, 0.2]))


def sample_receptors(subtype: Subtype, rng: np.random.Generator) -> ReceptorAssays:
    """Assay values consistent with ``subtype`` (see the module table)."""
    if subtype.hr_positive:
        er_pos = bool(rng.random() < 0.9)
        pr_pos = bool(rng.random() < 0.65) or not er_pos
        er = round(float(rng.uniform(10, 95)), 0) if er_pos else _negative_percent(rng)
        pr = round(float(rng.uniform(5, 90)), 0) if pr_pos else _negative_percent(rng)
    else:
        er, pr = _negative_percent(rng), _negative_percent(rng)
    ish: bool | None
    if subtype.her2_positive:
        if rng.random() < 0.7:
            ihc, ish = 3, None
        else:
            ihc, ish = 2, True
    else:
        ihc = int(rng.choice([0, 1, 2], p=[0.35, 0.40, 0.25]))
        ish = False if ihc == 2 else None
    assays = ReceptorAssays(er, pr, ihc, ish)
    assert assays.subtype == subtype, (assays, subtype)
    return assays


def sample_metastasis_subtype(primary: Subtype, conversion_rate: float, rng: np.random.Generator) -> Subtype:
    """The metastasis subtype: the primary one, or (with ``conversion_rate``) another, prevalence-weighted."""
    if rng.random() >= conversion_rate:
        return primary
    others = [s for s in PRIMARY_PREVALENCE if s != primary]
    weights = np.array([PRIMARY_PREVALENCE[s] for s in others])
    return others[int(rng.choice(len(others), p=weights / weights.sum()))]


def sample_patient(
    index: int,
    seed: int,
    n_sites: int,
    rng: np.random.Generator,
    conversion_rate: float = DEFAULT_CONVERSION_RATE,
) -> PatientSpec:
    """One patient; ``rng`` should be dedicated to this patient so cohorts are reproducible case by case."""
    subtypes = list(PRIMARY_PREVALENCE)
    probs = np.array(list(PRIMARY_PREVALENCE.values()))
    primary = subtypes[int(rng.choice(len(subtypes), p=probs / probs.sum()))]
    metastasis = sample_metastasis_subtype(primary, conversion_rate, rng)
    receptors = sample_receptors(metastasis, rng)
    n_lesions = 1 + int(rng.choice(3, p=LESION_COUNT_PROBABILITIES))
    patient_id, patient_name = patient_identity(seed, index)
    return PatientSpec(
        index=index,
        case_id=case_id_for(index),
        patient_id=patient_id,
        patient_name=patient_name,
        site_index=index % max(1, n_sites),
        primary_subtype=primary,
        metastasis_subtype=metastasis,
        receptors=receptors,
        n_lesions=n_lesions,
    )


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """The generator dedicated to patient ``index`` of a cohort with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, 0x5EED]))


def sample_cohort(
    n_cases: int, seed: int, n_sites: int = 3, conversion_rate: float = DEFAULT_CONVERSION_RATE
) -> list[PatientSpec]:
    """``n_cases`` patients, each from its own generator (patient ``i`` is the same whatever ``n_cases``)."""
    if not 0.0 <= conversion_rate <= 1.0:
        raise ValueError(f"conversion rate must be in [0, 1], got {conversion_rate}")
    return [sample_patient(i, seed, n_sites, patient_rng(seed, i), conversion_rate) for i in range(n_cases)]
