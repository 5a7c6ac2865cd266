"""``ainode dataset import-bcbm --crops``: the importer writes one crop per lesion, named as the tables name it,
so ``ainode train-dl`` joins tables and crops (no torch needed here)."""

from __future__ import annotations

from pathlib import Path

from node.datasets.bcbm.features import ExtractOptions
from node.datasets.bcbm.importer import ImportOptions, import_bcbm
from node.dl.data import load_dl_dataset
from node.imaging.crops import CHANNELS, CROP_SIZE
from tests.learn.bcbm_fake import DEFAULT_PATIENTS, write_replica


def test_import_writes_crops_that_join_the_tables(tmp_path: Path) -> None:
    replica = write_replica(tmp_path / "download", DEFAULT_PATIENTS[:2])
    out = tmp_path / "tables"
    options = ImportOptions(extract=ExtractOptions(pons="whole-brain", crops_dir=out / "crops"))
    result = import_bcbm(replica.root, out, options)
    data = load_dl_dataset(result.features_csv, result.labels_csv, out / "crops")
    assert data.images.shape[1:] == (len(CHANNELS), CROP_SIZE, CROP_SIZE, CROP_SIZE)
    assert data.y.shape[0] == result.summary["lesions"]["with_features"]
    assert all(img[2].sum() > 0 and not img[1].any() for img in data.images)  # the mask; no T2 in the collection
    assert not (out / "crops" / "by-scan").exists() or not any((out / "crops" / "by-scan").iterdir())
