"""Joining feature and label tables, task targets, the primary-subtype encoding and the baseline."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from node.errors import ConfigError
from node.labels import subtype_from_receptors
from node.model.tasks import PRIMARY_COLUMNS, Task, primary_one_hot
from node.training.dataset import baseline_labels, feature_columns, load_dataset
from node.training.synthetic import PLANTED_FEATURES, write_tables
from node.vocabulary import Subtype


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def small(tmp_path):
    return write_tables(tmp_path, n_patients=24, n_noise=5, seed=4, lesions_per_patient=2)


def test_join_and_tasks(small):
    labels = _rows(small.labels_csv)
    data = load_dataset(small.features_csv, small.labels_csv, Task.SUBTYPE)
    assert data.x.shape == (48, 3 + 5 + 4)
    assert data.feature_names[:3] == PLANTED_FEATURES
    assert data.feature_names[-4:] == PRIMARY_COLUMNS
    assert data.n_patients == 24
    # the labels agree row by row (join on patient + lesion) and with the shared labelling rules
    by_key = {(r["patient"], int(r["lesion"])): r for r in labels}
    for g, lesion, y, primary in zip(data.groups, data.lesions, data.y, data.primary, strict=True):
        row = by_key[(str(g), int(lesion))]
        assert data.classes[y] == row["metastasis_subtype"]
        assert primary == row["primary_subtype"]
        assert subtype_from_receptors(row["er"] == "1", row["pr"] == "1", row["her2"] == "1").value == row[
            "metastasis_subtype"
        ]
    onehot = data.x[:, -4:]
    assert np.all(onehot.sum(axis=1) == 1)
    noprimary = load_dataset(small.features_csv, small.labels_csv, Task.SUBTYPE_NOPRIMARY)
    assert not any(n.startswith("primary_subtype=") for n in noprimary.feature_names)
    her2 = load_dataset(small.features_csv, small.labels_csv, Task.HER2)
    assert her2.classes == ("negative", "positive")
    tiers = load_dataset(small.features_csv, small.labels_csv, Task.HER2_3TIER)
    assert set(tiers.classes) == {"zero", "low", "positive"}
    assert np.array_equal(tiers.y == tiers.classes.index("positive"), her2.y == 1)


def test_qc_failures_missing_labels_and_unmatched_rows_are_dropped(small, tmp_path):
    feats = _rows(small.features_csv)
    feats[0]["qc_error"] = "pons QC failed"
    feats[1]["case"] = "UNKNOWN"
    _write(tmp_path / "f.csv", feats)
    labels = _rows(small.labels_csv)
    labels[5]["metastasis_subtype"] = ""
    labels[5]["her2"] = ""
    _write(tmp_path / "l.csv", labels)
    data = load_dataset(tmp_path / "f.csv", tmp_path / "l.csv", Task.SUBTYPE)
    assert data.y.size == 48 - 3


def test_subtype_derived_from_receptors_when_blank(small, tmp_path):
    labels = _rows(small.labels_csv)
    for row in labels:
        row["metastasis_subtype"] = ""
    _write(tmp_path / "l.csv", labels)
    derived = load_dataset(small.features_csv, tmp_path / "l.csv", Task.SUBTYPE)
    original = load_dataset(small.features_csv, small.labels_csv, Task.SUBTYPE)
    assert np.array_equal(derived.y, original.y)


def test_bad_tables_are_refused(small, tmp_path):
    labels = _rows(small.labels_csv)
    labels[0]["metastasis_subtype"] = "luminal A"
    _write(tmp_path / "l.csv", labels)
    with pytest.raises(ConfigError, match="metastasis subtype"):
        load_dataset(small.features_csv, tmp_path / "l.csv", Task.SUBTYPE)
    with pytest.raises(ConfigError, match="not found"):
        load_dataset(tmp_path / "missing.csv", small.labels_csv, Task.SUBTYPE)
    _write(tmp_path / "dup.csv", [*_rows(small.labels_csv), _rows(small.labels_csv)[0]])
    with pytest.raises(ConfigError, match="more than one row"):
        load_dataset(small.features_csv, tmp_path / "dup.csv", Task.SUBTYPE)


def test_feature_columns_skip_qc_and_text():
    import pandas as pd

    frame = pd.DataFrame(
        {"case": ["a"], "lesion_volume_ml": [1.0], "segment_label": ["x"], "t2_firstorder_Mean": [2.0]}
    )
    assert feature_columns(frame) == ["t2_firstorder_Mean"]


def test_primary_encoding_and_baseline():
    assert primary_one_hot("TN") == {c: float(c.endswith("=TN")) for c in PRIMARY_COLUMNS}
    assert sum(primary_one_hot(None).values()) == 0
    primary = ["HR+/HER2-", "HR-/HER2+", "TN", "HR+/HER2+"]
    found = [baseline_labels(task, primary) for task in (Task.SUBTYPE, Task.HER2, Task.ER)]
    assert found[0] is not None and found[0][0].tolist() == [0, 2, 3, 1]
    assert found[1] is not None and found[1][0].tolist() == [0, 1, 0, 1]
    assert found[2] is not None and found[2][0].tolist() == [1, 0, 0, 1] and "proxy" in found[2][1]
    assert baseline_labels(Task.HER2_3TIER, primary) is None
    assert baseline_labels(Task.SUBTYPE, ["TN", ""]) is None
    assert Task.SUBTYPE.classes == tuple(s.value for s in Subtype)
