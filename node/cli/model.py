"""``ainode train``, ``ainode evaluate`` and ``ainode predict``: the command-line face of :mod:`node.learn`.

``register(sub)`` adds the three sub-commands to the node's sub-parser; each sets ``handler=run`` and
``learn_command`` so :func:`run` dispatches. Errors are raised as :class:`node.errors.NodeError` subclasses,
which the node's CLI prints as one line.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from node.errors import ConfigError
from node.model.bundle import DEFAULT_RADIOMICS_CONFIG
from node.training.cv import SCORINGS

logger = logging.getLogger(__name__)

TASK_CHOICES = ("subtype", "subtype-noprimary", "er", "pr", "her2", "her2-3tier")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train``, ``evaluate`` and ``predict`` to ``sub`` (the result of ``add_subparsers``)."""
    train = sub.add_parser(
        "train", help="train a subtype/receptor classifier and write a model bundle",
        description="Grouped-CV grid search (RobustScaler → selection → tree ensemble), refit, bundle. "
        "Research use only, not for diagnosis.",
    )
    train.add_argument("--features", type=Path, required=True, help="feature table (ainode features CSV)")
    train.add_argument("--labels", type=Path, required=True, help="labels CSV (one row per lesion)")
    train.add_argument("--task", choices=TASK_CHOICES, required=True)
    train.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--training-data", default=None, metavar="KIND",
                       help="what the model was trained on, recorded in the manifest and printed in every SR: "
                            "'clinical', 'synthetic' (a demonstration model: ainode serve refuses it unless "
                            "allowed), ...; default 'unspecified'")
    train.add_argument("--nested", action="store_true", help="also run nested CV (honest estimate; slower)")
    train.add_argument("--scoring", default="accuracy", choices=SCORINGS)
    train.add_argument("--permutations", type=int, default=0,
                       help="label-permutation null of the chosen candidate's CV score (e.g. 100; 0 = off)")
    train.add_argument("--grid", default="quick", choices=("quick", "full", "tiny"))
    train.add_argument("--folds", type=int, default=5, help="CV folds (default 5)")
    train.add_argument("--radiomics-config", type=Path, default=DEFAULT_RADIOMICS_CONFIG,
                       help="PyRadiomics parameter file the features were extracted with (its SHA-256 is recorded)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(handler=run, learn_command="train")

    evaluate = sub.add_parser(
        "evaluate", help="evaluate a model bundle on a labelled feature table; write metrics and a model card",
    )
    evaluate.add_argument("bundle", type=Path)
    evaluate.add_argument("--features", type=Path, required=True)
    evaluate.add_argument("--labels", type=Path, required=True)
    evaluate.add_argument("--out", type=Path, required=True, help="report directory")
    evaluate.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.set_defaults(handler=run, learn_command="evaluate")

    predict = sub.add_parser("predict", help="predict every lesion of a feature table; one JSON object per line")
    predict.add_argument("bundle", type=Path)
    predict.add_argument("features", type=Path)
    predict.add_argument("--primary-subtype", default=None,
                         help="primary-tumour subtype for every lesion (else a primary_subtype column or --labels)")
    predict.add_argument("--labels", type=Path, default=None, help="labels CSV supplying primary_subtype")
    predict.add_argument("--radiomics-config", type=Path, default=None,
                         help="refuse the bundle unless it was trained with this parameter file")
    predict.set_defaults(handler=run, learn_command="predict")


def _train(args: argparse.Namespace) -> int:
    from node.model.tasks import Task
    from node.training.dataset import load_dataset
    from node.training.export import save_bundle
    from node.training.train import TrainOptions, train

    task = Task(args.task)
    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"output bundle directory {args.out} exists and is not empty")
    data = load_dataset(args.features, args.labels, task)
    options = TrainOptions(task=task, seed=args.seed, grid=args.grid, scoring=args.scoring, nested=args.nested,
                           n_splits=args.folds, progress=not args.no_progress,
                           permutations=args.permutations)
    try:
        result = train(data, options)
    except ValueError as exc:
        raise ConfigError(f"training failed: {exc}") from exc
    save_bundle(result, args.out, args.radiomics_config, training_data=args.training_data)
    best = result.search.best
    print(f"{task.value}: {best.selector.describe()} + {best.classifier.describe()}; CV {options.scoring} "
          f"{best.mean:.3f} ± {best.sd:.3f}; bundle {args.out} ({result.elapsed_s:.0f} s)")
    if result.nested is not None:
        print(f"nested CV {options.scoring} {result.nested.mean:.3f} ± {result.nested.sd:.3f}")
    if result.permutation is not None:
        print(f"permutation null: p = {result.permutation.p_value:.3f} ({len(result.permutation.null_scores)} perms)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from node.evaluation.evaluate import evaluate
    from node.model.bundle import load_bundle
    from node.training.dataset import load_dataset

    bundle = load_bundle(args.bundle)
    data = load_dataset(args.features, args.labels, bundle.task, bundle.feature_names)
    metrics = evaluate(bundle, data, args.out, n_boot=args.bootstrap, seed=args.seed)
    acc, f1 = metrics["accuracy"], metrics["f1_macro"]
    print(f"{bundle.task.value}: accuracy {acc['value']:.3f} ({acc['ci95_low']:.3f}-{acc['ci95_high']:.3f}), "
          f"F1-macro {f1['value']:.3f} ({f1['ci95_low']:.3f}-{f1['ci95_high']:.3f}); report in {args.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from node.model.bundle import load_bundle
    from node.model.predict import iter_table_predictions, print_table_predictions

    bundle = load_bundle(args.bundle, radiomics_config=args.radiomics_config)
    bundle.warm_up()
    start = time.perf_counter()
    failures = print_table_predictions(
        iter_table_predictions(bundle, args.features, primary_subtype=args.primary_subtype, labels_csv=args.labels)
    )
    logger.info("predictions done in %.2f s (%d lesion(s) not predicted)", time.perf_counter() - start, failures)
    return 0 if failures == 0 else 1


def run(args: argparse.Namespace) -> int:
    """Dispatch to the sub-command chosen by ``register``'s parsers."""
    command = getattr(args, "learn_command", None)
    if command == "train":
        return _train(args)
    if command == "evaluate":
        return _evaluate(args)
    if command == "predict":
        return _predict(args)
    raise ConfigError(f"unknown learn command {command!r}")
