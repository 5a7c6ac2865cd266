# mypy: allow-untyped-calls
"""The QC key image's slices (node.imaging.keyslices) on small constructed studies: radiological orientation
whatever the acquisition axes, the lesion's largest cross-section, the reference ROI, a failed reference."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from node.imaging.keyslices import LpsView, key_slices, largest_section
from node.imaging.types import PonsReference, PreprocessedStudy, RegistrationResult, Segment, StudyIdentity

IDENTITY = StudyIdentity("1.2.3", "1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4", "1.2.3.5")
AXIAL_RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # index i runs to patient right, j anterior
# sagittal acquisition: rows run anterior->posterior (i), columns superior->inferior (j), slices right->left (k)
SAGITTAL = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
DIRECTIONS = {"axial LPS": (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), "axial RAS": AXIAL_RAS, "sagittal": SAGITTAL}


def _image(direction: tuple[float, ...], size: tuple[int, int, int] = (40, 44, 36)) -> sitk.Image:
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetDirection(direction)
    centre = np.array(direction).reshape(3, 3) @ (np.array(size, dtype=float) // 2)
    image.SetOrigin(tuple(float(v) for v in -centre))  # patient (0, 0, 0) at the centre voxel
    return image


def _mask_at(reference: sitk.Image, points: list[tuple[float, float, float]], radius: float = 0.0) -> sitk.Image:
    """A uint8 mask on ``reference`` holding balls (radius in mm, 0 = one voxel) around physical ``points``."""
    arr = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=np.uint8)
    idx = np.argwhere(np.ones_like(arr, dtype=bool))  # [k, j, i]
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    phys = np.array(reference.GetOrigin()) + (idx[:, ::-1] * np.array(reference.GetSpacing())) @ direction.T
    for p in points:
        near = np.linalg.norm(phys - np.array(p), axis=1) <= max(radius, 0.5)
        arr[tuple(idx[near].T)] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(reference)
    return mask


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_the_lps_view_shows_patient_left_on_the_right_anterior_up_superior_later(name: str) -> None:
    image = _image(DIRECTIONS[name])
    view = LpsView.of(image)
    centre = (0.0, 0.0, 0.0)
    for axis, (step, array_axis) in enumerate(((6.0, 2), (6.0, 1), (6.0, 0))):  # +x = left, +y = posterior, +z = up
        shift = [step if i == axis else 0.0 for i in range(3)]
        moved = (shift[0], shift[1], shift[2])
        arr = view.apply(sitk.GetArrayFromImage(_mask_at(image, [centre, moved])))
        a = view.apply(sitk.GetArrayFromImage(_mask_at(image, [centre])))
        base = np.argwhere(a > 0)[0]
        both = np.argwhere(arr > 0)
        other = next(p for p in both if not np.array_equal(p, base))
        assert other[array_axis] - base[array_axis] == 6, (name, axis)  # columns grow to patient left, ...
        assert all(other[i] == base[i] for i in range(3) if i != array_axis)
    assert view.z_mm(image, int(np.argwhere(a > 0)[0][0])) == pytest.approx(0.0, abs=0.5)


def _study(direction: tuple[float, ...], pons: PonsReference | None = None) -> PreprocessedStudy:
    t1 = _image(direction)
    arr = np.full(sitk.GetArrayViewFromImage(t1).shape, 100.0, dtype=np.float32)
    image = sitk.GetImageFromArray(arr)
    image.CopyInformation(t1)
    brain = _mask_at(t1, [(0.0, 0.0, 0.0)], radius=16.0)
    # a lesion: two balls, and a fin of single voxels at z = 8 that makes its slice the largest cross-section
    balls = _mask_at(t1, [(8.0, -4.0, 3.0), (8.0, -4.0, 8.0)], radius=2.5)
    fin = _mask_at(t1, [(float(x), -7.0, 8.0) for x in range(2, 15)])
    lesion = sitk.Or(balls, fin)
    roi = _mask_at(t1, [(0.0, 6.0, -10.0)], radius=3.0)
    pons = pons or PonsReference("auto", roi, 100.0, 10.0, 100.0, 10.0, {"passed": True})
    return PreprocessedStudy(
        identity=IDENTITY, t1ce=image, t2=image, lesions=(Segment(1, "Lesion 1", lesion),),
        pons=pons, registration=RegistrationResult(sitk.Transform(), 0.0, "test"), brain_mask=brain,
    )


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_views_cut_the_lesion_at_its_largest_section_and_the_reference_in_its_roi(name: str) -> None:
    study = _study(DIRECTIONS[name])
    view = LpsView.of(study.t1ce)
    reference, lesion = key_slices(study)
    assert (reference.kind, reference.failed, lesion.kind, lesion.segment_number) == ("reference", False, "lesion", 1)
    mask = view.apply(sitk.GetArrayViewFromImage(study.lesions[0].mask)) > 0
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    assert areas[lesion.slice_index] == areas.max()
    assert lesion.slice_position_mm == pytest.approx(8.0, abs=0.5)  # the row
    role, region = lesion.regions[0]
    assert role == "lesion" and region.sum() == areas.max()  # the crop keeps the whole lesion
    roi = view.apply(sitk.GetArrayViewFromImage(study.pons.mask)) > 0
    assert roi[reference.slice_index].any() and reference.regions[0][0] == "reference"
    assert reference.regions[0][1].sum() == roi[reference.slice_index].sum()
    assert reference.slice_position_mm == pytest.approx(-10.0, abs=0.5)
    # the crop is the brain's extent (radius 16 mm) plus the margin; both views share it and the window
    assert reference.image.shape == lesion.image.shape
    assert lesion.image.shape[0] <= 33 + 2 * 8 and reference.window == lesion.window
    # the lesion (x = +8 mm, patient left) lies right of the image centre
    cols = np.nonzero(region)[1]
    assert cols.mean() > region.shape[1] / 2


def test_a_failed_reference_shows_the_rejected_region_or_says_none_was_found() -> None:
    base = _study(DIRECTIONS["axial LPS"])
    whole = base.brain_mask
    qc: dict[str, float | str | bool] = {"passed": False, "failed_gates": "ROI overlaps a lesion",
                                         "rejected_method": "auto"}
    failed = PonsReference("whole-brain", whole, 1.0, 1.0, 1.0, 1.0, qc, candidate=base.pons.mask)
    reference = key_slices(_study(DIRECTIONS["axial LPS"], failed))[0]
    assert reference.failed and "FAILED" in reference.title and "automatic pons" in reference.title
    assert reference.note == "ROI overlaps a lesion"
    assert [r for r, _ in reference.regions] == ["rejected reference"]
    assert reference.slice_position_mm == pytest.approx(-10.0, abs=0.5)  # where the candidate was, not the brain
    nothing = PonsReference("whole-brain", whole, 1.0, 1.0, 1.0, 1.0, {**qc, "rejected_method": "none"})
    reference = key_slices(_study(DIRECTIONS["axial LPS"], nothing))[0]
    assert reference.failed and "no pons region found" in reference.title
    assert all(role != "rejected reference" for role, _ in reference.regions)


def test_a_seg_reference_used_despite_findings_says_so() -> None:
    base = _study(DIRECTIONS["axial LPS"])
    qc: dict[str, float | str | bool] = {"passed": True, "warning": "pons segment used despite QC findings: T2 CV 0.4"}
    seg = PonsReference("seg", base.pons.mask, 1.0, 1.0, 1.0, 1.0, qc)
    reference = key_slices(_study(DIRECTIONS["axial LPS"], seg))[0]
    assert "used despite QC findings" in reference.title and reference.note == "T2 CV 0.4"
    assert reference.regions[0][0] == "reference" and not reference.failed


def test_largest_section_takes_the_first_of_equal_slices() -> None:
    mask = np.zeros((4, 3, 3), dtype=bool)
    mask[1, :2, :2] = True
    mask[3, :2, :2] = True
    assert largest_section(mask) == 1
