# mypy: disable-error-code="no-untyped-call"
"""Synthetic head anatomy from the MNI152 2009a template that nilearn's wheel bundles (no download).

* The template and its GM/WM probability maps are read with SimpleITK (which converts NIfTI RAS to ITK/DICOM
  LPS); CSF = brain mask − GM − WM. Inside an ellipsoid (11 × 11 × 12 mm) around the MNI pons ROI
  (docs/method.md §6: x = 0, y = −25, z = −36…−30 RAS, radius 7.5 mm) the tissue is forced to pure white
  matter, so the pons is homogeneous and WM-like on both contrasts.
* A *subject* is the template under a random affine (rotation ≤ 8°, per-axis scale 0.92–1.08, translation
  ≤ 10 mm). :class:`Affine` maps subject LPS points to template LPS points; the T1CE scan frame *is* subject
  space, and a rigid motion (:func:`random_rigid_motion`) maps it to T2 scan space.
* Contrasts are mixtures of tissue fractions (arbitrary units, normal WM on T1CE = 1.0):
  T1CE WM 1.00 / GM 0.62 / CSF 0.18; T2 WM 0.33 / GM 0.50 / CSF 1.00 (each jittered ±4 % per subject).
  Optionally (``head=True``) skull (T1 0.06 / T2 0.04) and scalp fat (T1 1.15 / T2 0.75) layers surround
  the brain; by default the head is skull-stripped like the template.
* :func:`bias_field` is a smooth multiplicative field (exp of a random quadratic in scanner coordinates);
  :func:`add_rician_noise` adds magnitude (Rician) noise.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]

TEMPLATE_DIR = "datasets/data"
TEMPLATE_NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

# docs/method.md §6.2, MNI RAS -> LPS: (x, y, z) -> (-x, -y, z)
PONS_CENTER_LPS = np.array([0.0, 25.0, -33.0])
PONS_RADIUS_MM = 7.5
PONS_Z_RANGE_MM = (-36.0, -30.0)
PONS_TISSUE_RADII_MM = (11.0, 12.0)  # WM override ellipsoid semi-axes (in-plane, z) around the ROI
PONS_TISSUE_Z_MM = -32.0
BRAIN_CENTER_LPS = np.array([0.0, 18.0, 8.0])  # template brain centre (MNI RAS 0, -18, 8)

T1_TISSUE = {"wm": 1.00, "gm": 0.62, "csf": 0.18, "bone": 0.06, "fat": 1.15}
T2_TISSUE = {"wm": 0.33, "gm": 0.50, "csf": 1.00, "bone": 0.04, "fat": 0.75}
COMPONENTS = ("gm", "wm", "csf", "bone", "fat")
# optional extra-cerebral layers (distance outside the template brain mask, mm): CSF, skull, scalp
HEAD_LAYERS_MM = {"csf": (0.0, 1.5), "bone": (1.5, 6.0), "fat": (6.0, 11.0)}

SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # rows +y (A->P), columns -z, slices -x
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Affine:
    """``y = matrix @ x + offset`` on LPS points (mm)."""

    matrix: FloatArray
    offset: FloatArray

    def apply(self, points: FloatArray) -> FloatArray:
        """Map an ``(N, 3)`` array of points."""
        return points @ self.matrix.T + self.offset

    def compose(self, first: Affine) -> Affine:
        """``self ∘ first``: apply ``first``, then ``self``."""
        return Affine(self.matrix @ first.matrix, self.matrix @ first.offset + self.offset)

    def inverse(self) -> Affine:
        inv: FloatArray = np.linalg.inv(self.matrix).astype(np.float64)
        return Affine(inv, -inv @ self.offset)

    def to_sitk(self) -> sitk.AffineTransform:
        tx = sitk.AffineTransform(3)
        tx.SetMatrix([float(v) for v in self.matrix.ravel()])
        tx.SetTranslation([float(v) for v in self.offset])
        return tx

    @staticmethod
    def identity() -> Affine:
        return Affine(np.eye(3), np.zeros(3))

    @staticmethod
    def from_sitk_euler(tx: sitk.Euler3DTransform) -> Affine:
        """``T(p) = M (p − c) + c + t``."""
        m = np.array(tx.GetMatrix()).reshape(3, 3)
        c = np.array(tx.GetCenter())
        t = np.array(tx.GetTranslation())
        return Affine(m, c + t - m @ c)


@dataclass(frozen=True)
class Grid:
    """An image grid in LPS (ITK conventions: size/spacing in x, y, z index order)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @staticmethod
    def centred(
        size: tuple[int, int, int],
        spacing: tuple[float, float, float],
        direction: tuple[float, ...],
        centre: FloatArray,
    ) -> Grid:
        d = np.array(direction).reshape(3, 3)
        half = (np.array(size) - 1) * np.array(spacing) / 2.0
        origin = np.asarray(centre, dtype=float) - d @ half
        return Grid(size, spacing, (float(origin[0]), float(origin[1]), float(origin[2])), direction)

    def shifted(self, distance_mm: float) -> Grid:
        """The same grid moved by ``distance_mm`` along its slice normal."""
        normal = np.array(self.direction).reshape(3, 3)[:, 2]
        o = np.array(self.origin) + distance_mm * normal
        return Grid(self.size, self.spacing, (float(o[0]), float(o[1]), float(o[2])), self.direction)

    def reference(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        img = sitk.Image([int(s) for s in self.size], pixel_type)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def index_to_physical(self) -> Affine:
        d = np.array(self.direction).reshape(3, 3)
        return Affine(d @ np.diag(self.spacing), np.array(self.origin))

    def physical_points(self, lo: npt.NDArray[np.int64], hi: npt.NDArray[np.int64]) -> FloatArray:
        """Physical points of the index box ``lo <= (i, j, k) < hi`` as ``(nk, nj, ni, 3)``."""
        k, j, i = np.meshgrid(np.arange(lo[2], hi[2]), np.arange(lo[1], hi[1]), np.arange(lo[0], hi[0]), indexing="ij")
        idx = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
        pts = self.index_to_physical().apply(idx)
        return pts.reshape(*k.shape, 3)

    def box_around(self, points: FloatArray, margin_mm: float) -> tuple[npt.NDArray[np.int64], ...] | None:
        """Index box (lo, hi) covering ``points`` ± margin, clipped; ``None`` when outside the grid."""
        corners = (
            np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float) * margin_mm
        )
        allpts = (points[:, None, :] + corners[None, :, :]).reshape(-1, 3)
        idx = self.index_to_physical().inverse().apply(allpts)
        lo = np.maximum(np.floor(idx.min(axis=0)).astype(np.int64), 0)
        hi = np.minimum(np.ceil(idx.max(axis=0)).astype(np.int64) + 1, np.array(self.size))
        if np.any(hi <= lo):
            return None
        return lo, hi

    def contains(self, point: FloatArray, margin_mm: float = 0.0) -> bool:
        """Whether ``point`` lies inside the grid's extent, at least ``margin_mm`` from its faces."""
        idx = self.index_to_physical().inverse().apply(np.asarray(point, dtype=float)[None, :])[0]
        m = margin_mm / np.array(self.spacing)
        return bool(np.all(idx >= -0.5 + m) and np.all(idx <= np.array(self.size) - 0.5 - m))


