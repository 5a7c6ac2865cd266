"""``ainode train-dl``: train, evaluate and export the multimodal deep model (ER, PR, HER2) in one command.

The dataset folder holds the tree models' tables (``features.csv``, ``labels.csv``: ``ainode dataset
import-bcbm`` or the synthetic cohort) and the lesion crops (``crops/``, docs/models.md "Deep model"). Steps:
patient-grouped cross-validation of the fusion and its ablations on the same folds (``--folds 0`` skips it), the
evaluation report (``<out>/evaluation/card.md`` and ``metrics.json``), then the final network on every lesion,
exported as an ONNX bundle into ``--out``. Needs the ``dl`` extra (torch). Research use only.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from node.errors import ConfigError

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("train-dl", help="train, evaluate and export the multimodal deep model (ONNX)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="folder with features.csv, labels.csv and crops/")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced)")
    parser.add_argument("--folds", type=int, default=5, help="outer patient-grouped folds (0: no evaluation)")
    parser.add_argument("--ablations", choices=("all", "fusion"), default="all",
                        help="evaluate every ablation (default) or the fusion only")
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--n-boot", type=int, default=500, help="patient-bootstrap resamples for the CIs")
    parser.add_argument("--synthetic", action="store_true",
                        help="mark the bundle as trained on synthetic data (demonstration only)")
    parser.add_argument("--name", default="bcbm-multimodal-dl")
    parser.add_argument("--model-version", default="0.1.0")
    parser.set_defaults(handler=run)


def validation_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The manifest's validation entry: the fusion's fold AUCs in one line, plus the numbers."""
    fusion = metrics["variants"].get("fusion", {})
    parts = [f"{t.upper()} {v['auc_mean']:.2f} ± {v['auc_sd']:.2f}" for t, v in fusion.items()
             if math.isfinite(v["auc_mean"]) and math.isfinite(v["auc_sd"])]
    return {"summary": f"{metrics['n_folds']}-fold patient-grouped CV ROC-AUC " + ", ".join(parts),
            "fusion": fusion}


def train_dl(dataset: Path, out: Path, *, folds: int = 5, ablations: str = "all", max_epochs: int = 40,
             seed: int = 0, device: str | None = None, n_boot: int = 500, synthetic: bool = False,
             name: str = "bcbm-multimodal-dl", version: str = "0.1.0") -> dict[str, Any]:
    """The command's work; returns the metrics (empty without evaluation)."""
    try:
        from node.dl.export import save_dl_bundle
        from node.dl.train import VARIANTS, TrainConfig, cross_validate, fit, spec_for
    except ImportError as exc:
        raise ConfigError(f"ainode train-dl needs the 'dl' extra (torch): pip install -e '.[dl]' ({exc})") from exc
    from node.dl.data import load_dl_dataset
    from node.dl.evaluate import write_report
    from node.model.provenance import SYNTHETIC, UNSPECIFIED

    data = load_dl_dataset(dataset / "features.csv", dataset / "labels.csv", dataset / "crops")
    config = TrainConfig(seed=seed, max_epochs=max_epochs, device=device)
    metrics: dict[str, Any] = {}
    validation = None
    if folds:
        from node.dl.evaluate import evaluate_cv

        variants = list(VARIANTS) if ablations == "all" else ["fusion"]
        cv = cross_validate(data, variants, folds, config)
        metrics = evaluate_cv(data, cv.fold, cv.probabilities, n_boot=n_boot, seed=seed)
        metrics["training_seconds"] = cv.seconds
        validation = validation_summary(metrics)
    fitted = fit(data, spec_for(data, "fusion"), config)
    save_dl_bundle(fitted, data, out, name=name, version=version, training_data=SYNTHETIC if synthetic else UNSPECIFIED,
                   validation=validation)
    if metrics:
        import json

        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        card = write_report(metrics, out / "evaluation", manifest)
        print(f"evaluation: {card}")
    print(f"deep-model bundle: {out} ({fitted.epochs} epochs)")
    return metrics


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    train_dl(args.dataset, args.out, folds=args.folds, ablations=args.ablations, max_epochs=args.max_epochs,
             seed=args.seed, device=args.device, n_boot=args.n_boot, synthetic=args.synthetic, name=args.name,
             version=args.model_version)
    return 0
