"""Peritumoral shells leave out the other lesions and stay inside the brain mask."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from node.imaging.shells import shell_masks


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    inside = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2
    return np.asarray(inside, dtype=np.uint8)


def test_shell_excludes_a_neighbouring_lesion_and_the_outside_of_the_brain() -> None:
    shape = (40, 40, 40)
    lesion = _ball(shape, (20, 20, 14), 5)
    neighbour = _ball(shape, (20, 20, 24), 3)  # 5 voxels from the lesion's edge: inside its 5 mm shell
    brain = np.zeros(shape, dtype=np.uint8)
    brain[:, 12:, :] = 1  # the brain ends 3 voxels above the lesion's edge on the y axis
    img = sitk.GetImageFromArray(lesion)
    without = sitk.GetArrayFromImage(shell_masks(img, sitk.GetImageFromArray(brain), (5,))[5])
    assert (without & neighbour).sum() > 0  # the overlap this test is about exists
    shell = sitk.GetArrayFromImage(
        shell_masks(img, sitk.GetImageFromArray(brain), (5,), exclude=sitk.GetImageFromArray(neighbour))[5]
    )
    assert (shell & neighbour).sum() == 0
    assert shell[:, :12, :].sum() == 0 and shell.sum() > 0
    assert (shell & lesion).sum() == 0
