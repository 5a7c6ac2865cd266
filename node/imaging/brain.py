# mypy: allow-untyped-calls
"""Brain (head-tissue) mask and small mask utilities shared by preprocessing, pons QC and shells.

The mask is an intensity mask, not a skull-strip: Otsu on a 2 mm copy of the T1CE, a morphological opening
that cuts thin bridges, the largest connected component, hole filling, then nearest-neighbour back to 1 mm.
On skull-stripped inputs (BCBM-RadioGenomics, the MNI template) it is the brain; on unstripped heads it also
keeps scalp and skull, which the whole-brain pons fallback tolerates but does not prefer.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)


def brain_mask(image: sitk.Image, *, work_spacing_mm: float = 2.0, opening_mm: float = 4.0) -> sitk.Image:
    """A {0, 1} uint8 mask of the largest bright connected object of ``image``, on ``image``'s grid."""
    factors = [max(1, round(work_spacing_mm / s)) for s in image.GetSpacing()]
    small = sitk.Shrink(sitk.Cast(image, sitk.sitkFloat32), factors)
    small = sitk.SmoothingRecursiveGaussian(small, work_spacing_mm / 2.0)
    fg = sitk.OtsuThreshold(small, 0, 1, 128)
    radius = [max(1, round(opening_mm / (2.0 * s))) for s in small.GetSpacing()]
    fg = sitk.BinaryMorphologicalOpening(fg, radius, sitk.sitkBall)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(fg), sortByObjectSize=True)
    largest = sitk.Cast(labels == 1, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(largest)):
        raise ValueError("no foreground found in the image (is it blank?)")
    filled = sitk.BinaryFillhole(largest, fullyConnected=False)  # ventricles and dark lesion cores
    filled = sitk.BinaryMorphologicalClosing(filled, radius, sitk.sitkBall)  # sulci open to the surface
    full = sitk.Resample(filled, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    logger.debug("brain mask: %d voxels", int(np.count_nonzero(sitk.GetArrayViewFromImage(full))))
    return full


def mask_union(masks: list[sitk.Image], reference: sitk.Image) -> np.ndarray:
    """Boolean ``[z, y, x]`` union of masks that share ``reference``'s grid (all False if there are none)."""
    out = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=bool)
    for mask in masks:
        out |= sitk.GetArrayViewFromImage(mask) > 0
    return out


def dilate_mm(mask: np.ndarray, spacing_xyz: tuple[float, float, float], mm: float) -> np.ndarray:
    """Euclidean dilation of a boolean ``[z, y, x]`` array by ``mm``, computed on its bounding box only."""
    nz = np.nonzero(mask)
    if nz[0].size == 0 or mm <= 0:
        return mask.copy()
    spacing_zyx = spacing_xyz[::-1]
    lo = [max(int(a.min()) - math.ceil(mm / s) - 1, 0) for a, s in zip(nz, spacing_zyx, strict=True)]
    hi = [min(int(a.max()) + math.ceil(mm / s) + 2, n) for a, s, n in zip(nz, spacing_zyx, mask.shape, strict=True)]
    crop = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    img = sitk.GetImageFromArray(crop.astype(np.uint8))
    img.SetSpacing(spacing_xyz)
    dist = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    out = np.zeros_like(mask)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = sitk.GetArrayViewFromImage(dist) <= mm
    return out


def array_to_mask(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 {0, 1} image from a ``[z, y, x]`` array, with ``reference``'s geometry."""
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.CopyInformation(reference)
    return img
