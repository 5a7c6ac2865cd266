"""``ainode research``: run a study recipe end to end and write its report.

* ``ainode research run --recipe NAME|PATH --data DIR --out DIR [--nested] [--seed N]``: every task of the
  recipe (``config/recipes/<NAME>.yaml``) on a dataset folder (features.csv + labels.csv, optionally a second
  segmentation; the BCBM importer's output works as is); writes report.html, report.md, results.json and PNGs.
* ``ainode research recipes``: the available recipes.
* ``ainode research extract --images DIR --out DIR [--recipe NAME]``: the features a recipe needs (filtered
  images, shells minus other lesions, a second segmentation) from an image folder (layout in
  :mod:`node.research.extract`).
* ``ainode research synthetic --out DIR``: a synthetic research cohort (filtered-image and shell columns, a
  scanner column, a second segmentation) to try the recipes on.

The work is in :mod:`node.research`. Research use only, not for diagnosis.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from node.errors import ConfigError

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``research`` (actions ``run``, ``recipes``, ``synthetic``) to ``sub``."""
    research = sub.add_parser("research", help="study recipes: reproduce the radiomics studies' analyses and report")
    actions = research.add_subparsers(dest="research_action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run a recipe on a dataset folder and write report.html / report.md")
    run.add_argument("--recipe", default="yonsei", help="recipe name (config/recipes) or YAML path (default yonsei)")
    run.add_argument("--data", type=Path, required=True, help="dataset folder with features.csv and labels.csv")
    run.add_argument("--out", type=Path, required=True, help="report folder (created)")
    run.add_argument("--nested", action="store_true", help="also nested CV over all patients")
    run.add_argument("--seed", type=int, default=0, help="seed of splits, folds and models (default 0)")
    run.add_argument("--bootstrap", type=int, default=1000, help="patient-bootstrap resamples for CIs (default 1000)")
    run.add_argument("--grid", choices=("tiny", "quick", "full"), default=None,
                     help="override the recipe's S1 grid (grid recipes only)")
    run.add_argument("--label", default=None, help="how the report names the data (default: the folder name)")
    run.set_defaults(handler=_run)
    recipes = actions.add_parser("recipes", help="list the available recipes")
    recipes.set_defaults(handler=_recipes)
    extract = actions.add_parser("extract", help="extract a recipe's features from an image folder")
    extract.add_argument("--images", type=Path, required=True, help="one folder per case (node.research.extract)")
    extract.add_argument("--out", type=Path, required=True, help="where features.csv (+ features_seg2.csv) go")
    extract.add_argument("--recipe", default="yonsei", help="recipe whose images and regions to extract")
    extract.set_defaults(handler=_extract)
    synth = actions.add_parser("synthetic", help="write a synthetic research cohort (no images)")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--patients", type=int, default=120)
    synth.add_argument("--signal", type=float, default=2.0, help="planted signal (0 = pure noise)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synthetic)


def _run(args: argparse.Namespace) -> int:
    from node.research.recipe import load_recipe
    from node.research.report import write_report
    from node.research.run import run_recipe

    recipe = load_recipe(args.recipe)
    if args.grid is not None:
        if recipe.grid is None:
            raise ConfigError(f"--grid applies to grid recipes only; {recipe.name} lists its classifiers")
        recipe = recipe.with_overrides(grid=args.grid)
    if not args.data.is_dir():
        raise ConfigError(f"dataset folder not found: {args.data}")
    if args.bootstrap < 50:
        raise ConfigError("--bootstrap must be at least 50")
    result = run_recipe(recipe, args.data, nested=args.nested, seed=args.seed, n_boot=args.bootstrap)
    html = write_report(result, args.out, data_label=args.label or args.data.name)
    print(f"report: {html} (and report.md, results.json)")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from node.research.extract import extract_folder
    from node.research.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    shells = [int(r[len("shell") : -len("mm")]) for r in recipe.regions if r.startswith("shell")]
    written = extract_folder(args.images, args.out, sigmas_mm=recipe.log_sigmas_mm if "log" in recipe.images else (),
                             wavelet="wavelet" in recipe.images, shells_mm=shells)
    print("wrote " + ", ".join(str(p) for p in written) + " (add labels.csv to make a dataset folder)")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from node.research.recipe import available_recipes, load_recipe

    for name in available_recipes():
        print(f"{name:22s} {load_recipe(name).title}")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from node.research.synthetic import write_cohort

    if args.patients < 20:
        raise ConfigError("--patients must be at least 20")
    cohort = write_cohort(args.out, n_patients=args.patients, signal=args.signal, seed=args.seed)
    print(f"synthetic research cohort: {cohort.folder}")
    return 0
