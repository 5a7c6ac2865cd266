"""Model bundles: a directory of JSON / native model files with a manifest of SHA-256 hashes. No pickle, no joblib.

Layout::

    manifest.json                 task, classes, ordered inputs, radiomics-config hash, versions, data summary,
                                  metrics, intended use, disclaimer, SHA-256 of every artefact below
    preprocess.json               RobustScaler centre/scale and the selector's chosen input indices
    model.ubj | model.txt | trees.json
                                  XGBoost (UBJSON), LightGBM (text model) or RF/AdaBoost trees (node.model.trees)
    training_distribution.json    per-input training ranges for the out-of-distribution flag
    calibration.json              optional: calibrator and confidence rule (node.model.calibration)

:func:`load_bundle` verifies every hash, that the manifest and the preprocessing agree on the ordered input
list, the model's input count and (when given) the radiomics parameter file, and refuses any mismatch with a
:class:`BundleError`. The hashes protect integrity (accidental or naive tampering), not authenticity: whoever can
rewrite the manifest can rewrite its hashes. Bundles are written by :mod:`node.training.export`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import xgboost as xgb

from node.errors import ConfigError, InvalidStudyError
from node.model.calibration import CALIBRATION, Calibrator
from node.model.ood import TrainingDistribution
from node.model.prediction import Prediction
from node.model.tasks import PRIMARY_PREFIX, SUBTYPE_CLASSES, Task, primary_one_hot
from node.model.trees import TreeEnsemble
from node.model.treeshap import booster_shap, ensemble_shap

logger = logging.getLogger(__name__)

#: the SHAP units of a prediction made with ``explain=False`` (no contributions computed)
NOT_EXPLAINED = "not computed"

FloatArray = npt.NDArray[np.float64]
FORMAT = "bcbm-ainode-model-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREPROCESS = "preprocess.json"
DISTRIBUTION = "training_distribution.json"
MODEL_FILES = {"xgboost": "model.ubj", "lightgbm": "model.txt", "random_forest": "trees.json", "adaboost": "trees.json"}
DEFAULT_RADIOMICS_CONFIG = Path(__file__).parents[2] / "config" / "radiomics.yaml"


class BundleError(ConfigError):
    """A model bundle is missing, incomplete, tampered with or incompatible with the inputs."""

    default_message = "the model bundle cannot be used"


class LesionInputError(InvalidStudyError):
    """A lesion's inputs cannot be used by the model (missing primary subtype, a feature not computable)."""

    default_message = "the lesion's features cannot be used by this model"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A verified, loaded bundle: preprocessing, classifier and explainer, ready for :meth:`predict`."""

    path: Path
    manifest: dict[str, Any]
    task: Task
    classes: tuple[str, ...]
    feature_names: tuple[str, ...]
    center: FloatArray
    scale: FloatArray
    selected: tuple[int, ...]
    kind: str
    model: xgb.Booster | lgb.Booster | TreeEnsemble
    distribution: TrainingDistribution
    #: fitted on patient-grouped CV (``calibration.json``); None for bundles written before issue 11
    calibrator: Calibrator | None = None

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the manifest, which pins every artefact: the model's identity in reports."""
        return sha256_file(self.path / MANIFEST)

    @property
    def radiomic_features(self) -> tuple[str, ...]:
        return tuple(n for n in self.feature_names if not n.startswith(PRIMARY_PREFIX))

    @property
    def selected_features(self) -> tuple[str, ...]:
        return tuple(self.feature_names[i] for i in self.selected)

    @property
    def shap_units(self) -> str:
        if isinstance(self.model, TreeEnsemble):
            return self.model.output_units
        return "log-odds margin of the class (softmax input for multi-class)"

    def model_inputs(self, x: FloatArray) -> FloatArray:
        """Scale and select: the classifier's inputs for rows of the full input list."""
        return np.asarray(((x - self.center) / self.scale)[:, list(self.selected)], dtype=np.float64)

    def predict_proba(self, x: FloatArray) -> FloatArray:
        """Class probabilities for rows of the full, ordered input list (calibrated when the bundle has a
        calibrator)."""
        raw = self.predict_proba_raw(x)
        return raw if self.calibrator is None else self.calibrator.apply(raw)

    def predict_proba_raw(self, x: FloatArray) -> FloatArray:
        """The classifier's own (uncalibrated) class probabilities."""
        z = self.model_inputs(np.atleast_2d(np.asarray(x, dtype=np.float64)))
        if isinstance(self.model, TreeEnsemble):
            return self.model.predict_proba(z)
        if isinstance(self.model, xgb.Booster):
            raw = np.asarray(self.model.inplace_predict(z), dtype=np.float64)
        else:
            raw = np.asarray(self.model.predict(z), dtype=np.float64)
        if raw.ndim == 1:
            raw = np.column_stack([1.0 - raw, raw])
        return raw

    def shap_values(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """SHAP values (n, selected inputs, classes) and base values (classes,) in :attr:`shap_units`.

        Exact TreeSHAP (:mod:`node.model.treeshap`): the values ``shap.TreeExplainer`` gives, without ``shap``.
        """
        z = self.model_inputs(np.atleast_2d(np.asarray(x, dtype=np.float64)))
        if isinstance(self.model, TreeEnsemble):
            values, base = ensemble_shap(self.model, z)
        else:
            with xgb.config_context(nthread=1):  # one lesion: threads only add latency
                values, base = booster_shap(self.model, z)
        if values.ndim == 2:  # single margin output of a binary model: the positive class
            values = np.stack([-values, values], axis=-1)
            base = np.array([-base[0], base[0]])
        if values.shape[2] != len(self.classes) or base.size != len(self.classes):
            raise BundleError(f"unexpected SHAP output shape {values.shape} for {len(self.classes)} classes")
        return values, base

    def warm_up(self) -> None:
        """Explain one row now, so that the first :meth:`predict` is fast too."""
        self.shap_values(self.center[None, :])

    def input_vector(self, features: Mapping[str, float], primary_subtype: str | None) -> FloatArray:
        """The ordered input row for one lesion; refuses missing features and an unknown/missing primary."""
        missing = [n for n in self.radiomic_features if n not in features]
        if missing:
            raise BundleError(
                f"the lesion's feature set does not match the model: {len(missing)} feature(s) missing "
                f"(first: {', '.join(missing[:3])})"
            )
        row = {n: float(features[n]) for n in self.radiomic_features}
        if self.task.uses_primary:
            if primary_subtype is None or primary_subtype not in SUBTYPE_CLASSES:
                raise LesionInputError(
                    "this model needs the primary-tumour subtype (one of "
                    f"{', '.join(SUBTYPE_CLASSES)}); got {primary_subtype!r}"
                )
            row.update(primary_one_hot(primary_subtype))
        x = np.array([row[n] for n in self.feature_names], dtype=np.float64)
        bad = [self.feature_names[i] for i in self.selected if not np.isfinite(x[i])]
        if bad:
            raise LesionInputError(
                f"feature(s) the model needs could not be computed for this lesion ({', '.join(bad[:3])}); "
                "the lesion may be too small for texture analysis"
            )
        return x

    def predict(self, features: Mapping[str, float], primary_subtype: str | None = None, *,
                explain: bool = True) -> Prediction:
        """Probabilities, label, SHAP contributions to the predicted class and the OOD flag for one lesion.

        ``explain=False`` skips the SHAP values (no contributions, units ``not computed``): the job explains only
        the subtype model in the SR (exact TreeSHAP of the demo's 200-tree Random Forest: ~10 ms CPU a lesion)."""
        x = self.input_vector(features, primary_subtype)
        proba = self.predict_proba(x[None, :])[0]
        k = int(np.argmax(proba))
        if explain:
            values, base = self.shap_values(x[None, :])
            contributions = {self.feature_names[i]: float(values[0, j, k]) for j, i in enumerate(self.selected)}
            base_value, units = float(base[k]), self.shap_units
        else:
            contributions, base_value, units = {}, 0.0, NOT_EXPLAINED
        radiomic_idx = [i for i, n in enumerate(self.feature_names) if not n.startswith(PRIMARY_PREFIX)]
        flag, reasons = self.distribution.check(x, self.selected, radiomic_idx)
        return Prediction(
            label=self.classes[k],
            probabilities={c: float(p) for c, p in zip(self.classes, proba, strict=True)},
            shap_contributions=contributions,
            shap_base_value=base_value,
            shap_units=units,
            out_of_distribution=flag,
            ood_reasons=reasons,
            calibrated=self.calibrator is not None,
            confidence_threshold=(
                self.calibrator.confidence.threshold
                if self.calibrator is not None and self.calibrator.confidence is not None
                else None
            ),
        )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{what} {path} is missing or not valid JSON") from exc


def load_bundle(path: Path, radiomics_config: Path | None = None) -> Bundle:
    """Load and verify a bundle; with ``radiomics_config`` also require the same radiomics parameter file."""
    if not path.is_dir():
        raise BundleError(f"model bundle {path} is not a directory")
    manifest = _read_json(path / MANIFEST, "bundle manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path / MANIFEST} is not a model-bundle manifest of this node")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle format version {manifest.get('format_version')} is not supported")
    try:
        task = Task(manifest["task"])
        kind = str(manifest["model"]["classifier"]["kind"])
        artefacts = dict(manifest["artefacts"])
        feature_names = tuple(str(n) for n in manifest["feature_names"])
        classes = tuple(str(c) for c in manifest["classes"])
    except (KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"bundle manifest {path / MANIFEST} is incomplete: {exc}") from exc
    required = {PREPROCESS, DISTRIBUTION, MODEL_FILES.get(kind, "?")}
    if not required <= set(artefacts):
        raise BundleError(f"bundle manifest lists no hash for {', '.join(sorted(required - set(artefacts)))}")
    for name, expected in sorted(artefacts.items()):
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise BundleError(f"bundle artefact {name} is missing from {path}")
        if sha256_file(file) != expected:
            raise BundleError(
                f"bundle artefact {name} does not match its SHA-256 in the manifest (modified or corrupt)"
            )
    if classes != task.classes:
        raise BundleError(f"bundle classes {classes} do not match the {task.value} task")
    if radiomics_config is not None:
        expected_hash = manifest.get("radiomics_config", {}).get("sha256")
        if expected_hash is not None and sha256_file(radiomics_config) != expected_hash:
            raise BundleError(
                f"the radiomics parameter file {radiomics_config} differs from the one the model was trained with; "
                "features would not be comparable"
            )
    pre = _read_json(path / PREPROCESS, "bundle preprocessing")
    if tuple(pre.get("feature_names", ())) != feature_names:
        raise BundleError("the bundle's feature list does not match its preprocessing (wrong or edited feature list)")
    center = np.asarray(pre["scaler"]["center"], dtype=np.float64)
    scale = np.asarray(pre["scaler"]["scale"], dtype=np.float64)
    selected = tuple(int(i) for i in pre["selector"]["selected_indices"])
    n = len(feature_names)
    if center.shape != (n,) or scale.shape != (n,) or not selected or min(selected) < 0 or max(selected) >= n:
        raise BundleError("the bundle's preprocessing does not match its feature list")
    model_path = path / MODEL_FILES[kind]
    model: xgb.Booster | lgb.Booster | TreeEnsemble
    try:
        if kind == "xgboost":
            model = xgb.Booster()
            model.load_model(str(model_path))
            model.set_param({"nthread": 1})  # one lesion at a time: threads only add latency
            n_model = model.num_features()
        elif kind == "lightgbm":
            model = lgb.Booster(model_file=str(model_path), params={"num_threads": 1})
            n_model = model.num_feature()
        else:
            model = TreeEnsemble.from_json(_read_json(model_path, "bundle trees"))
            n_model = model.n_features
    except (ValueError, xgb.core.XGBoostError, lgb.basic.LightGBMError) as exc:
        raise BundleError(f"bundle model {model_path.name} cannot be loaded: {exc}") from exc
    if n_model != len(selected):
        raise BundleError(f"the bundle's model expects {n_model} inputs but its selector yields {len(selected)}")
    try:
        distribution = TrainingDistribution.from_json(_read_json(path / DISTRIBUTION, "training distribution"))
    except (KeyError, ValueError) as exc:
        raise BundleError(f"bundle training distribution is invalid: {exc}") from exc
    if distribution.names != feature_names:
        raise BundleError("the bundle's training distribution does not match its feature list")
    selector = manifest["model"].get("selector")
    if not isinstance(selector, dict) or not isinstance(selector.get("kind"), str):
        raise BundleError(f"bundle manifest {path / MANIFEST} does not describe its feature selector")
    calibrator = _load_calibrator(path, artefacts, classes)
    logger.info("loaded %s bundle %s (%s, %d inputs)", task.value, path, kind, len(selected))
    return Bundle(path, manifest, task, classes, feature_names, center, scale, selected, kind, model, distribution,
                  calibrator=calibrator)


def _load_calibrator(path: Path, artefacts: Mapping[str, str], classes: tuple[str, ...]) -> Calibrator | None:
    """The bundle's calibrator when the manifest lists one (already hash-verified), else None (older bundles)."""
    if CALIBRATION not in artefacts:
        return None
    try:
        calibrator = Calibrator.from_json(_read_json(path / CALIBRATION, "bundle calibration"))
    except (KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"bundle calibration is invalid: {exc}") from exc
    if calibrator.classes != classes:
        raise BundleError(f"the bundle's calibrator classes {calibrator.classes} do not match its classes {classes}")
    return calibrator
