"""``ainode synth`` + ``ainode features`` end to end, and the readable errors on bad studies."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pydicom
import pytest

from node.cli import main
from node.imaging.features import FEATURE_NAMES
from node.imaging.table import QC_COLUMNS
from tests.pipeline.conftest import case_dirs


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_features_on_small_cohort(small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = case_dirs(small_cohort)
    out = tmp_path / "features.csv"
    assert main(["features", *map(str, cases), "--out", str(out)]) == 0

    summary = json.loads(capsys.readouterr().out)
    header, rows = _read_rows(out)
    assert header[: len(QC_COLUMNS)] == list(QC_COLUMNS)
    assert header[len(QC_COLUMNS):] == list(FEATURE_NAMES)
    assert len(FEATURE_NAMES) == 200

    labels = list(csv.DictReader((small_cohort / "labels.csv").open(encoding="utf-8")))
    assert len(rows) == len(labels) == summary["rows"]
    assert {r["case"] for r in rows} == {c.name for c in cases}
    for row in rows:
        assert row["qc_error"] == ""
        assert row["pons_method"] in {"seg", "auto", "whole-brain", "none"}  # none: no usable reference
        assert float(row["lesion_volume_ml"]) > 0
        values = [float(row[name]) for name in FEATURE_NAMES]
        assert all(math.isfinite(v) for v in values)

    study = summary["studies"][0]
    assert study["features_per_lesion"] == 200
    for stage in ("load", "preprocess", "features", "total"):
        assert study["timings_s"][stage] > 0
    assert summary["peak_rss_mb"] > 0


def _assert_clean_failure(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ainode features")]
    assert lines, err
    for needle in needles:
        assert needle.lower() in err.lower(), err
    return err


def test_missing_t1ce_is_a_clear_error(small_case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(small_case / "t1ce")
    _assert_clean_failure(capsys, ["features", str(small_case), "--out", str(tmp_path / "f.csv")], "T1CE")
    assert not (tmp_path / "f.csv").exists()


def test_corrupt_file_is_named(small_case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = sorted((small_case / "t2").iterdir())[3]
    victim.write_bytes(b"this is not DICOM" * 20)
    _assert_clean_failure(capsys, ["features", str(small_case), "--out", str(tmp_path / "f.csv")], victim.name)


def test_not_mr_is_refused(small_case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for series in ("t1ce", "t2"):
        for path in (small_case / series).iterdir():
            ds = pydicom.dcmread(path)
            ds.Modality = "CT"
            ds.SOPClassUID = pydicom.uid.CTImageStorage
            ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
            ds.save_as(path)
    _assert_clean_failure(capsys, ["features", str(small_case), "--out", str(tmp_path / "f.csv")], "MR")


def test_not_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_clean_failure(capsys, ["features", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f.csv")],
                          "not a folder")


def test_keep_going_reports_bad_and_keeps_good(
    small_cohort: Path, small_case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(small_case / "seg")
    good = case_dirs(small_cohort)[1]
    out = tmp_path / "f.csv"
    assert main(["features", str(small_case), str(good), "--out", str(out), "--keep-going"]) == 2
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["failed"][0]["case"] == small_case.name
    assert "SEG" in summary["failed"][0]["error"] or "segmentation" in summary["failed"][0]["error"].lower()
    _, rows = _read_rows(out)
    assert rows and {r["case"] for r in rows} == {good.name}


@pytest.mark.slow
def test_full_size_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "full"
    assert main(["synth", "--out", str(root), "--cases", "1", "--seed", "5", "--size", "full"]) == 0
    capsys.readouterr()
    case = case_dirs(root)[0]
    out = tmp_path / "full.csv"
    assert main(["features", str(case), "--out", str(out)]) == 0
    _, rows = _read_rows(out)
    assert rows
    for row in rows:
        assert row["qc_error"] == ""
        assert all(math.isfinite(float(row[name])) for name in FEATURE_NAMES)


def test_parallel_workers_give_the_same_table(
    small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [str(c) for c in case_dirs(small_cohort)]
    serial, parallel = tmp_path / "serial.csv", tmp_path / "parallel.csv"
    assert main(["features", *cases, "--out", str(serial)]) == 0
    assert main(["features", *cases, "--out", str(parallel), "--workers", "2"]) == 0
    capsys.readouterr()
    assert _read_rows(serial) == _read_rows(parallel)
