"""The node's shared words, defined once: subtype classes, receptor heads, the disclaimer, task and queue names.

Everything here is a constant or a tiny enum that several rooms must spell the same way (the SR, the model
bundles, the dashboard, the Celery wiring). Labelling *rules* (how a receptor result becomes a class) are in
:mod:`node.labels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: Printed on every result object, model card and command output that carries a prediction.
DISCLAIMER = "Research use only, not for diagnosis"


class Subtype(StrEnum):
    """Molecular subtype of a breast-cancer lesion (primary tumour or metastasis)."""

    HR_POS_HER2_NEG = "HR+/HER2-"
    HR_POS_HER2_POS = "HR+/HER2+"
    HR_NEG_HER2_POS = "HR-/HER2+"
    TN = "TN"

    @property
    def hr_positive(self) -> bool:
        return self in (Subtype.HR_POS_HER2_NEG, Subtype.HR_POS_HER2_POS)

    @property
    def her2_positive(self) -> bool:
        return self in (Subtype.HR_POS_HER2_POS, Subtype.HR_NEG_HER2_POS)


class Her2Tier(StrEnum):
    """HER2 three-tier status (the HER2-low study)."""

    POSITIVE = "positive"
    LOW = "low"
    ZERO = "zero"


#: The four subtype classes in the order every model, table and report uses.
SUBTYPE_CLASSES: tuple[str, ...] = tuple(s.value for s in Subtype)
#: Classes of the binary receptor heads (ER, PR, HER2).
BINARY_CLASSES: tuple[str, ...] = ("negative", "positive")
#: Classes of the HER2 three-tier head, lowest first.
HER2_TIER_CLASSES: tuple[str, ...] = (Her2Tier.ZERO.value, Her2Tier.LOW.value, Her2Tier.POSITIVE.value)

#: Celery task names: the worker registers them, the listener, scheduler and dashboard send to them by name.
PROCESS_TASK = "ainode.process_study"
DELIVER_TASK = "ainode.deliver"
POLL_TASK = "ainode.poll_ready"
#: The default Celery queue (``AINODE_QUEUE`` overrides it).
DEFAULT_QUEUE = "ainode"


class BrainRegion(StrEnum):
    """The coarse region a lesion is named by (docs/atlas.md): AAL3 labels grouped, plus a brainstem rule."""

    FRONTAL = "frontal lobe"
    PARIETAL = "parietal lobe"
    TEMPORAL = "temporal lobe"
    OCCIPITAL = "occipital lobe"
    INSULA = "insula"
    CINGULATE = "cingulate gyrus"
    CAUDATE = "caudate nucleus"
    PUTAMEN = "putamen"
    PALLIDUM = "globus pallidus"
    ACCUMBENS = "nucleus accumbens"
    THALAMUS = "thalamus"
    BRAINSTEM = "brainstem"
    CEREBELLUM = "cerebellum"


class Hemisphere(StrEnum):
    """Side of a lesion from its centroid's MNI x (RAS: negative is the patient's left); midline near x = 0."""

    LEFT = "left"
    RIGHT = "right"
    MIDLINE = "midline"


@dataclass(frozen=True)
class LesionSite:
    """Where a lesion is: the atlas region holding most of its voxels and the side of its centroid.

    ``fraction`` is the share of the lesion's in-brain voxels that fall in ``region`` (0-1);
    ``mni_centroid_ras`` the centroid in MNI millimetres (RAS, as papers quote them).
    """

    region: BrainRegion
    hemisphere: Hemisphere
    fraction: float
    mni_centroid_ras: tuple[float, float, float]

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"site fraction must lie in (0, 1], got {self.fraction}")

    def describe(self) -> str:
        """In words, e.g. ``"left frontal lobe (82 % of the lesion)"`` or ``"brainstem, midline"``."""
        share = f"{100 * self.fraction:.0f} % of the lesion"
        if self.hemisphere is Hemisphere.MIDLINE:
            return f"{self.region.value}, midline ({share})"
        return f"{self.hemisphere.value} {self.region.value} ({share})"