@dataclass(frozen=True, eq=False)
class Template:
    """Tissue fractions in template (MNI, LPS) space, plus helpers for lesion placement."""

    fractions: sitk.Image  # float32 vector image, components ``COMPONENTS[:n]`` (gm, wm, csf[, bone, fat])
    parenchyma_distance: sitk.Image  # mm to the nearest non-parenchyma voxel (float32)
    pons_roi: sitk.Image  # uint8, the docs/method.md §6 cylinder


def _template_path(kind: str) -> str:
    return str(importlib.resources.files("nilearn") / TEMPLATE_DIR / TEMPLATE_NAME.format(kind))


def _template_points(img: sitk.Image) -> tuple[FloatArray, FloatArray, FloatArray]:
    nx, ny, nz = img.GetSize()
    ox, oy, oz = img.GetOrigin()
    d = np.array(img.GetDirection()).reshape(3, 3)
    if not np.allclose(np.abs(d), np.eye(3)):
        raise RuntimeError("the MNI template is expected to be axis-aligned")
    sx, sy, sz = (d.diagonal() * np.array(img.GetSpacing())).tolist()
    z = (oz + sz * np.arange(nz))[:, None, None]
    y = (oy + sy * np.arange(ny))[None, :, None]
    x = (ox + sx * np.arange(nx))[None, None, :]
    return x, y, z


def _band(distance: F32Array, lo: float, hi: float) -> F32Array:
    """1 inside ``lo < d <= hi`` with 1 mm linear edges."""
    band: F32Array = np.clip(np.minimum(distance - lo + 0.5, hi - distance + 0.5), 0.0, 1.0).astype(np.float32)
    return band


