"""Train a demonstration bundle for every task on a synthetic cohort (planted signal; NOT a clinical model).

    python models/make_demo_models.py [--out models/demo] [--patients 200] [--grid quick] [--seed 0]

Writes ``<out>/<task>/`` bundles plus ``<out>/data/{features,labels}.csv``. The bundles carry the same
"research use only, not for diagnosis" disclaimer as every bundle and say in their manifest that they were
trained on synthetic data (``training.lesions_per_site`` lists the synthetic sites).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.learn.bundle import save_bundle
from node.learn.dataset import Task, load_dataset
from node.learn.synthetic import write_tables
from node.learn.train import TrainOptions, train

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "demo")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--grid", default="quick", choices=["tiny", "quick", "full"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tables = write_tables(args.out / "data", n_patients=args.patients, n_noise=197, seed=args.seed, signal=3.0)
    for task in Task:
        data = load_dataset(tables.features_csv, tables.labels_csv, task)
        result = train(data, TrainOptions(task=task, seed=args.seed, grid=args.grid))
        save_bundle(result, args.out / task.value)
        best = result.search.best
        print(f"{task.value:<18} {best.classifier.kind:<14} CV {best.mean:.3f} ± {best.sd:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
