"""Benchmark: ``ainode train`` grid search on a synthetic 200-patient, 200-feature table, plus inference latency.

Prints one row per grid (candidates, fits, wall time, best candidate, CV score) and the per-lesion prediction
time of the resulting bundle. Target (issue 3, this 2-core machine): the full grid on 200 patients in
<= 10 min; prediction <= 200 ms per lesion.

    python bench/bench_train.py [--grids quick full] [--patients 200] [--seed 0] [--nested]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.model.bundle import load_bundle
from node.model.tasks import PRIMARY_PREFIX, Task
from node.training.dataset import load_dataset
from node.training.export import save_bundle
from node.training.grid import GridName, grid
from node.training.synthetic import write_tables
from node.training.train import TrainOptions, train

TARGET_FULL_S = 600.0
TARGET_PREDICT_S = 0.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=["quick", "full"], choices=["tiny", "quick", "full"])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="subtype", choices=[t.value for t in Task])
    parser.add_argument("--nested", action="store_true", help="also time nested CV (5x the search)")
    args = parser.parse_args(argv)

    task = Task(args.task)
    rows: list[tuple[str, ...]] = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tables = write_tables(root / "data", n_patients=args.patients, n_noise=197, seed=args.seed, n_sites=2)
        data = load_dataset(tables.features_csv, tables.labels_csv, task)
        latency_ms = float("nan")
        for name in args.grids:
            grid_name: GridName = name
            selectors, classifiers = grid(grid_name)
            n_candidates = len(selectors) * len(classifiers)
            start = time.perf_counter()
            result = train(data, TrainOptions(task=task, seed=args.seed, grid=grid_name, nested=args.nested,
                                              progress=False))
            elapsed = time.perf_counter() - start
            best = result.search.best
            rows.append((name, str(n_candidates), str(n_candidates * result.search.n_splits), f"{elapsed:.1f}",
                         f"{best.mean:.3f} ± {best.sd:.3f}",
                         f"{best.selector.describe()} + {best.classifier.describe()}"))
            if name == "full":
                ok &= elapsed <= TARGET_FULL_S
            bundle = load_bundle(save_bundle(result, root / f"bundle-{name}"))
            bundle.warm_up()
            times = []
            for i in range(min(50, data.y.size)):
                feats = {n: float(v) for n, v in zip(data.feature_names, data.x[i], strict=True)
                         if not n.startswith(PRIMARY_PREFIX)}
                t0 = time.perf_counter()
                bundle.predict(feats, data.primary[i] or None)
                times.append(time.perf_counter() - t0)
            latency_ms = 1000 * statistics.median(times)
            ok &= latency_ms <= 1000 * TARGET_PREDICT_S
            rows[-1] = (*rows[-1], f"{latency_ms:.1f}")

    print(f"\nainode train, task {task.value}, {args.patients} patients, {data.x.shape[1]} inputs, "
          f"{'with' if args.nested else 'without'} nested CV")
    header = ("grid", "cand.", "CV fits", "wall s", "CV accuracy", "best candidate", "predict ms")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    print(f"\ntargets: full grid <= {TARGET_FULL_S:.0f} s, predict <= {1000 * TARGET_PREDICT_S:.0f} ms/lesion -> "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
