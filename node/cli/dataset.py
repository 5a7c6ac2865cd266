"""``ainode dataset import-bcbm PATH --out DIR``: public training data as node/learn tables (and models).

``register(sub)`` adds the ``dataset`` sub-command with its actions; :func:`run` is the handler. The work is
in :mod:`node.datasets.bcbm.importer` (import) and :mod:`node.datasets.bcbm.train` (``--train``). Errors are
:class:`node.errors.NodeError` subclasses, which the node's CLI prints as one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from node.errors import ConfigError
from node.model.bundle import DEFAULT_RADIOMICS_CONFIG

logger = logging.getLogger(__name__)

TRAINING_SUMMARY = "training_summary.json"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dataset`` (action ``import-bcbm``) to ``sub`` (the result of ``add_subparsers``)."""
    dataset = sub.add_parser("dataset", help="import public datasets as feature and label tables")
    actions = dataset.add_subparsers(dest="dataset_action", required=True, metavar="ACTION")
    bcbm = actions.add_parser(
        "import-bcbm",
        help="TCIA BCBM-RadioGenomics (NIfTI T1CE + masks + clinical workbook) -> features.csv, labels.csv",
        description="Classify the masks by name (lesions only), extract the 107 T1CE features with the node's "
        "settings (1 mm, pons z-score, config/radiomics.yaml) and write node/learn tables; with --train also "
        "fit ER, PR and HER2 with patient-grouped nested CV. The models are T1CE-only BCBM-RadioGenomics models, "
        "not the S1 model. Research use only, not for diagnosis.",
    )
    bcbm.add_argument("path", type=Path, metavar="PATH",
                      help="folder holding BCBM-RadioGenomics_Images_Masks_Dec2024/ and the clinical workbook")
    bcbm.add_argument("--out", type=Path, required=True, help="output folder (created; must not hold tables)")
    bcbm.add_argument("--clinical", type=Path, default=None,
                      help="clinical workbook (default PATH/BCBM-RadioGenomics-Clinical-data.xlsx)")
    bcbm.add_argument("--workers", type=int, default=1, help="scans processed in parallel (processes; default 1)")
    bcbm.add_argument("--train", action="store_true", help="also train ER, PR and HER2 models (nested CV)")
    bcbm.add_argument("--seed", type=int, default=0, help="seed of the CV folds and models (default 0)")
    bcbm.add_argument("--grid", default="quick", choices=("tiny", "quick", "full"), help="search grid for --train")
    bcbm.add_argument("--folds", type=int, default=5, help="CV folds, outer and inner (default 5)")
    bcbm.add_argument("--permutations", type=int, default=0,
                      help="label-permutation null of each chosen model's CV score (0 = off)")
    bcbm.add_argument("--pons", default="auto", choices=("auto", "whole-brain"),
                      help="intensity reference: automatic MNI pons with QC (default) or whole brain")
    bcbm.add_argument("--n4", action="store_true", help="apply N4 again (the collection is N4-corrected upstream)")
    bcbm.add_argument("--skip-invalid-masks", action="store_true",
                      help="record an empty or misaligned lesion mask as a QC error instead of stopping")
    bcbm.add_argument("--crops", action="store_true",
                      help="also write the deep model's lesion crops into OUT/crops (ainode train-dl)")
    bcbm.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    bcbm.set_defaults(handler=run)


def _import(args: argparse.Namespace) -> int:
    from node.datasets.bcbm.features import ExtractOptions
    from node.datasets.bcbm.importer import ImportOptions, import_bcbm
    from node.datasets.bcbm.train import TrainSettings, train_bcbm

    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.folds < 2:
        raise ConfigError("--folds must be at least 2")

    def progress(message: str) -> None:
        if not args.no_progress:
            print(f"import-bcbm: {message}", file=sys.stderr)

    extract = ExtractOptions(pons=args.pons, n4=args.n4, skip_invalid_masks=args.skip_invalid_masks,
                             crops_dir=args.out.resolve() / "crops" if args.crops else None)
    options = ImportOptions(workers=args.workers, extract=extract, workbook=args.clinical, progress=progress)
    result = import_bcbm(args.path, args.out, options)
    s = result.summary
    print(f"{s['scans']} scans of {s['patients']} patients; {s['masks']['total']} masks: {s['masks']['lesion']} "
          f"lesion, {s['masks']['not_lesion']} not ({s['masks']['by_category']}); {s['lesions']['with_features']} "
          f"lesions with {s['features_per_lesion']} features, {s['lesions']['with_qc_error']} with a QC error")
    print(f"tables in {result.out} ({result.features_csv.name}, {result.labels_csv.name}, {result.masks_csv.name}, "
          f"{result.summary_json.name})")
    if not args.train:
        return 0
    settings = TrainSettings(seed=args.seed, grid=args.grid, folds=args.folds, permutations=args.permutations,
                             progress=not args.no_progress, radiomics_config=DEFAULT_RADIOMICS_CONFIG)  # fmt: skip
    outcomes = train_bcbm(result.features_csv, result.labels_csv, result.out / "models", settings)
    (result.out / TRAINING_SUMMARY).write_text(json.dumps(outcomes, indent=1, sort_keys=True) + "\n",
                                               encoding="utf-8")  # fmt: skip
    for task, outcome in outcomes.items():
        if outcome["trained"]:
            nested = outcome["nested"]
            print(f"{task}: nested CV {nested['scoring']} {nested['mean']:.3f} ± {nested['sd']:.3f}, pooled AUC "
                  f"{nested['pooled_auc']:.3f} ({outcome['n_patients']} patients); bundle {outcome['bundle']}")
            if "permutation_null" in outcome:
                perm = outcome["permutation_null"]
                print(f"{task}: permutation null of the chosen model's CV score: p = {perm['p_value']:.3f} "
                      f"({perm['n_permutations']} permutations)")
        else:
            print(f"{task}: not trained: {outcome['reason']}")
    return 0 if all(o["trained"] for o in outcomes.values()) else 1


def run(args: argparse.Namespace) -> int:
    """Dispatch the ``dataset`` action."""
    if args.dataset_action == "import-bcbm":
        return _import(args)
    raise ConfigError(f"unknown dataset action {args.dataset_action!r}")
