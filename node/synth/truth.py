# mypy: disable-error-code="no-untyped-call"
"""Ground truth of synthetic cases: ``truth/<case_id>.json`` and ``labels.csv``.

The JSON holds the subtypes and receptor assays, each lesion (centre, radius, voxel count on the T1CE grid,
appearance parameters), the pons ROI (centroid in LPS mm, voxel count), the T1CE → T2 Euler3D transform a
perfect registration returns, the subject → template affine, and the UIDs. ``labels.csv`` has one row per
lesion with columns :data:`LABEL_COLUMNS` (er/pr/her2 as 0/1, her2_ihc 0–3, her2_ish 1/0/empty when not done).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from node.synth import anatomy
from node.synth.anatomy import FloatArray
from node.synth.dicom_series import MRSeriesHeader
from node.synth.render import T2_THICKNESS_MM, Size, SynthCase
from node.vocabulary import Subtype

logger = logging.getLogger(__name__)

LABEL_COLUMNS = (
    "patient",
    "lesion",
    "site",
    "metastasis_subtype",
    "primary_subtype",
    "er",
    "pr",
    "her2",
    "her2_ihc",
    "her2_ish",
    "her2_3tier",
)


@dataclass
class CaseTruth:
    """Ground truth of one case, as written to ``truth/<case_id>.json``."""

    case_id: str
    data: dict[str, Any]

    @property
    def metastasis_subtype(self) -> Subtype:
        return Subtype(self.data["metastasis_subtype"])

    @property
    def primary_subtype(self) -> Subtype:
        return Subtype(self.data["primary_subtype"])

    @property
    def lesions(self) -> list[dict[str, Any]]:
        """One dict per lesion: number, label, centre_lps, voxels, volume_mm3, appearance..."""
        lesions: list[dict[str, Any]] = self.data["lesions"]
        return lesions

    @property
    def pons_centroid_lps(self) -> tuple[float, float, float]:
        x, y, z = self.data["pons"]["centroid_lps"]
        return float(x), float(y), float(z)

    def t1ce_to_t2(self) -> sitk.Euler3DTransform:
        """The transform a perfect T2 -> T1CE registration returns (ITK resampling convention)."""
        return euler_from_truth(self.data)

    def label_rows(self) -> list[dict[str, str]]:
        rec = self.data["receptors"]
        return [
            {
                "patient": self.case_id,
                "lesion": str(lesion["number"]),
                "site": self.data["site"]["name"],
                "metastasis_subtype": self.data["metastasis_subtype"],
                "primary_subtype": self.data["primary_subtype"],
                "er": str(int(rec["er"])),
                "pr": str(int(rec["pr"])),
                "her2": str(int(rec["her2"])),
                "her2_ihc": str(rec["her2_ihc"]),
                "her2_ish": "" if rec["her2_ish"] is None else str(int(rec["her2_ish"])),
                "her2_3tier": rec["her2_3tier"],
            }
            for lesion in self.data["lesions"]
        ]


def write_truth(out: Path, truth: CaseTruth) -> Path:
    """Write ``out/truth/<case_id>.json`` (sorted keys: reproducible bytes)."""
    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    path = truth_dir / f"{truth.case_id}.json"
    path.write_text(json.dumps(truth.data, indent=1, sort_keys=True) + "\n")
    return path


def load_truth(path: Path) -> CaseTruth:
    """Read ``truth/<case_id>.json`` back."""
    data: dict[str, Any] = json.loads(path.read_text())
    return CaseTruth(str(data["case_id"]), data)


def euler_from_truth(truth: dict[str, Any]) -> sitk.Euler3DTransform:
    """The recorded T1CE -> T2 transform as a SimpleITK Euler3DTransform."""
    t = truth["t1ce_to_t2"]
    return sitk.Euler3DTransform(t["center"], *t["angles_rad"], t["translation"])


def _r(values: Sequence[float] | FloatArray, nd: int = 4) -> list[float]:
    return [round(float(v), nd) for v in values]


def case_truth(
    case: SynthCase,
    seed: int,
    size: Size,
    effect: float,
    t1h: MRSeriesHeader,
    t2h: MRSeriesHeader,
    seg_series_uid: str,
    pons_seg: bool,
) -> CaseTruth:
    spec, site, rec = case.spec, case.site, case.spec.receptors
    voxel_mm3 = float(np.prod(case.t1ce.GetSpacing()))
    lesions = []
    for lesion, mask_img in zip(case.lesions, case.lesion_masks, strict=True):
        mask = sitk.GetArrayViewFromImage(mask_img)
        kji = np.argwhere(mask > 0)
        centroid = case.t1ce_grid.index_to_physical().apply(kji[:, ::-1].astype(float).mean(axis=0)[None, :])[0]
        lesions.append(
            {
                "number": lesion.number,
                "label": f"Lesion {lesion.number}",
                "subtype": str(lesion.subtype),
                "centre_lps": _r(lesion.shape.centre),
                "mask_centroid_lps": _r(centroid),
                "radius_mm": round(lesion.shape.radius_mm, 4),
                "voxels": int(kji.shape[0]),
                "volume_mm3": round(kji.shape[0] * voxel_mm3, 3),
                "appearance": {k: round(v, 6) for k, v in lesion.appearance.as_dict().items()},
            }
        )
    pons = sitk.GetArrayViewFromImage(case.pons_mask)
    pons_kji = np.argwhere(pons > 0)
    pons_centroid = case.t1ce_grid.index_to_physical().apply(pons_kji[:, ::-1].astype(float).mean(axis=0)[None])[0]
    pons_exact = case.subject_to_template.inverse().apply(anatomy.PONS_CENTER_LPS[None, :])[0]
    tx = case.t1ce_to_t2
    data: dict[str, Any] = {
        "case_id": spec.case_id,
        "patient_id": spec.patient_id,
        "patient_name": spec.patient_name,
        "seed": seed,
        "size": size,
        "effect": effect,
        "skull": case.skull,
        "site": {
            "index": site.index,
            "name": f"site{site.index + 1}",
            "manufacturer": site.manufacturer,
            "model": site.model_name,
            "field_strength": site.field_strength,
            "signed_rescaled": site.signed_rescaled,
        },
        "primary_subtype": str(spec.primary_subtype),
        "metastasis_subtype": str(spec.metastasis_subtype),
        "converted": spec.converted,
        "receptors": {
            "er_percent": rec.er_percent,
            "pr_percent": rec.pr_percent,
            "er": rec.er_positive,
            "pr": rec.pr_positive,
            "her2_ihc": rec.her2_ihc,
            "her2_ish": rec.her2_ish_amplified,
            "her2": rec.her2_positive,
            "her2_3tier": str(rec.her2_tier),
        },
        "lesions": lesions,
        "pons": {
            "centroid_lps": _r(pons_centroid),
            "centre_exact_lps": _r(pons_exact),
            "voxels": int(pons_kji.shape[0]),
            "volume_mm3": round(pons_kji.shape[0] * voxel_mm3, 3),
            "volume_true_mm3": round(1239.0 * abs(float(np.linalg.det(case.subject_to_template.inverse().matrix))), 3),
            "in_seg": pons_seg,
        },
        "t1ce_to_t2": {
            "type": "Euler3DTransform",
            "convention": "maps T1CE points to T2 points; sitk.Resample(t2, t1ce, tx) aligns T2 onto T1CE",
            "center": _r(tx.GetCenter(), 6),
            "angles_rad": _r([tx.GetAngleX(), tx.GetAngleY(), tx.GetAngleZ()], 8),
            "translation": _r(tx.GetTranslation(), 6),
            "rotation_deg": round(
                float(
                    np.rad2deg(np.arccos(np.clip((np.trace(np.array(tx.GetMatrix()).reshape(3, 3)) - 1) / 2, -1, 1)))
                ),
                4,
            ),
        },
        "subject_to_template": {
            "matrix": [_r(row, 6) for row in case.subject_to_template.matrix],
            "offset": _r(case.subject_to_template.offset, 6),
        },
        "uids": {
            "study": t1h.study_instance_uid,
            "frame_of_reference": t1h.frame_of_reference_uid,
            "t1ce_series": t1h.series_instance_uid,
            "t2_series": t2h.series_instance_uid,
            "seg_series": seg_series_uid,
        },
        "t1ce": {"size": list(case.t1ce.GetSize()), "spacing": _r(case.t1ce.GetSpacing())},
        "t2": {"size": list(case.t2.GetSize()), "spacing": _r(case.t2.GetSpacing()), "thickness": T2_THICKNESS_MM},
    }
    return CaseTruth(spec.case_id, data)


def write_labels(out: Path, truths: Sequence[CaseTruth]) -> Path:
    """``labels.csv``: one row per lesion, columns :data:`LABEL_COLUMNS`."""
    path = out / "labels.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(LABEL_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for truth in truths:
            writer.writerows(truth.label_rows())
    return path
