# mypy: allow-untyped-calls
"""Feature extraction variants for the recipes that need images: filtered images (LoG, wavelet), peritumoral
shells clipped to the brain and minus the other lesions, and a second segmentation for the ICC filter.

Image folder layout (one sub-folder per patient; images already preprocessed onto one grid, e.g. by the node's
preprocessing: 1 mm, pons-normalised)::

    IMAGES/<case>/t1ce.nii.gz, t2.nii.gz     # the sequences present (any of SEQUENCES)
    IMAGES/<case>/lesions.nii.gz              # label map: lesion k has value k (segment_number k)
    IMAGES/<case>/lesions_seg2.nii.gz         # optional: a second segmentation, same labels
    IMAGES/<case>/brain.nii.gz                # optional brain mask (shells are clipped to it; default: all)

:func:`extract_folder` writes ``features.csv`` (and ``features_seg2.csv``) in the column naming of
:mod:`node.research.columns`; the labels table is the site's own. Original-image features are the node's
(:func:`node.imaging.features.compute_region_features`, config/radiomics.yaml); filtered images use the same
PyRadiomics settings with ``imageType`` LoG / Wavelet (outside the IBSI-1-checked feature set, docs/method.md §5).
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from node.errors import ConfigError
from node.imaging.features import RadiomicsParams, compute_region_features, load_radiomics_params, make_extractors
from node.imaging.shells import shell_masks
from node.imaging.table import QC_COLUMNS

logger = logging.getLogger(__name__)

SEQUENCES = ("t1ce", "t2")


def _crop_box(mask: sitk.Image, padding: int) -> tuple[list[int], list[int]]:
    arr = sitk.GetArrayViewFromImage(mask)
    nz = np.nonzero(arr)
    if nz[0].size == 0:
        raise ConfigError("cannot extract features from an empty mask")
    size = mask.GetSize()
    index, extent = [], []
    for axis in range(3):
        lo = max(int(nz[2 - axis].min()) - padding, 0)
        hi = min(int(nz[2 - axis].max()) + padding, size[axis] - 1)
        index.append(lo)
        extent.append(hi - lo + 1)
    return index, extent


def rename_filtered(key: str, prefix: str) -> str | None:
    """PyRadiomics ``log-sigma-1-0-mm-3D_glcm_Contrast`` → ``<prefix>_log-sigma-1-0-mm_glcm_Contrast``;
    ``wavelet-LLH_firstorder_Mean`` → ``<prefix>_wavelet-LLH_firstorder_Mean``; anything else → None."""
    if key.startswith("log-sigma-"):
        image_type, _, rest = key.partition("_")
        return f"{prefix}_{image_type.removesuffix('-3D')}_{rest}"
    if key.startswith("wavelet-"):
        return f"{prefix}_{key}"
    return None


def filtered_features(
    images: Mapping[str, sitk.Image], mask: sitk.Image, params: RadiomicsParams, *, sigmas_mm: Sequence[float],
    wavelet: bool,
) -> dict[str, float]:
    """LoG (each sigma) and wavelet features of one region on each named image; no shape features."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    image_type: dict[str, Any] = {}
    if sigmas_mm:
        image_type["LoG"] = {"sigma": [float(s) for s in sigmas_mm]}
    if wavelet:
        image_type["Wavelet"] = {}
    if not image_type:
        return {}
    config = params.pyradiomics_dict(shape=False)
    config["imageType"] = image_type
    make_extractors(params)  # quiets PyRadiomics' logging the node's way
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pykwalify's extension loader uses load_module
        extractor = RadiomicsFeatureExtractor(config)
    spacing = min(mask.GetSpacing())
    padding = max(params.bbox_padding_voxels, math.ceil(4 * max(sigmas_mm or [1.0]) / spacing))
    index, extent = _crop_box(mask, padding)
    mask_c = sitk.Cast(sitk.RegionOfInterest(mask, extent, index), sitk.sitkUInt8)
    out: dict[str, float] = {}
    for prefix, image in images.items():
        img_c = sitk.Cast(sitk.RegionOfInterest(image, extent, index), sitk.sitkFloat32)
        for key, value in extractor.execute(img_c, mask_c, label=1).items():
            name = rename_filtered(str(key), prefix)
            if name is not None:
                out[name] = float(np.asarray(value))
    return out


