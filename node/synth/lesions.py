# mypy: disable-error-code="no-untyped-call"
"""Synthetic brain metastases: shape, placement and the subtype-dependent appearance model.

**Shape.** A lesion is a star-shaped blob in subject (T1CE) space: the normalised radius of a point ``p`` is
``rho(p) = |p − c| / (R · (1 + Σ_j a_j cos(ω_j · u + φ_j)))`` with ``u`` the unit direction from the centre, six
random harmonics (``a_j`` ~ 0.05–0.09, ``|ω_j|`` 2–4): an irregular outline. ``rho < 1`` is the lesion (the
segmented gross tumour: enhancing rim + necrotic core); ``rho < necrosis_fraction`` is the core; ``1 ≤ rho <
1 + oedema_extent`` is perilesional oedema (weighted towards white matter). Diameters 2R are 8–35 mm
(log-uniform). A texture field ``τ(p)`` (sum of 12 random plane waves, wavelengths 3–9 mm, unit SD) is a
function of position, so T1CE and T2 see the same tumour texture.

**Hidden subtype effect.** Each parameter is ``base + effect · Δ[subtype] + SD · z`` (``z`` ~ N(0, 1) per lesion,
drawn in a fixed order whatever the subtype, so ``effect = 0`` gives identical lesions for every subtype),
then clipped. ``effect`` is the CLI's ``--effect`` (default 1.0).

======================  ======  ==========  ==========  ==========  =====  =====  ============
parameter               base    HR+/HER2−   HR+/HER2+   HR−/HER2+   TN     SD     clip
======================  ======  ==========  ==========  ==========  =====  =====  ============
necrosis_fraction       0.35    −0.10       −0.05       0.00        +0.20  0.08   0 … 0.85
rim_enhancement         1.60    −0.15       +0.15       +0.25       0.00   0.10   1.1 … 2.6
heterogeneity           0.10    −0.03       0.00        −0.02       +0.08  0.02   0 … 0.4
oedema_extent           0.80    −0.30       0.00        +0.20       +0.50  0.15   0.1 … 2.5
oedema_t2               0.70    −0.08       0.00        +0.04       +0.08  0.05   0.4 … 0.95
======================  ======  ==========  ==========  ==========  =====  =====  ============

Units: ``necrosis_fraction`` and ``oedema_extent`` are fractions of the lesion radius; ``rim_enhancement`` is the
rim's T1CE signal relative to normal WM (= 1); ``heterogeneity`` is the relative SD of the rim/core signal
(``× (1 + heterogeneity · τ)``, on both contrasts); ``oedema_t2`` is the T2 signal of fully oedematous tissue
(CSF = 1). Fixed values: necrotic core T1CE 0.30 / T2 0.90, enhancing rim T2 0.55, oedema darkens T1CE by
up to 12 %. Oedema weight = ``((1 + e − rho) / e)^0.7 · (0.35 + 0.65 · WM fraction)`` for ``rho ≥ 1``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from node.errors import ProcessingError
from node.synth.anatomy import Affine, F32Array, FloatArray, Template
from node.vocabulary import Subtype

logger = logging.getLogger(__name__)

PARAMETERS = ("necrosis_fraction", "rim_enhancement", "heterogeneity", "oedema_extent", "oedema_t2")
BASE: dict[str, float] = {
    "necrosis_fraction": 0.35,
    "rim_enhancement": 1.60,
    "heterogeneity": 0.10,
    "oedema_extent": 0.80,
    "oedema_t2": 0.70,
}
EFFECT: dict[Subtype, dict[str, float]] = {
    Subtype.HR_POS_HER2_NEG: {
        "necrosis_fraction": -0.10,
        "rim_enhancement": -0.15,
        "heterogeneity": -0.03,
        "oedema_extent": -0.30,
        "oedema_t2": -0.08,
    },
    Subtype.HR_POS_HER2_POS: {
        "necrosis_fraction": -0.05,
        "rim_enhancement": 0.15,
        "heterogeneity": 0.0,
        "oedema_extent": 0.0,
        "oedema_t2": 0.0,
    },
    Subtype.HR_NEG_HER2_POS: {
        "necrosis_fraction": 0.0,
        "rim_enhancement": 0.25,
        "heterogeneity": -0.02,
        "oedema_extent": 0.20,
        "oedema_t2": 0.04,
    },
    Subtype.TN: {
        "necrosis_fraction": 0.20,
        "rim_enhancement": 0.0,
        "heterogeneity": 0.08,
        "oedema_extent": 0.50,
        "oedema_t2": 0.08,
    },
}
SD: dict[str, float] = {
    "necrosis_fraction": 0.08,
    "rim_enhancement": 0.10,
    "heterogeneity": 0.02,
    "oedema_extent": 0.15,
    "oedema_t2": 0.05,
}
CLIP: dict[str, tuple[float, float]] = {
    "necrosis_fraction": (0.0, 0.85),
    "rim_enhancement": (1.1, 2.6),
    "heterogeneity": (0.0, 0.4),
    "oedema_extent": (0.1, 2.5),
    "oedema_t2": (0.4, 0.95),
}
CORE_T1, CORE_T2, RIM_T2, OEDEMA_T1_DARKENING = 0.30, 0.90, 0.55, 0.12
DIAMETER_RANGE_MM = (8.0, 35.0)
EDGE_WIDTH = 0.06  # soft edge, in units of rho


@dataclass(frozen=True)
class LesionAppearance:
    """Per-lesion appearance parameters (see the module table)."""

    necrosis_fraction: float
    rim_enhancement: float
    heterogeneity: float
    oedema_extent: float
    oedema_t2: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def sample_appearance(subtype: Subtype, effect: float, rng: np.random.Generator) -> LesionAppearance:
    """``base + effect · Δ[subtype] + SD · z``, clipped; always draws ``len(PARAMETERS)`` normals."""
    z = rng.standard_normal(len(PARAMETERS))
    values = {}
    for p, zp in zip(PARAMETERS, z, strict=True):
        lo, hi = CLIP[p]
        values[p] = float(np.clip(BASE[p] + effect * EFFECT[subtype][p] + SD[p] * zp, lo, hi))
    return LesionAppearance(**values)


@dataclass(frozen=True)
class LesionShape:
    """Geometry and texture of one lesion, in subject (T1CE) LPS space."""

    centre: FloatArray
    radius_mm: float
    harmonic_vectors: FloatArray  # (6, 3)
    harmonic_amplitudes: FloatArray  # (6,)
    harmonic_phases: FloatArray  # (6,)
    wave_vectors: FloatArray  # (12, 3), rad/mm
    wave_phases: FloatArray  # (12,)

    def rho(self, points: FloatArray) -> FloatArray:
        """Normalised radius at ``points`` (``(..., 3)``)."""
        d = points - self.centre
        r = np.linalg.norm(d, axis=-1)
        u = d / np.maximum(r, 1e-6)[..., None]
        modulation = 1.0 + np.cos(u @ self.harmonic_vectors.T + self.harmonic_phases) @ self.harmonic_amplitudes
        result: FloatArray = r / (self.radius_mm * modulation)
        return result

    def texture(self, points: FloatArray) -> FloatArray:
        """Unit-SD smooth texture field at ``points``."""
        waves = np.cos(points @ self.wave_vectors.T + self.wave_phases)
        result: FloatArray = waves.sum(axis=-1) * np.sqrt(2.0 / len(self.wave_phases))
        return result

    @property
    def max_extent_mm(self) -> float:
        """An upper bound of the lesion's radius in any direction."""
        return self.radius_mm * (1.0 + float(np.abs(self.harmonic_amplitudes).sum()))


