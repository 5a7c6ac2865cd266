"""The feature table's schema, shared by the writer (``ainode features``) and its readers (``node.learn``).

Kept free of imaging imports so that training code can read tables without loading SimpleITK or pyradiomics.
"""

from __future__ import annotations

#: Identity / QC columns written before the features, in this order; never used as model inputs.
QC_COLUMNS: tuple[str, ...] = (
    "case",
    "study_instance_uid",
    "segment_number",
    "segment_label",
    "tracking_uid",
    "lesion_volume_ml",
    "lesion_voxels",
    "pons_method",
    "pons_volume_ml",
    "registration_metric",
    "registration_method",
    "qc_error",
)
