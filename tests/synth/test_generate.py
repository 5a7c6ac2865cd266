# mypy: disable-error-code="no-untyped-call"
"""Whole synthetic studies: files, geometry, headers, determinism, truth transform, pons truth, dciodvfy."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from node.synth.cohort import sample_cohort
from node.synth.generate import generate_case, generate_cohort
from node.synth.render import SynthCase, render_t2_reference, synthesize_case
from node.synth.sites import make_sites
from node.synth.truth import LABEL_COLUMNS, euler_from_truth, load_truth

SEED = 5


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_cohort(out, cases=3, seed=SEED, size="small", effect=1.0, sites=3, pons_seg=True)
    return out


@pytest.fixture(scope="module")
def case0() -> SynthCase:
    """Case 0 of the cohort rendered again in memory (same seed: same images as written)."""
    return synthesize_case(sample_cohort(1, SEED, 3)[0], make_sites(3)[0], seed=SEED, size="small", effect=1.0)


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image: sitk.Image = reader.Execute()
    return image


def _truth(out: Path, case_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "truth" / f"{case_id}.json").read_text())
    return data


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_layout_only_dicom_in_case_folders(cohort_dir: Path) -> None:
    cases = sorted(p.name for p in cohort_dir.iterdir() if p.is_dir() and p.name != "truth")
    assert cases == ["case0000", "case0001", "case0002"]
    for case in cases:
        files = [p for p in (cohort_dir / case).rglob("*") if p.is_file()]
        assert {p.parent.name for p in files} == {"t1ce", "t2", "seg"}
        assert all(p.suffix == ".dcm" for p in files)
        for p in files[:3]:
            pydicom.dcmread(p, stop_before_pixels=True)  # readable DICOM with preamble
        assert (cohort_dir / "truth" / f"{case}.json").is_file()


def test_t1ce_sagittal_and_t2_axial_thick(cohort_dir: Path) -> None:
    t1 = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((cohort_dir / "case0000/t1ce").glob("*.dcm"))]
    t2 = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((cohort_dir / "case0000/t2").glob("*.dcm"))]
    iop1 = np.array(t1[0].ImageOrientationPatient, dtype=float)
    normal1 = np.cross(iop1[:3], iop1[3:])
    assert abs(normal1[0]) > 0.99  # sagittal: slice normal along L-R
    assert len(t1) <= 80 and t1[0].Rows <= 96 and t1[0].Columns <= 96
    assert float(t1[0].SliceThickness) == pytest.approx(2.0)
    assert [float(v) for v in t1[0].PixelSpacing] == pytest.approx([2.0, 2.0])
    assert t1[0].MRAcquisitionType == "3D" and t1[0].ContrastBolusAgent
    iop2 = np.array(t2[0].ImageOrientationPatient, dtype=float)
    assert abs(np.cross(iop2[:3], iop2[3:])[2]) > 0.99  # axial
    assert float(t2[0].SliceThickness) == pytest.approx(5.0)
    assert float(t2[0].SpacingBetweenSlices) == pytest.approx(6.0)
    assert float(t2[0].PixelSpacing[0]) < float(t1[0].PixelSpacing[0])  # finer in-plane than the T1CE
    assert t2[0].MRAcquisitionType == "2D" and "ContrastBolusAgent" not in t2[0]
    # identity shared between the two series
    assert t1[0].StudyInstanceUID == t2[0].StudyInstanceUID
    assert t1[0].FrameOfReferenceUID == t2[0].FrameOfReferenceUID
    assert t1[0].SeriesInstanceUID != t2[0].SeriesInstanceUID
    assert str(t1[0].PatientName) == "Synthetic^Case0000" and t1[0].PatientID == f"SYN-{SEED}-0000"
    assert t1[0].SpecificCharacterSet == "ISO_IR 100"


def test_sites_headers(cohort_dir: Path) -> None:
    descs = {}
    for case in ("case0000", "case0001", "case0002"):
        ds = pydicom.dcmread(next((cohort_dir / case / "t1ce").glob("*.dcm")), stop_before_pixels=True)
        descs[str(ds.Manufacturer)] = (str(ds.SeriesDescription), int(ds.PixelRepresentation))
    assert descs["SIEMENS"] == ("t1_mprage_sag_p2_iso +C", 0)
    assert descs["GE MEDICAL SYSTEMS"] == ("Sag 3D BRAVO +C", 0)
    assert descs["Philips Medical Systems"][1] == 1  # signed + rescale
    philips = pydicom.dcmread(next((cohort_dir / "case0002" / "t1ce").glob("*.dcm")))
    assert float(philips.RescaleSlope) != 1.0
    assert philips.pixel_array.min() < 0


def test_labels_csv(cohort_dir: Path) -> None:
    with (cohort_dir / "labels.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        assert tuple(reader.fieldnames or ()) == LABEL_COLUMNS
    total_lesions = sum(len(_truth(cohort_dir, c)["lesions"]) for c in ("case0000", "case0001", "case0002"))
    assert len(rows) == total_lesions
    for row in rows:
        truth = _truth(cohort_dir, row["patient"])
        assert row["metastasis_subtype"] == truth["metastasis_subtype"]
        assert row["er"] in {"0", "1"} and row["pr"] in {"0", "1"} and row["her2"] in {"0", "1"}
        assert row["her2_ihc"] in {"0", "1", "2", "3"}
        assert row["her2_ish"] in {"", "0", "1"}
        assert row["her2_3tier"] in {"positive", "low", "zero"}
        assert row["site"].startswith("site")


def test_seg_segments_match_truth(cohort_dir: Path) -> None:
    truth = _truth(cohort_dir, "case0001")
    seg = hd.seg.segread(cohort_dir / "case0001/seg/seg.dcm")
    t1 = [pydicom.dcmread(p) for p in sorted((cohort_dir / "case0001/t1ce").glob("*.dcm"))]
    src = hd.get_volume_from_series(t1, dtype=np.float32)
    labels = [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers]
    assert labels == [les["label"] for les in truth["lesions"]] + ["Pons reference"]
    for number, lesion in enumerate(truth["lesions"], start=1):
        mask = seg.get_volume(segment_numbers=[number]).match_geometry(src)
        assert int(mask.array.sum()) == lesion["voxels"] > 0
    pons = seg.get_volume(segment_numbers=[len(labels)]).match_geometry(src)
    assert int(pons.array.sum()) == truth["pons"]["voxels"]


def test_deterministic_bytes_and_seed_dependence(cohort_dir: Path, tmp_path: Path) -> None:
    spec = sample_cohort(1, SEED, 3)[0]
    site = make_sites(3)[0]
    generate_case(tmp_path / "again", spec, site, seed=SEED, size="small", effect=1.0, pons_seg=True)
    assert _digest(tmp_path / "again" / "case0000") == _digest(cohort_dir / "case0000")
    assert (tmp_path / "again/truth/case0000.json").read_bytes() == (cohort_dir / "truth/case0000.json").read_bytes()
    other = sample_cohort(1, SEED + 1, 3)[0]
    generate_case(tmp_path / "other", other, site, seed=SEED + 1, size="small", effect=1.0)
    a, b = _digest(tmp_path / "other" / "case0000"), _digest(cohort_dir / "case0000")
    assert not set(a.values()) & set(b.values())


def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def test_truth_transform_aligns_t2_onto_t1ce(cohort_dir: Path, case0: SynthCase) -> None:
    """Resampling the written T2 with the recorded transform matches the T2 truth on the T1CE grid."""
    truth = _truth(cohort_dir, "case0000")
    tx = euler_from_truth(truth)
    assert 2.0 <= truth["t1ce_to_t2"]["rotation_deg"] <= 5.0 + 1e-6
    assert 2.0 <= np.linalg.norm(truth["t1ce_to_t2"]["translation"]) <= 6.0 + 1e-6
    t1 = _read_series(cohort_dir / "case0000/t1ce")
    t2 = _read_series(cohort_dir / "case0000/t2")
    reference = sitk.GetArrayFromImage(render_t2_reference(case0))
    aligned = sitk.GetArrayFromImage(sitk.Resample(t2, t1, tx, sitk.sitkLinear, 0.0))
    naive = sitk.GetArrayFromImage(sitk.Resample(t2, t1, sitk.Transform(), sitk.sitkLinear, 0.0))
    wrong_way = sitk.GetArrayFromImage(sitk.Resample(t2, t1, tx.GetInverse(), sitk.sitkLinear, 0.0))
    # compare where the T2 slab covers the brain (bias, noise and 5 mm slices limit the best correlation)
    mask = (reference > 0.1) & (aligned > 0) & (naive > 0) & (wrong_way > 0)
    good = _correlation(aligned, reference, mask)
    bad = max(_correlation(naive, reference, mask), _correlation(wrong_way, reference, mask))
    assert good > 0.75
    assert good - bad > 0.3


def test_pons_truth_in_wm_like_brainstem(cohort_dir: Path, case0: SynthCase) -> None:
    truth = _truth(cohort_dir, "case0000")
    case = case0
    pons = sitk.GetArrayFromImage(case.pons_mask) > 0
    assert pons.sum() == truth["pons"]["voxels"]
    assert truth["pons"]["volume_mm3"] == pytest.approx(truth["pons"]["volume_true_mm3"], rel=0.25)
    centroid = np.array(truth["pons"]["centroid_lps"])
    assert np.linalg.norm(centroid - np.array(truth["pons"]["centre_exact_lps"])) < 2.0
    t1 = sitk.GetArrayFromImage(case.t1ce)
    # WM-like: pons T1CE mean close to deep-WM level, homogeneous, far above CSF
    from node.synth import anatomy

    fr = anatomy.resample_fractions(anatomy.load_template(), case.t1ce_grid, case.subject_to_template)
    wm_vals = t1[(fr[..., 1] > 0.95) & ~pons]
    csf_vals = t1[fr[..., 2] > 0.95]
    pons_vals = t1[pons]
    assert abs(pons_vals.mean() / np.median(wm_vals) - 1.0) < 0.2
    assert pons_vals.std() / pons_vals.mean() < 0.15
    assert pons_vals.mean() > 2.5 * np.median(csf_vals)
    # at the brainstem: inferior to the brain centre, near the midline of the subject's template mapping
    template_pt = case.subject_to_template.apply(centroid[None, :])[0]
    assert abs(template_pt[0]) < 2.0 and abs(template_pt[1] - 25.0) < 2.0 and abs(template_pt[2] + 33.0) < 2.0
    assert all(np.linalg.norm(np.array(les["centre_lps"]) - centroid) > 15.0 for les in truth["lesions"])


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_no_errors(cohort_dir: Path) -> None:
    for case in ("case0000", "case0001", "case0002"):  # one per vendor
        for rel in ("t1ce/0000.dcm", "t2/0003.dcm", "seg/seg.dcm"):
            out = subprocess.run(["dciodvfy", str(cohort_dir / case / rel)], capture_output=True, text=True)
            lines = (out.stdout + out.stderr).splitlines()
            errors = [line for line in lines if line.startswith("Error")]
            assert not errors, f"{case}/{rel}: {errors}"


@pytest.mark.slow
def test_full_size_case(tmp_path: Path) -> None:
    import time

    spec = sample_cohort(1, 3, 3)[0]
    start = time.perf_counter()
    truth = generate_case(tmp_path, spec, make_sites(3)[0], seed=3, size="full")
    elapsed = time.perf_counter() - start
    assert elapsed < 60.0
    t1 = sorted((tmp_path / "case0000/t1ce").glob("*.dcm"))
    assert len(t1) == 176
    ds = pydicom.dcmread(t1[0], stop_before_pixels=True)
    assert (ds.Rows, ds.Columns) == (256, 256)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([1.0, 1.0])
    t2 = pydicom.dcmread(next((tmp_path / "case0000/t2").glob("*.dcm")), stop_before_pixels=True)
    assert float(t2.PixelSpacing[0]) == pytest.approx(0.8)
    assert 1000 < truth.data["pons"]["volume_mm3"] < 1600


def test_skull_option_adds_scalp_but_keeps_truth() -> None:
    spec = sample_cohort(2, SEED, 3)[1]
    site = make_sites(3)[spec.site_index]
    plain = synthesize_case(spec, site, seed=SEED, size="small", skull=False)
    head = synthesize_case(spec, site, seed=SEED, size="small", skull=True)
    for a, b in zip(plain.lesion_masks, head.lesion_masks, strict=True):
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert np.array_equal(sitk.GetArrayFromImage(plain.pons_mask), sitk.GetArrayFromImage(head.pons_mask))
    bright = 0.8 * site.intensity_scale  # scalp fat is T1-bright
    n_plain = int((sitk.GetArrayFromImage(plain.t1ce) > bright).sum())
    n_head = int((sitk.GetArrayFromImage(head.t1ce) > bright).sum())
    assert n_head > n_plain * 1.2


def test_truth_round_trip(cohort_dir: Path) -> None:
    truth = load_truth(cohort_dir / "truth" / "case0001.json")
    assert truth.case_id == "case0001"
    assert truth.metastasis_subtype == truth.data["metastasis_subtype"]
    assert len(truth.lesions) == len(truth.label_rows()) >= 1
    tx = truth.t1ce_to_t2()
    assert isinstance(tx, sitk.Euler3DTransform)
    assert np.allclose(tx.GetTranslation(), truth.data["t1ce_to_t2"]["translation"])
    assert len(truth.pons_centroid_lps) == 3


def test_parallel_workers_give_identical_files(cohort_dir: Path, tmp_path: Path) -> None:
    generate_cohort(tmp_path, cases=2, seed=SEED, size="small", sites=3, pons_seg=True, workers=2)
    for case in ("case0000", "case0001"):
        assert _digest(tmp_path / case) == _digest(cohort_dir / case)


def test_fixed_lesion_count(tmp_path: Path) -> None:
    from node.cli import main

    assert main(["synth", "--out", str(tmp_path), "--cases", "2", "--seed", "4", "--lesions", "1"]) == 0
    rows = (tmp_path / "labels.csv").read_text(encoding="utf-8").strip().splitlines()
    assert len(rows) == 1 + 2  # header + one lesion per case