def sample_shape(centre: FloatArray, radius_mm: float, rng: np.random.Generator) -> LesionShape:
    """Random irregular outline and texture around ``centre``."""
    hv = rng.normal(size=(6, 3))
    hv *= (rng.uniform(2.0, 4.0, size=6) / np.linalg.norm(hv, axis=1))[:, None]
    amps = rng.uniform(0.05, 0.09, size=6) / 2.0
    phases = rng.uniform(0, 2 * np.pi, size=6)
    wv = rng.normal(size=(12, 3))
    wv *= (2 * np.pi / rng.uniform(3.0, 9.0, size=12) / np.linalg.norm(wv, axis=1))[:, None]
    wp = rng.uniform(0, 2 * np.pi, size=12)
    return LesionShape(np.asarray(centre, dtype=float), float(radius_mm), hv, amps, phases, wv, wp)


def sample_radius(rng: np.random.Generator) -> float:
    lo, hi = np.log(DIAMETER_RANGE_MM[0]), np.log(DIAMETER_RANGE_MM[1])
    return float(np.exp(rng.uniform(lo, hi))) / 2.0


def _step(x: FloatArray) -> FloatArray:
    result: FloatArray = np.clip(0.5 + x / EDGE_WIDTH, 0.0, 1.0)
    return result


