# mypy: allow-untyped-calls
"""The 200-feature contract, the radiomics YAML validation and per-lesion extraction behaviour."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from node.errors import ConfigError
from node.imaging.features import (
    DEFAULT_RADIOMICS_PATH,
    FEATURE_NAMES,
    RadiomicsParams,
    extract_features,
    feature_names,
    load_radiomics_params,
)
from node.imaging.shells import shell_masks
from node.imaging.types import (
    PonsReference,
    PreprocessedStudy,
    RegistrationResult,
    Segment,
    StudyIdentity,
)


def test_feature_names_are_200_unique_with_the_method_counts() -> None:
    assert len(FEATURE_NAMES) == 200
    assert len(set(FEATURE_NAMES)) == 200
    counts = Counter("_".join(n.split("_")[:2]) if not n.startswith("shape_") else "shape" for n in FEATURE_NAMES)
    expected = {"shape": 14}
    for seq in ("t1ce", "t2"):
        expected |= {f"{seq}_firstorder": 18, f"{seq}_glcm": 24, f"{seq}_glszm": 16, f"{seq}_glrlm": 16,
                     f"{seq}_ngtdm": 5, f"{seq}_gldm": 14}  # fmt: skip
    assert dict(counts) == expected
    for s1_feature in ("t1ce_glszm_LargeAreaLowGrayLevelEmphasis", "t2_gldm_LargeDependenceLowGrayLevelEmphasis",
                       "t2_firstorder_Energy", "shape_Sphericity"):  # fmt: skip
        assert s1_feature in FEATURE_NAMES


def test_feature_names_match_pyradiomics_default_non_deprecated_features() -> None:
    from radiomics import getFeatureClasses

    classes = getFeatureClasses()
    for cls in ("shape", "firstorder", "glcm", "glszm", "glrlm", "ngtdm", "gldm"):
        enabled = {name for name, deprecated in classes[cls].getFeatureNames().items() if not deprecated}
        prefix = "shape_" if cls == "shape" else f"t1ce_{cls}_"
        ours = {n[len(prefix) :] for n in FEATURE_NAMES if n.startswith(prefix)}
        assert ours == enabled, cls


def test_feature_names_with_shells_extend_the_core_list() -> None:
    names = feature_names((1, 3, 5))
    assert names[:200] == FEATURE_NAMES
    assert len(names) == 200 + 3 * 2 * 93
    assert "t2_shell3mm_firstorder_Mean" in names
    assert not any(n.startswith("shape") for n in names[200:])


def test_default_config_loads_with_provenance() -> None:
    params = load_radiomics_params()
    assert params.version == 1
    assert params.setting["binCount"] == 32
    assert params.setting["normalize"] is False
    assert len(params.sha256) == 64
    assert params.pyradiomics_version.lstrip("v").startswith("3.0.1")
    assert params.source == str(DEFAULT_RADIOMICS_PATH)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("version: 1\nsetting: {binCount: 32}\nimageType: {Original: {}}\nfeatureClass: {shape: []}\n", "featureClass"),
        ("setting: {binCount: 32}\n", "version"),
        ("version: 1\nsetting: {binCount: 'many'}\nimageType: {Original: {}}\nfeatureClass: "
         "{shape: [], firstorder: [], glcm: [], glszm: [], glrlm: [], ngtdm: [], gldm: []}\n", "schema"),
        ("version: 1\nsetting: {binCount: 32, normalize: true}\nimageType: {Original: {}}\nfeatureClass: "
         "{shape: [], firstorder: [], glcm: [], glszm: [], glrlm: [], ngtdm: [], gldm: []}\n", "normalize"),
        ("version: 1\nsetting: {binCount: 32}\nimageType: {Wavelet: {}}\nfeatureClass: "
         "{shape: [], firstorder: [], glcm: [], glszm: [], glrlm: [], ngtdm: [], gldm: []}\n", "Original"),
        ("version: 1\nbogus: 3\n", "bogus"),
        ("version: [1\n", "YAML"),
    ],
)
def test_bad_config_is_rejected(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "radiomics.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_radiomics_params(path)


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_radiomics_params(tmp_path / "absent.yaml")


def _sphere(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    return np.asarray((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2)


def synthetic_preprocessed(lesions: dict[int, np.ndarray], seed: int = 0) -> PreprocessedStudy:
    """A 1 mm z-scored-looking study (textured noise) with the given lesion masks (no real preprocessing)."""
    rng = np.random.default_rng(seed)
    shape = next(iter(lesions.values())).shape
    t1 = sitk.GetImageFromArray(rng.normal(0, 1, shape).astype(np.float32))
    t1 = sitk.SmoothingRecursiveGaussian(t1, 1.0)
    t2 = sitk.GetImageFromArray(rng.normal(0, 1, shape).astype(np.float32) + 2 * lesions[min(lesions)])
    brain = sitk.GetImageFromArray(np.ones(shape, dtype=np.uint8))
    segments = []
    for number, arr in lesions.items():
        mask = sitk.GetImageFromArray(arr.astype(np.uint8))
        segments.append(Segment(segment_number=number, label=f"lesion {number}", mask=mask))
    for img in (t2, brain, *[s.mask for s in segments]):
        img.CopyInformation(t1)
    pons = PonsReference("auto", brain, 0.0, 1.0, 0.0, 1.0)
    reg = RegistrationResult(sitk.Euler3DTransform(), -0.5, "test")
    identity = StudyIdentity("1", "2", "3", "4", "5", "6")
    return PreprocessedStudy(identity, t1, t2, tuple(segments), pons, reg, brain)


@pytest.fixture(scope="module")
def params() -> RadiomicsParams:
    return load_radiomics_params()


def test_extraction_gives_200_finite_values_and_qc(params: RadiomicsParams) -> None:
    shape = (48, 48, 48)
    pre = synthetic_preprocessed({3: _sphere(shape, (24, 24, 24), 9.0)})
    [result] = extract_features(pre, params)
    assert result.segment_number == 3
    assert list(result.features) == list(FEATURE_NAMES)
    values = np.array(list(result.features.values()))
    assert np.all(np.isfinite(values))
    voxels = int(_sphere(shape, (24, 24, 24), 9.0).sum())
    assert result.qc["voxel_count"] == voxels
    assert result.qc["volume_ml"] == pytest.approx(voxels / 1000.0)
    assert result.qc["error"] is None
    assert result.features["shape_VoxelVolume"] == pytest.approx(voxels)
    assert result.features["shape_Sphericity"] > 0.9
    # T2 has +2 inside the lesion, T1CE does not
    assert result.features["t2_firstorder_Mean"] > result.features["t1ce_firstorder_Mean"] + 1.0


def test_tiny_lesion_gets_nan_and_a_clear_error_without_failing_others(params: RadiomicsParams) -> None:
    shape = (48, 48, 48)
    tiny = np.zeros(shape, dtype=bool)
    tiny[5:7, 5:7, 5:7] = True  # 8 voxels
    pre = synthetic_preprocessed({1: _sphere(shape, (26, 26, 26), 8.0), 2: tiny})
    good, small = extract_features(pre, params)
    assert all(math.isfinite(v) for v in good.features.values())
    assert all(math.isnan(v) for v in small.features.values())
    assert "too small" in str(small.qc["error"])
    assert small.qc["voxel_count"] == 8


def test_shell_masks_and_shell_features(params: RadiomicsParams) -> None:
    shape = (50, 50, 50)
    lesion = _sphere(shape, (25, 25, 25), 8.0)
    pre = synthetic_preprocessed({1: lesion})
    shells = shell_masks(pre.lesions[0].mask, pre.brain_mask, (1, 3, 5))
    sizes = {d: int(sitk.GetArrayViewFromImage(m).sum()) for d, m in shells.items()}
    assert 0 < sizes[1] < sizes[3] < sizes[5]
    for m in shells.values():
        assert not np.any(sitk.GetArrayViewFromImage(m)[lesion])  # lesion excluded
    # a 3 mm shell around an 8 mm sphere: volume of the spherical shell, within discretisation
    expected = 4 / 3 * np.pi * (11.0**3 - 8.0**3)
    assert sizes[3] == pytest.approx(expected, rel=0.1)
    [result] = extract_features(pre, params, shells_mm=(3,))
    assert list(result.features) == list(feature_names((3,)))
    assert all(math.isfinite(v) for v in result.features.values())
    assert result.qc["shell3mm_voxel_count"] == sizes[3]


def test_shell_masks_respect_the_brain_mask() -> None:
    shape = (40, 40, 40)
    lesion = sitk.GetImageFromArray(_sphere(shape, (20, 20, 20), 6.0).astype(np.uint8))
    half = np.zeros(shape, dtype=np.uint8)
    half[:, :, :20] = 1
    brain = sitk.GetImageFromArray(half)
    shell = sitk.GetArrayFromImage(shell_masks(lesion, brain, (3,))[3])
    assert shell[:, :, 20:].sum() == 0
    assert shell[:, :, :20].sum() > 0
