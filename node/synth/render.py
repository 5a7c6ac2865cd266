# mypy: disable-error-code="no-untyped-call"
"""Render a synthetic case in memory: T1CE (3D sagittal), T2 (2D axial, thick slices, moved head), lesion masks.

The T1CE frame is subject space. The T2 is acquired after a rigid head motion ``tx`` (Euler3D, 2–5°, 2–6 mm),
which maps T1CE points to T2 points (ITK convention: ``sitk.Resample(t2, t1ce, tx)`` aligns the T2 onto the
T1CE). Thick slices are simulated by averaging 5 sub-slices 1 mm apart per 5 mm slice (slice spacing 6 mm).
Geometry per size:

=======  ===============================================  ===================================================
size     T1CE (sagittal, 3D)                              T2 (axial, 2D, 5 mm slices every 6 mm)
=======  ===============================================  ===================================================
small    96 × 96 × 80, 2 mm isotropic                     144 × 144 × 26, 1.5 mm pixels
full     256 × 256 × 176, 1 mm isotropic                  288 × 288 × 26, 0.8 mm pixels
=======  ===============================================  ===================================================

Random streams per case derive from ``(seed, case index, stream)``: 1 anatomy and geometry, 2 lesions,
3 bias and noise (4 is used for header dates by :mod:`node.synth.headers`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from node.synth import anatomy
from node.synth.anatomy import Affine, F32Array, FloatArray, Grid
from node.synth.cohort import PatientSpec
from node.synth.lesions import Lesion, lesion_mask, paint, place_lesions
from node.synth.sites import Site

logger = logging.getLogger(__name__)

Size = Literal["small", "full"]
T2_THICKNESS_MM = 5.0
T2_SUBSLICE_OFFSETS_MM = (-2.0, -1.0, 0.0, 1.0, 2.0)  # 5 sub-slices 1 mm apart per 5 mm slice
T2_SCALE = 1.3  # T2 series real-world scale relative to the site's T1CE scale


@dataclass(frozen=True)
class SizeSpec:
    t1ce_size: tuple[int, int, int]  # (A-P columns, S-I rows, L-R slices)
    t1ce_spacing: float
    t2_size: tuple[int, int, int]
    t2_pixel: float
    t2_slice_spacing: float = 6.0
    t2_thickness: float = 5.0


SIZES: dict[str, SizeSpec] = {
    "small": SizeSpec((96, 96, 80), 2.0, (144, 144, 26), 1.5),
    "full": SizeSpec((256, 256, 176), 1.0, (288, 288, 26), 0.8),
}


@dataclass
class SynthCase:
    """A rendered case in memory (real-world float images on their native grids)."""

    spec: PatientSpec
    site: Site
    t1ce: sitk.Image
    t2: sitk.Image
    lesion_masks: list[sitk.Image]
    pons_mask: sitk.Image
    lesions: list[Lesion]
    t1ce_grid: Grid
    t2_grid: Grid
    subject_to_template: Affine
    t1ce_to_t2: sitk.Euler3DTransform
    t1_tissue: dict[str, float]
    t2_tissue: dict[str, float]
    skull: bool = False


def case_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The random stream ``stream`` of case ``index``."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def _image(array: npt.NDArray[Any], grid: Grid) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(grid.spacing)
    img.SetOrigin(grid.origin)
    img.SetDirection(grid.direction)
    return img


def _site_signal(
    signal: F32Array, grid: Grid, site: Site, scale: float, noise_rel: float, rng: np.random.Generator
) -> F32Array:
    """Bias field, Rician noise, then the site's scale/offset."""
    biased = signal * anatomy.bias_field(grid, site.bias_strength, rng)
    noisy = anatomy.add_rician_noise(biased, noise_rel * site.noise_level, rng)
    out: F32Array = (noisy * np.float32(scale) + np.float32(site.intensity_offset)).astype(np.float32)
    return out


