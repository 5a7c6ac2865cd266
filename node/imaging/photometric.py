"""MONOCHROME1 images (higher stored value = darker, common in some exports) mapped to MONOCHROME2 before use.

The inversion works on stored values with a fixed, per-instance mapping that depends only on the pixel format,
never on the image content, so every slice of a series is mapped alike: unsigned ``s -> 2**BitsStored - 1 - s``,
signed (two's complement) ``s -> -1 - s``. The modality rescale (slope / intercept) is applied afterwards, as
for any other image, so the result has "higher = brighter" like MONOCHROME2. Only MONOCHROME1 / MONOCHROME2 grey
images are MR intensity images; anything else raises :class:`~node.errors.UnsupportedInstanceError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from node.errors import UnsupportedInstanceError

GREY = ("MONOCHROME1", "MONOCHROME2")


def photometric(ds: Dataset) -> str:
    """The instance's PhotometricInterpretation (MONOCHROME2 when absent)."""
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()


def to_monochrome2(ds: Dataset, stored: npt.NDArray[np.generic], path: Path) -> npt.NDArray[np.float64]:
    """``stored`` (any shape) as float64 stored values with "higher = brighter"; MONOCHROME1 is inverted."""
    kind = photometric(ds)
    if kind not in GREY:
        raise UnsupportedInstanceError(f"{path}: PhotometricInterpretation {kind} is not a grey-scale MR image")
    values = stored.astype(np.float64)
    if kind == "MONOCHROME2":
        return values
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -1.0 - values
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    return float((1 << bits) - 1) - values
