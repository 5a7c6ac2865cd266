"""Patient sampler: prevalence, conversion rate, receptor consistency (no images: fast)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from node.labels import her2_status, receptor_positive, subtype_from_receptors
from node.synth.cohort import PRIMARY_PREVALENCE, sample_cohort
from node.synth.sites import make_sites
from node.vocabulary import Subtype

N = 4000


@pytest.fixture(scope="module")
def cohort():
    return sample_cohort(N, seed=123, n_sites=3)


def test_conversion_rate_about_a_quarter(cohort) -> None:
    rate = np.mean([p.converted for p in cohort])
    assert abs(rate - 0.25) < 0.03  # SE ~ 0.007


def test_conversion_rate_is_configurable() -> None:
    assert not any(p.converted for p in sample_cohort(300, seed=1, conversion_rate=0.0))
    assert all(p.converted for p in sample_cohort(300, seed=1, conversion_rate=1.0))


def test_primary_prevalence(cohort) -> None:
    counts = Counter(p.primary_subtype for p in cohort)
    for subtype, prevalence in PRIMARY_PREVALENCE.items():
        assert abs(counts[subtype] / N - prevalence) < 0.03


def test_receptors_consistent_with_metastasis_subtype(cohort) -> None:
    tiers: Counter[str] = Counter()
    for p in cohort:
        r = p.receptors
        er, pr = receptor_positive(r.er_percent), receptor_positive(r.pr_percent)
        her2 = her2_status(r.her2_ihc, r.her2_ish_amplified)
        assert subtype_from_receptors(er, pr, her2) is p.metastasis_subtype
        assert (r.her2_ish_amplified is not None) == (r.her2_ihc == 2)
        tiers[str(r.her2_tier)] += 1
        assert 1 <= p.n_lesions <= 3
    assert set(tiers) == {"positive", "low", "zero"}
    # the 1 % boundary is exercised (negative receptor stored as exactly 1 %)
    assert any(p.receptors.er_percent == 1.0 for p in cohort)


def test_identity_and_sites(cohort) -> None:
    p = cohort[7]
    assert p.patient_id == "SYN-123-0007"
    assert p.patient_name == "Synthetic^Case0007"
    assert p.case_id == "case0007" and p.patient_id not in p.case_id
    assert {q.site_index for q in cohort} == {0, 1, 2}
    sites = make_sites(3)
    assert [s.manufacturer for s in sites] == ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips Medical Systems"]
    assert sum(s.signed_rescaled for s in sites) == 1


def test_sampler_deterministic_and_prefix_stable() -> None:
    a = sample_cohort(50, seed=9)
    b = sample_cohort(80, seed=9)[:50]
    assert a == b
    c = sample_cohort(50, seed=10)
    assert [p.metastasis_subtype for p in a] != [p.metastasis_subtype for p in c]
    assert all(isinstance(p.metastasis_subtype, Subtype) for p in a)
