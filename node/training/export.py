"""Writing a trained pipeline as a model bundle (the format :mod:`node.model.bundle` loads and verifies).

Files are written into a hidden staging directory beside the target and renamed into place at the end, so a
bundle directory is either complete or absent. Random Forest / AdaBoost models are exported as JSON trees
(:func:`from_sklearn`), so no bundle ever holds a pickle.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier

from node import __version__
from node.model.bundle import (
    DEFAULT_RADIOMICS_CONFIG,
    DISTRIBUTION,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_FILES,
    PREPROCESS,
    BundleError,
    sha256_file,
)
from node.model.calibration import CALIBRATION
from node.model.ood import fit_distribution
from node.model.provenance import SYNTHETIC, SYNTHETIC_STATEMENT, UNSPECIFIED, UNSPECIFIED_STATEMENT
from node.model.tasks import PRIMARY_COLUMNS
from node.model.trees import JsonTree, TreeEnsemble, with_internal_means
from node.training.train import TrainResult
from node.vocabulary import DISCLAIMER

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

INTENDED_USE = (
    "Research on the molecular subtype of breast-cancer brain metastases from T1CE/T2 MRI radiomics of a "
    "segmented lesion (plus the primary-tumour subtype for the 'subtype' task). Not a medical device; outputs "
    "must not guide diagnosis or treatment."
)
OUT_OF_SCOPE = (
    "Clinical decision making; primary brain tumours or metastases of other cancers; features extracted with "
    "another radiomics configuration; lesions flagged out of distribution without expert review."
)
_PACKAGES = ("numpy", "scikit-learn", "xgboost", "lightgbm", "shap", "pyradiomics", "scipy", "statsmodels", "pandas")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "bcbm-ainode": __version__}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


def _jsonable(value: Any) -> Any:
    """Replace non-finite floats by None so the manifest stays strict JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_files(
    result: TrainResult,
    staging: Path,
    radiomics_config: Path | None,
    data_source: str | None = None,
    created_utc: str | None = None,
    training_data: str | None = None,
) -> str:
    """Write every bundle file into ``staging``; returns the classifier kind."""
    pipe = result.pipeline
    scaler, selector, clf = (pipe.named_steps[k] for k in ("scale", "select", "clf"))
    best = result.search.best
    kind = best.classifier.kind
    selected = [int(i) for i in selector.get_support(indices=True)]
    _write_json(
        staging / PREPROCESS,
        {
            "feature_names": list(result.feature_names),
            "scaler": {"kind": "RobustScaler", "center": scaler.center_.tolist(), "scale": scaler.scale_.tolist()},
            "selector": {**best.selector.to_json(), "selected_indices": selected},
        },
    )
    model_file = MODEL_FILES[kind]
    if kind == "xgboost":
        clf.get_booster().save_model(str(staging / model_file))
    elif kind == "lightgbm":
        clf.booster_.save_model(str(staging / model_file))
    else:
        _write_json(staging / model_file, from_sklearn(clf).to_json())
    _write_json(staging / DISTRIBUTION, fit_distribution(result.training_x, result.feature_names).to_json())

    radiomics: dict[str, Any] = {"path": None, "sha256": None}
    if radiomics_config is not None:
        if not radiomics_config.is_file():
            raise BundleError(f"radiomics parameter file not found: {radiomics_config}")
        radiomics = {"path": radiomics_config.name, "sha256": sha256_file(radiomics_config)}
    task = result.options.task
    hashed = [PREPROCESS, model_file, DISTRIBUTION]
    if result.calibrator is not None:
        _write_json(staging / CALIBRATION, _jsonable(result.calibrator.to_json()))
        hashed.append(CALIBRATION)
    artefacts = {name: sha256_file(staging / name) for name in hashed}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": f"bcbm-{task.value}",
        "version": __version__,
        "created_utc": created_utc or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data_source": data_source,
        "task": task.value,
        "classes": list(result.classes),
        "feature_names": list(result.feature_names),
        "primary_subtype_encoding": (
            {"columns": list(PRIMARY_COLUMNS), "scheme": "one-hot over all four subtypes, no reference level"}
            if task.uses_primary
            else None
        ),
        "radiomics_config": radiomics,
        "model": {
            "selector": best.selector.to_json(),
            "classifier": best.classifier.to_json(),
            "artefact": model_file,
            "artefact_format": {"xgboost": "XGBoost UBJSON", "lightgbm": "LightGBM text model"}.get(
                kind, "node.learn.trees JSON (exported scikit-learn trees)"
            ),
            "selected_features": result.selected_features,
            "class_weighting": "balanced sample_weight (inverse class frequency)",
            "seed": result.options.seed,
            "grid": result.options.grid,
            "lasso_variant": "L1 logistic regression (one-vs-rest for multi-class), C chosen by patient-grouped "
            "inner CV (one-SE rule); the penalty, not a cap, sets the number of features",
            "selector_fit": _jsonable(result.selector_fit),
        },
        "training": _jsonable({**result.data_summary, "elapsed_s": round(result.elapsed_s, 1)}),
        "metrics": _jsonable(result.metrics()),
        "library_versions": library_versions(),
        "intended_use": INTENDED_USE,
        "out_of_scope": OUT_OF_SCOPE,
        "disclaimer": DISCLAIMER,
        "artefacts": artefacts,
        **provenance_fields(result, training_data),
    }
    _write_json(staging / MANIFEST, manifest)
    return kind


