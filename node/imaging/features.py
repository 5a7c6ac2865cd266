# mypy: allow-untyped-calls
"""The 200 radiomic features of the reference method (docs/method.md §1.4), extracted with PyRadiomics 3.0.1.

Per lesion: first-order (18) + GLCM (24) + GLSZM (16) + GLRLM (16) + NGTDM (5) + GLDM (14) on T1CE and on T2,
plus the 14 shape features once = 200, named ``<sequence>_<class>_<Feature>`` (``t1ce_glszm_...``,
``t2_firstorder_Energy``, ``shape_Sphericity``). Optional peritumoral shells (docs/method.md §2, S4) add features
named ``<sequence>_shell<d>mm_<class>_<Feature>`` beyond the 200.

Parameters live in the versioned ``config/radiomics.yaml``; :func:`load_radiomics_params` validates it with
PyRadiomics' own schema and records its SHA-256 and the PyRadiomics version for the model card.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml

from node.errors import ConfigError, ProcessingError
from node.imaging.shells import shell_brain_region, shell_masks
from node.imaging.types import LesionFeatures, PreprocessedStudy

logger = logging.getLogger(__name__)

DEFAULT_RADIOMICS_PATH = Path(__file__).parents[2] / "config" / "radiomics.yaml"

SEQUENCES: tuple[str, ...] = ("t1ce", "t2")
SHAPE_FEATURES: tuple[str, ...] = (
    "Elongation", "Flatness", "LeastAxisLength", "MajorAxisLength", "Maximum2DDiameterColumn",
    "Maximum2DDiameterRow", "Maximum2DDiameterSlice", "Maximum3DDiameter", "MeshVolume", "MinorAxisLength",
    "Sphericity", "SurfaceArea", "SurfaceVolumeRatio", "VoxelVolume",
)  # fmt: skip
INTENSITY_FEATURES: dict[str, tuple[str, ...]] = {
    "firstorder": (
        "10Percentile", "90Percentile", "Energy", "Entropy", "InterquartileRange", "Kurtosis", "Maximum",
        "MeanAbsoluteDeviation", "Mean", "Median", "Minimum", "Range", "RobustMeanAbsoluteDeviation",
        "RootMeanSquared", "Skewness", "TotalEnergy", "Uniformity", "Variance",
    ),
    "glcm": (
        "Autocorrelation", "ClusterProminence", "ClusterShade", "ClusterTendency", "Contrast", "Correlation",
        "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "Id", "Idm", "Idmn", "Idn", "Imc1",
        "Imc2", "InverseVariance", "JointAverage", "JointEnergy", "JointEntropy", "MCC", "MaximumProbability",
        "SumAverage", "SumEntropy", "SumSquares",
    ),
    "glszm": (
        "GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized", "GrayLevelVariance",
        "HighGrayLevelZoneEmphasis", "LargeAreaEmphasis", "LargeAreaHighGrayLevelEmphasis",
        "LargeAreaLowGrayLevelEmphasis", "LowGrayLevelZoneEmphasis", "SizeZoneNonUniformity",
        "SizeZoneNonUniformityNormalized", "SmallAreaEmphasis", "SmallAreaHighGrayLevelEmphasis",
        "SmallAreaLowGrayLevelEmphasis", "ZoneEntropy", "ZonePercentage", "ZoneVariance",
    ),
    "glrlm": (
        "GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized", "GrayLevelVariance",
        "HighGrayLevelRunEmphasis", "LongRunEmphasis", "LongRunHighGrayLevelEmphasis",
        "LongRunLowGrayLevelEmphasis", "LowGrayLevelRunEmphasis", "RunEntropy", "RunLengthNonUniformity",
        "RunLengthNonUniformityNormalized", "RunPercentage", "RunVariance", "ShortRunEmphasis",
        "ShortRunHighGrayLevelEmphasis", "ShortRunLowGrayLevelEmphasis",
    ),
    "ngtdm": ("Busyness", "Coarseness", "Complexity", "Contrast", "Strength"),
    "gldm": (
        "DependenceEntropy", "DependenceNonUniformity", "DependenceNonUniformityNormalized",
        "DependenceVariance", "GrayLevelNonUniformity", "GrayLevelVariance", "HighGrayLevelEmphasis",
        "LargeDependenceEmphasis", "LargeDependenceHighGrayLevelEmphasis",
        "LargeDependenceLowGrayLevelEmphasis", "LowGrayLevelEmphasis", "SmallDependenceEmphasis",
        "SmallDependenceHighGrayLevelEmphasis", "SmallDependenceLowGrayLevelEmphasis",
    ),
}  # fmt: skip
FEATURE_CLASSES: tuple[str, ...] = ("shape", *INTENSITY_FEATURES)


def _intensity_names(prefix: str) -> list[str]:
    return [f"{prefix}_{cls}_{name}" for cls, names in INTENSITY_FEATURES.items() for name in names]


FEATURE_NAMES: tuple[str, ...] = (
    *(f"shape_{name}" for name in SHAPE_FEATURES),
    *(name for seq in SEQUENCES for name in _intensity_names(seq)),
)
"""The 200 core features, in a stable order: 14 shape, then 93 for T1CE, then 93 for T2."""


def feature_names(shells_mm: Sequence[int] = ()) -> tuple[str, ...]:
    """The full ordered feature list: the 200 core features, then per shell distance the shell features."""
    extra = [name for d in shells_mm for seq in SEQUENCES for name in _intensity_names(f"{seq}_shell{d}mm")]
    return (*FEATURE_NAMES, *extra)


_NODE_KEYS = {"min_lesion_voxels", "bbox_padding_voxels"}


@dataclass(frozen=True)
class RadiomicsParams:
    """Validated ``config/radiomics.yaml``: PyRadiomics parameters plus node options and provenance."""

    version: int
    setting: dict[str, Any]
    image_type: dict[str, Any]
    feature_class: dict[str, list[str]]
    min_lesion_voxels: int = 27
    bbox_padding_voxels: int = 2
    sha256: str = ""
    source: str = ""
    pyradiomics_version: str = ""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ConfigError(f"radiomics parameters: 'version' must be >= 1, not {self.version}")
        if self.min_lesion_voxels < 1:
            raise ConfigError("radiomics parameters: 'node.min_lesion_voxels' must be at least 1")
        if self.bbox_padding_voxels < 0:
            raise ConfigError("radiomics parameters: 'node.bbox_padding_voxels' must be >= 0")
        if set(self.image_type) != {"Original"}:
            raise ConfigError(
                f"radiomics parameters: only imageType 'Original' is supported, got {sorted(self.image_type)}"
            )
        missing = set(FEATURE_CLASSES) - set(self.feature_class)
        unknown = set(self.feature_class) - set(FEATURE_CLASSES)
        if missing or unknown:
            raise ConfigError(
                "radiomics parameters: featureClass must list exactly "
                f"{', '.join(FEATURE_CLASSES)} (missing: {sorted(missing)}, unknown: {sorted(unknown)})"
            )
        if any(self.feature_class[c] for c in FEATURE_CLASSES):
            raise ConfigError(
                "radiomics parameters: each featureClass entry must be [] (all default features): "
                "the 200-feature set is fixed"
            )
        if self.setting.get("label", 1) != 1:
            raise ConfigError("radiomics parameters: setting 'label' must be 1 (masks are {0, 1})")
        if self.setting.get("normalize", False):
            raise ConfigError("radiomics parameters: 'normalize' must be false (the pons z-score normalises)")
        _validate_with_pyradiomics(self.pyradiomics_dict())

    def pyradiomics_dict(self, *, shape: bool = True) -> dict[str, Any]:
        """The parameter dictionary PyRadiomics' extractor takes (optionally without the shape class)."""
        classes = {c: list(v) for c, v in self.feature_class.items() if shape or c != "shape"}
        return {
            "setting": copy.deepcopy(self.setting),
            "imageType": copy.deepcopy(self.image_type),
            "featureClass": classes,
        }

    def with_settings(self, **overrides: Any) -> RadiomicsParams:
        """A copy with PyRadiomics ``setting`` entries overridden; ``None`` removes a key (``binCount``)."""
        setting = dict(self.setting)
        for key, value in overrides.items():
            if value is None:
                setting.pop(key, None)
            else:
                setting[key] = value
        return RadiomicsParams(
            version=self.version,
            setting=setting,
            image_type=dict(self.image_type),
            feature_class={k: list(v) for k, v in self.feature_class.items()},
            min_lesion_voxels=self.min_lesion_voxels,
            bbox_padding_voxels=self.bbox_padding_voxels,
            sha256="",
            source=f"{self.source} (overridden: {sorted(overrides)})",
            pyradiomics_version=self.pyradiomics_version,
        )


