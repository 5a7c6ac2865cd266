"""A model's provenance as the report states it, read from its bundle manifest (defaults for older bundles).

The SR layer reads the manifest dictionary only (it never imports :mod:`node.model`); the field names and the
demonstration statement are those :mod:`node.model.provenance` writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SYNTHETIC = "synthetic"
SYNTHETIC_STATEMENT = "synthetic training data \u2014 demonstration only"
UNSPECIFIED = "unspecified"


def manifest_provenance(manifest: Mapping[str, Any]) -> dict[str, str]:
    """``training_data``, ``training_data_statement``, ``validation`` and ``created`` for :class:`ModelInfo`."""
    kind = str(manifest.get("training_data") or UNSPECIFIED)
    statement = manifest.get("training_data_statement") or (
        SYNTHETIC_STATEMENT if kind == SYNTHETIC else "training data not stated"
    )
    validation = manifest.get("validation")
    summary = validation.get("summary") if isinstance(validation, Mapping) else None
    return {
        "training_data": kind,
        "training_data_statement": str(statement),
        "validation": str(summary or "validation performance not stated"),
        "created": str(manifest.get("created_utc") or "unknown"),
    }
