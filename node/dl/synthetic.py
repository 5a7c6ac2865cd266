"""Synthetic lesion crops with a planted image signal, consistent with the labels of
:func:`node.training.synthetic.write_tables` (for tests, benchmarks and the demonstration deep model).

Per lesion (``labels.csv`` row) one :data:`~node.imaging.crops.CROP_SIZE`\\ :sup:`3` crop in the dataset format of
:mod:`node.imaging.crops` is drawn: smooth background texture and noise, an ellipsoidal lesion of random size and
orientation, and three **planted** signals, each scaled by ``signal`` (0 = none: the leakage check):

* **ER** — texture: fine-grained (voxel-scale) enhancement heterogeneity inside an ER-positive lesion, smooth
  enhancement inside an ER-negative one;
* **PR** — rim enhancement: a PR-positive lesion has a bright 2-voxel rim around a darker core;
* **HER2** — shape and oedema: a HER2-positive lesion is elongated (axes 1.7 : 0.75 : 0.75) with a broad
  bright T2 oedema rim (out to 2.2 lesion radii), a HER2-negative one round with a thin rim (1.3 radii);
  and, weakly, location: HER2-positive lesions lie in the cerebellum with probability 0.45 (others 0.10).

These are planted for demonstration and testing; they are not claims about real metastases.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.ndimage import gaussian_filter

from node.imaging.crops import CROP_SIZE, F32, LesionCrop, write_crop
from node.vocabulary import BrainRegion, Hemisphere

logger = logging.getLogger(__name__)

OTHER_REGIONS = tuple(r for r in BrainRegion if r is not BrainRegion.CEREBELLUM)


def _rotation(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return np.asarray(q * np.sign(np.diag(r)), dtype=np.float64)




def synthetic_crop(er: int, pr: int, her2: int, rng: np.random.Generator, *, signal: float = 1.0,
                   size: int = CROP_SIZE) -> F32:
    """One ``(3, size, size, size)`` crop with the planted ER / PR / HER2 signals (module docstring)."""
    grid = np.stack(np.meshgrid(*(np.arange(size) - (size - 1) / 2.0,) * 3, indexing="ij"), axis=-1)
    grid = grid + rng.normal(scale=1.0, size=3)
    radius = rng.uniform(4.5, 7.0)
    elong = 1.0 + signal * 0.7 * her2
    squash = 1.0 - signal * 0.25 * her2
    axes = radius * np.array([elong, squash, squash]) * rng.uniform(0.9, 1.1, size=3)
    local = grid @ _rotation(rng)
    dist = np.sqrt(np.sum((local / axes) ** 2, axis=-1))  # 1.0 on the lesion surface
    mask = dist <= 1.0
    rim = mask & (dist > 1.0 - 2.0 / radius)
    background = gaussian_filter(rng.normal(size=(size,) * 3), 2.0) * 2.0
    fine = rng.normal(size=(size,) * 3)
    smooth = gaussian_filter(rng.normal(size=(size,) * 3), 1.5) * 2.0
    texture = signal * er * 0.9 * fine + (1.0 - signal * er) * 0.6 * smooth
    t1 = background + 0.25 * rng.normal(size=(size,) * 3)
    t1[mask] += 1.8 + texture[mask]
    t1[rim] += signal * 1.4 * pr
    t1[mask & ~rim] -= signal * 0.7 * pr
    edema = (dist > 1.0) & (dist <= 1.3 + signal * 0.9 * her2)
    t2 = gaussian_filter(rng.normal(size=(size,) * 3), 2.0) * 2.0 + 0.25 * rng.normal(size=(size,) * 3)
    t2[edema] += 0.8
    t2[mask] += 1.2
    return np.stack([t1, t2, mask.astype(np.float64)]).astype(np.float32)


def synthetic_site(her2: int, rng: np.random.Generator, signal: float = 1.0) -> tuple[str, str]:
    p_cerebellum = 0.10 + signal * 0.35 * her2
    region = BrainRegion.CEREBELLUM if rng.random() < p_cerebellum else OTHER_REGIONS[rng.integers(len(OTHER_REGIONS))]
    hemisphere = (Hemisphere.LEFT, Hemisphere.RIGHT, Hemisphere.MIDLINE)[int(rng.choice(3, p=[0.45, 0.45, 0.1]))]
    return region.value, hemisphere.value


def write_crops(labels_csv: Path, crops_dir: Path, *, seed: int = 0, signal: float = 1.0,
                size: int = CROP_SIZE) -> int:
    """One crop per row of ``labels_csv`` (``patient``, ``lesion``, ``er``, ``pr``, ``her2``) into ``crops_dir``;
    deterministic in ``seed``. Returns the number written."""
    labels = pd.read_csv(labels_csv, dtype={"patient": str})
    rng = np.random.default_rng(seed)
    for _, row in labels.iterrows():
        er, pr, her2 = (int(row[k]) for k in ("er", "pr", "her2"))
        image = synthetic_crop(er, pr, her2, rng, signal=signal, size=size)
        region, hemisphere = synthetic_site(her2, rng, signal)
        write_crop(crops_dir, str(row["patient"]), int(row["lesion"]), LesionCrop(image, region, hemisphere))
    logger.info("wrote %d synthetic crops to %s", len(labels), crops_dir)
    return len(labels)