def synthesize_case(
    spec: PatientSpec, site: Site, *, seed: int, size: Size = "small", effect: float = 1.0, skull: bool = False
) -> SynthCase:
    """Render one case in memory (no files); ``skull`` adds skull and scalp around the brain."""
    sz = SIZES[size]
    template = anatomy.load_template(skull)
    rng_anat = case_rng(seed, spec.index, 1)
    rng_les = case_rng(seed, spec.index, 2)
    rng_noise = case_rng(seed, spec.index, 3)

    subject_to_template = anatomy.random_subject_affine(rng_anat)
    template_to_subject = subject_to_template.inverse()
    brain_centre = template_to_subject.apply(anatomy.BRAIN_CENTER_LPS[None, :])[0]
    t1_grid = Grid.centred(
        sz.t1ce_size, (sz.t1ce_spacing,) * 3, anatomy.SAGITTAL, brain_centre + rng_anat.uniform(-2, 2, size=3)
    )
    tx = anatomy.random_rigid_motion(rng_anat, brain_centre)
    to_t2 = Affine.from_sitk_euler(tx)
    from_t2 = to_t2.inverse()
    t2_centre = to_t2.apply(brain_centre[None, :])[0] + rng_anat.uniform(-3, 3, size=3)
    t2_grid = Grid.centred(sz.t2_size, (sz.t2_pixel, sz.t2_pixel, sz.t2_slice_spacing), anatomy.AXIAL, t2_centre)
    t1_tissue = anatomy.jittered_tissue(anatomy.T1_TISSUE, rng_anat)
    t2_tissue = anatomy.jittered_tissue(anatomy.T2_TISSUE, rng_anat)
    pons_centre = template_to_subject.apply(anatomy.PONS_CENTER_LPS[None, :])[0]

    def fits(centre: FloatArray, extent: float) -> bool:
        in_t2 = to_t2.apply(centre[None, :])[0]
        return t1_grid.contains(centre, extent + 2.0) and t2_grid.contains(in_t2, 0.7 * extent)

    lesions = place_lesions(
        spec.metastasis_subtype, spec.n_lesions, effect, rng_les, template, subject_to_template, pons_centre, fits
    )

    # T1CE on its grid (subject space)
    fr = anatomy.resample_fractions(template, t1_grid, subject_to_template)
    t1 = anatomy.contrast(fr, t1_tissue)
    t1_points = t1_grid.physical_points
    masks: list[sitk.Image] = []
    for lesion in lesions:
        box = t1_grid.box_around(lesion.shape.centre[None, :], lesion.influence_mm)
        assert box is not None
        paint(t1, None, fr, t1_points, box, lesion)
        mbox = t1_grid.box_around(lesion.shape.centre[None, :], lesion.shape.max_extent_mm + 1.0)
        assert mbox is not None
        mask = lesion_mask(t1_grid.size, t1_points, mbox, lesion)
        if not mask.any():  # a tiny lesion between voxel centres: keep its centre voxel
            idx = t1_grid.index_to_physical().inverse().apply(lesion.shape.centre[None, :])[0]
            i, j, k = (int(np.rint(v)) for v in idx)
            mask[k, j, i] = 1
        masks.append(_image(mask, t1_grid))
    t1_real = _site_signal(t1, t1_grid, site, site.intensity_scale, 1.0, rng_noise)
    pons = anatomy.resample_pons_roi(template, t1_grid, subject_to_template)

    # T2: thick axial slices in the moved head
    t2_sum = np.zeros(sz.t2_size[::-1], dtype=np.float32)
    for offset in T2_SUBSLICE_OFFSETS_MM:
        g = t2_grid.shifted(offset)
        fr2 = anatomy.resample_fractions(template, g, subject_to_template.compose(from_t2))
        t2 = anatomy.contrast(fr2, t2_tissue)

        def t2_points(lo: npt.NDArray[np.int64], hi: npt.NDArray[np.int64], g: Grid = g) -> FloatArray:
            pts = g.physical_points(lo, hi)
            return from_t2.apply(pts.reshape(-1, 3)).reshape(pts.shape)

        for lesion in lesions:
            box = g.box_around(to_t2.apply(lesion.shape.centre[None, :]), lesion.influence_mm)
            if box is not None:
                paint(None, t2, fr2, t2_points, box, lesion)
        t2_sum += t2
    t2_signal: F32Array = (t2_sum / np.float32(len(T2_SUBSLICE_OFFSETS_MM))).astype(np.float32)
    t2_real = _site_signal(t2_signal, t2_grid, site, site.intensity_scale * T2_SCALE, 0.6, rng_noise)

    return SynthCase(
        spec=spec,
        site=site,
        t1ce=_image(t1_real, t1_grid),
        t2=_image(t2_real, t2_grid),
        lesion_masks=masks,
        pons_mask=_image(pons, t1_grid),
        lesions=lesions,
        t1ce_grid=t1_grid,
        t2_grid=t2_grid,
        subject_to_template=subject_to_template,
        t1ce_to_t2=tx,
        t1_tissue=t1_tissue,
        t2_tissue=t2_tissue,
        skull=skull,
    )


def render_t2_reference(case: SynthCase, grid: Grid | None = None) -> sitk.Image:
    """Noise-free, bias-free T2 contrast (lesions included) on ``grid`` (default: the T1CE grid), in subject
    space: what a perfect registration of the T2 onto the T1CE should look like (up to scale)."""
    grid = grid or case.t1ce_grid
    template = anatomy.load_template(case.skull)
    fr = anatomy.resample_fractions(template, grid, case.subject_to_template)
    t2 = anatomy.contrast(fr, case.t2_tissue)
    for lesion in case.lesions:
        box = grid.box_around(lesion.shape.centre[None, :], lesion.influence_mm)
        if box is not None:
            paint(None, t2, fr, grid.physical_points, box, lesion)
    return _image(t2, grid)
