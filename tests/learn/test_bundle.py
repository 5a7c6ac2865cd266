"""Bundles: pickle-free round trip, tamper detection, feature-list checks, prediction contract and speed."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from node.errors import ConfigError, InvalidStudyError
from node.model.bundle import MANIFEST, Bundle, BundleError, LesionInputError, load_bundle, sha256_file
from node.model.tasks import PRIMARY_PREFIX, Task
from node.training.cv import full_proba
from node.training.dataset import Dataset, load_dataset
from node.vocabulary import DISCLAIMER


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_bundle_has_no_pickle_and_records_provenance(bundles):
    for _, path in bundles.values():
        manifest = json.loads((path / MANIFEST).read_text())
        files = {p.name for p in path.iterdir()}
        assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in files)
        assert set(manifest["artefacts"]) | {MANIFEST} == files
        for name, digest in manifest["artefacts"].items():
            assert sha256_file(path / name) == digest
        assert manifest["disclaimer"] == DISCLAIMER == "Research use only, not for diagnosis"
        assert len(manifest["radiomics_config"]["sha256"]) == 64
        assert manifest["library_versions"]["xgboost"]
        assert manifest["training"]["n_patients"] == 120
    subtype = json.loads((bundles["subtype-xgboost"][1] / MANIFEST).read_text())
    assert subtype["primary_subtype_encoding"]["columns"][0].startswith(PRIMARY_PREFIX)
    assert subtype["feature_names"][-4:] == subtype["primary_subtype_encoding"]["columns"]


@pytest.mark.parametrize("name", ["subtype-xgboost", "subtype-lightgbm", "subtype-random_forest",
                                  "subtype-adaboost", "her2-xgboost", "her2-lightgbm"])
def test_round_trip_same_predictions(bundles, loaded, tables, name):
    result, _ = bundles[name]
    bundle = loaded[name]
    data = load_dataset(tables.features_csv, tables.labels_csv, bundle.task, bundle.feature_names)
    expected = full_proba(result.pipeline, data.x, len(data.classes))
    got = bundle.predict_proba_raw(data.x)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    assert bundle.calibrator is not None  # served probabilities are the calibrated ones
    np.testing.assert_allclose(bundle.predict_proba(data.x), bundle.calibrator.apply(expected), atol=1e-6)


@pytest.mark.parametrize("name", ["subtype-xgboost", "subtype-lightgbm", "subtype-random_forest",
                                  "subtype-adaboost", "her2-xgboost"])
def test_prediction_contract_and_shap_additivity(loaded, subtype_data: Dataset, name):
    bundle = loaded[name]
    data = subtype_data
    i = 3
    features = {n: float(v) for n, v in zip(data.feature_names, data.x[i], strict=True)
                if not n.startswith(PRIMARY_PREFIX)}
    pred = bundle.predict(features, data.primary[i])
    assert pred.label in bundle.classes
    assert sum(pred.probabilities.values()) == pytest.approx(1.0)
    assert pred.label == max(pred.probabilities, key=pred.probabilities.__getitem__)
    assert set(pred.shap_contributions) == set(bundle.selected_features)
    # SHAP contributions + base value reproduce the model output for the predicted class
    k = bundle.classes.index(pred.label)
    total = pred.shap_base_value + sum(pred.shap_contributions.values())
    # SHAP explains the classifier's own output: the probabilities before calibration
    proba = bundle.predict_proba_raw(bundle_input(bundle, features, data.primary[i]))[0]
    if bundle.kind == "random_forest":
        assert total == pytest.approx(proba[k], abs=1e-6)
    elif bundle.kind in ("xgboost", "lightgbm"):
        if len(proba) == 2:
            assert 1 / (1 + np.exp(-total)) == pytest.approx(proba[k], abs=1e-4)
        else:  # softmax: log p_k = margin_k - logsumexp(margins)
            values, base = bundle.shap_values(bundle_input(bundle, features, data.primary[i]))
            margins = values[0].sum(axis=0) + base
            soft = np.exp(margins - margins.max())
            np.testing.assert_allclose(soft / soft.sum(), proba, atol=1e-4)
    json.dumps(pred.to_json())
    assert pred.to_json()["disclaimer"] == DISCLAIMER
    # without the explanation (the job's receptor heads): the same answer, no contributions, said so
    plain = bundle.predict(features, data.primary[i], explain=False)
    assert plain.probabilities == pred.probabilities and plain.label == pred.label
    assert plain.shap_contributions == {} and plain.shap_units == "not computed"


def bundle_input(bundle: Bundle, features: dict[str, float], primary: str) -> np.ndarray:
    return bundle.input_vector(features, primary)[None, :]


def test_predict_under_200_ms_per_lesion(loaded, subtype_data: Dataset):
    data = subtype_data
    for bundle in loaded.values():
        if bundle.task is not Task.SUBTYPE:
            continue
        bundle.warm_up()
        times = []
        for i in range(10):
            features = {n: float(v) for n, v in zip(data.feature_names, data.x[i], strict=True)
                        if not n.startswith(PRIMARY_PREFIX)}
            start = time.perf_counter()
            bundle.predict(features, data.primary[i])
            times.append(time.perf_counter() - start)
        # median: the 2-core test machine is shared, so single calls can be delayed by other processes
        assert float(np.median(times)) < 0.2, (bundle.kind, times)


@pytest.mark.parametrize("artefact", ["preprocess.json", "model", "training_distribution.json"])
def test_tampering_with_any_artefact_is_detected(bundles, tmp_path, artefact):
    for name in ("subtype-xgboost", "subtype-lightgbm", "subtype-random_forest"):
        path = _copy(bundles[name][1], tmp_path / name)
        manifest = json.loads((path / MANIFEST).read_text())
        target = manifest["model"]["artefact"] if artefact == "model" else artefact
        data = bytearray((path / target).read_bytes())
        data[len(data) // 2] ^= 0x01  # flip one bit
        (path / target).write_bytes(bytes(data))
        with pytest.raises(BundleError, match="SHA-256"):
            load_bundle(path)


def test_missing_artefact_and_bad_manifest_refused(bundles, tmp_path):
    path = _copy(bundles["subtype-xgboost"][1], tmp_path)
    (path / "model.ubj").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(path)
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nowhere")


def test_edited_feature_list_in_manifest_is_refused(bundles, tmp_path):
    path = _copy(bundles["subtype-random_forest"][1], tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    names = manifest["feature_names"]
    names[0], names[1] = names[1], names[0]
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="feature list"):
        load_bundle(path)


def test_wrong_feature_set_at_prediction_is_refused(loaded, subtype_data: Dataset):
    bundle = loaded["subtype-xgboost"]
    features = {n: 0.0 for n in bundle.radiomic_features}
    del features[bundle.radiomic_features[0]]
    features["t1ce_original_unknown"] = 1.0
    with pytest.raises(BundleError, match="feature set does not match"):
        bundle.predict(features, "TN")
    assert isinstance(BundleError(), ConfigError)


def test_evaluation_table_without_model_features_is_refused(loaded, tables, tmp_path):
    bundle = loaded["subtype-xgboost"]
    text = tables.features_csv.read_text().replace(bundle.radiomic_features[0], "renamed_feature")
    (tmp_path / "f.csv").write_text(text)
    with pytest.raises(ConfigError, match="lacks 1 feature"):
        load_dataset(tmp_path / "f.csv", tables.labels_csv, bundle.task, bundle.feature_names)


def test_radiomics_config_mismatch_is_refused(bundles, tmp_path):
    path = bundles["subtype-xgboost"][1]
    other = tmp_path / "radiomics.yaml"
    other.write_text("setting: {binCount: 64}\n")
    with pytest.raises(BundleError, match="radiomics parameter file"):
        load_bundle(path, radiomics_config=other)
    repo_config = Path(__file__).parents[2] / "config" / "radiomics.yaml"
    assert load_bundle(path, radiomics_config=repo_config).task is Task.SUBTYPE


def test_missing_primary_and_nan_features_are_refused(loaded):
    bundle = loaded["subtype-xgboost"]
    features = {n: 0.0 for n in bundle.radiomic_features}
    with pytest.raises(LesionInputError, match="primary-tumour subtype"):
        bundle.predict(features, None)
    with pytest.raises(LesionInputError):
        bundle.predict(features, "luminal")
    used = next(n for n in bundle.selected_features if not n.startswith(PRIMARY_PREFIX))
    features[used] = float("nan")
    with pytest.raises(LesionInputError, match="could not be computed"):
        bundle.predict(features, "TN")
    assert issubclass(LesionInputError, InvalidStudyError)


def test_out_of_distribution_flag(loaded, subtype_data: Dataset):
    bundle = loaded["subtype-random_forest"]
    data = subtype_data
    features = {n: float(v) for n, v in zip(data.feature_names, data.x[0], strict=True)
                if not n.startswith(PRIMARY_PREFIX)}
    assert not bundle.predict(features, data.primary[0]).out_of_distribution
    used = next(n for n in bundle.selected_features if not n.startswith(PRIMARY_PREFIX))
    shifted = dict(features)
    shifted[used] = features[used] + 1e6
    pred = bundle.predict(shifted, data.primary[0])
    assert pred.out_of_distribution
    assert any(used in reason for reason in pred.ood_reasons)
    # a global shift of the unused features is also flagged
    unused = [n for n in bundle.radiomic_features if n not in bundle.selected_features]
    drifted = {n: (v * 50 + 100 if n in unused else v) for n, v in features.items()}
    pred = bundle.predict(drifted, data.primary[0])
    assert pred.out_of_distribution
    assert any("radiomic inputs" in reason for reason in pred.ood_reasons)


def test_failed_save_leaves_no_partial_bundle(bundles, tmp_path):
    from node.training.export import save_bundle

    result, _ = bundles["subtype-xgboost"]
    with pytest.raises(BundleError, match="radiomics parameter file not found"):
        save_bundle(result, tmp_path / "out", radiomics_config=tmp_path / "missing.yaml")
    assert list(tmp_path.iterdir()) == []
    save_bundle(result, tmp_path / "out")
    with pytest.raises(BundleError, match="not empty"):
        save_bundle(result, tmp_path / "out")
