# mypy: allow-untyped-calls
"""Automatic pons reference: ROI definition, MNI -> subject mapping, seg preference and its checks, and what a
failed reference leads to: no reference ("none", a coded refusal) or, as a research setting, the whole brain."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from node.imaging.brain import brain_mask
from node.imaging.pons import PONS_EXPECTED_VOLUME_MM3, PonsParams, mni_template, pons_reference, pons_roi_on
from node.vocabulary import NotAssessedReason

from . import synthetic as syn


def _centroid(mask: sitk.Image) -> np.ndarray:
    zyx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0).mean(axis=0)
    return np.array(mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))


def test_template_roi_is_the_method_cylinder_in_lps() -> None:
    roi = pons_roi_on(mni_template())
    arr = sitk.GetArrayViewFromImage(roi) > 0
    assert int(arr.sum()) == 1239  # docs/method.md §6.2
    # MNI RAS (0, -25, -33) is LPS (0, +25, -33)
    assert _centroid(roi) == pytest.approx([0.0, 25.0, -33.0], abs=0.05)
    values = sitk.GetArrayViewFromImage(mni_template())[arr]
    assert values.min() >= 170  # basis pontis tissue, no CSF
    assert len(np.unique(np.argwhere(arr)[:, 0])) == 7  # seven 1 mm axial slices


# the subject's head: the template seen through a known affine (subject points -> template points)
def _subject_transform() -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    rot = syn.rigid((4.0, -3.0, 5.0), (0.0, 0.0, 0.0))
    scale = np.diag([1.04, 0.97, 1.02])
    t.SetMatrix((np.array(rot.GetMatrix()).reshape(3, 3) @ scale).ravel().tolist())
    t.SetCenter(syn.MNI_CENTRE_LPS)
    t.SetTranslation((5.0, -4.0, 6.0))
    return t


@pytest.fixture(scope="module")
def subject() -> tuple[sitk.Image, sitk.Image, sitk.AffineTransform]:
    transform = _subject_transform()
    study = syn.make_study(t1_size=(180, 200, 170), t2_size=(200, 200, 28), t1_transform=transform, lesions=())
    return study.t1ce, brain_mask(study.t1ce), transform


def _lesion_mask(reference: sitk.Image, centre: np.ndarray, radius: float) -> sitk.Image:
    size = reference.GetSize()
    cidx = np.array(reference.TransformPhysicalPointToContinuousIndex([float(v) for v in centre]))
    zz, yy, xx = np.indices((size[2], size[1], size[0]))
    r_vox = radius / np.array(reference.GetSpacing())
    inside = ((xx - cidx[0]) / r_vox[0]) ** 2 + ((yy - cidx[1]) / r_vox[1]) ** 2 + ((zz - cidx[2]) / r_vox[2]) ** 2
    img = sitk.GetImageFromArray((inside <= 1.0).astype(np.uint8))
    img.CopyInformation(reference)
    return img


def test_auto_pons_lands_on_the_true_pons(subject: tuple[sitk.Image, sitk.Image, sitk.AffineTransform]) -> None:
    t1ce, brain, transform = subject
    ref = pons_reference(t1ce, t1ce, brain, [], None, PonsParams())
    assert ref.method == "auto", ref.qc
    truth = np.array(transform.GetInverse().TransformPoint((0.0, 25.0, -33.0)))
    assert np.linalg.norm(_centroid(ref.mask) - truth) < 3.0
    volume = float(ref.qc["volume_mm3"])
    assert abs(volume - PONS_EXPECTED_VOLUME_MM3) <= 0.2 * PONS_EXPECTED_VOLUME_MM3
    assert ref.qc["passed"] is True
    assert float(ref.qc["registration_metric"]) < -0.3
    assert float(ref.qc["t1ce_cv"]) < 0.1
    # statistics are those of the ROI
    roi = sitk.GetArrayViewFromImage(ref.mask) > 0
    assert ref.t1ce_mean == pytest.approx(float(sitk.GetArrayViewFromImage(t1ce)[roi].mean()), rel=1e-4)


def test_provided_pons_segment_is_preferred(subject: tuple[sitk.Image, sitk.Image, sitk.AffineTransform]) -> None:
    t1ce, brain, transform = subject
    seg = sitk.Resample(pons_roi_on(mni_template()), t1ce, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ref = pons_reference(t1ce, t1ce, brain, [], seg, PonsParams())
    assert ref.method == "seg", ref.qc
    assert ref.qc["passed"] is True and "refusal" not in ref.qc
    # the segment is checked against the atlas pons, and it is where the atlas puts it
    assert float(ref.qc["seg_atlas_distance_mm"]) < 3.0
    assert np.array_equal(sitk.GetArrayViewFromImage(ref.mask), sitk.GetArrayViewFromImage(seg))


def test_a_reference_segment_in_the_wrong_place_is_refused(
    subject: tuple[sitk.Image, sitk.Image, sitk.AffineTransform],
) -> None:
    """A "pons" segment drawn in the right hemisphere, 35 mm off the midline: implausible, so no reference."""
    t1ce, brain, transform = subject
    elsewhere = np.array(transform.GetInverse().TransformPoint((-35.0, 0.0, 20.0)))
    seg = _lesion_mask(t1ce, elsewhere, 7.0)
    ref = pons_reference(t1ce, t1ce, brain, [], seg, PonsParams())
    assert ref.method == "none"
    assert ref.qc["refusal"] == NotAssessedReason.REFERENCE_SEGMENT_IMPLAUSIBLE.value
    assert ref.qc["passed"] is False and ref.qc["rejected_method"] == "seg"
    gates = str(ref.qc["failed_gates"])
    assert "from the atlas pons" in gates and "from the midline" in gates
    assert float(ref.qc["seg_atlas_distance_mm"]) > 30.0


def test_a_tiny_reference_segment_is_refused_not_replaced(
    subject: tuple[sitk.Image, sitk.Image, sitk.AffineTransform],
) -> None:
    t1ce, brain, transform = subject
    seg = _lesion_mask(t1ce, np.array(transform.GetInverse().TransformPoint((0.0, 25.0, -33.0))), 2.0)
    ref = pons_reference(t1ce, t1ce, brain, [], seg, PonsParams(auto=False))
    assert ref.method == "none"
    assert ref.qc["refusal"] == NotAssessedReason.REFERENCE_SEGMENT_IMPLAUSIBLE.value
    assert "voxel(s)" in str(ref.qc["failed_gates"]) and "outside 300-30000 mm³" in str(ref.qc["failed_gates"])


def test_lesion_over_the_pons_means_no_reference(
    subject: tuple[sitk.Image, sitk.Image, sitk.AffineTransform],
) -> None:
    t1ce, brain, transform = subject
    pons_centre = np.array(transform.GetInverse().TransformPoint((0.0, 25.0, -33.0)))
    lesion = _lesion_mask(t1ce, pons_centre + np.array([4.0, 0.0, 0.0]), 6.0)
    ref = pons_reference(t1ce, t1ce, brain, [lesion], None, PonsParams())
    assert ref.method == "none"
    assert ref.qc["refusal"] == NotAssessedReason.REFERENCE_QC_FAILED.value
    assert "overlaps a lesion" in str(ref.qc["failed_gates"])
    assert "no lesion is assessed" in str(ref.qc["warning"])
    assert ref.qc["passed"] is False
    assert ref.qc["rejected_method"] == "auto"
    # the research fallback: the whole brain minus the lesions, said so
    ref = pons_reference(t1ce, t1ce, brain, [lesion], None, PonsParams(fallback="whole-brain"))
    assert ref.method == "whole-brain" and ref.qc["fallback"] == "whole-brain" and "refusal" not in ref.qc
    assert "research fallback" in str(ref.qc["warning"])
    mask = sitk.GetArrayViewFromImage(ref.mask) > 0
    assert not np.any(mask & (sitk.GetArrayViewFromImage(lesion) > 0))
    assert mask.sum() > 100_000


def test_auto_disabled_without_segment_is_no_reference(
    subject: tuple[sitk.Image, sitk.Image, sitk.AffineTransform],
) -> None:
    t1ce, brain, _ = subject
    ref = pons_reference(t1ce, t1ce, brain, [], None, PonsParams(auto=False))
    assert ref.method == "none"
    assert ref.qc["refusal"] == NotAssessedReason.NO_REFERENCE.value
    assert "disabled" in str(ref.qc["failed_gates"])
    ref = pons_reference(t1ce, t1ce, brain, [], None, PonsParams(auto=False, fallback="whole-brain"))
    assert ref.method == "whole-brain"


def test_bad_pons_params_are_rejected() -> None:
    with pytest.raises(ValueError, match="volume_tolerance"):
        PonsParams(volume_tolerance=1.5)
    with pytest.raises(ValueError, match="fallback"):
        PonsParams(fallback="white-matter")


def test_roi_outside_the_t2_field_of_view_is_refused(
    subject: tuple[sitk.Image, sitk.Image, sitk.AffineTransform],
) -> None:
    """A thick-slice T2 that stops above the pons cannot give T2 pons statistics."""
    t1ce, brain, transform = subject
    pons_z = transform.GetInverse().TransformPoint((0.0, 25.0, -33.0))[2]
    coverage_a = np.zeros(sitk.GetArrayViewFromImage(t1ce).shape, dtype=np.uint8)
    first_covered = round(t1ce.TransformPhysicalPointToContinuousIndex((0.0, 0.0, pons_z + 20.0))[2])
    coverage_a[first_covered:] = 1
    coverage = sitk.GetImageFromArray(coverage_a)
    coverage.CopyInformation(t1ce)
    ref = pons_reference(t1ce, t1ce, brain, [], None, PonsParams(), t2_coverage=coverage)
    assert ref.method == "none"
    assert ref.qc["refusal"] == NotAssessedReason.REFERENCE_OUTSIDE_FOV.value
    assert "field of view" in str(ref.qc["warning"])
    assert float(ref.qc["t2_coverage_fraction"]) == 0.0
    # the region the statistics come from (never used for a prediction) stays inside the T2 field of view
    assert not np.any((sitk.GetArrayViewFromImage(ref.mask) > 0) & (coverage_a == 0))


def test_a_t1ce_that_stops_above_the_pons_is_refused(
    subject: tuple[sitk.Image, sitk.Image, sitk.AffineTransform],
) -> None:
    """The T1CE's field of view itself excludes the pons: the atlas maps the ROI outside the image."""
    t1ce, brain, transform = subject
    pons_z = transform.GetInverse().TransformPoint((0.0, 25.0, -33.0))[2]
    first = round(t1ce.TransformPhysicalPointToContinuousIndex((0.0, 0.0, pons_z + 12.0))[2])
    size = list(t1ce.GetSize())
    crop = [0, 0, first], [size[0], size[1], size[2] - first]
    t1_cropped = sitk.RegionOfInterest(t1ce, crop[1], crop[0])
    brain_cropped = sitk.RegionOfInterest(brain, crop[1], crop[0])
    ref = pons_reference(t1_cropped, t1_cropped, brain_cropped, [], None, PonsParams())
    assert ref.method == "none", ref.qc
    assert ref.qc["refusal"] == NotAssessedReason.REFERENCE_OUTSIDE_FOV.value
    assert float(ref.qc["t1ce_fov_fraction"]) < 0.5
    assert "T1CE field of view" in str(ref.qc["failed_gates"])