def lesion_features(
    images: Mapping[str, sitk.Image], lesions: sitk.Image, label: int, brain: sitk.Image, params: RadiomicsParams,
    *, sigmas_mm: Sequence[float] = (), wavelet: bool = False, shells_mm: Sequence[int] = (),
) -> dict[str, float]:
    """Every feature a recipe may use for lesion ``label`` of a label map."""
    mask = sitk.Cast(lesions == label, sitk.sitkUInt8)
    others = sitk.Cast((lesions > 0) & (lesions != label), sitk.sitkUInt8)
    out = compute_region_features(images, mask, params)
    out.update(filtered_features(images, mask, params, sigmas_mm=sigmas_mm, wavelet=wavelet))
    if shells_mm:
        for d, shell in shell_masks(mask, brain, shells_mm, exclude=others).items():
            if int(np.count_nonzero(sitk.GetArrayViewFromImage(shell))) < params.min_lesion_voxels:
                logger.warning("lesion %d: %d mm shell too small inside the brain; left empty", label, d)
                continue
            shell_images = {f"{k}_shell{d}mm": v for k, v in images.items()}
            out.update(compute_region_features(shell_images, shell, params, shape=False))
    return out


def _read(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ConfigError(f"cannot read image {path}: {exc}") from exc


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    names: list[str] = list(QC_COLUMNS)
    for row in rows:
        names += [k for k in row if k not in names]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, restval="")
        writer.writeheader()
        writer.writerows(rows)


def extract_folder(
    images_dir: Path, out_dir: Path, *, sigmas_mm: Sequence[float] = (), wavelet: bool = False,
    shells_mm: Sequence[int] = (), params: RadiomicsParams | None = None,
) -> list[Path]:
    """Features of every lesion of every case folder (see the module docstring); returns the tables written."""
    params = params or load_radiomics_params()
    cases = sorted(p for p in images_dir.iterdir() if p.is_dir()) if images_dir.is_dir() else []
    if not cases:
        raise ConfigError(f"no case folders in {images_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict[str, Any]]] = {"lesions": [], "lesions_seg2": []}
    for case in cases:
        images = {s: _read(case / f"{s}.nii.gz") for s in SEQUENCES if (case / f"{s}.nii.gz").is_file()}
        if not images:
            raise ConfigError(f"{case}: no image ({', '.join(f'{s}.nii.gz' for s in SEQUENCES)})")
        first = next(iter(images.values()))
        brain_path = case / "brain.nii.gz"
        brain = _read(brain_path) if brain_path.is_file() else sitk.Cast(first * 0 + 1, sitk.sitkUInt8)
        for seg in tables:
            path = case / f"{seg}.nii.gz"
            if not path.is_file():
                if seg == "lesions":
                    raise ConfigError(f"{case}: no lesions.nii.gz label map")
                continue
            lesions = sitk.Cast(_read(path), sitk.sitkUInt16)
            for label in sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(lesions)) if v > 0):
                row: dict[str, Any] = dict.fromkeys(QC_COLUMNS, "")
                row.update(case=case.name, segment_number=label, segment_label=f"lesion {label}")
                try:
                    row.update(lesion_features(images, lesions, label, brain, params, sigmas_mm=sigmas_mm,
                                               wavelet=wavelet, shells_mm=shells_mm))
                except (ValueError, RuntimeError) as exc:  # a degenerate ROI: recorded, the others go on
                    row["qc_error"] = f"feature extraction failed: {exc}"
                tables[seg].append(row)
    written = []
    for seg, name in (("lesions", "features.csv"), ("lesions_seg2", "features_seg2.csv")):
        if tables[seg]:
            _write(out_dir / name, tables[seg])
            written.append(out_dir / name)
    return written
