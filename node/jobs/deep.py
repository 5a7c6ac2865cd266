"""The job's deep-model step (issue 13): load the configured ONNX bundle and predict each lesion the radiomics
models predicted, from the pipeline's crop (:attr:`node.imaging.pipeline.FeatureRun.crops`) and features.

No torch: the bundle runs in onnxruntime (:mod:`node.model.dl_bundle`). A lesion the deep model cannot take
(no crop, a missing feature) is left out of its results with a warning; the radiomics result is unaffected.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from node.errors import InvalidStudyError
from node.imaging.pipeline import FeatureRun
from node.model.dl_bundle import DL_TASKS, DlBundle, cached_dl_bundle
from node.model.provenance import Provenance
from node.sr.content import LesionResult
from node.sr.deep import DeepLesionResult, DeepModelInfo, DeepResults

logger = logging.getLogger(__name__)


def load_deep_model(dl_model_dir: Path | None) -> DlBundle | None:
    """The verified bundle of setting ``dl_model_dir`` (cached per process), or None when it is not set."""
    return cached_dl_bundle(dl_model_dir) if dl_model_dir is not None else None


def model_info(bundle: DlBundle) -> DeepModelInfo:
    statement = Provenance.from_manifest(bundle.manifest).training_data_statement
    return DeepModelInfo(bundle.name, bundle.version, bundle.manifest_sha256, statement)


def predict_deep(run: FeatureRun, results: Sequence[LesionResult], bundle: DlBundle | None,
                 heads: Sequence[str] = DL_TASKS) -> tuple[DeepResults | None, tuple[str, ...]]:
    """The deep model's results for the predicted lesions, and warnings for those it skipped."""
    if bundle is None:
        return None, ()
    features = {lesion.segment_number: lesion.features for lesion in run.lesions}
    enabled = tuple(h for h in DL_TASKS if h in heads)
    out: list[DeepLesionResult] = []
    warnings: list[str] = []
    for result in results:
        n = result.segment_number
        crop = run.crops.get(n)
        if crop is None:
            warnings.append(f"deep model: no image crop for segment {n}; not run on it")
            continue
        try:
            probs = bundle.probabilities(features[n], crop)
        except InvalidStudyError as exc:
            warnings.append(f"deep model: segment {n} not run ({exc.message})")
            continue
        out.append(DeepLesionResult(n, {h: probs[h] for h in enabled}))
    logger.info("deep model %s ran on %d lesion(s)", bundle.name, len(out))
    return DeepResults(model_info(bundle), tuple(out)), tuple(warnings)
