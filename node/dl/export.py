"""Export a trained network (torch) as a deep-model bundle: ONNX + a JSON manifest with SHA-256 hashes
(layout and checks: :mod:`node.model.dl_bundle`). No pickle: the weights live only in the ONNX graph."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.jit._trace import TracerWarning

from node import __version__
from node.dl.data import DlDataset
from node.dl.train import Fitted
from node.imaging.crops import CHANNELS, LOCATION_VOCABULARY
from node.model.bundle import MANIFEST, sha256_file
from node.model.dl_bundle import DL_FORMAT, DL_FORMAT_VERSION, DL_TASKS, INPUT_NAMES, ONNX_FILE
from node.model.provenance import SYNTHETIC, SYNTHETIC_STATEMENT, UNSPECIFIED, UNSPECIFIED_STATEMENT
from node.vocabulary import DISCLAIMER

logger = logging.getLogger(__name__)

OPSET = 17
INTENDED_USE = (
    "Research use only, not for diagnosis: estimates the ER, PR and HER2 status of a breast-cancer brain "
    "metastasis from its MRI crop, radiomic features and site, beside the radiomics model, for method research."
)


def library_versions() -> dict[str, str]:
    out = {"node": __version__}
    for name in ("torch", "onnx", "onnxruntime", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def export_onnx(fitted: Fitted, data: DlDataset, path: Path) -> None:
    """The network as ONNX (opset :data:`OPSET`, dynamic batch), traced on the CPU in eval mode."""
    net = fitted.net.cpu().eval()
    n = min(2, data.y.shape[0])
    example = (torch.from_numpy(data.images[:n]), torch.from_numpy(fitted.standardiser.apply(data.radiomics[:n])),
               torch.from_numpy(data.location[:n]))
    batch = {0: "batch"}
    with warnings.catch_warnings():  # group norm's batch-size check is traced as a constant: harmless here
        warnings.simplefilter("ignore", TracerWarning)
        torch.onnx.export(net, example, str(path), input_names=list(INPUT_NAMES), output_names=["logits"],
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={"image": batch, "radiomics": batch, "location": batch, "logits": batch})


def save_dl_bundle(fitted: Fitted, data: DlDataset, out: Path, *, name: str = "bcbm-multimodal-dl",
                   version: str = "0.1.0", training_data: str = UNSPECIFIED,
                   validation: dict[str, Any] | None = None) -> Path:
    """Write the bundle into ``out`` (replaced atomically); ``training_data`` ``"synthetic"`` marks a demo model."""
    spec = fitted.net.spec
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".dl-bundle-", dir=out.parent))
    try:
        export_onnx(fitted, data, staging / ONNX_FILE)
        manifest: dict[str, Any] = {
            "format": DL_FORMAT, "format_version": DL_FORMAT_VERSION, "name": name, "version": version,
            "tasks": list(DL_TASKS),
            "inputs": {
                "image": {"channels": list(CHANNELS), "crop_size": data.crop_size, "spacing_mm": 1.0,
                          # channels that were all zero in training (no T2 in the collection) stay zero in serving
                          "zero_channels": [c for i, c in enumerate(CHANNELS) if not data.images[:, i].any()],
                          "intensity": "preprocessed (N4, T2 on T1CE, pons z-score) as the radiomics input"},
                "radiomics": {"feature_names": list(data.feature_names),
                              "mean": [float(v) for v in fitted.standardiser.mean],
                              "sd": [float(v) for v in fitted.standardiser.sd]},
                "location": {"vocabulary": list(LOCATION_VOCABULARY), "used": bool(data.location.any()),
                             "source": "node.imaging.sites (AAL3 region, side)"},
            },
            "outputs": {"logits": "one logit per task in 'tasks' order; probability = sigmoid; positive if >= 0.5"},
            "onnx": {"file": ONNX_FILE, "opset": OPSET},
            "network": {"architecture": "3D ResNet (basic blocks) + radiomics MLP + location embedding, hard "
                        "parameter sharing, three heads", "widths": list(spec.widths), "shared": spec.shared,
                        "use_image": spec.use_image, "use_radiomics": spec.use_radiomics,
                        "use_location": spec.use_location},
            "training": {"data": data.summary(), "epochs": fitted.epochs, "best_val_loss": fitted.best_val_loss,
                         "config": {k: v for k, v in vars(fitted.config).items()}},
            "training_data": training_data,
            "training_data_statement": SYNTHETIC_STATEMENT if training_data == SYNTHETIC else UNSPECIFIED_STATEMENT,
            "validation": validation or {"summary": "validation performance not stated"},
            "intended_use": INTENDED_USE, "disclaimer": DISCLAIMER,
            "created_utc": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "library_versions": library_versions(),
            "artefacts": {ONNX_FILE: sha256_file(staging / ONNX_FILE)},
        }
        (staging / MANIFEST).write_text(json.dumps(_jsonable(manifest), indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is read by the node's other users too
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote deep-model bundle %s", out)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
