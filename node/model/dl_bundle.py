"""The multimodal deep model's bundle, served with onnxruntime (no torch): an ONNX file and a JSON manifest.

Layout::

    manifest.json   format, name, version, tasks (er, pr, her2), inputs (image channels and crop size, the ordered
                    radiomic feature list with its standardisation mean / SD, the location vocabulary), the
                    network, training data and validation summary, created, library versions, and the SHA-256
                    of every artefact
    model.onnx      inputs ``image`` (B, C, S, S, S), ``radiomics`` (B, F), ``location`` (B, L), float32;
                    output ``logits`` (B, 3) in the manifest's task order (probability = sigmoid)

:func:`load_dl_bundle` verifies the hashes, the feature list against the standardisation, the location vocabulary
against the node's (:data:`node.imaging.crops.LOCATION_VOCABULARY`), the crop shape and the ONNX graph's input and
output shapes, and refuses any mismatch with a :class:`~node.model.bundle.BundleError`. Loaded bundles are kept in
a small per-process cache keyed by path and manifest modification time (:func:`cached_dl_bundle`).
Written by :mod:`node.dl.export`. Research use only, not for diagnosis.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from node.imaging.crops import LOCATION_VOCABULARY, LesionCrop
from node.model.bundle import MANIFEST, BundleError, LesionInputError, sha256_file
from node.model.prediction import Prediction
from node.vocabulary import BINARY_CLASSES

logger = logging.getLogger(__name__)

DL_FORMAT = "bcbm-ainode-dl-bundle"
DL_FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"
DL_TASKS: tuple[str, ...] = ("er", "pr", "her2")
INPUT_NAMES: tuple[str, str, str] = ("image", "radiomics", "location")


@dataclass
class DlBundle:
    """A verified deep-model bundle with its onnxruntime session."""

    path: Path
    manifest: dict[str, Any]
    feature_names: tuple[str, ...]
    mean: npt.NDArray[np.float64]
    sd: npt.NDArray[np.float64]
    channels: tuple[str, ...]
    crop_size: int
    session: ort.InferenceSession
    #: inputs the training data never had (e.g. no T2, no site: BCBM-RadioGenomics) are zeroed at serving too
    zero_channels: tuple[str, ...] = ()
    location_used: bool = True

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", "bcbm-multimodal-dl"))

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unknown"))

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the manifest, which pins the ONNX file: the model's identity in reports."""
        return sha256_file(self.path / MANIFEST)

    def inputs(self, features: Mapping[str, float], crop: LesionCrop) -> dict[str, npt.NDArray[np.float32]]:
        """The three ONNX inputs of one lesion (batch of one); refuses a missing feature or a wrong crop."""
        missing = [n for n in self.feature_names if n not in features]
        if missing:
            raise BundleError(f"the lesion's feature set does not match the deep model: {len(missing)} feature(s) "
                              f"missing (first: {', '.join(missing[:3])})")
        shape = (len(self.channels), *(self.crop_size,) * 3)
        if crop.image.shape != shape:
            raise LesionInputError(f"the lesion crop has shape {crop.image.shape}, the deep model needs {shape}")
        x = np.array([float(features[n]) for n in self.feature_names], dtype=np.float64)
        z = np.nan_to_num((x - self.mean) / self.sd, nan=0.0, posinf=0.0, neginf=0.0)
        image = crop.image[None].astype(np.float32)  # a copy
        image[:, [i for i, c in enumerate(self.channels) if c in self.zero_channels]] = 0.0
        location = crop.location()[None] if self.location_used else np.zeros((1, len(LOCATION_VOCABULARY)), np.float32)
        return {"image": image, "radiomics": z[None].astype(np.float32), "location": location}

    def probabilities(self, features: Mapping[str, float], crop: LesionCrop) -> dict[str, float]:
        """P(positive) per task (``er``, ``pr``, ``her2``) for one lesion."""
        (logits,) = self.session.run(["logits"], self.inputs(features, crop))
        values = np.asarray(logits, dtype=np.float64).reshape(-1)
        if values.size != len(DL_TASKS) or not np.isfinite(values).all():
            raise BundleError(f"the deep model returned {values.size} non-finite or unexpected output(s)")
        return {t: 1.0 / (1.0 + math.exp(-float(v))) for t, v in zip(DL_TASKS, values, strict=True)}

    def predict(self, features: Mapping[str, float], crop: LesionCrop,
                heads: tuple[str, ...] = DL_TASKS) -> dict[str, Prediction]:
        """One :class:`Prediction` per enabled head (positive if p >= 0.5; no SHAP, no OOD check)."""
        probs = self.probabilities(features, crop)
        out: dict[str, Prediction] = {}
        for task in heads:
            p = probs[task]
            out[task] = Prediction(
                label=BINARY_CLASSES[int(p >= 0.5)], probabilities={BINARY_CLASSES[0]: 1.0 - p, BINARY_CLASSES[1]: p},
                shap_contributions={}, shap_base_value=0.0, shap_units="none (deep model)",
                out_of_distribution=False, ood_reasons=(),
            )
        return out


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"deep-model manifest {path / MANIFEST} is missing or not valid JSON") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != DL_FORMAT:
        raise BundleError(f"{path / MANIFEST} is not a deep-model bundle manifest of this node")
    if manifest.get("format_version") != DL_FORMAT_VERSION:
        raise BundleError(f"deep-model bundle format version {manifest.get('format_version')} is not supported")
    return manifest


