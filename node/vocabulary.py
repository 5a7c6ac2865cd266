"""The node's shared words, defined once: subtype classes, receptor heads, the disclaimer, task and queue names.

Everything here is a constant or a tiny enum that several rooms must spell the same way (the SR, the model
bundles, the dashboard, the Celery wiring). Labelling *rules* (how a receptor result becomes a class) are in
:mod:`node.labels`.
"""

from __future__ import annotations

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
