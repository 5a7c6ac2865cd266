"""``ainode train / evaluate / predict`` through the registered argparse sub-commands."""

from __future__ import annotations

import argparse
import json

import pytest

from node.cli import model as command
from node.errors import ConfigError
from node.training.synthetic import write_tables


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ainode")
    sub = parser.add_subparsers(dest="command", required=True)
    command.register(sub)
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_train_evaluate_predict_end_to_end(tmp_path, capsys):
    tables = write_tables(tmp_path / "data", n_patients=60, n_noise=10, seed=2)
    bundle = tmp_path / "bundle"
    assert _run(["train", "--features", str(tables.features_csv), "--labels", str(tables.labels_csv),
                 "--task", "subtype", "--out", str(bundle), "--grid", "tiny", "--folds", "3", "--no-progress",
                 "--training-data", "synthetic"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["training_data"] == "synthetic"
    assert manifest["training_data_statement"] == "synthetic training data \u2014 demonstration only"
    assert manifest["validation"]["summary"].startswith("patient-grouped 3-fold CV accuracy")
    assert _run(["evaluate", str(bundle), "--features", str(tables.features_csv), "--labels", str(tables.labels_csv),
                 "--out", str(tmp_path / "report"), "--bootstrap", "50"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["n_lesions"] == 60
    capsys.readouterr()
    assert _run(["predict", str(bundle), str(tables.features_csv), "--labels", str(tables.labels_csv)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 60
    assert all(line["label"] in metrics["classes"] and "shap" in line for line in lines)
    # without a primary subtype the subtype model refuses each lesion (exit 1, one error per line)
    assert _run(["predict", str(bundle), str(tables.features_csv)]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all("primary-tumour subtype" in line["error"] for line in lines)
    # an existing bundle is never overwritten
    with pytest.raises(ConfigError, match="not empty"):
        _run(["train", "--features", str(tables.features_csv), "--labels", str(tables.labels_csv),
              "--task", "her2", "--out", str(bundle), "--grid", "tiny"])
