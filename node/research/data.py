"""A recipe task's data from a dataset folder, and the ICC stability filter.

Dataset folder (what ``ainode dataset import-bcbm`` writes, and :mod:`node.research.synthetic`):

* ``features.csv`` and ``labels.csv`` (required; the format of :mod:`node.training.dataset`);
* the recipe's second-segmentation table (default ``features_seg2.csv``, optional): the same lesions'
  features from a second segmentation, for the ICC filter;
* the recipe's batch column (e.g. ``scanner`` or ``site``) in ``labels.csv``, optional, for ComBat.

What a recipe asks for and the folder lacks is skipped and said (``notes``), never silently assumed.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from node.errors import ConfigError
from node.research.recipe import Recipe, TaskSpec
from node.training.dataset import baseline_labels, load_dataset

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
StrArray = npt.NDArray[np.str_]


@dataclass
class TaskData:
    name: str
    classes: tuple[str, ...]
    x: FloatArray
    names: tuple[str, ...]
    y: IntArray
    groups: StrArray
    batch: StrArray | None
    baseline: tuple[IntArray, str] | None
    icc: dict[str, float] | None
    notes: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_patients(self) -> int:
        return int(np.unique(self.groups).size)


def _row_keys(groups: StrArray, lesions: IntArray) -> list[tuple[str, int]]:
    return [(str(g), int(les)) for g, les in zip(groups, lesions, strict=True)]


def _batch(labels_csv: Path, column: str, keys: list[tuple[str, int]]) -> StrArray | None:
    labels = pd.read_csv(labels_csv, dtype={"patient": str})
    if column not in labels.columns:
        return None
    lookup = {(str(p), int(les)): str(b) for p, les, b in zip(labels["patient"], labels["lesion"], labels[column],
                                                             strict=True)}
    return np.array([lookup.get(k, "") for k in keys], dtype=str)


def icc_per_feature(first: FloatArray, second: FloatArray, names: tuple[str, ...]) -> dict[str, float]:
    """ICC(2,1) (two-way random effects, absolute agreement, single rater; pingouin ``ICC(A,1)``) of each feature
    between two segmentations of the same lesions. Uses no labels, so it is computed once on every lesion."""
    import pingouin as pg

    n = first.shape[0]
    out: dict[str, float] = {}
    targets = np.concatenate([np.arange(n), np.arange(n)])
    raters = np.array(["seg1"] * n + ["seg2"] * n)
    for j, name in enumerate(names):
        a, b = first[:, j], second[:, j]
        if not (np.isfinite(a).all() and np.isfinite(b).all()) or np.ptp(np.concatenate([a, b])) == 0:
            out[name] = float("nan")
            continue
        frame = pd.DataFrame({"t": targets, "r": raters, "v": np.concatenate([a, b])})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = pg.intraclass_corr(data=frame, targets="t", raters="r", ratings="v")
        out[name] = float(table.set_index("Type").loc["ICC(A,1)", "ICC"])
    return out


def _second_segmentation(path: Path, names: tuple[str, ...], keys: list[tuple[str, int]]) -> FloatArray | None:
    seg2 = pd.read_csv(path, dtype={"case": str})
    if not {"case", "segment_number"} <= set(seg2.columns):
        raise ConfigError(f"second segmentation {path} lacks the columns case, segment_number")
    seg2.index = pd.MultiIndex.from_arrays(
        [seg2["case"].astype(str), pd.to_numeric(seg2["segment_number"]).astype(int)])
    present = [n for n in names if n in seg2.columns]
    out = np.full((len(keys), len(names)), np.nan)
    rows = seg2.reindex(pd.MultiIndex.from_tuples(keys))
    for j, n in enumerate(names):
        if n in present:
            out[:, j] = pd.to_numeric(rows[n], errors="coerce").to_numpy(dtype=np.float64)
    return out


def load_task_data(recipe: Recipe, spec: TaskSpec, folder: Path) -> TaskData:
    """The rows, inputs and targets of one recipe task (derived binary tasks keep only their classes' rows)."""
    features_csv, labels_csv = folder / "features.csv", folder / "labels.csv"
    for path in (features_csv, labels_csv):
        if not path.is_file():
            raise ConfigError(f"dataset folder {folder} has no {path.name} (see docs/models.md, research recipes)")
    data = load_dataset(features_csv, labels_csv, spec.task)
    notes: list[str] = []
    keep = np.ones(data.y.size, dtype=bool)
    y = data.y
    classes = data.classes
    if spec.derived:
        pos = [data.classes.index(c) for c in spec.positive]
        neg = [data.classes.index(c) for c in spec.negative]
        keep = np.isin(data.y, pos + neg)
        y = np.isin(data.y, pos).astype(np.int64)
        classes = ("/".join(spec.negative), "/".join(spec.positive))
    present = np.unique(y[keep])
    if present.size < 2:
        only = classes[int(present[0])] if present.size else "none"
        raise ConfigError(f"task {spec.name}: the dataset has labels for only one class ({only})")
    keys = _row_keys(data.groups[keep], data.lesions[keep])
    batch = None
    if recipe.batch_column is not None:
        batch = _batch(labels_csv, recipe.batch_column, keys)
        if batch is None:
            notes.append(f"ComBat skipped: labels.csv has no '{recipe.batch_column}' column")
        elif np.unique(batch).size < 2:
            notes.append(f"ComBat skipped: only one '{recipe.batch_column}' value")
            batch = None
    icc = None
    if recipe.icc_threshold is not None and recipe.second_segmentation is not None:
        seg2_path = folder / recipe.second_segmentation
        if not seg2_path.is_file():
            notes.append(f"ICC filter skipped: no second segmentation ({recipe.second_segmentation}) in the folder")
        else:
            seg2 = _second_segmentation(seg2_path, data.feature_names, keys)
            assert seg2 is not None
            icc = icc_per_feature(data.x[keep], seg2, data.feature_names)
    baseline = None
    if recipe.baseline == "non-conversion" and not spec.derived:
        baseline = baseline_labels(spec.task, list(data.primary[keep]))
        if baseline is None:
            notes.append("no non-conversion baseline: a primary subtype is unknown or the task has none")
    return TaskData(
        name=spec.name, classes=classes, x=data.x[keep], names=data.feature_names, y=y[keep],
        groups=data.groups[keep], batch=batch, baseline=baseline, icc=icc, notes=notes,
    )
