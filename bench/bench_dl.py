"""Benchmark: the multimodal deep model (issue 13) on the synthetic cohort.

Prints one table: the training time of one final fit (fusion, early stopping) on the 200-patient synthetic
cohort with crops (target <= 10 min on this 2-core machine), the device it ran on (CUDA when present), ONNX
inference per lesion with onnxruntime on the CPU (target <= 50 ms) and the time the deep model adds per study in
the node (the job's ``deep`` step: crops cut in the pipeline + ONNX per lesion; target <= 0.5 s).

    python bench/bench_dl.py [--patients 200] [--lesions 1] [--max-epochs 40] [--threads 1] [--skip-train]
                             [--study]

``--study`` also runs the job on one small synthetic DICOM study with the shipped demo bundle and reports its
``deep`` timing and the pipeline's ``crops`` step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from node.dl.data import load_dl_dataset
from node.dl.synthetic import write_crops
from node.imaging.crops import LesionCrop
from node.model.dl_bundle import load_dl_bundle
from node.training.synthetic import write_tables

TARGET_TRAIN_S = 600.0
TARGET_INFER_S = 0.05
TARGET_STUDY_S = 0.5
REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--lesions", type=int, default=1, help="lesions per patient")
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-train", action="store_true", help="time inference with the shipped demo bundle")
    parser.add_argument("--study", action="store_true", help="also time the job's deep step on a DICOM study")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-dl-") as tmp:
        root = Path(tmp)
        tables = write_tables(root, n_patients=args.patients, seed=args.seed, lesions_per_patient=args.lesions)
        write_crops(tables.labels_csv, root / "crops", seed=args.seed)
        data = load_dl_dataset(tables.features_csv, tables.labels_csv, root / "crops")
        bundle_dir = REPO / "models" / "demo-dl"
        if not args.skip_train:
            from node.dl.export import save_dl_bundle
            from node.dl.train import TrainConfig, fit, pick_device, spec_for

            start = time.perf_counter()
            config = TrainConfig(seed=args.seed, max_epochs=args.max_epochs, threads=args.threads)
            fitted = fit(data, spec_for(data, "fusion"), config)
            seconds = time.perf_counter() - start
            rows.append((f"train fusion, {data.n_patients} patients / {data.y.shape[0]} lesions, "
                         f"{fitted.epochs} epochs ({pick_device()}, {args.threads} threads)", f"{seconds:.1f} s",
                         f"<= {TARGET_TRAIN_S:.0f} s", "ok" if seconds <= TARGET_TRAIN_S else "MISSED"))
            bundle_dir = save_dl_bundle(fitted, data, root / "bundle")
        bundle = load_dl_bundle(bundle_dir)
        if tuple(bundle.feature_names) != data.feature_names:  # the demo bundle: the pipeline's feature names
            features = [dict(zip(bundle.feature_names, bundle.mean, strict=True))] * data.y.shape[0]
        else:
            features = [dict(zip(data.feature_names, row, strict=True)) for row in data.radiomics]
        crops = [LesionCrop(img, "frontal lobe", "left") for img in data.images]
        bundle.probabilities(features[0], crops[0])  # warm up
        times = []
        for f, c in zip(features[:100], crops[:100], strict=False):
            start = time.perf_counter()
            bundle.probabilities(f, c)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows.append((f"ONNX inference per lesion (onnxruntime CPU, 1 thread; median of {len(times)})",
                     f"{1000 * median:.1f} ms", f"<= {1000 * TARGET_INFER_S:.0f} ms",
                     "ok" if median <= TARGET_INFER_S else "MISSED"))
        if args.study:
            rows += _study_rows(root)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>10}  {'target':>10}  status")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>10}  {r[2]:>10}  {r[3]}")
    return 0


def _study_rows(root: Path) -> list[tuple[str, str, str, str]]:
    from node.jobs.process import process_study
    from node.synth.generate import generate_cohort

    generate_cohort(root / "study", 1, 7, size="small")
    base = process_study(root / "study" / "case0000", root / "out0")
    result = process_study(root / "study" / "case0000", root / "out1", dl_model_dir=REPO / "models" / "demo-dl")
    added = result.timings["deep"] + result.timings.get("pipeline.crops", 0.0)
    return [
        (f"job deep step + crops, {len(result.lesions)} lesion(s) (total {result.timings['total']:.1f} s, "
         f"without the deep model {base.timings['total']:.1f} s)", f"{added:.3f} s", f"<= {TARGET_STUDY_S} s",
         "ok" if added <= TARGET_STUDY_S else "MISSED"),
    ]


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
