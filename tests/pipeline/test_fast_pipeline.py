"""The faster pipeline (issue 12 item 4) keeps today's features: two full-size synthetic studies against the reference
recorded with the pipeline before the speed-ups (tests/data/fastpipe/reference.json, its make_reference.py).

Tolerances (docs/processing.md "Speed and the feature tolerance"): the speed-ups change only how the N4 bias field is
evaluated (a coarser grid, linearly upsampled: < 1e-4 in log intensity) and where work runs (threads), so

* shape features come from the masks alone: identical (relative 1e-9);
* the pons reference statistics (mean, SD) within 0.5 %;
* first-order features within 1 % relative, with an absolute floor of 0.01 (z-scored units) for values near 0;
* texture features (GLCM, GLRLM, GLSZM, GLDM, NGTDM; 32 bins) within 5 % relative, same floor: one voxel moving
  across a bin edge moves a texture feature of a small lesion by a few per cent.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from node.imaging.pipeline import PipelineConfig, run_features

DATA = Path(__file__).parents[1] / "data" / "fastpipe"
ABS_FLOOR = 0.01
PONS_RTOL = 0.005


def _maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastpipe_make_reference", DATA / "make_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tolerance(name: str) -> tuple[float, float]:
    """(relative, absolute) tolerance of one feature, by its family."""
    if name.startswith("shape_"):
        return 1e-9, 0.0
    if "_firstorder_" in name:
        return 0.01, ABS_FLOOR
    return 0.05, ABS_FLOOR


def differences(reference: dict[str, float | None], current: dict[str, object]) -> list[str]:
    """Every feature outside its tolerance, in words (empty when all agree)."""
    problems = []
    assert set(reference) <= set(current), f"features missing: {sorted(set(reference) - set(current))[:5]}"
    for name, ref in reference.items():
        value = current[name]
        assert isinstance(value, int | float)
        if ref is None:
            if not math.isnan(float(value)):
                problems.append(f"{name}: reference NaN, now {value}")
            continue
        rtol, atol = tolerance(name)
        if abs(float(value) - ref) > max(rtol * max(abs(ref), abs(float(value))), atol):
            problems.append(f"{name}: reference {ref:.6g}, now {float(value):.6g}")
    return problems


REFERENCE: dict[str, Any] = json.loads((DATA / "reference.json").read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(REFERENCE["studies"]))
def test_features_agree_with_the_reference(study: str, tmp_path: Path) -> None:
    expected = REFERENCE["studies"][study]
    case = _maker().synthesise(study, tmp_path)
    run = run_features(case, PipelineConfig.load())

    assert run.pons_method == expected["pons_method"]
    assert [lesion.segment_number for lesion in run.lesions] == [e["segment_number"] for e in expected["lesions"]]
    for key in ("volume_mm3", "voxel_count"):
        assert run.pons_qc[key] == expected["pons_qc"][key], key  # the same ROI voxels
    for lesion, ref in zip(run.lesions, expected["lesions"], strict=True):
        assert lesion.qc.get("voxel_count") == ref["voxel_count"]
        problems = differences(ref["features"], lesion.features)
        assert not problems, f"{study} segment {lesion.segment_number}: " + "; ".join(problems[:10])


def test_the_comparison_can_fail() -> None:
    reference = {"shape_MeshVolume": 1000.0, "t1ce_firstorder_Mean": 2.0, "t1ce_glcm_Contrast": 10.0,
                 "t2_firstorder_Skewness": 0.001}  # fmt: skip
    assert differences(reference, {"shape_MeshVolume": 1000.0, "t1ce_firstorder_Mean": 2.019,
                                   "t1ce_glcm_Contrast": 10.45, "t2_firstorder_Skewness": 0.009}) == []  # fmt: skip
    problems = differences(reference, {"shape_MeshVolume": 1000.001, "t1ce_firstorder_Mean": 2.03,
                                       "t1ce_glcm_Contrast": 10.6, "t2_firstorder_Skewness": 0.02})  # fmt: skip
    assert len(problems) == 4
