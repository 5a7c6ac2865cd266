"""The code table: IBSI mapping resolves against pydicom's IBSI concepts, private codes fit SH/LO and are
one-to-one, derived codes are stable and unique over every feature the pipeline produces."""

from __future__ import annotations

import itertools

import pytest
from pydicom.sr.codedict import codes

from node.imaging.features import feature_names
from node.sr import codes as C
from node.vocabulary import SUBTYPE_CLASSES


def test_ibsi_keywords_resolve_and_name_real_features():
    produced = {n.split("_", 1)[1] for n in feature_names() if not n.startswith("shape_")} | {
        n for n in feature_names() if n.startswith("shape_")
    }
    for key, keyword in C.IBSI_KEYWORDS.items():
        assert key in produced, f"{key} is not a feature the pipeline produces"
        code = getattr(codes.IBSI, keyword)
        assert code.scheme_designator == "IBSI"
    # the IBSI trap of docs/sr-design.md §3.3: GLSZM low grey level zone emphasis is XMSY, not GLDZM's S1RA
    assert C.feature_code("t1ce_glszm_LowGrayLevelZoneEmphasis").concept.value == "XMSY"
    assert C.feature_code("t2_glcm_JointEntropy").concept.value == "TU9B"


def test_every_pipeline_feature_has_a_valid_code():
    names = [*feature_names((5,)), *(f"primary_subtype={s}" for s in SUBTYPE_CLASSES)]
    concepts: dict[tuple[str, str], str] = {}
    for name in names:
        fc = C.feature_code(name)
        assert 0 < len(fc.concept.value) <= 16 and 0 < len(fc.concept.meaning) <= 64
        key = (fc.concept.value, fc.concept.scheme_designator)
        if fc.concept.scheme_designator == C.PRIVATE_DESIGNATOR:
            assert key not in concepts or concepts[key] == name, f"private code collision {key}"
            concepts[key] = name
        if name.startswith(("t1ce_", "t2_")):
            assert fc.source in (C.T1_SIGNAL, C.T2_SIGNAL)
            assert fc.label.startswith(("T1CE ", "T2 "))
        else:
            assert fc.source is None
    assert C.feature_code("t2_shell5mm_glcm_JointEntropy").concept.scheme_designator == C.PRIVATE_DESIGNATOR


def test_shap_codes_are_stable_and_unique():
    names = feature_names()
    seen = {}
    for name, cls in itertools.product(names, SUBTYPE_CLASSES):
        code = C.shap_code(name, cls)
        assert code.value.startswith("SH") and len(code.value) == 16
        assert code.value not in seen
        seen[code.value] = (name, cls)
    assert C.shap_code("t1ce_glcm_JointEntropy", "TN") == C.shap_code("t1ce_glcm_JointEntropy", "TN")
    assert C.shap_code("t1ce_glcm_JointEntropy", "TN").meaning == "SHAP T1CE Joint Entropy of GLCM"


def test_fixed_private_codes_are_one_to_one():
    by_value: dict[str, str] = {}
    for code in C.all_private_codes():
        assert by_value.setdefault(code.value, code.meaning) == code.meaning
    assert len(set(c.meaning for c in C.all_private_codes())) == len(by_value)


def test_private_refuses_oversized_values():
    with pytest.raises(ValueError):
        C.private("X" * 17, "too long")
    with pytest.raises(ValueError):
        C.private("OK", "m" * 65)
