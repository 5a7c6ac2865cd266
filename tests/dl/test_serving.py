"""The deep model's serving side without torch: crops, the ONNX bundle's checks, the job end to end with the SR
validated (the shipped demonstration bundle models/demo-dl, trained on the pipeline's feature names)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from node.errors import ConfigError
from node.imaging.crops import CHANNELS, CROP_SIZE, LOCATION_VOCABULARY, LesionCrop, cut_crop, read_crop, write_crop
from node.jobs.process import process_study
from node.model.bundle import MANIFEST, BundleError
from node.model.dl_bundle import load_dl_bundle
from node.sr.validate import validate_sr
from tests.support.studies import SynthCase, synth_case

__all__ = ["synth_case"]

REPO = Path(__file__).resolve().parents[2]
DEMO_DL = REPO / "models" / "demo-dl"


def test_serving_path_does_not_import_torch() -> None:
    code = ("import sys, node.jobs.process, node.jobs.tasks, node.model.dl_bundle, node.jobs.deep; "
            "bad = [m for m in ('torch', 'monai', 'onnx') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_crop_is_centred_padded_and_round_trips(tmp_path: Path) -> None:
    arr = np.zeros((40, 50, 60), dtype=np.float32)
    arr[2:6, 3:7, 4:8] = 1.0  # a lesion near the corner: the crop leaves the image and is zero-padded
    mask = sitk.GetImageFromArray(arr.astype(np.uint8))
    t1 = sitk.GetImageFromArray(arr * 5.0)
    crop = cut_crop(t1, None, mask)
    assert crop.shape == (len(CHANNELS), CROP_SIZE, CROP_SIZE, CROP_SIZE)
    assert crop[2].sum() == arr.sum() and crop[0].max() == 5.0 and not crop[1].any()  # no T2: zeros
    centre = np.argwhere(crop[2] > 0).mean(axis=0)
    assert np.allclose(centre, CROP_SIZE // 2 - 0.5, atol=1.0)
    write_crop(tmp_path, "P1", 3, LesionCrop(crop, "cerebellum", "left"))
    back = read_crop(tmp_path, "P1", 3)
    assert np.array_equal(back.image, crop) and back.location().sum() == 2
    assert back.location()[LOCATION_VOCABULARY.index("region=cerebellum")] == 1
    with pytest.raises(ConfigError, match="missing or unreadable"):
        read_crop(tmp_path, "P1", 4)
    with pytest.raises(ConfigError, match="empty lesion mask"):
        cut_crop(t1, None, sitk.GetImageFromArray(np.zeros_like(arr, dtype=np.uint8)))


def test_demo_bundle_loads_and_is_small() -> None:
    bundle = load_dl_bundle(DEMO_DL)
    assert sum(p.stat().st_size for p in DEMO_DL.rglob("*") if p.is_file()) < 5_000_000
    crop = LesionCrop(np.zeros((len(CHANNELS), *(bundle.crop_size,) * 3), dtype=np.float32), "frontal lobe", "left")
    probs = bundle.probabilities(dict(zip(bundle.feature_names, bundle.mean, strict=True)), crop)
    assert set(probs) == {"er", "pr", "her2"} and all(0.0 <= p <= 1.0 for p in probs.values())


def test_tampered_bundle_is_refused(tmp_path: Path) -> None:
    onnx_changed = tmp_path / "onnx"
    shutil.copytree(DEMO_DL, onnx_changed)
    data = bytearray((onnx_changed / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (onnx_changed / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its SHA-256"):
        load_dl_bundle(onnx_changed)
    features_changed = tmp_path / "features"
    shutil.copytree(DEMO_DL, features_changed)
    manifest = json.loads((features_changed / MANIFEST).read_text(encoding="utf-8"))
    manifest["inputs"]["radiomics"]["feature_names"] = manifest["inputs"]["radiomics"]["feature_names"][:-1]
    (features_changed / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BundleError, match="standardisation does not match its feature list"):
        load_dl_bundle(features_changed)
    with pytest.raises(BundleError, match="not a directory"):
        load_dl_bundle(tmp_path / "absent")


def test_job_serves_the_onnx_bundle_beside_the_radiomics_models(synth_case: SynthCase, tmp_path: Path) -> None:
    result = process_study(synth_case.root, tmp_path / "out", dl_model_dir=DEMO_DL, dl_heads=("er", "her2"))
    assert validate_sr(result.sr_path) == []
    assert "deep" in result.timings
    ds = pydicom.dcmread(result.sr_path)
    names, texts = [], []

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if item.get("ValueType") == "TEXT":
                texts.append(str(item.TextValue))
            if item.get("ConceptNameCodeSequence") and item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Name":
                names.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    manifest = json.loads((DEMO_DL / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["name"] in names and len(set(names)) == 2  # a separately identified algorithm
    deep_lines = [t for t in texts if t.startswith("Deep model ")]
    assert deep_lines and all("ER " in t and "HER2 " in t and "PR " not in t for t in deep_lines)


def test_deep_results_are_checked() -> None:
    from node.sr.deep import DeepLesionResult, DeepModelInfo, DeepResults, deep_line

    with pytest.raises(ValueError, match="deep heads"):
        DeepLesionResult(1, {"subtype": 0.5})
    with pytest.raises(ValueError, match="sha256"):
        DeepModelInfo("m", "1", "xyz")
    deep = DeepResults(DeepModelInfo("m", "1", "a" * 64), (DeepLesionResult(2, {"pr": 0.7}),))
    assert deep_line(deep, 1) is None
    assert deep_line(deep, 2) == "Deep model m 1 (separate algorithm), segment 2: PR positive (p positive=0.70)."