def oedema_weight(rho: FloatArray, wm: FloatArray, extent: float, parenchyma: FloatArray | None = None) -> FloatArray:
    """Oedema fraction around the lesion (the lesion overwrites it inside): white-matter weighted, and absent
    where there is no brain parenchyma (CSF, outside the brain). ``parenchyma`` = GM + WM fraction (1 if None)."""
    base = np.clip((1.0 + extent - rho) / extent, 0.0, 1.0) ** 0.7
    tissue = 1.0 if parenchyma is None else np.clip(parenchyma, 0.0, 1.0)
    result: FloatArray = np.where(rho >= 1.0, base, 1.0) * (0.35 * tissue + 0.65 * np.clip(wm, 0.0, 1.0))
    return result


def lesion_appearance(
    t1: FloatArray,
    t2: FloatArray,
    rho: FloatArray,
    wm: FloatArray,
    texture: FloatArray,
    app: LesionAppearance,
    parenchyma: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """T1CE and T2 signal (noise-free) after adding one lesion to the tissue signals ``t1``/``t2``."""
    oed = oedema_weight(rho, wm, app.oedema_extent, parenchyma)
    t1_bg = t1 * (1.0 - OEDEMA_T1_DARKENING * oed)
    t2_bg = t2 * (1.0 - oed) + app.oedema_t2 * oed
    modulation = 1.0 + app.heterogeneity * texture
    core_w = _step(app.necrosis_fraction - rho) if app.necrosis_fraction > 0 else np.zeros_like(rho)
    t1_lesion = (core_w * CORE_T1 + (1 - core_w) * app.rim_enhancement) * modulation
    t2_lesion = (core_w * CORE_T2 + (1 - core_w) * RIM_T2) * modulation
    inside = _step(1.0 - rho)
    return inside * t1_lesion + (1 - inside) * t1_bg, inside * t2_lesion + (1 - inside) * t2_bg


@dataclass(frozen=True)
class Lesion:
    """One lesion: where it is, what it looks like, and its subtype."""

    number: int
    shape: LesionShape
    appearance: LesionAppearance
    subtype: Subtype

    @property
    def influence_mm(self) -> float:
        """Radius beyond which the lesion (oedema included) does not change the image."""
        return self.shape.max_extent_mm * (1.0 + self.appearance.oedema_extent) + 1.0


def paint(
    t1: F32Array | None,
    t2: F32Array | None,
    fractions: F32Array,
    grid_points: Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], FloatArray],
    box: tuple[npt.NDArray[np.int64], ...],
    lesion: Lesion,
) -> None:
    """Add ``lesion`` in place to the ``(nz, ny, nx)`` arrays inside the index ``box`` (lo, hi in x, y, z).

    ``fractions`` are the grid's tissue fractions ``(nz, ny, nx, 3)`` = (GM, WM, CSF).

    ``grid_points(lo, hi)`` gives the *subject-space* points of the box as ``(nk, nj, ni, 3)``.
    """
    lo, hi = box
    sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    pts = grid_points(lo, hi)
    rho = lesion.shape.rho(pts)
    tex = lesion.shape.texture(pts)
    zeros = np.zeros(rho.shape)
    new_t1, new_t2 = lesion_appearance(
        zeros if t1 is None else t1[sl].astype(float),
        zeros if t2 is None else t2[sl].astype(float),
        rho,
        fractions[sl][..., 1].astype(float),
        tex,
        lesion.appearance,
        fractions[sl][..., :2].sum(axis=-1).astype(float),
    )
    if t1 is not None:
        t1[sl] = new_t1
    if t2 is not None:
        t2[sl] = new_t2


