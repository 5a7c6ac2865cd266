"""Peritumoral shells are clipped to the brain, not to the head: with the automatic pons step's template
registration, the skull-stripped MNI brain mapped onto the subject bounds the intensity mask (issue 14)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from node.imaging.pons import mni_template, template_brain_mask
from node.imaging.shells import shell_brain_region, shell_masks


def _head_on_template() -> sitk.Image:
    """An intensity 'head' mask on the template grid that also holds everything outside the brain (scalp)."""
    template = mni_template()
    head = sitk.Image(template.GetSize(), sitk.sitkUInt8)
    head.CopyInformation(template)
    filled: sitk.Image = head + 1
    return filled


def test_the_template_brain_bounds_the_head_mask() -> None:
    head = _head_on_template()
    region = shell_brain_region(head, sitk.AffineTransform(3))  # subject = template: identity
    arr = sitk.GetArrayViewFromImage(region)
    brain = sitk.GetArrayViewFromImage(template_brain_mask(2.0))
    assert np.array_equal(arr > 0, brain > 0)
    assert 0 < np.count_nonzero(arr) < np.count_nonzero(sitk.GetArrayViewFromImage(head))
    assert arr[0, 0, 0] == 0  # a corner of the field of view: never brain
    centre = tuple(s // 2 for s in arr.shape)
    assert arr[centre] == 1


def test_without_a_template_registration_the_intensity_mask_clips() -> None:
    head = _head_on_template()
    assert shell_brain_region(head, None) is head


def test_a_cortical_lesions_shell_stays_out_of_the_scalp() -> None:
    head = _head_on_template()
    brain = sitk.GetArrayViewFromImage(template_brain_mask(0.0)) > 0
    # a lesion at the top of the brain: the brain voxel of the central column with the largest z
    _z, y, x = (int(v) for v in np.array(brain.shape) // 2)
    top = int(np.nonzero(brain[:, y, x])[0].max())
    lesion_arr = np.zeros(brain.shape, dtype=np.uint8)
    lesion_arr[top - 4:top - 1, y - 1:y + 2, x - 1:x + 2] = 1
    lesion = sitk.GetImageFromArray(lesion_arr)
    lesion.CopyInformation(head)
    outside = ~(sitk.GetArrayViewFromImage(template_brain_mask(2.0)) > 0)
    head_shell = sitk.GetArrayViewFromImage(shell_masks(lesion, head, [5])[5]) > 0
    brain_shell = sitk.GetArrayViewFromImage(
        shell_masks(lesion, shell_brain_region(head, sitk.AffineTransform(3)), [5])[5]) > 0
    assert np.count_nonzero(head_shell & outside) > 0  # the head mask lets the shell out of the brain
    assert np.count_nonzero(brain_shell & outside) == 0
    assert np.count_nonzero(brain_shell) > 0
