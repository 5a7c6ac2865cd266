"""Learning tasks and the join of the feature table (``ainode features``) with the labels table.

Join: ``features.case == labels.patient`` and ``features.segment_number == labels.lesion``. Every non-QC numeric
column of the feature table is a feature. Rows with a ``qc_error`` or a missing label are dropped (and logged);
features that are constant or all-missing in the training table are dropped before training.

Tasks (docs/method.md §1.1, §2): ``subtype`` (4 classes, the primary-tumour subtype as a one-hot input),
``subtype-noprimary`` (the same target without it), ``er``/``pr``/``her2`` (binary) and ``her2-3tier``
(zero / low / positive). The primary subtype is one-hot encoded over all four classes (no reference level) in
columns named ``primary_subtype=<class>``; an unknown primary is all zeros and is refused at prediction time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from node.errors import ConfigError
from node.imaging.table import QC_COLUMNS
from node.labels import subtype_from_receptors
from node.model.tasks import (
    BINARY_CLASSES,
    HER2_TIER_CLASSES,
    PRIMARY_COLUMNS,
    SUBTYPE_CLASSES,
    Task,
    primary_one_hot,
)
from node.vocabulary import Subtype

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
StrArray = npt.NDArray[np.str_]

LABEL_COLUMNS: tuple[str, ...] = (
    "patient", "lesion", "site", "metastasis_subtype", "primary_subtype",
    "er", "pr", "her2", "her2_ihc", "her2_ish", "her2_3tier",
)
def baseline_labels(task: Task, primary: Sequence[str]) -> tuple[IntArray, str] | None:
    """The non-conversion baseline (the metastasis keeps the primary's status) as class indices, with its definition.

    ``None`` when the task has no such baseline (HER2 three-tier: the primary subtype carries no IHC score) or
    a primary subtype is unknown. ER and PR use the primary's hormone-receptor status as a proxy (HR+ = ER+ or
    PR+), which the definition string says.
    """
    if task is Task.HER2_3TIER or any(p not in SUBTYPE_CLASSES for p in primary):
        return None
    subtypes = [Subtype(p) for p in primary]
    if task in (Task.SUBTYPE, Task.SUBTYPE_NOPRIMARY):
        return np.array([SUBTYPE_CLASSES.index(s.value) for s in subtypes], dtype=np.int64), (
            "non-conversion: the metastasis subtype equals the primary-tumour subtype"
        )
    if task is Task.HER2:
        return np.array([int(s.her2_positive) for s in subtypes], dtype=np.int64), (
            "non-conversion: HER2 status of the primary tumour"
        )
    return np.array([int(s.hr_positive) for s in subtypes], dtype=np.int64), (
        f"non-conversion proxy: hormone-receptor status of the primary tumour (HR+ = ER+ or PR+) for {task.value}"
    )


@dataclass(frozen=True)
class Dataset:
    """Model inputs and targets, one row per lesion, ready for scikit-learn."""

    task: Task
    x: FloatArray
    feature_names: tuple[str, ...]
    y: IntArray
    groups: StrArray  # patient id per row (CV folds, bootstrap and GEE cluster on it)
    sites: StrArray
    primary: StrArray  # primary subtype per row ("" if unknown)
    lesions: IntArray

    @property
    def classes(self) -> tuple[str, ...]:
        return self.task.classes

    @property
    def n_patients(self) -> int:
        return int(np.unique(self.groups).size)

    def class_counts(self) -> dict[str, int]:
        return {c: int(np.sum(self.y == i)) for i, c in enumerate(self.classes)}

    def subset(self, mask: npt.NDArray[np.bool_]) -> Dataset:
        """The rows where ``mask`` is true (e.g. one site, for a held-out-site evaluation)."""
        return Dataset(
            task=self.task, x=self.x[mask], feature_names=self.feature_names, y=self.y[mask],
            groups=self.groups[mask], sites=self.sites[mask], primary=self.primary[mask], lesions=self.lesions[mask],
        )

    def summary(self) -> dict[str, object]:
        """Training-data summary for manifests and cards (counts only, no identifiers)."""
        sites, counts = np.unique(self.sites, return_counts=True)
        return {
            "n_lesions": int(self.y.size),
            "n_patients": self.n_patients,
            "class_counts": self.class_counts(),
            "lesions_per_site": {str(s): int(c) for s, c in zip(sites, counts, strict=True)},
            "n_features": len(self.feature_names),
        }


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        return pd.read_csv(path, dtype={"case": str, "patient": str, "site": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} file {path} is not a readable CSV table: {exc}") from exc


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{what} lacks the column(s) {', '.join(missing)}")


def _flag(value: object) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true", "+", "positive", "pos", "yes"):
        return True
    if text in ("0", "0.0", "false", "-", "negative", "neg", "no"):
        return False
    if text == "":
        return None
    raise ConfigError(f"labels: receptor status {value!r} is not one of 0/1, +/-, positive/negative")


def _metastasis_subtype(row: pd.Series) -> str | None:
    raw = row.get("metastasis_subtype")
    receptors = [_flag(row.get(k)) for k in ("er", "pr", "her2")]
    derived = (
        subtype_from_receptors(bool(receptors[0]), bool(receptors[1]), bool(receptors[2])).value
        if all(r is not None for r in receptors)
        else None
    )
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip() == "":
        return derived
    text = str(raw).strip()
    if text not in SUBTYPE_CLASSES:
        raise ConfigError(f"labels: metastasis subtype {text!r} is not one of {', '.join(SUBTYPE_CLASSES)}")
    if derived is not None and derived != text:
        logger.warning("labels: subtype %s disagrees with its receptors (%s); using the subtype column", text, derived)
    return text


def _target(task: Task, row: pd.Series) -> str | None:
    if task in (Task.SUBTYPE, Task.SUBTYPE_NOPRIMARY):
        return _metastasis_subtype(row)
    if task is Task.HER2_3TIER:
        raw = row.get("her2_3tier")
        if raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip() == "":
            return None
        text = str(raw).strip().lower()
        if text not in HER2_TIER_CLASSES:
            raise ConfigError(f"labels: HER2 tier {raw!r} is not one of {', '.join(HER2_TIER_CLASSES)}")
        return text
    flag = _flag(row.get(task.value))
    return None if flag is None else BINARY_CLASSES[int(flag)]


def _primary(row: pd.Series) -> str:
    raw = row.get("primary_subtype")
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return ""
    text = str(raw).strip()
    if text and text not in SUBTYPE_CLASSES:
        raise ConfigError(f"labels: primary subtype {text!r} is not one of {', '.join(SUBTYPE_CLASSES)}")
    return text


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Every numeric column of a feature table that is not a QC / identity / label column."""
    skip = set(QC_COLUMNS) | set(LABEL_COLUMNS)
    return [
        c for c in frame.columns
        if c not in skip and not c.startswith("_") and pd.api.types.is_numeric_dtype(frame[c])
    ]


