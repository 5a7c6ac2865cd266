"""Benchmark: ``ainode train`` grid search on a synthetic 200-patient, 200-feature table, plus inference latency.

Prints one row per grid (candidates, fits, wall time, best candidate, CV score) and the per-lesion prediction
time of the resulting bundle. Target (issue 3, this 2-core machine): the full grid on 200 patients in
<= 10 min; prediction <= 200 ms per lesion.

    python bench/bench_train.py [--grids quick full] [--patients 200] [--seed 0] [--nested]

With ``--recipes`` it instead times the study recipes (``ainode research run``, issue 14) on a 200-patient
synthetic research cohort, each in its own process (wall time and peak RSS); targets: the Yonsei grid <= 5 min,
each other recipe <= 10 min, nested CV <= 30 min:

    python bench/bench_train.py --recipes [yonsei her2-three-tier peritumoral-shells] [--nested] [--noise 100]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
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
RECIPE_TARGETS_S = {"yonsei": 300.0}
RECIPE_TARGET_S = 600.0
NESTED_TARGET_S = 1800.0


def _recipe_child(name: str, data: Path, nested: bool, seed: int) -> int:
    """Run one recipe in this process and print its wall time and peak RSS as JSON (the parent reads it)."""
    from node.research.recipe import load_recipe
    from node.research.report import write_report
    from node.research.run import run_recipe

    start = time.perf_counter()
    result = run_recipe(load_recipe(name), data, nested=nested, seed=seed, n_boot=1000)
    with tempfile.TemporaryDirectory() as out:
        write_report(result, Path(out), data_label="synthetic (bench)")
    elapsed = time.perf_counter() - start
    best = [f"{t.results['task']}: {t.results['best']} AUC {t.results['models'][0]['test']['auc']['value']:.2f}"
            for t in result.tasks]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_s": elapsed, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "peak_rss_mb": usage.ru_maxrss / 1024, "best": "; ".join(best)}))
    return 0


def bench_recipes(names: list[str], patients: int, noise: int, seed: int, nested: bool) -> int:
    from node.research.synthetic import write_cohort

    rows: list[tuple[str, ...]] = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        cohort = write_cohort(Path(tmp) / "data", n_patients=patients, n_noise=noise, seed=seed)
        n_columns = len(cohort.features_csv.open().readline().split(","))
        for name in names:
            cmd = [sys.executable, __file__, "--recipe-child", name, "--data", str(cohort.folder),
                   "--seed", str(seed), *(["--nested"] if nested else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                rows.append((name, "failed", "", "", proc.stderr.strip().splitlines()[-1] if proc.stderr else ""))
                ok = False
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            target = NESTED_TARGET_S if nested else RECIPE_TARGETS_S.get(name, RECIPE_TARGET_S)
            met = res["wall_s"] <= target
            ok &= met
            rows.append((name, f"{res['wall_s']:.0f} (<= {target:.0f}: {'met' if met else 'NOT met'})",
                         f"{res['cpu_s']:.0f}", f"{res['peak_rss_mb']:.0f}", res["best"]))
            print(f"{name}: {json.dumps(res)}", flush=True)  # as each finishes (a long run can be cut short)
    print(f"\nainode research run, {patients} patients, {n_columns} table columns, "
          f"{'with' if nested else 'without'} nested CV, 1000 bootstrap resamples")
    header = ("recipe", "wall s", "CPU s", "peak RSS MB", "best model per task (test AUC)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=["quick", "full"], choices=["tiny", "quick", "full"])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="subtype", choices=[t.value for t in Task])
    parser.add_argument("--nested", action="store_true", help="also time nested CV (5x the search)")
    parser.add_argument("--recipes", nargs="*", default=None,
                        help="time study recipes instead of the grids (default: all three)")
    parser.add_argument("--noise", type=int, default=100, help="noise features per kind in the recipe cohort")
    parser.add_argument("--recipe-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.recipe_child is not None:
        return _recipe_child(args.recipe_child, args.data, args.nested, args.seed)
    if args.recipes is not None:
        names = args.recipes or ["yonsei", "her2-three-tier", "peritumoral-shells"]
        return bench_recipes(names, args.patients, args.noise, args.seed, args.nested)

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
