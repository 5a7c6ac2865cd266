"""Training the deep model (needs the ``dl`` extra: torch): grouped splits, learning the planted signal on a
tiny cohort, ONNX export equal to torch, the one-command ``ainode train-dl``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn.metrics import roc_auc_score  # noqa: E402

from node.dl.data import DlDataset, load_dl_dataset  # noqa: E402
from node.dl.synthetic import write_crops  # noqa: E402
from node.dl.train import (  # noqa: E402
    TrainConfig,
    check_disjoint,
    fit,
    grouped_folds,
    grouped_holdout,
    predict,
    spec_for,
)
from node.errors import ConfigError  # noqa: E402
from node.training.synthetic import write_tables  # noqa: E402


def cohort(root: Path, patients: int, lesions: int = 1, seed: int = 4) -> DlDataset:
    tables = write_tables(root, n_patients=patients, n_noise=6, seed=seed, lesions_per_patient=lesions)
    write_crops(tables.labels_csv, root / "crops", seed=seed)
    return load_dl_dataset(tables.features_csv, tables.labels_csv, root / "crops")


def test_splits_keep_every_patient_on_one_side(tmp_path: Path) -> None:
    data = cohort(tmp_path, 30, lesions=3)
    assert data.y.shape == (90, 3) and data.n_patients == 30
    for tr, te in grouped_folds(data, 3, seed=1):
        assert not set(data.groups[tr]) & set(data.groups[te])
    tr, va = grouped_holdout(data.groups, 0.2, seed=1)
    assert not set(data.groups[tr]) & set(data.groups[va]) and len(tr) + len(va) == 90
    with pytest.raises(ConfigError, match="both sides"):
        check_disjoint(data.groups, np.arange(0, 2), np.arange(1, 3))


def test_image_branch_learns_the_planted_signal(tmp_path: Path) -> None:
    """The image alone (no radiomics, no site) beats chance on held-out patients: the CNN learns the crops (12
    epochs keep the test short: one planted signal is learnt well, the three on average above chance)."""
    torch.set_num_threads(2)
    data = cohort(tmp_path, 90)
    tr, te = grouped_holdout(data.groups, 0.35, seed=3)
    fitted = fit(data.subset(tr), spec_for(data, "image only"), TrainConfig(seed=0, max_epochs=12, patience=12))
    p, y = predict(fitted, data.subset(te)), data.y[te]
    aucs = [roc_auc_score(y[:, k], p[:, k]) for k in range(3)]
    assert max(aucs) > 0.85 and np.mean(aucs) > 0.6, aucs


def test_onnx_output_equals_torch_and_cli_runs_end_to_end(tmp_path: Path) -> None:
    from node.cli import main
    from node.dl.export import save_dl_bundle
    from node.imaging.crops import LesionCrop
    from node.model.dl_bundle import load_dl_bundle

    data = cohort(tmp_path / "data", 24)
    fitted = fit(data, spec_for(data, "fusion"), TrainConfig(max_epochs=1))
    out = save_dl_bundle(fitted, data, tmp_path / "bundle")
    bundle = load_dl_bundle(out)
    expected = predict(fitted, data)
    for i in range(4):
        crop = LesionCrop(data.images[i], *_site(data, i))
        got = bundle.probabilities(dict(zip(data.feature_names, data.radiomics[i], strict=True)), crop)
        assert np.allclose([got["er"], got["pr"], got["her2"]], expected[i], atol=1e-4)
    # one command: evaluation (fusion, 2 folds) + export
    assert main(["train-dl", str(tmp_path / "data"), "--out", str(tmp_path / "cli"), "--folds", "2",
                 "--ablations", "fusion", "--max-epochs", "1", "--n-boot", "20"]) == 0
    assert (tmp_path / "cli" / "evaluation" / "card.md").is_file()
    assert load_dl_bundle(tmp_path / "cli").manifest["validation"]["summary"].startswith("2-fold")


def _site(data: DlDataset, i: int) -> tuple[str, str]:
    from node.imaging.crops import LOCATION_VOCABULARY

    on = [LOCATION_VOCABULARY[j].split("=", 1) for j in np.flatnonzero(data.location[i])]
    found = dict(on)
    return found.get("region", ""), found.get("hemisphere", "")
