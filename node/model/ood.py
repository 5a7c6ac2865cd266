"""Out-of-distribution check of one lesion against the training feature distribution.

Stored per model input: the training minimum, maximum, 1st and 99th percentiles. A lesion is flagged when a
feature the model *uses* lies outside the training range widened by ``margin`` × range on each side, or when
more than ``max_fraction`` of all radiomic inputs do (a global shift such as another scanner or protocol).
The flag does not block the prediction; it travels with it, with the reasons, for the reader to weigh.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrainingDistribution:
    names: tuple[str, ...]
    minimum: FloatArray
    maximum: FloatArray
    p01: FloatArray
    p99: FloatArray
    margin: float = 0.1
    max_fraction: float = 0.1

    def check(
        self, x: FloatArray, used: Sequence[int], population: Sequence[int] | None = None
    ) -> tuple[bool, tuple[str, ...]]:
        """(flag, reasons) for one row ``x`` of model inputs.

        ``used``: indices the model reads (each one outside its range is a reason); ``population``: indices
        over which the fraction of out-of-range inputs is counted (default: all).
        """
        span = self.maximum - self.minimum
        low, high = self.minimum - self.margin * span, self.maximum + self.margin * span
        outside = (x < low) | (x > high)
        reasons = [
            f"{self.names[i]} = {x[i]:.6g} is outside the training range [{self.minimum[i]:.6g}, {self.maximum[i]:.6g}]"
            for i in used
            if outside[i]
        ]
        pool = outside if population is None else outside[list(population)]
        fraction = float(pool.mean()) if pool.size else 0.0
        if fraction > self.max_fraction:
            reasons.append(
                f"{int(pool.sum())} of {pool.size} radiomic inputs ({100 * fraction:.0f} %) lie outside their "
                "training range (scanner, protocol or extraction differences?)"
            )
        return bool(reasons), tuple(reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "minimum": self.minimum.tolist(),
            "maximum": self.maximum.tolist(),
            "p01": self.p01.tolist(),
            "p99": self.p99.tolist(),
            "margin": self.margin,
            "max_fraction": self.max_fraction,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingDistribution:
        lo, hi, p01, p99 = (np.asarray(data[k], dtype=np.float64) for k in ("minimum", "maximum", "p01", "p99"))
        names = tuple(str(n) for n in data["names"])
        if any(a.shape != (len(names),) for a in (lo, hi, p01, p99)):
            raise ValueError("training distribution arrays do not match its feature names")
        return cls(names, lo, hi, p01, p99, margin=float(data["margin"]), max_fraction=float(data["max_fraction"]))


def fit_distribution(x: FloatArray, names: Sequence[str]) -> TrainingDistribution:
    """Summarise the training inputs (columns of ``x``)."""
    return TrainingDistribution(
        names=tuple(names),
        minimum=np.min(x, axis=0),
        maximum=np.max(x, axis=0),
        p01=np.percentile(x, 1, axis=0),
        p99=np.percentile(x, 99, axis=0),
    )
