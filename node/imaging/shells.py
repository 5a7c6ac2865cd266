# mypy: allow-untyped-calls
"""Peritumoral shells (docs/method.md §2, S4): the lesion dilated by d mm, minus the lesion, inside the brain,
minus every other lesion of the study (a neighbouring metastasis is not peritumoral tissue of this one).

Distances come from SimpleITK's signed Maurer distance map in physical units, so a shell is the same thickness
in mm on any grid. Work is done on the lesion's bounding box grown by the largest distance, for speed; the
returned masks have the full grid of the lesion mask.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)


def shell_masks(
    lesion: sitk.Image, brain: sitk.Image, distances_mm: Sequence[int], *, exclude: sitk.Image | None = None
) -> dict[int, sitk.Image]:
    """``{d: mask}``: voxels 0 < distance-to-lesion <= d mm, inside ``brain`` and outside ``exclude`` (the other
    lesions' union), on the lesion's grid. ``brain`` should be a brain mask: an intensity head mask on an
    unstripped head would let skull and scalp into a shell that reaches them."""
    if not distances_mm:
        return {}
    if any(d <= 0 for d in distances_mm):
        raise ValueError(f"shell distances must be positive, got {list(distances_mm)}")
    arr = sitk.GetArrayViewFromImage(lesion)
    nz = np.nonzero(arr)
    if nz[0].size == 0:
        raise ValueError("cannot build shells around an empty lesion mask")
    size = lesion.GetSize()
    spacing = lesion.GetSpacing()
    reach = max(distances_mm)
    index: list[int] = []
    extent: list[int] = []
    for axis in range(3):
        pad = math.ceil(reach / spacing[axis]) + 1
        lo = max(int(nz[2 - axis].min()) - pad, 0)
        hi = min(int(nz[2 - axis].max()) + pad, size[axis] - 1)
        index.append(lo)
        extent.append(hi - lo + 1)
    lesion_c = sitk.RegionOfInterest(sitk.Cast(lesion, sitk.sitkUInt8), extent, index)
    brain_c = sitk.RegionOfInterest(sitk.Cast(brain, sitk.sitkUInt8), extent, index)
    dist = sitk.SignedMaurerDistanceMap(
        lesion_c, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    dist_a = sitk.GetArrayViewFromImage(dist)
    brain_a = sitk.GetArrayViewFromImage(brain_c) > 0
    if exclude is not None:
        exclude_c = sitk.RegionOfInterest(sitk.Cast(exclude, sitk.sitkUInt8), extent, index)
        brain_a = brain_a & ~(sitk.GetArrayViewFromImage(exclude_c) > 0)
    out: dict[int, sitk.Image] = {}
    for d in distances_mm:
        shell_c = (dist_a > 0) & (dist_a <= float(d)) & brain_a
        full = np.zeros(arr.shape, dtype=np.uint8)
        full[
            index[2] : index[2] + extent[2], index[1] : index[1] + extent[1], index[0] : index[0] + extent[0]
        ] = shell_c
        img = sitk.GetImageFromArray(full)
        img.CopyInformation(lesion)
        out[int(d)] = img
        logger.debug("%d mm shell: %d voxels", d, int(shell_c.sum()))
    return out


#: the skull-stripped MNI brain mapped onto the subject is grown by this much before it clips a shell: the affine
#: template registration is a few mm off at the cortex, and a shell must keep the brain it should hold
SHELL_BRAIN_MARGIN_MM = 2.0


def shell_brain_region(head: sitk.Image, template_transform: sitk.Transform | None) -> sitk.Image:
    """Where peritumoral shells may reach: the intensity mask ``head`` (on an unstripped head it keeps scalp and
    skull), and, when the automatic pons step registered the MNI template (``template_transform``: T1CE points ->
    template points), only inside the template's skull-stripped brain (grown by :data:`SHELL_BRAIN_MARGIN_MM`)
    mapped onto this grid, so a shell of a cortical lesion does not take in skull or scalp. Without that
    registration (a SEG-provided reference) the intensity mask alone clips, as before (logged)."""
    if template_transform is None:
        logger.info("shells clipped by the intensity mask only (no template registration): on an unstripped head "
                    "skull and scalp may enter a shell")
        return head
    from node.imaging.pons import template_brain_mask

    mapped = sitk.Resample(template_brain_mask(SHELL_BRAIN_MARGIN_MM), head, template_transform,
                           sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    region: sitk.Image = sitk.And(sitk.Cast(head > 0, sitk.sitkUInt8), mapped)
    return region
