"""``ainode analyse``: one study folder -> validated SR (+ companions) on disk and a readable summary, offline.

Wiring only: the work is :func:`node.jobs.process.process_study`; the header attributes searched for the
primary-tumour subtype come from ``AINODE_PRIMARY_SUBTYPE_ATTRIBUTES`` (default: ``AdditionalPatientHistory``,
``PatientComments``), read here and passed in. On a study that cannot be processed the
short "not processed" SR is written when possible, then the error propagates to :mod:`node.cli` (one readable
line, exit status 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from node.config import Settings
from node.errors import InvalidStudyError, ProcessingError
from node.imaging.pipeline import PipelineConfig
from node.jobs.lesions import LesionSummary
from node.jobs.process import ProcessResult, process_study, write_failure_report
from node.jobs.summary import result_json
from node.sr.patient import statement
from node.vocabulary import DISCLAIMER

HEAD_NAMES = {"er": "ER", "pr": "PR", "her2": "HER2", "her2-3tier": "HER2 3-tier"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "analyse",
        help="analyse one study folder offline: SR + companions written to --out, summary printed",
        description="Run the whole pipeline on STUDY_DIR (T1CE + T2 + DICOM-SEG) without any network: features, "
        "subtype and receptor predictions with SHAP explanations, a validated TID 1500 SR and its companions "
        f"in --out. {DISCLAIMER}.",
    )
    parser.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the SR and companions")
    parser.add_argument("--models", type=Path, metavar="DIR", help="model bundles (default: models/demo)")
    parser.add_argument(
        "--primary-subtype", metavar="SUBTYPE",
        help="primary-tumour subtype (HR+/HER2-, HR+/HER2+, HR-/HER2+, TN); default: from the study's "
        "AdditionalPatientHistory / PatientComments ('primary subtype: ...'), else the model without it",
    )
    parser.add_argument(
        "--companions", default="sc", metavar="KINDS",
        help="comma-separated companion objects: sc (Secondary Capture per lesion), pdf; 'none' for the SR only",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    parser.add_argument("--rules", type=Path, help="series identification rules (default config/series_rules.yaml)")
    parser.add_argument("--pipeline-config", type=Path, help="preprocessing settings (default config/pipeline.yaml)")
    parser.add_argument("--radiomics-config", type=Path, help="pyradiomics parameters (default config/radiomics.yaml)")
    parser.set_defaults(handler=run)


def _companions(value: str) -> tuple[str, ...]:
    if value.strip().lower() in ("", "none"):
        return ()
    return tuple(v.strip().lower() for v in value.split(",") if v.strip())


def run(args: argparse.Namespace) -> int:
    config = PipelineConfig.load(args.rules, args.pipeline_config, args.radiomics_config)
    settings = Settings.load()
    attributes = settings.primary_subtype_attributes
    try:
        result = process_study(
            args.study_dir, args.out, models_dir=args.models, primary_subtype=args.primary_subtype,
            config=config, companions=_companions(args.companions), primary_attributes=attributes,
            index_rule=settings.index_lesion,
            her2_three_tier=settings.her2_three_tier,
            dl_model_dir=settings.dl_model_dir, dl_heads=settings.dl_heads,  # the deep model (issue 13), if set
        )
    except (InvalidStudyError, ProcessingError) as exc:
        failure = write_failure_report(args.study_dir, args.out, exc, models_dir=args.models)
        if failure is not None:
            print(f"not processed; failure report written: {failure}")
        raise
    print(json.dumps(result_json(result), indent=1) if args.json else summary(result))
    return 0


def _lesion_lines(lesion: LesionSummary) -> list[str]:
    lines = [
        f"{lesion.label or 'Lesion'} (SEG segment {lesion.segment_number}, {lesion.volume_ml:.2f} mL)"
        + ("  - INDEX LESION" if lesion.index else ""),
        f"  subtype          {lesion.subtype}  (p={lesion.probability:.2f})",
    ]
    for task, head in lesion.heads.items():
        lines.append(f"  {HEAD_NAMES.get(task, task):<16} {head.label}  (p={head.probability:.2f})")
    if lesion.top_features:
        lines.append("  top features     " + ", ".join(f"{n} {v:+.2f}" for n, v in lesion.top_features[:5]))
    if lesion.out_of_distribution:
        text = "; ".join(lesion.ood_reasons[:3])
        lines.append(f"  WARNING: outside the training distribution - review with care ({text})")
    return lines


def summary(result: ProcessResult) -> str:
    """What the radiologist will see, as plain text."""
    variant = ("with the primary-tumour subtype" if result.subtype_model == "with-primary"
               else "without the primary-tumour subtype")
    lines = [
        f"AI prediction - {DISCLAIMER}. Not verified by a physician.",
        f"Study {result.study_instance_uid}: {len(result.lesions)} lesion(s); subtype model {variant}.",
        *statement(result.patient),
        "",
    ]
    for lesion in result.lesions:
        lines += [*_lesion_lines(lesion), ""]
    lines += [*(item.describe() for item in result.not_assessed), *([""] if result.not_assessed else [])]
    for warning in result.warnings:
        lines.append(f"warning: {warning}")
    lines.append(f"SR: {result.sr_path}")
    lines += [f"companion: {p}" for p in result.companion_paths]
    lines.append(f"processed in {result.timings.get('total', 0.0):.1f} s")
    return "\n".join(lines)