def save_bundle(
    result: TrainResult,
    out_dir: Path,
    radiomics_config: Path | None = DEFAULT_RADIOMICS_CONFIG,
    *,
    data_source: str | None = None,
    created_utc: str | None = None,
    training_data: str | None = None,
) -> Path:
    """Write ``result`` as a bundle directory (created; an existing non-empty directory is refused).

    ``data_source`` is a plain-language statement of what the model was trained on (shown at the top of the
    model card); ``training_data`` is ``"synthetic"`` for demonstration models (``ainode serve`` refuses them
    unless allowed) or e.g. ``"clinical"``; ``created_utc`` pins the creation time so a bundle can be
    regenerated byte for byte.

    Files are written into a hidden staging directory beside ``out_dir`` and renamed into place at the end, so
    a bundle directory is either complete or absent.
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise BundleError(f"bundle directory {out_dir} already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        kind = _write_files(result, staging, radiomics_config, data_source, created_utc, training_data)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("saved %s bundle (%s) to %s", result.options.task.value, kind, out_dir)
    return out_dir


def provenance_fields(result: TrainResult, training_data: str | None) -> dict[str, Any]:
    """Manifest fields a reader sees in the SR: training data, its statement, calibration and validation."""
    kind = training_data or UNSPECIFIED
    out: dict[str, Any] = {
        "training_data": kind,
        "training_data_statement": SYNTHETIC_STATEMENT if kind == SYNTHETIC else (
            UNSPECIFIED_STATEMENT if kind == UNSPECIFIED else f"{kind} training data"
        ),
    }
    best = result.search.best
    summary = (
        f"patient-grouped {result.search.n_splits}-fold CV {result.search.scoring} {best.mean:.2f} "
        f"(SD {best.sd:.2f}, {len(result.training_y)} training lesions; optimistic: the same CV chose the model)"
    )
    out["validation"] = {"summary": summary, "kind": "cross-validation"}
    cal = result.calibrator
    if cal is not None:
        out["calibration"] = {
            "artefact": CALIBRATION,
            "prevalence": "training set: " + ", ".join(f"{c} {100 * p:.0f}%" for c, p in cal.prevalence.items()),
            "low_confidence_threshold": cal.confidence.threshold if cal.confidence else None,
        }
    return _jsonable(out)  # type: ignore[no-any-return]


def record_validation(bundle_dir: Path, summary: str, details: dict[str, Any] | None = None) -> None:
    """Replace the manifest's ``validation`` (e.g. with an external / held-out evaluation) after export.

    The manifest is not among the hashed artefacts, so the bundle still verifies; its own SHA-256 (the model's
    identity in reports) changes, as it should."""
    path = bundle_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["validation"] = {"summary": summary, "kind": "held-out evaluation", **_jsonable(details or {})}
    _write_json(path, manifest)


def _tree_arrays(estimator: Any) -> tuple[IntArray, IntArray, IntArray, FloatArray, FloatArray, FloatArray]:
    t = estimator.tree_
    fractions = np.asarray(t.value[:, 0, :], dtype=np.float64)
    sums = fractions.sum(axis=1, keepdims=True)
    fractions = np.divide(fractions, sums, out=np.zeros_like(fractions), where=sums > 0)
    return (
        np.asarray(t.children_left, dtype=np.int64),
        np.asarray(t.children_right, dtype=np.int64),
        np.asarray(t.feature, dtype=np.int64),
        np.asarray(t.threshold, dtype=np.float64),
        fractions,
        np.asarray(t.weighted_n_node_samples, dtype=np.float64),
    )


def from_sklearn(model: RandomForestClassifier | AdaBoostClassifier) -> TreeEnsemble:
    """Export a fitted Random Forest or AdaBoost (SAMME) classifier; classes must be 0..K-1."""
    n_classes = int(model.n_classes_)
    if not np.array_equal(np.asarray(model.classes_), np.arange(n_classes)):
        raise ValueError("the classifier was not trained on class indices 0..K-1")
    trees: list[JsonTree] = []
    if isinstance(model, RandomForestClassifier):
        n = len(model.estimators_)
        for est in model.estimators_:
            left, right, feat, thr, frac, weight = _tree_arrays(est)
            trees.append(JsonTree(left, right, feat, thr, with_internal_means(left, right, frac / n, weight), weight))
        return TreeEnsemble("random_forest", n_classes, int(model.n_features_in_), tuple(trees))
    if isinstance(model, AdaBoostClassifier):
        total = float(np.sum(model.estimator_weights_))
        for est, w in zip(model.estimators_, model.estimator_weights_, strict=False):
            left, right, feat, thr, frac, weight = _tree_arrays(est)
            est_classes = np.asarray(est.classes_, dtype=np.int64)
            code = np.full((left.size, n_classes), -1.0 / (n_classes - 1))
            code[np.arange(left.size), est_classes[frac.argmax(axis=1)]] = 1.0
            leaf = code * (float(w) / total)
            trees.append(JsonTree(left, right, feat, thr, with_internal_means(left, right, leaf, weight), weight))
        return TreeEnsemble("adaboost", n_classes, int(model.n_features_in_), tuple(trees))
    raise TypeError(f"cannot export {type(model).__name__}")
