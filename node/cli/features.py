"""``ainode features``: run the imaging pipeline on study folders and write the feature table."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from node.errors import ConfigError, InvalidStudyError, NodeError
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
    parser.add_argument(
        "--workers", type=int, default=1, help="studies processed in parallel processes (default 1)"
    )
    parser.set_defaults(handler=run)


_worker_config: PipelineConfig | None = None


def _init_worker(paths: tuple[Path | None, Path | None, Path | None]) -> None:
    global _worker_config
    _worker_config = PipelineConfig.load(*paths)


def _run_in_worker(study_dir: Path) -> FeatureRun | str:
    """One study in a worker process; a NodeError comes back as its message (exceptions cross badly)."""
    assert _worker_config is not None
    try:
        return run_features(study_dir, _worker_config)
    except NodeError as exc:
        return exc.message


def _results(
    study_dirs: Sequence[Path], config: PipelineConfig, paths: tuple[Path | None, Path | None, Path | None],
    workers: int,
) -> Iterator[tuple[Path, FeatureRun | NodeError]]:
    """Each study's run (or its error), in the order given."""
    if workers <= 1 or len(study_dirs) <= 1:
        for study_dir in study_dirs:
            try:
                yield study_dir, run_features(study_dir, config)
            except NodeError as exc:
                yield study_dir, exc
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(paths,)) as pool:
        for study_dir, outcome in zip(study_dirs, pool.map(_run_in_worker, study_dirs), strict=True):
            yield study_dir, InvalidStudyError(outcome) if isinstance(outcome, str) else outcome


def run(args: argparse.Namespace) -> int:
    for study_dir in args.study_dirs:
        if not study_dir.is_dir():
            raise InvalidStudyError(f"{study_dir} is not a folder (expected a folder of DICOM files)")
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    paths = (args.rules, args.pipeline_config, args.radiomics_config)
    config = PipelineConfig.load(*paths)
    runs: list[FeatureRun] = []
    failures: list[dict[str, str]] = []
    for study_dir, outcome in _results(args.study_dirs, config, paths, args.workers):
        if isinstance(outcome, FeatureRun):
            runs.append(outcome)
            continue
        if not args.keep_going:
            raise outcome
        failures.append({"case": study_dir.name, "error": outcome.message})
        print(f"ainode features: {study_dir.name}: error: {outcome.message}", file=sys.stderr)
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