def load_template(head: bool = False) -> Template:
    """Read and prepare the bundled MNI152 2009a maps (cached for the process).

    ``head`` adds extra-cerebral layers outside the (skull-stripped) template brain: 1.5 mm CSF, 4.5 mm
    skull and 5 mm scalp fat, as components ``bone`` and ``fat``.
    """
    return _load_template(bool(head))


@functools.lru_cache(maxsize=2)
def _load_template(head: bool) -> Template:
    t1 = sitk.ReadImage(_template_path("t1"), sitk.sitkFloat32)
    gm = sitk.GetArrayFromImage(sitk.ReadImage(_template_path("gm"), sitk.sitkFloat32)) / 255.0
    wm = sitk.GetArrayFromImage(sitk.ReadImage(_template_path("wm"), sitk.sitkFloat32)) / 255.0
    brain = (sitk.GetArrayFromImage(t1) > 0).astype(np.float32)
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    csf = np.clip(brain - gm - wm, 0.0, 1.0)

    x, y, z = _template_points(t1)
    r2 = (x - PONS_CENTER_LPS[0]) ** 2 + (y - PONS_CENTER_LPS[1]) ** 2
    pons_roi = (r2 <= PONS_RADIUS_MM**2) & (z >= PONS_Z_RANGE_MM[0]) & (z <= PONS_Z_RANGE_MM[1])
    # smooth WM override: an ellipsoid (11 × 11 × 12 mm semi-axes) around the ROI, edge falling over 25 %
    ell = np.sqrt(r2 / PONS_TISSUE_RADII_MM[0] ** 2 + (z - PONS_TISSUE_Z_MM) ** 2 / PONS_TISSUE_RADII_MM[1] ** 2)
    shape = np.clip((1.25 - ell) / 0.25, 0.0, 1.0)
    tissue = np.clip((gm + wm - 0.3) / 0.4, 0.0, 1.0)  # only where the template has brain tissue
    w = (shape * tissue * brain).astype(np.float32)
    gm = gm * (1 - w)
    csf = csf * (1 - w)
    wm = wm * (1 - w) + w

    def as_image(a: npt.NDArray[np.generic], pixel: int) -> sitk.Image:
        img = sitk.GetImageFromArray(a)
        img.CopyInformation(t1)
        cast: sitk.Image = sitk.Cast(img, pixel)
        return cast

    layers = [gm, wm, csf]
    if head:
        outside = sitk.GetArrayFromImage(
            sitk.SignedMaurerDistanceMap(
                as_image(brain.astype(np.uint8), sitk.sitkUInt8),
                insideIsPositive=False,
                squaredDistance=False,
                useImageSpacing=True,
            )
        ).astype(np.float32)
        outer = outside > 0
        csf = np.where(outer, _band(outside, *HEAD_LAYERS_MM["csf"]), csf).astype(np.float32)
        layers = [
            gm,
            wm,
            csf,
            _band(outside, *HEAD_LAYERS_MM["bone"]) * outer,
            _band(outside, *HEAD_LAYERS_MM["fat"]) * outer,
        ]
    fractions = sitk.Compose([as_image(a.astype(np.float32), sitk.sitkFloat32) for a in layers])
    fractions.CopyInformation(t1)
    parenchyma = as_image(((gm + wm) > 0.5).astype(np.uint8), sitk.sitkUInt8)
    distance = sitk.SignedMaurerDistanceMap(
        parenchyma, insideIsPositive=True, squaredDistance=False, useImageSpacing=True
    )
    logger.debug("MNI template loaded: %s voxels, pons ROI %d voxels", t1.GetSize(), int(pons_roi.sum()))
    return Template(
        fractions=fractions,
        parenchyma_distance=sitk.Cast(distance, sitk.sitkFloat32),
        pons_roi=as_image(pons_roi.astype(np.uint8), sitk.sitkUInt8),
    )


def rotation_matrix(ax: float, ay: float, az: float) -> FloatArray:
    """ITK Euler3D convention (ZXY): ``R = Rz @ Rx @ Ry`` with angles in radians."""
    tx = sitk.Euler3DTransform((0.0, 0.0, 0.0), ax, ay, az, (0.0, 0.0, 0.0))
    return np.array(tx.GetMatrix()).reshape(3, 3)


