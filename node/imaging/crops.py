"""Lesion-centred crops of the preprocessed images: the deep model's image input, the same for training and serving.

A crop is ``CROP_SIZE``\\ :sup:`3` voxels of the preprocessed 1 mm grid (the radiomics input: N4, T2 registered onto
the T1CE, pons z-scored), centred on the lesion mask's centroid, zero-padded where it leaves the image, with three
channels :data:`CHANNELS`: the T1CE, the T2 (zeros when the study has none) and the lesion mask (0/1). Arrays are
``(channel, z, y, x)`` float32.

Dataset format (beside ``features.csv`` / ``labels.csv``): ``crops/<case>_<segment_number>.npz`` holding
``image`` (the crop) and the lesion site as ``region`` and ``hemisphere`` (the :class:`~node.vocabulary.BrainRegion`
/ :class:`~node.vocabulary.Hemisphere` values, ``""`` when unknown). Written by :func:`write_crop`, read by
:func:`read_crop` (no pickle). The site is one-hot encoded over :data:`LOCATION_VOCABULARY` (unknown: all zeros).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from node.errors import ConfigError
from node.imaging.types import LesionFeatures, PreprocessedStudy
from node.vocabulary import BrainRegion, Hemisphere, LesionSite

F32 = npt.NDArray[np.float32]
CROP_SIZE = 32
CHANNELS: tuple[str, ...] = ("t1ce", "t2", "mask")
LOCATION_VOCABULARY: tuple[str, ...] = (
    *(f"region={r.value}" for r in BrainRegion),
    *(f"hemisphere={h.value}" for h in Hemisphere),
)


@dataclass(frozen=True)
class LesionCrop:
    """One lesion's image input and its site (``""`` = unknown)."""

    image: F32
    region: str = ""
    hemisphere: str = ""

    @classmethod
    def with_site(cls, image: F32, site: LesionSite | None) -> LesionCrop:
        if site is None:
            return cls(image)
        return cls(image, site.region.value, site.hemisphere.value)

    def location(self) -> F32:
        return location_one_hot(self.region, self.hemisphere)


def location_one_hot(region: str, hemisphere: str) -> F32:
    """The site over :data:`LOCATION_VOCABULARY`; unknown parts stay zero, an unknown value is refused."""
    out = np.zeros(len(LOCATION_VOCABULARY), dtype=np.float32)
    for key, value in (("region", region), ("hemisphere", hemisphere)):
        if value:
            name = f"{key}={value}"
            if name not in LOCATION_VOCABULARY:
                raise ConfigError(f"unknown lesion {key} {value!r} (expected one of the atlas vocabulary)")
            out[LOCATION_VOCABULARY.index(name)] = 1.0
    return out


def _window(array: npt.NDArray[np.generic], centre: tuple[int, int, int], size: int) -> F32:
    """``size``^3 voxels of a (z, y, x) array around ``centre``, zero outside the array."""
    out = np.zeros((size, size, size), dtype=np.float32)
    src, dst = [], []
    for c, n in zip(centre, array.shape, strict=True):
        lo = c - size // 2
        a, b = max(lo, 0), min(lo + size, n)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    if all(s.stop > s.start for s in src):
        out[tuple(dst)] = array[tuple(src)]
    return out


def cut_crop(t1ce: sitk.Image, t2: sitk.Image | None, mask: sitk.Image, size: int = CROP_SIZE) -> F32:
    """The ``(3, size, size, size)`` crop around the mask's centroid (images and mask on one grid)."""
    m = sitk.GetArrayViewFromImage(mask) > 0
    if not m.any():
        raise ConfigError("cannot cut a crop around an empty lesion mask")
    if t1ce.GetSize() != mask.GetSize() or (t2 is not None and t2.GetSize() != mask.GetSize()):
        raise ConfigError("the crop's images and the lesion mask are not on one grid")
    mean = np.argwhere(m).mean(axis=0)
    c3 = (int(np.rint(mean[0])), int(np.rint(mean[1])), int(np.rint(mean[2])))
    t1 = _window(sitk.GetArrayViewFromImage(t1ce), c3, size)
    t2w = _window(sitk.GetArrayViewFromImage(t2), c3, size) if t2 is not None else np.zeros_like(t1)
    return np.stack([t1, t2w, _window(m.astype(np.float32), c3, size)]).astype(np.float32)


def lesion_crops(pre: PreprocessedStudy, lesions: Sequence[LesionFeatures]) -> dict[int, LesionCrop]:
    """The serving side: every lesion's crop from the node's preprocessed study, with its site (a lesion whose
    mask is empty gets none; the deep model then skips it)."""
    sites = {lesion.segment_number: lesion.site for lesion in lesions}
    out: dict[int, LesionCrop] = {}
    for segment in pre.lesions:
        try:
            image = cut_crop(pre.t1ce, pre.t2, segment.mask)
        except ConfigError:
            continue
        out[segment.segment_number] = LesionCrop.with_site(image, sites.get(segment.segment_number))
    return out


def crop_name(case: str, segment_number: int) -> str:
    return f"{case}_{int(segment_number)}.npz"


def write_crop(folder: Path, case: str, segment_number: int, crop: LesionCrop) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / crop_name(case, segment_number)
    np.savez_compressed(path, image=crop.image.astype(np.float32), region=np.array(crop.region),
                        hemisphere=np.array(crop.hemisphere))
    return path


def read_crop(folder: Path, case: str, segment_number: int) -> LesionCrop:
    """The stored crop of one lesion; a missing or malformed file is a :class:`ConfigError`."""
    path = folder / crop_name(case, segment_number)
    try:
        with np.load(path, allow_pickle=False) as data:
            image = np.asarray(data["image"], dtype=np.float32)
            region, hemisphere = str(data["region"]), str(data["hemisphere"])
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"crop {path} is missing or unreadable: {exc}") from exc
    if image.ndim != 4 or image.shape[0] != len(CHANNELS) or len(set(image.shape[1:])) != 1:
        raise ConfigError(f"crop {path} has shape {image.shape}, expected ({len(CHANNELS)}, S, S, S)")
    return LesionCrop(image, region, hemisphere)
