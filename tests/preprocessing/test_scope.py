"""Scope checks (node.imaging.scope): segment type, lesion volume, 3D, slice thickness, field strength, and the
``scope`` block of config/pipeline.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from node.errors import ConfigError
from node.imaging.scope import (
    ScopeParams,
    acquisition_findings,
    load_scope_params,
    segment_type_finding,
    volume_finding,
)
from node.vocabulary import NotAssessedReason as R


@pytest.mark.parametrize(("label", "ptype", "reason"), [
    ("Peritumoral oedema", None, R.SEGMENT_OEDEMA),
    ("ED", None, R.SEGMENT_OEDEMA),
    ("edema", "SCT:14799000", R.SEGMENT_OEDEMA),
    ("Necrotic core", None, R.SEGMENT_NECROSIS),
    ("NCR", None, R.SEGMENT_NECROSIS),
    ("Cyst", None, R.SEGMENT_CYST),
    ("Haemorrhage", None, R.SEGMENT_HAEMORRHAGE),
    ("Resection cavity", None, R.SEGMENT_CAVITY),
    ("Lesion 1", "SCT:79654002", R.SEGMENT_OEDEMA),  # the type code wins over the label
    ("Lesion 2", "SCT:6574001", R.SEGMENT_NECROSIS),
])  # fmt: skip
def test_segments_that_are_not_lesions_are_refused(label: str, ptype: str | None, reason: R) -> None:
    finding = segment_type_finding(label, ptype)
    assert finding is not None and finding.reason is reason and finding.refuses


@pytest.mark.parametrize("label", ["Lesion 1", "Metastasis left frontal", "GTV", "enhancing tumour", "ET", ""])
def test_lesions_pass_the_segment_type_check(label: str) -> None:
    assert segment_type_finding(label, "SCT:14799000") is None


def test_volume_refusal_and_warning_band() -> None:
    params = ScopeParams()
    tiny = volume_finding(0.03, params)
    assert tiny is not None and tiny.reason is R.LESION_TOO_SMALL and "0.030 mL" in tiny.text
    small = volume_finding(0.5, params)
    assert small is not None and not small.refuses and "below 1 mL" in small.text
    assert volume_finding(8.0, params) is None and volume_finding(None, params) is None


def _header(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_acquisition_findings() -> None:
    params = ScopeParams()
    assert acquisition_findings(_header(MRAcquisitionType="3D", SliceThickness=1.0, MagneticFieldStrength=1.5),
                                params) == []  # fmt: skip
    assert acquisition_findings(_header(), params) == []  # nothing known, nothing to say
    (thin,) = acquisition_findings(_header(SliceThickness=2.0), params)
    assert not thin.refuses and "2 mm" in thin.text
    (thick,) = acquisition_findings(_header(SliceThickness=5.0), params)
    assert thick.reason is R.SLICE_TOO_THICK
    (two_d,) = acquisition_findings(_header(MRAcquisitionType="2D"), params)
    assert not two_d.refuses and "2D" in two_d.text
    (two_d,) = acquisition_findings(_header(MRAcquisitionType="2D"), ScopeParams(refuse_2d=True))
    assert two_d.reason is R.NOT_3D
    (field,) = acquisition_findings(_header(MagneticFieldStrength=7.0), params)
    assert not field.refuses and "7 T" in field.text
    # Enhanced MR: slice thickness in the shared functional groups
    enhanced = _header(MRAcquisitionType="3D")
    measures = _header(SliceThickness=4.0)
    enhanced.SharedFunctionalGroupsSequence = [_header(PixelMeasuresSequence=[measures])]
    assert [f.reason for f in acquisition_findings(enhanced, params)] == [R.SLICE_TOO_THICK]


def test_scope_block_of_the_pipeline_configuration(tmp_path: Path) -> None:
    shipped = load_scope_params()
    assert shipped == ScopeParams()  # the file and the defaults agree
    path = tmp_path / "pipeline.yaml"
    path.write_text("version: 1\nscope:\n  min_lesion_volume_ml: 0.5\n  field_strengths_t: [1.5]\n")
    assert load_scope_params(path) == ScopeParams(min_lesion_volume_ml=0.5, field_strengths_t=(1.5,))
    path.write_text("version: 1\n")
    assert load_scope_params(path) == ScopeParams()
    path.write_text("version: 1\nscope:\n  min_volume: 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_scope_params(path)
    path.write_text("version: 1\nscope:\n  min_lesion_volume_ml: 5\n")
    with pytest.raises(ConfigError, match="min_lesion_volume_ml"):
        load_scope_params(path)
