"""Feature-table → JSON-lines inference used by ``ainode predict``: one prediction per lesion.

Each output line is the lesion's ids, its :class:`~node.model.prediction.Prediction` as JSON and, with a
labels table, the true class. Research use only, not for diagnosis.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from node.errors import ConfigError, NodeError
from node.model.bundle import Bundle

logger = logging.getLogger(__name__)

def iter_table_predictions(
    bundle: Bundle, features_csv: Path, primary_subtype: str | None = None, labels_csv: Path | None = None
) -> Iterator[dict[str, Any]]:
    """One JSON-able record per row of a feature table (QC failures are reported, not predicted).

    The primary subtype (``subtype`` task) comes from a ``primary_subtype`` column of the feature table, else
    from ``labels_csv`` (joined on patient and lesion), else from ``primary_subtype`` for every row.
    """
    if not features_csv.is_file():
        raise ConfigError(f"features file not found: {features_csv}")
    table = pd.read_csv(features_csv, dtype={"case": str})
    missing = [n for n in bundle.radiomic_features if n not in table.columns]
    if missing:
        raise ConfigError(
            f"features file {features_csv} lacks {len(missing)} feature(s) the model needs "
            f"(first: {', '.join(missing[:3])}); it was not extracted with the model's feature set"
        )
    primaries: dict[tuple[str, int], str] = {}
    if labels_csv is not None:
        labels = pd.read_csv(labels_csv, dtype={"patient": str})
        for _, row in labels.iterrows():
            if isinstance(row.get("primary_subtype"), str):
                primaries[(str(row["patient"]), int(row["lesion"]))] = str(row["primary_subtype"])
    for _, row in table.iterrows():
        case, lesion = str(row.get("case", "")), row.get("segment_number", "")
        record: dict[str, Any] = {"case": case, "segment_number": lesion}
        qc = row.get("qc_error")
        if isinstance(qc, str) and qc.strip():
            record["error"] = f"feature extraction failed QC: {qc}"
            yield record
            continue
        primary = row.get("primary_subtype") if "primary_subtype" in table.columns else None
        if not isinstance(primary, str):
            key = (case, int(lesion)) if str(lesion).strip() not in ("", "nan") else None
            primary = primaries.get(key, primary_subtype) if key is not None else primary_subtype
        values = {n: float(row[n]) for n in bundle.radiomic_features}
        try:
            record.update(bundle.predict(values, primary).to_json())
        except NodeError as exc:
            record["error"] = exc.message
        yield record


def print_table_predictions(records: Iterator[dict[str, Any]]) -> int:
    """Print one JSON object per line; returns the number of rows that could not be predicted."""
    failures = 0
    for record in records:
        failures += "error" in record
        try:
            print(json.dumps(record, sort_keys=True), flush=True)
        except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            break
    return failures