def lesion_mask(
    size: tuple[int, int, int],
    grid_points: Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], FloatArray],
    box: tuple[npt.NDArray[np.int64], ...],
    lesion: Lesion,
) -> npt.NDArray[np.uint8]:
    """Binary ``rho < 1`` mask ``(nz, ny, nx)`` of the grid of ``size`` (x, y, z)."""
    mask = np.zeros(size[::-1], dtype=np.uint8)
    lo, hi = box
    rho = lesion.shape.rho(grid_points(lo, hi))
    mask[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] = (rho < 1.0).astype(np.uint8)
    return mask


@functools.lru_cache(maxsize=2)
def _candidate_voxels(template: Template) -> FloatArray:
    """Template LPS points deep enough in parenchyma (≥ 3 mm) and far from the brainstem."""
    dist = sitk.GetArrayFromImage(template.parenchyma_distance)
    idx = np.argwhere(dist >= 3.0)[:, ::-1].astype(float)  # (i, j, k)
    origin = np.array(template.parenchyma_distance.GetOrigin())
    d = np.array(template.parenchyma_distance.GetDirection()).reshape(3, 3)
    spacing = np.array(template.parenchyma_distance.GetSpacing())
    pts = idx @ (d @ np.diag(spacing)).T + origin
    # keep the brainstem and the pons reference region free: nothing within 25 mm of the pons axis
    # below z = 0 mm (MNI)
    near_stem = (np.hypot(pts[:, 0], pts[:, 1] - 25.0) < 25.0) & (pts[:, 2] < 0.0)
    result: FloatArray = pts[~near_stem]
    return result


def place_lesions(
    subtype: Subtype,
    n: int,
    effect: float,
    rng: np.random.Generator,
    template: Template,
    subject_to_template: Affine,
    pons_centre_subject: FloatArray,
    fits: Callable[[FloatArray, float], bool],
) -> list[Lesion]:
    """``n`` non-overlapping lesions in parenchyma, away from the pons; ``fits(centre, extent)`` checks FOVs."""
    candidates = _candidate_voxels(template)
    dist_img = template.parenchyma_distance
    to_subject = subject_to_template.inverse()
    lesions: list[Lesion] = []
    attempts = 0
    radius = sample_radius(rng)
    while len(lesions) < n:
        attempts += 1
        if attempts > 2000:
            raise ProcessingError(
                f"could not place {n} non-overlapping synthetic lesions in the field of view (placed {len(lesions)})"
            )
        if attempts % 60 == 0:
            radius = max(radius * 0.8, DIAMETER_RANGE_MM[0] / 2.0)
        point_t = candidates[int(rng.integers(len(candidates)))] + rng.uniform(-0.5, 0.5, size=3)
        depth = dist_img.EvaluateAtPhysicalPoint([float(v) for v in point_t], sitk.sitkLinear)
        if depth < max(3.0, 0.5 * radius):
            continue
        centre = to_subject.apply(point_t[None, :])[0]
        appearance = sample_appearance(subtype, effect, rng)
        shape = sample_shape(centre, radius, rng)
        lesion = Lesion(len(lesions) + 1, shape, appearance, subtype)
        if np.linalg.norm(centre - pons_centre_subject) < lesion.influence_mm + 12.0:
            continue
        if any(
            np.linalg.norm(centre - other.shape.centre) < 1.3 * (shape.max_extent_mm + other.shape.max_extent_mm) + 4.0
            for other in lesions
        ):
            continue
        if not fits(centre, lesion.influence_mm):
            continue
        lesions.append(lesion)
        radius = sample_radius(rng)
    logger.debug("placed %d lesion(s) after %d attempts", n, attempts)
    return lesions
