"""What a reader must know about where a model comes from: training data, validation, date (manifest fields).

Bundles written since issue 11 carry ``training_data`` (``"synthetic"``, ``"clinical"`` or ``"unspecified"``),
``training_data_statement`` (plain words for the report) and ``validation`` (``{"summary": ...}``); older
bundles get the defaults below. A bundle is a *demonstration* model when ``training_data`` is ``"synthetic"``:
that is how ``ainode serve`` recognises the shipped models (never by their path).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SYNTHETIC = "synthetic"
UNSPECIFIED = "unspecified"
SYNTHETIC_STATEMENT = "synthetic training data \u2014 demonstration only"
UNSPECIFIED_STATEMENT = "training data not stated in the model bundle"
NO_VALIDATION = "validation performance not stated in the model bundle"


@dataclass(frozen=True)
class Provenance:
    name: str
    version: str
    created_utc: str
    training_data: str
    training_data_statement: str
    validation: str

    @property
    def is_demonstration(self) -> bool:
        return self.training_data == SYNTHETIC

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Provenance:
        kind = str(manifest.get("training_data") or UNSPECIFIED)
        statement = manifest.get("training_data_statement") or (
            SYNTHETIC_STATEMENT if kind == SYNTHETIC else UNSPECIFIED_STATEMENT
        )
        validation = manifest.get("validation")
        summary = validation.get("summary") if isinstance(validation, Mapping) else None
        return cls(
            name=str(manifest.get("name", "unnamed model")),
            version=str(manifest.get("version", "unknown")),
            created_utc=str(manifest.get("created_utc", "unknown")),
            training_data=kind,
            training_data_statement=str(statement),
            validation=str(summary or NO_VALIDATION),
        )