def random_subject_affine(rng: np.random.Generator) -> Affine:
    """Subject → template map: the inverse of rotating (≤ 8°), scaling (0.92–1.08) and moving (≤ 10 mm)."""
    angles = np.deg2rad(rng.uniform(-8.0, 8.0, size=3))
    scale = rng.uniform(0.92, 1.08, size=3)
    shift = rng.uniform(-1.0, 1.0, size=3)
    shift *= rng.uniform(0.0, 10.0) / max(float(np.linalg.norm(shift)), 1e-9)
    c = BRAIN_CENTER_LPS
    forward_m = rotation_matrix(*angles) @ np.diag(scale)  # template -> subject
    forward = Affine(forward_m, c + shift - forward_m @ c)
    return forward.inverse()


def random_rigid_motion(rng: np.random.Generator, centre: FloatArray) -> sitk.Euler3DTransform:
    """T1CE → T2 scan-space rigid motion: total rotation 2–5°, shift 2–6 mm, about ``centre``."""
    axis_angles = rng.normal(size=3)
    axis_angles *= np.deg2rad(rng.uniform(2.0, 5.0)) / np.linalg.norm(axis_angles)
    shift = rng.normal(size=3)
    shift *= rng.uniform(2.0, 6.0) / np.linalg.norm(shift)
    tx = sitk.Euler3DTransform([float(v) for v in centre], *(float(a) for a in axis_angles), [float(v) for v in shift])
    return tx


def resample_fractions(template: Template, grid: Grid, grid_to_template: Affine) -> F32Array:
    """Tissue fractions on ``grid`` as ``(nz, ny, nx, n)`` (gm, wm, csf[, bone, fat]), linear interpolation."""
    out = sitk.Resample(
        template.fractions,
        grid.reference(),
        grid_to_template.to_sitk(),
        sitk.sitkLinear,
        0.0,
        sitk.sitkVectorFloat32,
    )
    arr: F32Array = sitk.GetArrayFromImage(out).astype(np.float32)
    return arr


def resample_pons_roi(template: Template, grid: Grid, grid_to_template: Affine) -> npt.NDArray[np.uint8]:
    """The template pons ROI on ``grid`` (nearest neighbour), ``(nz, ny, nx)``."""
    out = sitk.Resample(
        template.pons_roi,
        grid.reference(sitk.sitkUInt8),
        grid_to_template.to_sitk(),
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt8,
    )
    return sitk.GetArrayFromImage(out).astype(np.uint8)


def contrast(fractions: F32Array, tissue: dict[str, float]) -> F32Array:
    """Mix tissue values by fraction (components in ``COMPONENTS`` order)."""
    mixed: F32Array = np.zeros(fractions.shape[:-1], dtype=np.float32)
    for c, name in enumerate(COMPONENTS[: fractions.shape[-1]]):
        mixed += np.float32(tissue[name]) * fractions[..., c]
    return mixed


def jittered_tissue(base: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    return {k: v * float(rng.uniform(0.96, 1.04)) for k, v in base.items()}


def bias_field(grid: Grid, strength: float, rng: np.random.Generator) -> F32Array:
    """exp(strength × random quadratic in scanner coordinates / 100 mm), ``(nz, ny, nx)``."""
    nx, ny, nz = grid.size
    d = np.array(grid.direction).reshape(3, 3)
    centre = np.array(grid.origin) + d @ ((np.array(grid.size) - 1) * np.array(grid.spacing) / 2.0)
    i = np.arange(nx, dtype=np.float32)[None, None, :]
    j = np.arange(ny, dtype=np.float32)[None, :, None]
    k = np.arange(nz, dtype=np.float32)[:, None, None]
    o = (np.array(grid.origin) - centre) / 100.0
    m = d @ np.diag(grid.spacing) / 100.0
    coords = [
        np.float32(o[a]) + np.float32(m[a, 0]) * i + np.float32(m[a, 1]) * j + np.float32(m[a, 2]) * k for a in range(3)
    ]
    lin = rng.normal(0.0, 0.6, size=3)
    quad = rng.normal(0.0, 0.4, size=6)
    x, y, z = coords
    field = (
        lin[0] * x
        + lin[1] * y
        + lin[2] * z
        + quad[0] * x * x
        + quad[1] * y * y
        + quad[2] * z * z
        + quad[3] * x * y
        + quad[4] * y * z
        + quad[5] * x * z
    )
    result: F32Array = np.exp(np.float32(strength) * field).astype(np.float32)
    return result


def add_rician_noise(image: F32Array, sigma: float, rng: np.random.Generator) -> F32Array:
    """Magnitude of (signal + complex Gaussian noise)."""
    real = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    imag = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    result: F32Array = np.sqrt(real * real + imag * imag).astype(np.float32)
    return result
