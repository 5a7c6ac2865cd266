"""``ainode dataset import-bcbm`` on a small fake replica of TCIA BCBM-RadioGenomics (tests/learn/bcbm_fake.py)."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import SimpleITK as sitk

from node.cli import dataset as dataset_command
from node.datasets.bcbm.clinical import LABEL_COLUMNS, read_clinical
from node.datasets.bcbm.features import T1CE_FEATURES, ExtractOptions
from node.datasets.bcbm.importer import ImportOptions, ImportResult, import_bcbm
from node.datasets.bcbm.layout import DatasetLayoutError, discover
from node.datasets.bcbm.masks import classify_mask_name, decision_counts, normalise_name
from node.datasets.bcbm.train import MODEL_NOTE
from node.errors import ConfigError, GeometryError, SegmentationError
from node.imaging.features import FEATURE_NAMES
from node.imaging.table import QC_COLUMNS
from node.model.bundle import load_bundle
from node.model.tasks import Task
from node.training.cv import grouped_folds
from node.training.dataset import load_dataset
from tests.learn.bcbm_fake import (
    DEFAULT_PATIENTS,
    HEADER,
    FakePatient,
    FakeScan,
    Replica,
    scan_id,
    write_replica,
    write_workbook,
)

WHOLE_BRAIN = ImportOptions(extract=ExtractOptions(pons="whole-brain"))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Replica:
    return write_replica(tmp_path_factory.mktemp("bcbm") / "download")


@pytest.fixture(scope="module")
def imported(replica: Replica, tmp_path_factory: pytest.TempPathFactory) -> ImportResult:
    return import_bcbm(replica.root, tmp_path_factory.mktemp("bcbm-out") / "tables", WHOLE_BRAIN)


def _one_patient(root: Path) -> Replica:
    return write_replica(root, (FakePatient(0, ("+", "-", "+"), (FakeScan(0, 1),)),))


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ainode")
    sub = parser.add_subparsers(dest="command", required=True)
    dataset_command.register(sub)
    args = parser.parse_args(argv)
    return int(args.handler(args))


# ------------------------------------------------------------------------------------------- mask names


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("Plan1_TgtA_220Gy80", "target"), ("TgtB", "target"), ("PTV", "target"), ("18Gy", "target"),
        ("tumor", "lesion"), ("Tumor2", "lesion"), ("met1", "lesion"), ("METS_3", "lesion"), ("2_left", "lesion"),
        ("Lt_frontal", "lesion"), ("l_frntl", "lesion"), ("rtinfcrblm", "lesion"), ("pineal_region", "lesion"),
        ("bs", "structure"), ("BS", "structure"), ("brainstem", "structure"), ("right_motor_strip", "structure"),
        ("leftvent", "structure"), ("LeftVent", "structure"), ("optic_chiasm", "structure"), ("Lt_ON", "structure"),
        ("cavity", "cavity"), ("bed", "cavity"), ("resection", "cavity"), ("tumor_bed", "cavity"),
        ("aneurysm", "other"), ("xyz", "unknown"),
    ],
)  # fmt: skip
def test_mask_names_are_classified_by_the_rule_table(name: str, category: str) -> None:
    decision = classify_mask_name(name)
    assert decision.category == category
    assert decision.is_lesion is (category in ("lesion", "target"))


def test_name_normalisation_and_decision_counts() -> None:
    assert normalise_name("Plan1_TgtA_220Gy80") == "plan_1_tgt_a_220_gy_80"
    assert normalise_name(" Left-Vent ") == "left_vent"
    counts = decision_counts(classify_mask_name(n) for n in ("tumor", "met2", "Plan1_TgtA_220Gy80", "bs", "cavity"))
    assert counts["by_category"] == {"cavity": 1, "lesion": 2, "structure": 1, "target": 1}
    assert counts["by_rule"] == {"cavity": 1, "lesion-term": 2, "override": 1, "treatment-target": 1}
    assert (counts["lesion"], counts["not_lesion"]) == (3, 2)


# ------------------------------------------------------------------------------------------- the tables


def test_feature_table_schema_and_values(imported: ImportResult, replica: Replica) -> None:
    rows = _rows(imported.features_csv)
    with imported.features_csv.open(encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert len(T1CE_FEATURES) == 107 and FEATURE_NAMES[:107] == T1CE_FEATURES
    assert header == [*QC_COLUMNS, *T1CE_FEATURES]
    assert len(rows) == replica.lesion_masks
    for row in rows:
        values = [float(row[name]) for name in T1CE_FEATURES]
        assert all(math.isfinite(v) for v in values), row["segment_label"]
        assert row["qc_error"] == ""
        assert row["segment_label"] not in ("bs", "cavity")
        assert row["study_instance_uid"].startswith(row["case"] + "-")
        scan_number = int(row["study_instance_uid"].rsplit("-", 1)[1])
        assert int(row["segment_number"]) // 1000 == scan_number
        assert float(row["shape_VoxelVolume"]) == pytest.approx(float(row["lesion_voxels"]))  # 1 mm voxels
        # z-scored against the brain: the enhancing lesion sits well above the reference mean, in SD units
        assert 0.5 < float(row["t1ce_firstorder_90Percentile"]) < 20.0
        assert row["pons_method"] == "whole-brain"


def test_masks_table_and_summary_count_every_decision(imported: ImportResult, replica: Replica) -> None:
    masks = _rows(imported.masks_csv)
    assert len(masks) == replica.lesion_masks + replica.other_masks
    assert {m["mask_name"] for m in masks if m["is_lesion"] == "0"} == {"bs", "cavity"}
    summary = json.loads(imported.summary_json.read_text())
    n_scans = len(replica.scan_dirs)
    assert summary["scans"] == n_scans and summary["patients"] == len(DEFAULT_PATIENTS)
    by_category = summary["masks"]["by_category"]
    assert by_category["structure"] == by_category["cavity"] == n_scans
    assert by_category["lesion"] + by_category["target"] == replica.lesion_masks == summary["masks"]["lesion"]
    assert summary["lesions"] == {"rows": replica.lesion_masks, "with_features": replica.lesion_masks,
                                  "with_qc_error": 0, "patients": len(DEFAULT_PATIENTS)}  # fmt: skip
    assert summary["workbook"]["rows_without_scan"] == 1
    assert summary["workbook"]["patients_with_conflicting_labels"] == 1
    assert summary["features_per_lesion"] == 107


def test_labels_map_plus_minus_blank_and_derive_the_subtype(imported: ImportResult) -> None:
    rows = _rows(imported.labels_csv)
    assert list(rows[0]) == list(LABEL_COLUMNS)
    by_patient = {r["patient"]: r for r in rows}
    p0, p1, p3, p6 = (by_patient[f"BCBM-RadioGenomics-{i}"] for i in (0, 1, 3, 6))
    assert (p0["er"], p0["pr"], p0["her2"], p0["metastasis_subtype"]) == ("1", "1", "0", "HR+/HER2-")
    assert (p1["er"], p1["pr"], p1["her2"], p1["metastasis_subtype"], p1["site"]) == ("1", "0", "1", "HR+/HER2+",
                                                                                      "bcbm-3T")  # fmt: skip
    assert (p3["er"], p3["pr"], p3["her2"], p3["metastasis_subtype"]) == ("0", "0", "0", "TN")
    # PR blank in the workbook; HER2 '+' on one scan and '-' on the other: both missing, no subtype
    assert (p6["er"], p6["pr"], p6["her2"], p6["metastasis_subtype"]) == ("1", "", "", "")
    assert all(r[c] == "" for r in rows for c in ("primary_subtype", "her2_ihc", "her2_ish", "her2_3tier"))
    assert {r["site"] for r in rows if r["patient"] == "BCBM-RadioGenomics-3"} == {"bcbm-1.5T", "bcbm-unknown"}
    features = _rows(imported.features_csv)
    assert [(r["case"], r["segment_number"]) for r in features] == [(r["patient"], r["lesion"]) for r in rows]


def test_workbook_reader_handles_the_header_quirk_and_odd_values(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Clinical+Genetics"
    sheet.append(list(HEADER))
    sheet.append(["BCBM-RadioGenomics-1-0", 50, 2010, None, "SIEMENS", 3, "F", "+", " - ", None])
    sheet.append(["BCBM-RadioGenomics-2-0", 50, 2010, None, None, None, "F", " ", "equivocal", "+"])
    sheet.append([None] * len(HEADER))
    path = tmp_path / "clinical.xlsx"
    book.save(path)
    table = read_clinical(path)
    assert set(table.scans) == {"BCBM-RadioGenomics-1-0", "BCBM-RadioGenomics-2-0"}
    first, second = table.scans["BCBM-RadioGenomics-1-0"], table.scans["BCBM-RadioGenomics-2-0"]
    assert first.receptors == {"ER": True, "PR": False, "HER2": None}
    assert (first.field_strength, first.manufacturer) == ("3T", "SIEMENS")
    assert second.receptors == {"ER": None, "PR": None, "HER2": True}
    assert second.field_strength == "unknown"
    assert dict(table.unrecognised_values) == {"equivocal": 1}


def test_patients_stay_together_in_the_learning_table(imported: ImportResult) -> None:
    data = load_dataset(imported.features_csv, imported.labels_csv, Task.ER)
    assert set(data.feature_names) <= set(T1CE_FEATURES) and len(data.feature_names) > 90
    scans_of_patient: dict[str, set[str]] = {}
    for row in _rows(imported.features_csv):
        scans_of_patient.setdefault(row["case"], set()).add(row["study_instance_uid"])
    assert max(len(s) for s in scans_of_patient.values()) == 2  # multi-scan patients exist...
    assert set(data.groups) == set(scans_of_patient)  # ...and each is one group
    for train, test in grouped_folds(data.y, data.groups, 3, seed=0):
        assert not set(data.groups[train]) & set(data.groups[test])


# ------------------------------------------------------------------------------------------- end to end


def test_cli_imports_and_trains_marked_nested_cv_bundles(
    replica: Replica, imported: ImportResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = _run_cli(["dataset", "import-bcbm", str(replica.root), "--out", str(out), "--train",
                     "--grid", "tiny", "--folds", "2", "--seed", "1", "--pons", "whole-brain", "--no-progress"])
    assert code == 0, capsys.readouterr().out
    assert (out / "features.csv").read_text() == imported.features_csv.read_text()  # deterministic
    outcomes = json.loads((out / "training_summary.json").read_text())
    for task in ("er", "pr", "her2"):
        assert outcomes[task]["trained"], outcomes[task]
        assert outcomes[task]["n_patients"] >= 9
        assert 0.0 <= outcomes[task]["nested"]["pooled_auc"] <= 1.0
        bundle = load_bundle(out / "models" / task)
        assert bundle.manifest["model_variant"] == MODEL_NOTE
        assert bundle.manifest["name"] == f"bcbm-radiogenomics-t1ce-{task}"
        assert "nested" in bundle.manifest["metrics"]
        assert set(bundle.feature_names) <= set(T1CE_FEATURES)
    printed = capsys.readouterr().out
    assert "nested CV" in printed and "15 lesions with 107 features" in printed


def test_worker_processes_give_the_same_tables(tmp_path: Path) -> None:
    rep = write_replica(tmp_path / "w", DEFAULT_PATIENTS[:3])
    serial = import_bcbm(rep.root, tmp_path / "serial", WHOLE_BRAIN)
    parallel = import_bcbm(rep.root, tmp_path / "parallel", ImportOptions(workers=2, extract=WHOLE_BRAIN.extract))
    for name in ("features.csv", "labels.csv", "masks.csv"):
        assert (tmp_path / "parallel" / name).read_text() == (tmp_path / "serial" / name).read_text()
    assert parallel.summary["workers"] == 2 and parallel.summary["lesions"] == serial.summary["lesions"]


# ------------------------------------------------------------------------------------------- errors


def test_missing_or_wrong_folder_is_a_layout_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        discover(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="BCBM-RadioGenomics_Images_Masks"):
        discover(tmp_path / "empty")


def test_scan_without_image_and_missing_workbook(tmp_path: Path) -> None:
    rep = _one_patient(tmp_path / "a")
    moved = rep.workbook.rename(tmp_path / "elsewhere.xlsx")
    with pytest.raises(DatasetLayoutError, match="clinical workbook"):
        discover(rep.root)
    with pytest.raises(DatasetLayoutError, match="not found"):
        discover(rep.root, tmp_path / "nope.xlsx")
    assert discover(rep.root, moved).workbook == moved  # --clinical
    two = (FakePatient(0, ("+", "-", "+"), (FakeScan(0, 1), FakeScan(1, 1))),)
    rep = write_replica(tmp_path / "b", two)
    next(rep.scan_dirs[0].glob("*_image_ss_n4.nii.gz")).unlink()
    layout = discover(rep.root)  # one scan lacks its image: skipped and listed
    assert [s.scan_id for s in layout.scans] == [scan_id(0, 1)]
    assert layout.scans_without_image == (scan_id(0, 0),)
    next(rep.scan_dirs[1].glob("*_image_ss_n4.nii.gz")).unlink()
    with pytest.raises(DatasetLayoutError, match="with its image"):
        discover(rep.root)


def test_workbook_without_sheet_or_columns(tmp_path: Path) -> None:
    rep = _one_patient(tmp_path / "a")
    book = openpyxl.load_workbook(rep.workbook)
    book["Clinical+Genetics"].title = "Sheet2"
    book.save(rep.workbook)
    with pytest.raises(DatasetLayoutError, match="no sheet 'Clinical\\+Genetics'"):
        import_bcbm(rep.root, tmp_path / "out-a", WHOLE_BRAIN)
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Clinical+Genetics"
    sheet.append(["ID      ", "ER", "PR"])
    book.save(rep.workbook)
    with pytest.raises(DatasetLayoutError, match="lacks the column\\(s\\) HER2"):
        read_clinical(rep.workbook)
    rep.workbook.write_bytes(b"not a zip")
    with pytest.raises(DatasetLayoutError, match=r"not a readable \.xlsx"):
        read_clinical(rep.workbook)


def _replace_mask(scan_dir: Path, image: sitk.Image) -> None:
    mask = next(p for p in sorted(scan_dir.glob("*_mask_*.nii.gz")) if classify_mask_name(
        p.name.split("_mask_")[1].removesuffix(".nii.gz")).is_lesion)  # fmt: skip
    sitk.WriteImage(image, str(mask))


def test_misaligned_mask_is_a_geometry_error(tmp_path: Path) -> None:
    rep = _one_patient(tmp_path / "d")
    shifted = sitk.Image([56, 64, 36], sitk.sitkUInt8)
    shifted.SetSpacing((1.0, 1.0, 1.5))
    shifted.SetOrigin((-20.0, -32.0, -27.0))  # 8 mm off the image's origin
    shifted[28, 32, 18] = 1
    _replace_mask(rep.scan_dirs[0], shifted)
    with pytest.raises(GeometryError, match="does not lie on its image's grid: origin"):
        import_bcbm(rep.root, tmp_path / "out", WHOLE_BRAIN)
    smaller = sitk.Image([40, 64, 36], sitk.sitkUInt8)
    _replace_mask(rep.scan_dirs[0], smaller)
    with pytest.raises(GeometryError, match="size"):
        import_bcbm(rep.root, tmp_path / "out", WHOLE_BRAIN)


def test_empty_mask_is_a_segmentation_error_or_a_qc_row(tmp_path: Path) -> None:
    rep = _one_patient(tmp_path / "e")
    image = sitk.ReadImage(str(next(rep.scan_dirs[0].glob("*_image_ss_n4.nii.gz"))))
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    _replace_mask(rep.scan_dirs[0], empty)
    with pytest.raises(SegmentationError, match="is empty"):
        import_bcbm(rep.root, tmp_path / "out", WHOLE_BRAIN)
    lenient = ImportOptions(extract=ExtractOptions(pons="whole-brain", skip_invalid_masks=True))
    result = import_bcbm(rep.root, tmp_path / "out2", lenient)
    (row,) = _rows(result.features_csv)
    assert "is empty" in row["qc_error"] and row["shape_VoxelVolume"] == "nan"
    assert result.summary["lesions"]["with_qc_error"] == 1


def test_cli_reports_errors_and_refuses_to_overwrite(tmp_path: Path, imported: ImportResult,
                                                     replica: Replica) -> None:  # fmt: skip
    with pytest.raises(DatasetLayoutError):
        _run_cli(["dataset", "import-bcbm", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match=r"already holds features\.csv"):
        import_bcbm(replica.root, imported.out, WHOLE_BRAIN)
    with pytest.raises(ConfigError, match="--workers"):
        _run_cli(["dataset", "import-bcbm", str(replica.root), "--out", str(tmp_path / "o"), "--workers", "0"])


def test_tiny_lesion_is_kept_with_a_qc_error(tmp_path: Path) -> None:
    rep = _one_patient(tmp_path / "t")
    image = sitk.ReadImage(str(next(rep.scan_dirs[0].glob("*_image_ss_n4.nii.gz"))))
    tiny = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    tiny.CopyInformation(image)
    tiny[28, 32, 18] = 1
    tiny[29, 32, 18] = 1
    _replace_mask(rep.scan_dirs[0], tiny)
    result = import_bcbm(rep.root, tmp_path / "out", WHOLE_BRAIN)
    (row,) = _rows(result.features_csv)
    assert "too small" in row["qc_error"]
    assert np.isnan(float(row["t1ce_glcm_Contrast"]))


def test_fake_replica_workbook_rows_match_scans(replica: Replica) -> None:
    table = read_clinical(replica.workbook)
    layout = discover(replica.root)
    assert {s.scan_id for s in layout.scans} | {scan_id(99, 0)} == set(table.scans)
    write_workbook(replica.root / "copy.xlsx", DEFAULT_PATIENTS[:1])
    assert set(read_clinical(replica.root / "copy.xlsx").scans) == {scan_id(0, 0), scan_id(0, 1)}


# ------------------------------------------------------------------------------------------- preprocessing


def test_pons_is_located_automatically_on_a_brain_like_scan(tmp_path: Path) -> None:
    """The MNI template 'acquired' at 1.2 x 1.2 x 1.5 mm with one enhancing sphere: the auto pons passes QC."""
    from node.datasets.bcbm.features import ScanJob, extract_scan
    from node.datasets.bcbm.layout import MaskFile
    from node.imaging.pons import PONS_EXPECTED_VOLUME_MM3, mni_template

    mni = mni_template()
    spacing = (1.2, 1.2, 1.5)
    size = [round(n * s / t) for n, s, t in zip(mni.GetSize(), mni.GetSpacing(), spacing, strict=True)]
    scan = sitk.Resample(mni, size, sitk.Transform(), sitk.sitkLinear, mni.GetOrigin(), spacing, mni.GetDirection(),
                         0.0, sitk.sitkFloat32)  # fmt: skip
    centre = scan.TransformPhysicalPointToIndex((-30.0, -10.0, 30.0))
    z, y, x = np.meshgrid(*(np.arange(n) for n in scan.GetSize()[::-1]), indexing="ij")
    sphere = ((x - centre[0]) * 1.2) ** 2 + ((y - centre[1]) * 1.2) ** 2 + ((z - centre[2]) * 1.5) ** 2 <= 36.0
    array = sitk.GetArrayFromImage(scan)
    array[sphere] = 1.3 * array.max()
    image, mask = sitk.GetImageFromArray(array), sitk.GetImageFromArray(sphere.astype(np.uint8))
    image.CopyInformation(scan)
    mask.CopyInformation(scan)
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    job = ScanJob("BCBM-RadioGenomics-1-0", "BCBM-RadioGenomics-1", tmp_path / "image.nii.gz",
                  (MaskFile(1, "met", tmp_path / "mask.nii.gz"),))  # fmt: skip
    result = extract_scan(job, ExtractOptions(pons="auto"))
    assert result.pons_method == "auto" and not result.warnings
    assert result.pons_volume_ml == pytest.approx(PONS_EXPECTED_VOLUME_MM3 / 1000.0, rel=0.2)
    (lesion,) = result.lesions
    assert lesion.error == "" and lesion.voxels == pytest.approx(4 / 3 * math.pi * 216, rel=0.15)
    assert all(math.isfinite(v) for v in lesion.features.values())


def test_optional_n4_runs_and_is_recorded(tmp_path: Path) -> None:
    rep = _one_patient(tmp_path / "n4")
    options = ImportOptions(extract=ExtractOptions(pons="whole-brain", n4=True))
    result = import_bcbm(rep.root, tmp_path / "out", options)
    assert result.summary["extraction"]["n4"] == "applied"
    (row,) = _rows(result.features_csv)
    assert all(math.isfinite(float(row[name])) for name in T1CE_FEATURES)
