"""``ainode features``: run the imaging pipeline on study folders and write the feature table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from node.errors import InvalidStudyError, NodeError
from node.imaging.pipeline import FeatureRun, PipelineConfig, peak_rss_mb, run_features, write_feature_table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "features",
        help="extract the 200 radiomic features per lesion from DICOM study folders",
        description="Load each STUDY_DIR (T1CE + T2 + DICOM-SEG), preprocess it (1 mm, N4, T2->T1CE "
        "registration, pons z-score) and write one CSV row per lesion. A JSON summary with per-stage "
        "timings is printed on stdout.",
    )
    parser.add_argument("study_dirs", nargs="+", type=Path, metavar="STUDY_DIR")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.csv", help="feature table to write")
    parser.add_argument("--rules", type=Path, help="series identification rules (default config/series_rules.yaml)")
    parser.add_argument("--pipeline-config", type=Path, help="preprocessing settings (default config/pipeline.yaml)")
    parser.add_argument("--radiomics-config", type=Path, help="pyradiomics parameters (default config/radiomics.yaml)")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="with several studies, report a bad study and continue with the others (exit status 2 at the end)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    for study_dir in args.study_dirs:
        if not study_dir.is_dir():
            raise InvalidStudyError(f"{study_dir} is not a folder (expected a folder of DICOM files)")
    config = PipelineConfig.load(args.rules, args.pipeline_config, args.radiomics_config)
    runs: list[FeatureRun] = []
    failures: list[dict[str, str]] = []
    for study_dir in args.study_dirs:
        try:
            runs.append(run_features(study_dir, config))
        except NodeError as exc:
            if not args.keep_going:
                raise
            failures.append({"case": study_dir.name, "error": exc.message})
            print(f"ainode features: {study_dir.name}: error: {exc.message}", file=sys.stderr)
    rows = write_feature_table(runs, args.out, config.preprocess.shells_mm) if runs else 0
    summary: dict[str, object] = {
        "out": str(args.out) if runs else None,
        "rows": rows,
        "studies": [run.summary() for run in runs],
        "failed": failures,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 2 if failures else 0