def test_auto_pons_on_a_head_with_skull_and_a_larger_brain() -> None:
    """Scalp fat and bone around the brain must not inflate the template's scale (the template is stripped)."""
    transform = _subject_transform()
    matrix = np.array(transform.GetMatrix()).reshape(3, 3) @ np.diag([0.94, 0.95, 0.93])  # a bigger head
    transform.SetMatrix(matrix.ravel().tolist())
    study = syn.make_study(
        t1_size=(200, 230, 190), t2_size=(200, 200, 28), t1_transform=transform, lesions=(), skull=True
    )
    t1ce = study.t1ce
    ref = pons_reference(t1ce, t1ce, brain_mask(t1ce), [], None, PonsParams())
    # the ROI grows with the head (~1.2x here): the volume gate follows the atlas scale, so auto still passes
    assert ref.method == "auto", ref.qc
    ratio = float(ref.qc["subject_to_template_volume_ratio"])
    assert float(ref.qc["expected_volume_mm3"]) == pytest.approx(PONS_EXPECTED_VOLUME_MM3 * ratio)
    assert abs(float(ref.qc["volume_mm3"]) - PONS_EXPECTED_VOLUME_MM3 * ratio) <= 0.2 * PONS_EXPECTED_VOLUME_MM3 * ratio
    truth = np.array(transform.GetInverse().TransformPoint((0.0, 25.0, -33.0)))
    # without the template-brain moving mask this case gives 2.2 mm and a volume ratio 8 % too large
    assert np.linalg.norm(_centroid(ref.mask) - truth) < 1.5
    expected_ratio = 1.0 / np.linalg.det(matrix)
    assert float(ref.qc["subject_to_template_volume_ratio"]) == pytest.approx(expected_ratio, rel=0.04)
