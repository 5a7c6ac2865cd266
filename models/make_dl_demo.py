"""Build the shipped DEMONSTRATION deep model (``models/demo-dl/``) from the synthetic cohort.

    python models/make_dl_demo.py [--out models/demo-dl] [--seed 2026] [--folds 0]

The radiomic inputs are the demo models' feature table (``models/demo/data/``: the pipeline's 200 features of
the synthetic DICOM cohort, so the names match what the node extracts); the image input is a synthetic crop
per lesion with the planted ER / PR / HER2 signals of :mod:`node.dl.synthetic` (drawn deterministically from
the labels into a temporary folder). Then ``ainode train-dl`` trains, (optionally) evaluates and exports the
ONNX bundle, marked ``training_data: synthetic``, with a pinned creation time.

This model was trained on SYNTHETIC data for demonstration only and must never be used on patients.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from node.cli.train_dl import train_dl
from node.dl.synthetic import write_crops
from node.model.bundle import MANIFEST, sha256_file

ROOT = Path(__file__).resolve().parent
CREATED_UTC = "2026-12-05T00:00:00Z"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "demo-dl")
    parser.add_argument("--data", type=Path, default=ROOT / "demo" / "data")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--folds", type=int, default=0, help="evaluate with this many folds first (0: none)")
    parser.add_argument("--max-epochs", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory(prefix="ainode-dl-demo-") as tmp:
        dataset = Path(tmp)
        for name in ("features.csv", "labels.csv"):
            shutil.copy(args.data / name, dataset / name)
        write_crops(dataset / "labels.csv", dataset / "crops", seed=args.seed)
        train_dl(dataset, args.out, folds=args.folds, ablations="fusion", max_epochs=args.max_epochs,
                 seed=args.seed, synthetic=True, name="bcbm-multimodal-dl-demo", version="0.1.0-demo")
    manifest_path = args.out / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["created_utc"] = CREATED_UTC  # a rerun gives the same bundle
    manifest["training_data_source"] = (
        "SYNTHETIC: the demo models' feature table (ainode synth cohort) and crops with planted signals "
        "(node.dl.synthetic); for demonstration only, never for patients"
    )
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{args.out}: manifest sha256 {sha256_file(manifest_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
