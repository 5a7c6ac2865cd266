# mypy: allow-untyped-calls
"""Synthetic studies for the preprocessing tests, built from the MNI152 template bundled in the nilearn wheel.

T1CE = the template (T1 contrast) with a smooth bias field, noise and ring-enhancing spherical lesions;
T2 = a T2-like contrast from the template's GM/WM probability maps (CSF bright, WM dark), sampled on a thick-
slice grid under a known rigid motion. All coordinates are LPS millimetres (the template's MNI space).
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from node.imaging.types import LoadedStudy, Segment, StudyIdentity

_DATA = "datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
MNI_CENTRE_LPS = (0.0, 18.0, 22.0)  # roughly the centre of the template's brain
PONS_CENTRE_LPS = (0.0, 25.0, -33.0)  # docs/method.md §6.2, RAS (0, -25, -33) in LPS


@functools.lru_cache(maxsize=4)
def _read(kind: str) -> sitk.Image:
    with importlib.resources.as_file(importlib.resources.files("nilearn") / _DATA.format(kind)) as path:
        return sitk.ReadImage(str(path), sitk.sitkFloat32)


def mni_t1() -> sitk.Image:
    return _read("t1")


@functools.lru_cache(maxsize=1)
def mni_t1_with_skull() -> sitk.Image:
    """The template with a crude head around the brain: dark bone (2-6 mm out) and bright scalp fat (6-11 mm)."""
    t1 = _read("t1")
    brain = sitk.Cast(t1 > 15, sitk.sitkUInt8)
    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(brain, insideIsPositive=False, useImageSpacing=True))
    arr = sitk.GetArrayFromImage(t1)
    arr[(dist > 2) & (dist <= 6)] = 25.0
    arr[(dist > 6) & (dist <= 11)] = 240.0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(t1)
    return out


@functools.lru_cache(maxsize=1)
def mni_t2_like() -> sitk.Image:
    """T2-like contrast on the template grid: CSF 400, GM 200, WM 110, background 0."""
    t1 = sitk.GetArrayFromImage(_read("t1"))
    gm = sitk.GetArrayFromImage(_read("gm"))
    wm = sitk.GetArrayFromImage(_read("wm"))
    gm, wm = gm / gm.max(), wm / wm.max()  # stored as 0-255 probabilities
    brain = t1 > 15
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    arr = (110.0 * wm + 200.0 * gm + 400.0 * csf).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(_read("t1"))
    return img


def grid(size: tuple[int, int, int], spacing: tuple[float, float, float],
         centre: tuple[float, float, float] = MNI_CENTRE_LPS,
         direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:  # fmt: skip
    """An empty float32 image of the given geometry centred on ``centre`` (LPS)."""
    img = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in direction])
    d = np.array(direction, dtype=float).reshape(3, 3)
    half = d @ ((np.array(size) - 1) * np.array(spacing) / 2.0)
    img.SetOrigin([float(v) for v in np.array(centre) - half])
    return img


def rigid(rotation_deg: tuple[float, float, float], shift_mm: tuple[float, float, float],
          centre: tuple[float, float, float] = MNI_CENTRE_LPS) -> sitk.Euler3DTransform:  # fmt: skip
    t = sitk.Euler3DTransform()
    t.SetCenter(centre)
    t.SetRotation(*[float(np.deg2rad(a)) for a in rotation_deg])
    t.SetTranslation([float(v) for v in shift_mm])
    return t


@dataclass(frozen=True)
class Lesion:
    centre_lps: tuple[float, float, float]
    radius_mm: float


def _sphere(reference: sitk.Image, centre: tuple[float, float, float], radius: float) -> np.ndarray:
    size = reference.GetSize()
    zz, yy, xx = np.indices((size[2], size[1], size[0]), dtype=np.float32)
    d = np.array(reference.GetDirection()).reshape(3, 3)
    sp = np.array(reference.GetSpacing())
    o = np.array(reference.GetOrigin())
    c = np.array(centre)
    dist2 = np.zeros(zz.shape, dtype=np.float32)
    for axis in range(3):
        coord = o[axis] + d[axis, 0] * sp[0] * xx + d[axis, 1] * sp[1] * yy + d[axis, 2] * sp[2] * zz
        dist2 += (coord - c[axis]) ** 2
    return np.asarray(np.sqrt(dist2))


def _bias(reference: sitk.Image, strength: float) -> np.ndarray:
    size = reference.GetSize()
    zz, _, xx = np.indices((size[2], size[1], size[0]), dtype=np.float32)
    return np.asarray(
        1.0 + strength * (xx / size[0] - 0.5) + 0.5 * strength * np.cos(np.pi * zz / size[2]), dtype=np.float32
    )


def _with_lesions(source: sitk.Image, lesions: list[Lesion], rim: float, core: float) -> sitk.Image:
    """``source`` with ring-enhancing spheres painted in (rim value, darker core), on the source grid."""
    arr = sitk.GetArrayFromImage(source)
    for lesion in lesions:
        dist = _sphere(source, lesion.centre_lps, lesion.radius_mm)
        arr[dist <= lesion.radius_mm] = rim
        arr[dist <= lesion.radius_mm * 0.55] = core
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(source)
    return out


def make_study(
    *,
    t1_size: tuple[int, int, int] = (256, 256, 176),
    t1_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    t2_size: tuple[int, int, int] = (288, 288, 28),
    t2_spacing: tuple[float, float, float] = (0.8, 0.8, 6.0),
    t2_motion: sitk.Transform | None = None,
    t1_transform: sitk.Transform | None = None,
    lesions: tuple[Lesion, ...] = (Lesion((-30.0, -10.0, 20.0), 12.5),),
    pons_segment: bool = False,
    noise: float = 0.02,
    bias: float = 0.2,
    seed: int = 0,
    skull: bool = False,
) -> LoadedStudy:
    """A LoadedStudy whose T1CE shows the template (optionally under ``t1_transform``, which maps T1CE points
    to template points) and whose T2 is the T2-like template seen under ``t2_motion`` (T2 points -> world)."""
    rng = np.random.default_rng(seed)
    t1_grid = grid(t1_size, t1_spacing)
    t1_src = _with_lesions(mni_t1_with_skull() if skull else mni_t1(), list(lesions), rim=230.0, core=90.0)
    t1 = sitk.Resample(t1_src, t1_grid, t1_transform or sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    t1_arr = sitk.GetArrayFromImage(t1) * _bias(t1, bias)
    t1_arr += rng.normal(0.0, noise * 100.0, t1_arr.shape).astype(np.float32) * (t1_arr > 1)
    t1 = _from(t1_arr.clip(0), t1_grid)

    t2_src = _with_lesions(mni_t2_like(), list(lesions), rim=330.0, core=420.0)
    # thick slices: average along the slice axis before sampling (slice profile ~ slice thickness)
    sigma_z = t2_spacing[2] / 2.355
    t2_src = sitk.SmoothingRecursiveGaussian(t2_src, [0.5, 0.5, sigma_z])
    t2_grid = grid(t2_size, t2_spacing)
    motion = sitk.CompositeTransform(3)
    motion.AddTransform(t1_transform or sitk.Transform(3, sitk.sitkIdentity))
    motion.AddTransform(t2_motion or sitk.Transform(3, sitk.sitkIdentity))
    # a T2 point p shows the world point motion(p); the template is the world seen by the T1CE transform
    t2 = sitk.Resample(t2_src, t2_grid, motion, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    t2_arr = sitk.GetArrayFromImage(t2) * _bias(t2, -bias)
    t2_arr += rng.normal(0.0, noise * 200.0, t2_arr.shape).astype(np.float32) * (t2_arr > 1)
    t2 = _from(t2_arr.clip(0), t2_grid)

    segments = []
    for number, lesion in enumerate(lesions, start=1):
        src = _from((_sphere(mni_t1(), lesion.centre_lps, lesion.radius_mm) <= lesion.radius_mm), mni_t1())
        mask = sitk.Resample(src, t1_grid, t1_transform or sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                             sitk.sitkUInt8)  # fmt: skip
        segments.append(Segment(segment_number=number, label=f"lesion {number}", mask=mask))
    pons = None
    if pons_segment:
        from node.imaging.pons import pons_roi_on

        roi = pons_roi_on(mni_t1())
        mask = sitk.Resample(roi, t1_grid, t1_transform or sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                             sitk.sitkUInt8)  # fmt: skip
        pons = Segment(segment_number=len(segments) + 1, label="pons", mask=mask)
    identity = StudyIdentity("1.2.3", "1.2.3.4", "1.2.3.5", "1.2.3.6", "1.2.3.7", "1.2.3.8")
    return LoadedStudy(identity=identity, t1ce=t1, t2=t2, lesions=tuple(segments), pons=pons)


def _from(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.float32) if arr.dtype != np.bool_ else arr.astype(np.uint8))
    img.CopyInformation(reference)
    return img