def load_dataset(
    features_csv: Path,
    labels_csv: Path,
    task: Task,
    feature_names: Sequence[str] | None = None,
) -> Dataset:
    """Join features and labels for ``task``.

    With ``feature_names`` (evaluation of a trained bundle) exactly those inputs are used and a missing one is
    refused; without it (training) every usable feature column is used.
    """
    feats = _read_csv(features_csv, "features")
    labels = _read_csv(labels_csv, "labels")
    _require(feats, ("case", "segment_number"), f"features file {features_csv}")
    _require(labels, ("patient", "lesion"), f"labels file {labels_csv}")
    if "qc_error" in feats.columns:
        failed = feats["qc_error"].notna() & (feats["qc_error"].astype(str).str.strip() != "")
        if failed.any():
            logger.warning("dropping %d lesion(s) whose feature extraction failed QC", int(failed.sum()))
        feats = feats.loc[~failed]
    feats = feats.copy()  # consolidate blocks (the table is wide) before adding the join keys
    feats = feats.assign(_case=feats["case"].astype(str), _lesion=pd.to_numeric(feats["segment_number"]).astype(int))
    labels = labels.assign(_case=labels["patient"].astype(str), _lesion=pd.to_numeric(labels["lesion"]).astype(int))
    if labels.duplicated(["_case", "_lesion"]).any():
        raise ConfigError(f"labels file {labels_csv} has more than one row for the same patient and lesion")
    merged = feats.merge(labels, on=["_case", "_lesion"], how="inner", suffixes=("", "_label"))
    unmatched = len(feats) - len(merged)
    if unmatched:
        logger.warning("%d lesion(s) of the feature table have no label row and are left out", unmatched)

    targets = [_target(task, row) for _, row in merged.iterrows()]
    primary = [_primary(row) for _, row in merged.iterrows()]
    keep = np.array([t is not None for t in targets], dtype=bool)
    if task.uses_primary:
        keep &= np.array([p != "" for p in primary], dtype=bool)
    if (~keep).any():
        logger.warning("dropping %d lesion(s) without a %s label (or primary subtype)", int((~keep).sum()), task.value)

    if feature_names is None:
        columns = feature_columns(feats)
        values = merged[columns].to_numpy(dtype=np.float64)[keep]
        usable = [
            c for i, c in enumerate(columns)
            if np.isfinite(values[:, i]).any() and np.nanstd(values[:, i]) > 0.0
        ]
        if len(usable) < len(columns):
            logger.warning("dropping %d constant or empty feature column(s)", len(columns) - len(usable))
        radiomic = usable
    else:
        radiomic = [c for c in feature_names if c not in PRIMARY_COLUMNS]
        missing = [c for c in radiomic if c not in feats.columns]
        if missing:
            raise ConfigError(
                f"features file {features_csv} lacks {len(missing)} feature(s) the model needs "
                f"(first: {', '.join(missing[:3])}); was it extracted with the same radiomics configuration?"
            )
    x = merged[radiomic].to_numpy(dtype=np.float64)
    names = list(radiomic)
    if task.uses_primary:
        onehot = np.array([[primary_one_hot(p or None)[c] for c in PRIMARY_COLUMNS] for p in primary], dtype=np.float64)
        x = np.hstack([x, onehot]) if len(primary) else np.zeros((0, len(names) + len(PRIMARY_COLUMNS)))
        names += list(PRIMARY_COLUMNS)
    if feature_names is not None and tuple(names) != tuple(feature_names):
        raise ConfigError("the model's feature list does not match its task's input encoding")
    finite = np.isfinite(x).all(axis=1)
    if (keep & ~finite).any():
        logger.warning("dropping %d lesion(s) with missing feature values", int((keep & ~finite).sum()))
    keep &= finite
    if not keep.any():
        raise ConfigError(f"no lesion has both usable features and a {task.value} label after the join")
    y = np.array([task.classes.index(t) for t, k in zip(targets, keep, strict=True) if k], dtype=np.int64)
    sites = merged["site"].astype(str).to_numpy() if "site" in merged.columns else np.full(len(merged), "")
    return Dataset(
        task=task,
        x=x[keep],
        feature_names=tuple(names),
        y=y,
        groups=merged["_case"].to_numpy(dtype=str)[keep],
        sites=np.asarray(sites, dtype=str)[keep],
        primary=np.asarray(primary, dtype=str)[keep],
        lesions=merged["_lesion"].to_numpy(dtype=np.int64)[keep],
    )
