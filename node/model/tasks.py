"""What a model predicts (:class:`Task`), its classes, and the recorded encoding of the primary-tumour subtype.

Shared by serving (:mod:`node.model.bundle`) and training (:mod:`node.training.dataset`); defined here so that
serving needs nothing from the training stack.
"""

from __future__ import annotations

from enum import StrEnum

from node.vocabulary import BINARY_CLASSES, HER2_TIER_CLASSES, SUBTYPE_CLASSES

__all__ = ["BINARY_CLASSES", "HER2_TIER_CLASSES", "PRIMARY_COLUMNS", "PRIMARY_PREFIX", "SUBTYPE_CLASSES", "Task",
           "primary_one_hot"]

PRIMARY_PREFIX = "primary_subtype="
PRIMARY_COLUMNS: tuple[str, ...] = tuple(f"{PRIMARY_PREFIX}{s}" for s in SUBTYPE_CLASSES)


class Task(StrEnum):
    """What a model predicts."""

    SUBTYPE = "subtype"
    SUBTYPE_NOPRIMARY = "subtype-noprimary"
    ER = "er"
    PR = "pr"
    HER2 = "her2"
    HER2_3TIER = "her2-3tier"

    @property
    def classes(self) -> tuple[str, ...]:
        if self in (Task.SUBTYPE, Task.SUBTYPE_NOPRIMARY):
            return SUBTYPE_CLASSES
        if self is Task.HER2_3TIER:
            return HER2_TIER_CLASSES
        return BINARY_CLASSES

    @property
    def uses_primary(self) -> bool:
        return self is Task.SUBTYPE

    @property
    def is_binary(self) -> bool:
        return len(self.classes) == 2


def primary_one_hot(primary: str | None) -> dict[str, float]:
    """The recorded encoding of the primary subtype: one column per class, 1.0 for the given one."""
    return {col: float(primary is not None and col == f"{PRIMARY_PREFIX}{primary}") for col in PRIMARY_COLUMNS}
