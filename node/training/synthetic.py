"""Synthetic feature and label tables with planted signal, for tests, benchmarks and demo models (no images).

Each patient gets a primary subtype (prevalence-weighted), a metastasis subtype that converts with
``conversion_rate`` (≈ 25 % as in S1), receptor assays consistent with it (through :mod:`node.labels`) and
one or more lesions. Three named features carry the metastasis subtype (the S1 LASSO features):
``t1ce_glszm_LargeAreaLowGrayLevelEmphasis`` ~ HR status, ``t2_gldm_LargeDependenceLowGrayLevelEmphasis`` ~
HER2 status, ``t2_firstorder_Energy`` ~ their interaction; every other feature is noise. ``signal=0`` gives
pure noise (the leakage check).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from node.imaging.table import QC_COLUMNS
from node.labels import her2_three_tier
from node.vocabulary import Subtype

logger = logging.getLogger(__name__)

PLANTED_FEATURES: tuple[str, ...] = (
    "t1ce_glszm_LargeAreaLowGrayLevelEmphasis",
    "t2_gldm_LargeDependenceLowGrayLevelEmphasis",
    "t2_firstorder_Energy",
)
PREVALENCE: dict[Subtype, float] = {
    Subtype.HR_POS_HER2_NEG: 0.35,
    Subtype.HR_POS_HER2_POS: 0.2,
    Subtype.HR_NEG_HER2_POS: 0.25,
    Subtype.TN: 0.2,
}


@dataclass(frozen=True)
class SyntheticTables:
    features_csv: Path
    labels_csv: Path
    feature_names: tuple[str, ...]


def noise_feature_names(n: int) -> list[str]:
    classes = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
    return [f"{('t1ce', 't2')[i % 2]}_{classes[i % len(classes)]}_Noise{i:03d}" for i in range(n)]


def write_tables(
    out_dir: Path,
    *,
    n_patients: int = 120,
    n_noise: int = 30,
    seed: int = 0,
    signal: float = 2.0,
    conversion_rate: float = 0.25,
    n_sites: int = 2,
    lesions_per_patient: int = 1,
) -> SyntheticTables:
    """Write ``features.csv`` (QC columns + features) and ``labels.csv`` into ``out_dir``; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    subtypes = list(PREVALENCE)
    probs = np.array(list(PREVALENCE.values()))
    names = [*PLANTED_FEATURES, *noise_feature_names(n_noise)]
    out_dir.mkdir(parents=True, exist_ok=True)
    feature_rows: list[dict[str, object]] = []
    label_rows: list[dict[str, object]] = []
    for p in range(n_patients):
        primary = subtypes[int(rng.choice(len(subtypes), p=probs))]
        meta = primary
        if rng.random() < conversion_rate:
            others = [s for s in subtypes if s != primary]
            weights = np.array([PREVALENCE[s] for s in others])
            meta = others[int(rng.choice(len(others), p=weights / weights.sum()))]
        hr, her2 = float(meta.hr_positive), float(meta.her2_positive)
        er = int(hr and rng.random() < 0.9) if hr else 0
        pr = 0 if not hr else (1 - er if er == 0 else int(rng.random() < 0.6))
        ihc = 3 if her2 else int(rng.choice([0, 1, 2]))
        ish: bool | None = False if ihc == 2 else None
        tier = her2_three_tier(ihc, ish)
        case = f"SYN{p:04d}"
        site = f"site-{'ABCDEFGH'[p % n_sites]}"
        for lesion in range(1, lesions_per_patient + 1):
            noise = rng.normal(size=len(names))
            planted = [signal * hr, signal * her2, signal * (hr - her2) ** 2]
            values = [float(planted[i] + noise[i]) if i < 3 else float(noise[i]) for i in range(len(names))]
            values[2] = float(np.exp(values[2]) * 1e5)  # energy-like: positive, volume-scaled magnitude
            row: dict[str, object] = {c: "" for c in QC_COLUMNS}
            row.update(
                case=case, study_instance_uid=f"2.25.{seed}{p:04d}", segment_number=lesion,
                segment_label=f"lesion {lesion}", lesion_volume_ml=round(float(rng.uniform(0.5, 5)), 3),
                lesion_voxels=int(rng.integers(500, 5000)), pons_method="atlas",
            )
            row.update(dict(zip(names, values, strict=True)))
            feature_rows.append(row)
            label_rows.append(
                {
                    "patient": case, "lesion": lesion, "site": site, "metastasis_subtype": meta.value,
                    "primary_subtype": primary.value, "er": er, "pr": pr, "her2": int(her2),
                    "her2_ihc": ihc, "her2_ish": "" if ish is None else int(ish), "her2_3tier": tier.value,
                }
            )
    features_csv, labels_csv = out_dir / "features.csv", out_dir / "labels.csv"
    for path, rows in ((features_csv, feature_rows), (labels_csv, label_rows)):
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    logger.info("wrote %d synthetic lesions of %d patients to %s", len(feature_rows), n_patients, out_dir)
    return SyntheticTables(features_csv, labels_csv, tuple(names))
