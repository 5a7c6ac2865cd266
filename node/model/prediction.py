"""The per-lesion prediction value object a bundle returns.

A :class:`Prediction` holds the class probabilities (in the bundle's class order), the arg-max label, the
SHAP contributions of the model's inputs to the *predicted* class with the SHAP base value (units in
``shap_units``: log-odds margin for XGBoost/LightGBM, probability for Random Forest, decision function for
AdaBoost), and the out-of-distribution flag with its reasons. Research use only, not for diagnosis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.vocabulary import DISCLAIMER


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: Mapping[str, float]
    shap_contributions: Mapping[str, float]
    shap_base_value: float
    shap_units: str
    out_of_distribution: bool
    ood_reasons: tuple[str, ...] = ()
    calibrated: bool = False  # probabilities went through the bundle's calibrator
    confidence_threshold: float | None = None  # "low confidence" below this top probability (from CV)

    def __post_init__(self) -> None:
        if self.label not in self.probabilities:
            raise ValueError(f"predicted label {self.label!r} is not one of the classes")
        total = sum(self.probabilities.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"class probabilities sum to {total}, not 1")

    @property
    def probability(self) -> float:
        return float(self.probabilities[self.label])

    @property
    def low_confidence(self) -> bool | None:
        """True when the top probability is below the bundle's CV threshold; None without a rule."""
        return None if self.confidence_threshold is None else self.probability < self.confidence_threshold

    def top_features(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` inputs with the largest absolute contribution to the predicted class."""
        return sorted(self.shap_contributions.items(), key=lambda kv: -abs(kv[1]))[:n]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "shap": {
                "units": self.shap_units,
                "base_value": self.shap_base_value,
                "contributions": dict(self.shap_contributions),
            },
            "out_of_distribution": self.out_of_distribution,
            "ood_reasons": list(self.ood_reasons),
            "calibrated": self.calibrated,
            "confidence_threshold": self.confidence_threshold,
            "low_confidence": self.low_confidence,
            "disclaimer": DISCLAIMER,
        }
