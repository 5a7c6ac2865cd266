# mypy: disable-error-code="no-untyped-call"
"""The real imaging pipeline on a synthetic study whose T1CE arrives as a scanner would send it: one Enhanced MR
object holding two stacks (the full acquisition and a shorter stack at the same positions), stored MONOCHROME1.
The stack is chosen, the pixels inverted, and every feature equals the one of the plain single-frame study."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pydicom
import pytest

from node.imaging.pipeline import run_features
from tests.support.studies import SynthCase, synth_case

from .test_stacks import _to_monochrome1, enhanced_with_stacks

__all__ = ["synth_case"]


@pytest.mark.slow  # the imaging pipeline twice on a small study
def test_enhanced_monochrome1_t1ce_gives_the_same_features(synth_case: SynthCase, tmp_path: Path) -> None:
    plain = run_features(synth_case.root)
    study = tmp_path / "case"
    shutil.copytree(synth_case.root, study)
    files = sorted((study / "t1ce").iterdir())
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    in_order = sorted(files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    mf = enhanced_with_stacks([("2", in_order[: len(files) // 2]), ("1", in_order)], tmp_path / "mf" / "t1ce.dcm")
    ds = pydicom.dcmread(mf)
    ds.SeriesInstanceUID = series_uid  # the series the SEG was drawn on
    ds.save_as(mf, enforce_file_format=True)
    _to_monochrome1(mf)
    shutil.rmtree(study / "t1ce")
    (study / "t1ce").mkdir()
    shutil.move(mf, study / "t1ce" / "t1ce.dcm")
    assert pydicom.dcmread(study / "t1ce" / "t1ce.dcm", stop_before_pixels=True).PhotometricInterpretation == (
        "MONOCHROME1")

    run = run_features(study)
    assert any("holds 2 stacks (Enhanced MR); stack 1" in w for w in run.warnings)
    assert [lesion.segment_number for lesion in run.lesions] == [lesion.segment_number for lesion in plain.lesions]
    for got, want in zip(run.lesions, plain.lesions, strict=True):
        assert got.features.keys() == want.features.keys()
        for name, value in want.features.items():
            assert math.isclose(got.features[name], value, rel_tol=1e-4, abs_tol=1e-6), name
