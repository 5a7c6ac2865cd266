# mypy: allow-untyped-calls
"""The preprocessing recipe end to end: grids, normalisation, timings, settings validation."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from node.errors import ConfigError, ProcessingError
from node.imaging.brain import brain_mask
from node.imaging.features import FEATURE_NAMES, extract_features, load_radiomics_params
from node.imaging.preprocess import (
    PreprocessSettings,
    _zscore,
    load_preprocess_settings,
    preprocess,
    preprocessing_provenance,
)
from node.imaging.registration import N4Params, n4_correct

from . import synthetic as syn
from .conftest import Case


def test_outputs_share_the_1mm_t1ce_grid(medium_case: Case) -> None:
    pre = medium_case.pre
    assert pre.t1ce.GetSpacing() == pytest.approx((1.0, 1.0, 1.0))
    for img in (pre.t2, pre.brain_mask, pre.pons.mask, *[s.mask for s in pre.lesions]):
        assert img.GetSize() == pre.t1ce.GetSize()
        assert img.GetOrigin() == pytest.approx(pre.t1ce.GetOrigin())
        assert img.GetDirection() == pytest.approx(pre.t1ce.GetDirection())
    assert pre.t1ce.GetPixelID() == sitk.sitkFloat32 and pre.t2.GetPixelID() == sitk.sitkFloat32
    assert pre.lesions[0].mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(pre.lesions[0].mask))) == {0, 1}
    # nearest-neighbour mask resampling keeps the lesion volume (12 mm sphere ~ 7,238 mm³)
    assert int(sitk.GetArrayViewFromImage(pre.lesions[0].mask).sum()) == pytest.approx(7238, rel=0.05)


def test_pons_region_is_zero_mean_unit_sd_in_both_sequences(medium_case: Case) -> None:
    pre = medium_case.pre
    assert pre.pons.method == "auto", pre.pons.qc
    roi = sitk.GetArrayViewFromImage(pre.pons.mask) > 0
    for image in (pre.t1ce, pre.t2):
        values = sitk.GetArrayViewFromImage(image)[roi].astype(np.float64)
        assert values.mean() == pytest.approx(0.0, abs=1e-3)
        assert values.std(ddof=1) == pytest.approx(1.0, rel=1e-3)
    assert pre.pons.t1ce_sd > 0 and pre.pons.t2_sd > 0


def test_timings_cover_every_stage(medium_case: Case) -> None:
    timings = medium_case.pre.timings
    stages = {"resample", "brain_mask", "n4", "registration", "pons", "normalise"}
    per_sequence = {f"{stage}.{seq}" for stage in ("resample", "brain_mask", "n4") for seq in ("t1ce", "t2")}
    assert stages | per_sequence | {"pons.atlas", "pons.stats"} <= set(timings)
    assert all(v >= 0 for v in timings.values())
    # a stage is the work of both sequences
    assert timings["n4"] == pytest.approx(timings["n4.t1ce"] + timings["n4.t2"], abs=0.002)


def test_n4_removes_a_known_bias_field() -> None:
    truth = sitk.BinShrink(syn.mni_t1(), [2, 2, 2])  # 2 mm keeps the test fast
    arr = sitk.GetArrayFromImage(truth)
    zz, _, xx = np.indices(arr.shape, dtype=np.float32)
    field = 1.0 + 0.3 * (xx / arr.shape[2] - 0.5) + 0.15 * np.cos(np.pi * zz / arr.shape[0])
    biased = sitk.GetImageFromArray(arr * field)
    biased.CopyInformation(truth)
    mask = brain_mask(biased)
    corrected_image = n4_correct(biased, mask, N4Params(shrink_factor=3))  # ~6 mm, as in production
    corrected = sitk.GetArrayFromImage(corrected_image)
    inside = (sitk.GetArrayViewFromImage(mask) > 0) & (arr > 50)
    before = np.std(np.log(arr[inside] * field[inside] / arr[inside]))
    after = np.std(np.log(corrected[inside] / arr[inside]))
    assert after < 0.5 * before
    # the tissue mean is kept, so intensities stay in the input's units
    assert corrected[inside].mean() == pytest.approx((arr * field)[inside].mean(), rel=0.05)


def test_features_on_the_preprocessed_study(medium_case: Case) -> None:
    [lesion] = extract_features(medium_case.pre, load_radiomics_params())
    assert lesion.qc["error"] is None
    assert all(np.isfinite(lesion.features[n]) for n in FEATURE_NAMES)


def test_zero_sd_reference_is_a_processing_error() -> None:
    flat = sitk.Image([10, 10, 10], sitk.sitkFloat32) + 5.0
    with pytest.raises(ProcessingError, match="no intensity spread"):
        _zscore(flat, 5.0, 0.0, "T2", 1e-6)


def test_default_settings_load_and_record_provenance() -> None:
    settings = load_preprocess_settings()
    assert settings.target_spacing_mm == 1.0
    assert settings.registration.backend == "simpleitk"
    assert settings.pons.expected_volume_mm3 == 1239.0
    prov = preprocessing_provenance(settings)
    assert prov["image_interpolator"] == "linear" and prov["mask_interpolator"] == "nearest"


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("preprocess:\n  target_spacing_mm: 0\n", "target_spacing_mm"),
        ("preprocess:\n  image_interpolator: cubic\n", "image_interpolator"),
        ("preprocess:\n  registration: {backend: elastix}\n", "backend"),
        ("preprocess:\n  registration: {shrink_factors: [4, 2], smoothing_sigmas_mm: [1.0]}\n", "same"),
        ("preprocess:\n  pons: {volume_tolerance: 2}\n", "volume_tolerance"),
        ("preprocess:\n  n4: {iterations: []}\n", "iterations"),
        ("preprocess:\n  shells_mm: [1, -3]\n", "shells_mm"),
        ("preprocess:\n  unknown_knob: 1\n", "unknown"),
        ("preprocess: [1, 2]\n", "mapping"),
        ("preprocess: {\n", "YAML"),
    ],
)
def test_bad_pipeline_settings_are_rejected(tmp_path: Path, yaml_text: str, needle: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=needle):
        load_preprocess_settings(path)


def test_settings_validate_on_construction() -> None:
    with pytest.raises(ConfigError):
        PreprocessSettings(target_spacing_mm=-1.0)
    assert PreprocessSettings(shells_mm=(1, 3, 5)).shells_mm == (1, 3, 5)


def _full_size_run() -> tuple[str, object, float, float, dict[str, float], float]:
    """Preprocess + features of the full-size study, in the process that calls it: (pons method, the lesion's
    error, preprocess s, features s, stage timings, peak RSS MB of this process)."""
    motion = syn.rigid((2.0, -3.0, 4.0), (3.0, 4.0, -5.0))
    study = syn.make_study(t2_motion=motion, lesions=(syn.Lesion((-30.0, -10.0, 20.0), 12.5),))
    start = time.perf_counter()
    pre = preprocess(study, load_preprocess_settings())
    middle = time.perf_counter()
    [lesion] = extract_features(pre, load_radiomics_params())
    end = time.perf_counter()
    # VmHWM: the peak of this process's own address space (ru_maxrss survives fork + exec: it would report the
    # test worker's earlier peak)
    status = Path("/proc/self/status").read_text(encoding="ascii")
    peak_mb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    return pre.pons.method, lesion.qc["error"], middle - start, end - middle, dict(pre.timings), peak_mb


@pytest.mark.slow
def test_full_size_study_speed_and_memory(capsys: pytest.CaptureFixture[str]) -> None:
    """T1CE 256x256x176 at 1 mm, T2 288x288x28 at 0.8x0.8x6 mm, one 25 mm lesion (numbers are reported). Run in a
    fresh process: the peak RSS of a test worker also holds every test it ran before (training, the deep model)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        method, error, preprocess_s, features_s, timings, peak_mb = pool.submit(_full_size_run).result(600)
    with capsys.disabled():
        print(f"\nfull-size: preprocess {preprocess_s:.1f} s {timings}, features {features_s:.2f} s, "
              f"peak RSS {peak_mb:.0f} MB")  # fmt: skip
    assert method == "auto"
    assert error is None
    assert peak_mb < 2500