def _quiet_pyradiomics() -> None:
    """PyRadiomics logs every feature class at INFO and adds its own stderr handler: keep errors only."""
    import radiomics

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    logging.getLogger("pykwalify").setLevel(logging.CRITICAL)


def _validate_with_pyradiomics(params: dict[str, Any]) -> None:
    import pykwalify.errors  # type: ignore[import-untyped]
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    _quiet_pyradiomics()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pykwalify's extension loader uses load_module
            RadiomicsFeatureExtractor(copy.deepcopy(params))
    except (pykwalify.errors.PyKwalifyException, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"radiomics parameters rejected by PyRadiomics' schema: {exc}") from exc


def load_radiomics_params(path: Path | None = None) -> RadiomicsParams:
    """Read and validate the radiomics YAML (default ``config/radiomics.yaml``); ConfigError if invalid."""
    import radiomics

    path = path or DEFAULT_RADIOMICS_PATH
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read radiomics parameter file {path}: {exc.strerror}") from exc
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"radiomics parameter file {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"radiomics parameter file {path} must be a mapping")
    allowed = {"version", "setting", "imageType", "featureClass", "node"}
    unknown = set(doc) - allowed
    if unknown:
        raise ConfigError(f"radiomics parameter file {path}: unknown top-level keys {sorted(unknown)}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(f"radiomics parameter file {path}: 'version' (an integer) is required")
    setting = doc.get("setting") or {}
    image_type = doc.get("imageType") or {}
    feature_class = doc.get("featureClass") or {}
    node_opts = doc.get("node") or {}
    for name, value in (("setting", setting), ("imageType", image_type), ("featureClass", feature_class),
                        ("node", node_opts)):  # fmt: skip
        if not isinstance(value, dict):
            raise ConfigError(f"radiomics parameter file {path}: '{name}' must be a mapping")
    if set(node_opts) - _NODE_KEYS:
        bad = sorted(set(node_opts) - _NODE_KEYS)
        raise ConfigError(f"radiomics parameter file {path}: unknown node options {bad}")
    for key in _NODE_KEYS & set(node_opts):
        if not isinstance(node_opts[key], int) or isinstance(node_opts[key], bool):
            raise ConfigError(f"radiomics parameter file {path}: node.{key} must be an integer")
    classes: dict[str, list[str]] = {}
    for cls, names in feature_class.items():
        if names is None:
            names = []
        if not isinstance(names, list):
            raise ConfigError(f"radiomics parameter file {path}: featureClass.{cls} must be a list")
        classes[str(cls)] = [str(n) for n in names]
    try:
        return RadiomicsParams(
            version=version,
            setting=dict(setting),
            image_type={str(k): (v or {}) for k, v in image_type.items()},
            feature_class=classes,
            min_lesion_voxels=int(node_opts.get("min_lesion_voxels", 27)),
            bbox_padding_voxels=int(node_opts.get("bbox_padding_voxels", 2)),
            sha256=hashlib.sha256(raw).hexdigest(),
            source=str(path),
            pyradiomics_version=str(radiomics.__version__),
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc


# --------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class Extractors:
    """Two configured PyRadiomics extractors: with the shape class (first image) and without it."""

    with_shape: Any
    without_shape: Any


def make_extractors(params: RadiomicsParams) -> Extractors:
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    _quiet_pyradiomics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pykwalify's extension loader uses load_module
        return Extractors(
            with_shape=RadiomicsFeatureExtractor(params.pyradiomics_dict(shape=True)),
            without_shape=RadiomicsFeatureExtractor(params.pyradiomics_dict(shape=False)),
        )


def _bbox_region(mask: sitk.Image, padding: int) -> tuple[list[int], list[int]] | None:
    """Index and size of the mask's bounding box grown by ``padding`` voxels, clipped to the image."""
    arr = sitk.GetArrayViewFromImage(mask)
    nz = np.nonzero(arr)
    if nz[0].size == 0:
        return None
    size = mask.GetSize()
    lo_zyx = [int(a.min()) for a in nz]
    hi_zyx = [int(a.max()) for a in nz]
    index: list[int] = []
    extent: list[int] = []
    for axis in range(3):  # ITK x, y, z = numpy axes 2, 1, 0
        lo = max(lo_zyx[2 - axis] - padding, 0)
        hi = min(hi_zyx[2 - axis] + padding, size[axis] - 1)
        index.append(lo)
        extent.append(hi - lo + 1)
    return index, extent


def _crop(image: sitk.Image, region: tuple[list[int], list[int]]) -> sitk.Image:
    cropped: sitk.Image = sitk.RegionOfInterest(image, region[1], region[0])
    return cropped


def _run(extractor: Any, image: sitk.Image, mask: sitk.Image, prefix: str) -> dict[str, float]:
    """Run one PyRadiomics extraction; rename ``original_<class>_<F>`` to ``<prefix>_<class>_<F>``."""
    result = extractor.execute(image, mask, label=1)
    out: dict[str, float] = {}
    for key, value in result.items():
        if not key.startswith("original_"):
            continue
        cls_feature = key[len("original_") :]
        name = cls_feature if cls_feature.startswith("shape_") else f"{prefix}_{cls_feature}"
        out[name] = float(np.asarray(value))
    return out


def compute_region_features(
    images: Mapping[str, sitk.Image],
    mask: sitk.Image,
    params: RadiomicsParams,
    *,
    shape: bool = True,
    extractors: Extractors | None = None,
) -> dict[str, float]:
    """Features of one region on each named image (``{"t1ce": img, "t2": img}``); shape once, from the first.

    Images and the mask must share one grid. The region is cropped to its bounding box first (speed only).
    """
    extractors = extractors or make_extractors(params)
    region = _bbox_region(mask, params.bbox_padding_voxels)
    if region is None:
        raise ProcessingError("cannot extract features from an empty region")
    mask_c = sitk.Cast(_crop(mask, region), sitk.sitkUInt8)
    out: dict[str, float] = {}
    for i, (prefix, image) in enumerate(images.items()):
        extractor = extractors.with_shape if (shape and i == 0) else extractors.without_shape
        img_c = sitk.Cast(_crop(image, region), sitk.sitkFloat32)
        out.update(_run(extractor, img_c, mask_c, prefix))
    return out


QcDict = dict[str, float | str | bool | int | None]


def _lesion_qc(mask: sitk.Image, segment_number: int, label: str) -> QcDict:
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return {
        "segment_number": segment_number,
        "label": label,
        "voxel_count": voxels,
        "volume_ml": voxels * voxel_ml,
        "error": None,
    }


def _other_lesions(pre: PreprocessedStudy, segment_number: int) -> sitk.Image | None:
    """The union of the study's other lesion masks (removed from this lesion's shells), or None."""
    others = [seg.mask for seg in pre.lesions if seg.segment_number != segment_number]
    if not others:
        return None
    union: sitk.Image = sitk.Cast(others[0] > 0, sitk.sitkUInt8)
    for mask in others[1:]:
        union = sitk.Or(union, sitk.Cast(mask > 0, sitk.sitkUInt8))
    return union


def extract_features(
    pre: PreprocessedStudy, params: RadiomicsParams, *, shells_mm: Sequence[int] = ()
) -> list[LesionFeatures]:
    """The 200 features (plus optional shell features) of every lesion of a preprocessed study.

    A lesion below ``params.min_lesion_voxels`` (or one PyRadiomics rejects) gets NaN features and a
    ``qc["error"]`` reason; the other lesions are unaffected.
    """
    extractors = make_extractors(params)
    names = feature_names(shells_mm)
    images = {"t1ce": pre.t1ce, "t2": pre.t2}
    results: list[LesionFeatures] = []
    region = shell_brain_region(pre.brain_mask, pre.pons.template_transform) if shells_mm else pre.brain_mask
    for seg in pre.lesions:
        qc = _lesion_qc(seg.mask, seg.segment_number, seg.label)
        features = dict.fromkeys(names, math.nan)
        voxels = int(qc["voxel_count"] or 0)
        if voxels < params.min_lesion_voxels:
            qc["error"] = (
                f"lesion too small for texture features: {voxels} voxel(s) at 1 mm "
                f"(minimum {params.min_lesion_voxels}); features left empty"
            )
            logger.warning("segment %d: %s", seg.segment_number, qc["error"])
            results.append(LesionFeatures(seg.segment_number, seg.label, features, qc))
            continue
        try:
            core = compute_region_features(images, seg.mask, params, extractors=extractors)
            features.update({k: v for k, v in core.items() if k in features})
            if shells_mm:
                others = _other_lesions(pre, seg.segment_number)
                for d, shell in shell_masks(seg.mask, region, shells_mm, exclude=others).items():
                    shell_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(shell)))
                    qc[f"shell{d}mm_voxel_count"] = shell_voxels
                    if shell_voxels < params.min_lesion_voxels:
                        qc[f"shell{d}mm_error"] = f"{d} mm shell: only {shell_voxels} voxel(s) in the brain"
                        continue
                    shell_images = {f"{k}_shell{d}mm": v for k, v in images.items()}
                    extra = compute_region_features(
                        shell_images, shell, params, shape=False, extractors=extractors
                    )
                    features.update({k: v for k, v in extra.items() if k in features})
        except (ValueError, RuntimeError, ProcessingError) as exc:
            # PyRadiomics raises ValueError for degenerate ROIs (e.g. a single-slice lesion): record, go on.
            qc["error"] = f"feature extraction failed for this lesion: {exc}"
            logger.warning("segment %d: %s", seg.segment_number, qc["error"])
            features = dict.fromkeys(names, math.nan)
        qc["nan_feature_count"] = sum(1 for n in FEATURE_NAMES if math.isnan(features[n]))
        results.append(LesionFeatures(seg.segment_number, seg.label, features, qc))
    return results
