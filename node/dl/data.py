"""The deep model's training table: features + labels (the tree models' format, :mod:`node.training.dataset`)
joined with the lesion crops (:mod:`node.imaging.crops`), one row per lesion, ER / PR / HER2 together.

A lesion enters when it has usable radiomic features, a crop and at least one of the three labels; a missing
label is ``-1`` (masked out of the loss and of that task's metrics). ``groups`` is the patient of every row:
every split of :mod:`node.dl.train` keeps a patient's lesions on one side.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from node.errors import ConfigError
from node.imaging.crops import CHANNELS, F32, read_crop
from node.model.tasks import Task
from node.training.dataset import feature_columns, load_dataset

logger = logging.getLogger(__name__)

DL_TASKS: tuple[Task, ...] = (Task.ER, Task.PR, Task.HER2)


@dataclass(frozen=True)
class DlDataset:
    """Arrays for the deep model, row-aligned: radiomics ``(n, F)``, crops ``(n, C, S, S, S)``, location
    ``(n, L)``, labels ``(n, 3)`` in :data:`DL_TASKS` order (0/1, -1 missing), patient and lesion per row."""

    radiomics: npt.NDArray[np.float64]
    feature_names: tuple[str, ...]
    images: F32
    location: F32
    y: npt.NDArray[np.int64]
    groups: npt.NDArray[np.str_]
    lesions: npt.NDArray[np.int64]

    @property
    def n_patients(self) -> int:
        return int(np.unique(self.groups).size)

    @property
    def crop_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, idx: npt.NDArray[np.intp]) -> DlDataset:
        return DlDataset(self.radiomics[idx], self.feature_names, self.images[idx], self.location[idx],
                         self.y[idx], self.groups[idx], self.lesions[idx])

    def summary(self) -> dict[str, object]:
        """Counts only (no identifiers), for manifests and cards."""
        return {
            "n_lesions": int(self.y.shape[0]), "n_patients": self.n_patients, "n_features": len(self.feature_names),
            "crop_size": self.crop_size, "channels": list(CHANNELS),
            "positives": {t.value: int(np.sum(self.y[:, i] == 1)) for i, t in enumerate(DL_TASKS)},
            "negatives": {t.value: int(np.sum(self.y[:, i] == 0)) for i, t in enumerate(DL_TASKS)},
        }


def _usable_features(features_csv: Path) -> list[str]:
    frame = pd.read_csv(features_csv)
    names = feature_columns(frame)
    values = frame[names].to_numpy(dtype=np.float64)
    return [n for i, n in enumerate(names) if np.isfinite(values[:, i]).any() and np.nanstd(values[:, i]) > 0.0]


def load_dl_dataset(features_csv: Path, labels_csv: Path, crops_dir: Path,
                    feature_names: Sequence[str] | None = None) -> DlDataset:
    """Join the three receptor tasks' tables and the crops (``crops_dir``, :mod:`node.imaging.crops`)."""
    if not crops_dir.is_dir():
        raise ConfigError(f"crops folder {crops_dir} not found (write it with --crops / make_dl_demo)")
    names = list(feature_names) if feature_names is not None else _usable_features(features_csv)
    rows: dict[tuple[str, int], dict[str, object]] = {}
    for k, task in enumerate(DL_TASKS):
        try:
            data = load_dataset(features_csv, labels_csv, task, feature_names=names)
        except ConfigError as exc:
            logger.warning("no %s labels usable: %s", task.value, exc.message)
            continue
        for i in range(data.y.size):
            key = (str(data.groups[i]), int(data.lesions[i]))
            row = rows.setdefault(key, {"x": data.x[i], "y": [-1, -1, -1]})
            labels = row["y"]
            assert isinstance(labels, list)
            labels[k] = int(data.y[i])
    if not rows:
        raise ConfigError("no lesion has usable features and an ER, PR or HER2 label")
    keys = sorted(rows)
    crops = [read_crop(crops_dir, case, lesion) for case, lesion in keys]
    sizes = {c.image.shape for c in crops}
    if len(sizes) != 1:
        raise ConfigError(f"the crops in {crops_dir} do not all have one shape: {sorted(sizes)}")
    return DlDataset(
        radiomics=np.stack([np.asarray(rows[k]["x"], dtype=np.float64) for k in keys]),
        feature_names=tuple(names),
        images=np.stack([c.image for c in crops]).astype(np.float32),
        location=np.stack([c.location() for c in crops]),
        y=np.array([rows[k]["y"] for k in keys], dtype=np.int64),
        groups=np.array([k[0] for k in keys], dtype=str),
        lesions=np.array([k[1] for k in keys], dtype=np.int64),
    )