def load_dl_bundle(path: Path) -> DlBundle:
    """Load and verify a deep-model bundle (module docstring); :class:`BundleError` on any mismatch."""
    if not path.is_dir():
        raise BundleError(f"deep-model bundle {path} is not a directory")
    manifest = _read_manifest(path)
    try:
        artefacts = dict(manifest["artefacts"])
        inputs = manifest["inputs"]
        names = tuple(str(n) for n in inputs["radiomics"]["feature_names"])
        mean = np.asarray(inputs["radiomics"]["mean"], dtype=np.float64)
        sd = np.asarray(inputs["radiomics"]["sd"], dtype=np.float64)
        channels = tuple(str(c) for c in inputs["image"]["channels"])
        size = int(inputs["image"]["crop_size"])
        vocabulary = tuple(str(v) for v in inputs["location"]["vocabulary"])
        tasks = tuple(str(t) for t in manifest["tasks"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"deep-model manifest {path / MANIFEST} is incomplete: {exc}") from exc
    if ONNX_FILE not in artefacts:
        raise BundleError(f"deep-model manifest lists no hash for {ONNX_FILE}")
    for name, expected in sorted(artefacts.items()):
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise BundleError(f"deep-model artefact {name} is missing from {path}")
        if sha256_file(file) != expected:
            raise BundleError(f"deep-model artefact {name} does not match its SHA-256 in the manifest "
                              "(modified or corrupt)")
    if tasks != DL_TASKS:
        raise BundleError(f"the deep model predicts {tasks}, the node expects {DL_TASKS}")
    if mean.shape != (len(names),) or sd.shape != (len(names),) or not names or not np.all(sd > 0):
        raise BundleError("the deep model's standardisation does not match its feature list")
    if vocabulary != LOCATION_VOCABULARY:
        raise BundleError("the deep model's location vocabulary differs from the node's atlas vocabulary")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one lesion at a time: threads only add latency
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exception classes
        raise BundleError(f"deep-model {ONNX_FILE} cannot be loaded: {exc}") from exc
    shapes = {i.name: tuple(i.shape) for i in session.get_inputs()}
    expected_shapes = {"image": (len(channels), size, size, size), "radiomics": (len(names),),
                       "location": (len(vocabulary),)}
    for name, shape in expected_shapes.items():
        if name not in shapes or tuple(shapes[name][1:]) != shape:
            raise BundleError(f"the deep model's ONNX input {name} has shape {shapes.get(name)}, the manifest "
                              f"says (batch, {', '.join(map(str, shape))})")
    logger.info("loaded deep-model bundle %s (%d features, crop %d)", path, len(names), size)
    zero = tuple(str(c) for c in inputs["image"].get("zero_channels", ()))
    used = bool(inputs["location"].get("used", True))
    return DlBundle(path, manifest, names, mean, sd, channels, size, session, zero, used)


_cache: dict[tuple[str, float], DlBundle] = {}
_cache_lock = threading.Lock()


def cached_dl_bundle(path: Path) -> DlBundle:
    """:func:`load_dl_bundle`, once per process for an unchanged bundle (keyed by path and manifest mtime)."""
    resolved = path.resolve()
    try:
        mtime = (resolved / MANIFEST).stat().st_mtime
    except OSError as exc:
        raise BundleError(f"deep-model bundle {resolved} has no manifest") from exc
    key = (str(resolved), mtime)
    with _cache_lock:
        bundle = _cache.get(key)
        if bundle is None:
            bundle = load_dl_bundle(resolved)
            _cache.clear()
            _cache[key] = bundle
        return bundle
