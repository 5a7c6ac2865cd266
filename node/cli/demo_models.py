"""The guard against serving demonstration models by accident (issue 11).

A bundle is a demonstration model when its manifest says ``training_data: synthetic`` (written by
``models/make_demo_models.py``), whatever its path. ``ainode serve`` refuses to start with such models unless
``--allow-demo-models`` / ``AINODE_ALLOW_DEMO_MODELS`` says so; ``ainode demo`` allows them and says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from node.config import Settings
from node.errors import ConfigError
from node.jobs.model_set import DEFAULT_MODELS_DIR
from node.model.bundle import MANIFEST
from node.model.provenance import SYNTHETIC
from node.model.tasks import Task

logger = logging.getLogger(__name__)


def demonstration_models(models_dir: Path | None) -> list[str]:
    """The tasks whose bundle in ``models_dir`` (default: the shipped models) was trained on synthetic data."""
    directory = models_dir or DEFAULT_MODELS_DIR
    found = []
    for task in Task:
        path = directory / task.value / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # missing or unreadable: the model set's own checks report it
        if isinstance(manifest, dict) and manifest.get("training_data") == SYNTHETIC:
            found.append(task.value)
    return found


def demonstration_deep_model(dl_model_dir: Path | None) -> list[str]:
    """``["deep model"]`` when the deep-model bundle of setting ``dl_model_dir`` was trained on synthetic data."""
    if dl_model_dir is None:
        return []
    try:
        manifest = json.loads((dl_model_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # the bundle's own checks report it
    return ["deep model"] if isinstance(manifest, dict) and manifest.get("training_data") == SYNTHETIC else []


def check_demo_models(settings: Settings) -> list[str]:
    """Refuse (``ConfigError``) demonstration models unless allowed; returns them (empty: none)."""
    demo = demonstration_models(settings.models_dir) + demonstration_deep_model(settings.dl_model_dir)
    if not demo:
        return []
    directory = settings.models_dir or DEFAULT_MODELS_DIR
    if not settings.allow_demo_models:
        raise ConfigError(
            f"the models in {directory} ({', '.join(demo)}) are DEMONSTRATION models trained on synthetic data "
            "(manifest training_data: synthetic) and must never be used on patients; set --models / "
            "AINODE_MODELS_DIR to real models, or pass --allow-demo-models (AINODE_ALLOW_DEMO_MODELS=1) to run "
            "them anyway for a demonstration"
        )
    # no word of a (synthetic) patient's name in the logs: tests/test_logs.py checks the output for them
    logger.warning("serving DEMONSTRATION models, not trained on patient data (%s): every result says so",
                   ", ".join(demo))
    return demo
