"""Fixtures for the SR tests: one real small synthetic study (``ainode synth``), constructed predictions,
and the SR + companions built from them, written to disk once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from node.model.prediction import Prediction
from node.sr.companion import build_companion_pdf, build_companion_sc
from node.sr.content import (
    AlgorithmInfo,
    LesionResult,
    ModelInfo,
    PonsSummary,
    ReportContent,
    SubtypeModel,
    lesion_result_from_predictions,
)
from node.sr.report import build_report, write_instance
from node.sr.source import SourceStudy
from tests.support.studies import SynthCase, synth_case

__all__ = ["synth_case"]

SHA = "0123456789abcdef" * 4
TASKS = ("subtype", "er", "pr", "her2", "her2-3tier")
FEATURES = {
    "t1ce_glcm_JointEntropy": 5.12,
    "t2_firstorder_Median": 0.31,
    "shape_Sphericity": 0.81,
    "t2_gldm_DependenceEntropy": 3.3,
    "t1ce_glszm_ZoneEntropy": 4.4,
    "shape_VoxelVolume": 1500.0,
    "t1ce_firstorder_Mean": 1.9,
}
SHAP = {
    "t1ce_glcm_JointEntropy": 0.31,
    "t2_firstorder_Median": -0.22,
    "shape_Sphericity": 0.12,
    "t2_gldm_DependenceEntropy": 0.05,
    "t1ce_glszm_ZoneEntropy": -0.04,
    "shape_VoxelVolume": 0.01,
    "t1ce_firstorder_Mean": 0.002,
    "primary_subtype=HR-/HER2+": 0.7,
    "primary_subtype=TN": 0.0,
}


def subtype_prediction(label: str = "HR-/HER2+", ood: bool = False) -> Prediction:
    probs = {"HR+/HER2-": 0.1, "HR+/HER2+": 0.15, "HR-/HER2+": 0.15, "TN": 0.1}
    probs[label] = 0.0
    probs[label] = 1.0 - sum(probs.values())
    return Prediction(label=label, probabilities=probs, shap_contributions=SHAP, shap_base_value=-0.4,
                      shap_units="log-odds margin", out_of_distribution=ood,
                      ood_reasons=("t2_firstorder_Median above the training range",) if ood else ())


def binary(p_positive: float) -> Prediction:
    label = "positive" if p_positive >= 0.5 else "negative"
    return Prediction(label=label, probabilities={"negative": 1 - p_positive, "positive": p_positive},
                      shap_contributions={}, shap_base_value=0.0, shap_units="log-odds margin",
                      out_of_distribution=False)


def tier(zero: float, low: float, positive: float) -> Prediction:
    probs = {"zero": zero, "low": low, "positive": positive}
    return Prediction(label=max(probs, key=probs.__getitem__), probabilities=probs, shap_contributions={},
                      shap_base_value=0.0, shap_units="log-odds margin", out_of_distribution=False)


def algorithm(tasks: tuple[str, ...] = TASKS) -> AlgorithmInfo:
    return AlgorithmInfo(models=tuple(ModelInfo(t, f"bcbm-{t}", "0.1.0", SHA) for t in tasks))


@pytest.fixture(scope="session")
def study_dir(synth_case: SynthCase) -> Path:
    """``ainode synth --cases 1 --seed 1 --size small``: T1CE, T2 and a 2-segment SEG (the shared, read-only
    :func:`tests.support.studies.synth_case`)."""
    return synth_case.root


@pytest.fixture(scope="session")
def source(study_dir: Path) -> SourceStudy:
    return SourceStudy.from_directories(study_dir / "t1ce", study_dir / "t2", study_dir / "seg" / "seg.dcm")


def lesions() -> tuple[LesionResult, ...]:
    one = lesion_result_from_predictions(1, subtype_prediction(), FEATURES, 1.5, er=binary(0.2), pr=binary(0.1),
                                         her2=binary(0.8), her2_tier=tier(0.1, 0.2, 0.7),
                                         primary_subtype="HR-/HER2+", top_k=8)
    two = lesion_result_from_predictions(2, subtype_prediction("TN", ood=True), FEATURES, 0.42, er=binary(0.3),
                                         pr=binary(0.35), her2=binary(0.1), her2_tier=tier(0.6, 0.3, 0.1),
                                         primary_subtype="HR-/HER2+", top_k=8)
    return one, two


@pytest.fixture(scope="session")
def content(source: SourceStudy) -> ReportContent:
    return ReportContent(source=source, lesions=lesions(), algorithm=algorithm(),
                         subtype_model=SubtypeModel.WITH_PRIMARY, pons=PonsSummary("auto", "QC passed"),
                         primary_subtype="HR-/HER2+")


@dataclass(frozen=True)
class Written:
    sr: Path
    sc: tuple[Path, ...]
    pdf: Path


@pytest.fixture(scope="session")
def written(content: ReportContent, tmp_path_factory: pytest.TempPathFactory) -> Written:
    out = tmp_path_factory.mktemp("results")
    sr = write_instance(build_report(content), out)
    sc = tuple(write_instance(ds, out) for ds in build_companion_sc(content))
    pdf = write_instance(build_companion_pdf(content), out)
    return Written(sr, sc, pdf)
