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
PURGE_TASK = "ainode.purge_expired"
#: The default Celery queue (``AINODE_QUEUE`` overrides it).
DEFAULT_QUEUE = "ainode"


class NotAssessedReason(StrEnum):
    """Why a lesion (SEG segment) gets no subtype and no receptor prediction: it is "not assessed" (docs/sr.md,
    "Not assessed and scope warnings"). The SR codes of each reason are in :mod:`node.sr.assessment`."""

    #: the pons reference lies (partly) outside the field of view of the T1CE or T2
    REFERENCE_OUTSIDE_FOV = "reference-outside-fov"
    #: the automatic (MNI) pons reference failed its QC gates
    REFERENCE_QC_FAILED = "reference-qc-failed"
    #: the SEG's own pons / brain-stem / reference segment is implausible (volume, location, intensity)
    REFERENCE_SEGMENT_IMPLAUSIBLE = "reference-segment-implausible"
    #: no reference at all (no SEG reference segment and automatic localisation disabled)
    NO_REFERENCE = "no-reference"
    #: the segment is oedema / necrosis / a cyst / haemorrhage / a cavity, not the enhancing lesion
    SEGMENT_OEDEMA = "segment-oedema"
    SEGMENT_NECROSIS = "segment-necrosis"
    SEGMENT_CYST = "segment-cyst"
    SEGMENT_HAEMORRHAGE = "segment-haemorrhage"
    SEGMENT_CAVITY = "segment-cavity"
    #: the lesion is below the minimum volume the method can say anything about
    LESION_TOO_SMALL = "lesion-too-small"
    #: the T1CE slices are thicker than the method's limit (texture features are not comparable)
    SLICE_TOO_THICK = "slice-too-thick"
    #: the T1CE is a 2D acquisition and the scope settings refuse 2D
    NOT_3D = "t1ce-not-3d"
    #: the radiomic features of the lesion could not be computed
    FEATURES_FAILED = "features-failed"
    #: the model refused the lesion's inputs
    MODEL_REFUSED = "model-refused"
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
