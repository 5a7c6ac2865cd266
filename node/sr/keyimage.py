"""The QC key image's value object (issue 11, item 2): one axial T1CE slice through a lesion or through the
intensity reference, with the regions whose outlines are drawn on it (:mod:`node.sr.qcpage` renders it).

A plain value object of 2-D arrays: ``node/sr`` does not import the imaging room, so the job builds it from the
pipeline's key slices (:func:`node.jobs.steps.qc_views`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ROLES = ("lesion", "other lesion", "reference", "rejected reference")


@dataclass(frozen=True)
class QcView:
    """One axial T1CE slice and the regions outlined on it.

    ``image`` rows run anterior -> posterior and columns patient right -> patient left; ``regions`` are filled
    2-D masks of ``image``'s shape by role (:data:`ROLES`), their borders are what is drawn (:attr:`outlines`).
    """

    title: str
    image: npt.NDArray[np.float32]
    regions: tuple[tuple[str, npt.NDArray[np.bool_]], ...]
    pixel_spacing_mm: tuple[float, float]  # (row, column)
    window: tuple[float, float]
    kind: str = "lesion"  # "lesion" | "reference"
    slice_index: int = 0
    slice_position_mm: float = 0.0
    failed: bool = False
    segment_number: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or min(self.image.shape) < 2:
            raise ValueError(f"a QC view needs a 2-D image, got shape {self.image.shape}")
        for role, mask in self.regions:
            if role not in ROLES:
                raise ValueError(f"unknown QC region role {role!r}; expected one of {ROLES}")
            if mask.shape != self.image.shape or mask.dtype != np.bool_:
                raise ValueError(f"the {role} mask must be boolean with the image's shape {self.image.shape}")
        if self.kind not in ("lesion", "reference"):
            raise ValueError(f"unknown QC view kind {self.kind!r}")
        if not all(s > 0 and math.isfinite(s) for s in self.pixel_spacing_mm):
            raise ValueError("pixel spacing must be positive")
        if not (math.isfinite(self.window[0]) and math.isfinite(self.window[1]) and self.window[1] > self.window[0]):
            raise ValueError(f"invalid display window {self.window}")

    @property
    def outlines(self) -> tuple[tuple[str, npt.NDArray[np.bool_]], ...]:
        """The border pixels of each region (inside the region, 4-neighbour of a pixel outside it)."""
        return tuple((role, outline(mask)) for role, mask in self.regions)


def outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Pixels of ``mask`` with at least one 4-neighbour outside it (the image edge counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior
