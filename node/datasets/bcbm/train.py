"""ER, PR and HER2 models on an imported BCBM-RadioGenomics table: patient-grouped nested CV, one bundle per task.

Each task runs :func:`node.training.train.train` with ``nested=True`` (the grid search repeated inside every outer
fold: the honest estimate, docs/method.md §8) on the 107 T1CE features; folds are ``StratifiedGroupKFold`` on the
``case`` column, which the importer sets to the patient, so no patient is on both sides of a split. The bundle
is written by :func:`node.model.bundle.save_bundle` under ``models/<task>``; its manifest is then marked as a
T1CE-only BCBM-RadioGenomics model (:data:`MODEL_NOTE`), with its own name and intended use, because a model
without T2 and without the primary subtype is a different model from the reference method's (S1).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import ConfigError
from node.model.bundle import DEFAULT_RADIOMICS_CONFIG, MANIFEST, load_bundle
from node.model.tasks import Task
from node.training.dataset import load_dataset
from node.training.export import save_bundle
from node.training.grid import GridName
from node.training.train import TrainOptions, train

logger = logging.getLogger(__name__)

MODEL_NOTE = "T1CE-only BCBM-RadioGenomics model: not the S1 model"
TASKS: tuple[Task, ...] = (Task.ER, Task.PR, Task.HER2)
INTENDED_USE = (
    "Research only: ER / PR / HER2 status of a breast-cancer brain metastasis from 107 T1CE radiomic features "
    "(no T2, no primary-tumour subtype), trained on TCIA BCBM-RadioGenomics (Gamma Knife cohort, labels whose "
    "primary-vs-metastasis origin is undocumented). Not the S1 model and not comparable with its numbers; not a "
    "medical device."
)


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    grid: GridName = "quick"
    folds: int = 5
    scoring: str = "accuracy"
    permutations: int = 0
    progress: bool = False
    radiomics_config: Path | None = DEFAULT_RADIOMICS_CONFIG


def mark_manifest(bundle: Path, task: Task) -> dict[str, Any]:
    """Rewrite the bundle manifest with the T1CE-only name, note and intended use (artefact hashes untouched)."""
    path = bundle / MANIFEST
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(
        name=f"bcbm-radiogenomics-t1ce-{task.value}",
        model_variant=MODEL_NOTE,
        intended_use=INTENDED_USE,
        training_dataset="TCIA BCBM-RadioGenomics (DOI 10.7937/RRSE-W278, CC BY 4.0), T1CE only",
    )
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=bundle)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n")
    Path(tmp).replace(path)
    return manifest


def train_task(features_csv: Path, labels_csv: Path, models_dir: Path, task: Task,
               settings: TrainSettings) -> dict[str, Any]:  # fmt: skip
    """Train one task; returns its outcome (``trained`` False with a ``reason`` when it cannot be trained)."""
    try:
        data = load_dataset(features_csv, labels_csv, task)
        options = TrainOptions(task=task, seed=settings.seed, grid=settings.grid, scoring=settings.scoring,
                               nested=True, n_splits=settings.folds, progress=settings.progress,
                               permutations=settings.permutations)  # fmt: skip
        result = train(data, options)
    except (ConfigError, ValueError) as exc:
        reason = exc.message if isinstance(exc, ConfigError) else str(exc)
        logger.warning("%s: not trained: %s", task.value, reason)
        return {"trained": False, "reason": reason}
    bundle = save_bundle(result, models_dir / task.value, settings.radiomics_config)
    mark_manifest(bundle, task)
    load_bundle(bundle, radiomics_config=settings.radiomics_config)  # the marked bundle must still verify
    assert result.nested is not None
    metrics = result.metrics()["nested"]
    outcome: dict[str, Any] = {
        "trained": True,
        "bundle": str(bundle),
        "n_lesions": int(data.y.size),
        "n_patients": data.n_patients,
        "class_counts": data.class_counts(),
        "n_features": len(data.feature_names),
        "chosen": f"{result.search.best.selector.describe()} + {result.search.best.classifier.describe()}",
        "nested": {k: metrics[k] for k in ("scoring", "mean", "sd", "pooled_auc", "pooled_accuracy")},
    }
    if result.permutation is not None:
        null = result.permutation.to_json()
        outcome["permutation_null"] = {k: null[k] for k in ("observed", "null_mean", "n_permutations", "p_value")}
    return outcome


def train_bcbm(features_csv: Path, labels_csv: Path, models_dir: Path, settings: TrainSettings | None = None,
               tasks: tuple[Task, ...] = TASKS) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Train every task in ``tasks``; a task that cannot be trained is reported, the others still run."""
    settings = settings or TrainSettings()
    if models_dir.exists() and any(models_dir.iterdir()):
        raise ConfigError(f"models folder {models_dir} exists and is not empty")
    return {task.value: train_task(features_csv, labels_csv, models_dir, task, settings) for task in tasks}
