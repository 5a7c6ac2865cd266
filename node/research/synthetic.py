"""A synthetic research cohort for the recipes: the planted-signal tables of :mod:`node.training.synthetic`
plus filtered-image (LoG, wavelet) and peritumoral-shell columns, a scanner column with a scanner effect, and a
second segmentation's feature table (``features_seg2.csv``) for the ICC stability filter. No images.

Planted signal beyond the base tables (all scaled by ``signal``; ``signal=0`` is pure noise):

* ``t1ce_log-sigma-2-0-mm_glcm_Contrast`` ~ HER2-low vs HER2-zero (the second S3 task);
* ``t2_wavelet-LLH_firstorder_Mean`` ~ HER2 status;
* ``t2_shell3mm_firstorder_Mean`` ~ HER2 status (what the S4 shells add over the tumour).

Every feature gets an additive and multiplicative scanner effect (what ComBat removes). In the second
segmentation, ``*_Unstable*`` columns are re-drawn (ICC ≈ 0) and every other column gets small noise (ICC high).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from node.training.synthetic import write_tables

SCANNERS = ("scanner-1", "scanner-2", "scanner-3")


@dataclass(frozen=True)
class ResearchCohort:
    folder: Path
    features_csv: Path
    labels_csv: Path
    seg2_csv: Path


def extra_columns(n_noise: int) -> list[str]:
    names = ["t1ce_log-sigma-2-0-mm_glcm_Contrast", "t2_wavelet-LLH_firstorder_Mean", "t2_shell3mm_firstorder_Mean"]
    for i in range(n_noise):
        names += [
            f"t1ce_log-sigma-{1 + i % 3}-0-mm_glcm_Noise{i:03d}",
            f"t2_wavelet-{('LLH', 'HLL', 'HHH')[i % 3]}_glrlm_Noise{i:03d}",
            f"t2_shell{(1, 3, 5)[i % 3]}mm_firstorder_Noise{i:03d}",
        ]
    names += [f"t1ce_glcm_Unstable{i:02d}" for i in range(max(2, n_noise // 3))]
    return names


def write_cohort(
    out_dir: Path, *, n_patients: int = 120, n_noise: int = 12, seed: int = 0, signal: float = 2.0,
    lesions_per_patient: int = 1,
) -> ResearchCohort:
    """Write features.csv, features_seg2.csv and labels.csv (with a ``scanner`` column) into ``out_dir``."""
    base = write_tables(out_dir, n_patients=n_patients, n_noise=n_noise, seed=seed, signal=signal,
                        lesions_per_patient=lesions_per_patient)
    rng = np.random.default_rng(seed + 7919)
    feats = pd.read_csv(base.features_csv, dtype={"case": str})
    labels = pd.read_csv(base.labels_csv, dtype={"patient": str, "site": str})
    n = len(feats)
    her2 = labels["her2"].to_numpy(dtype=np.float64)
    low = (labels["her2_3tier"] == "low").to_numpy(dtype=np.float64)
    names = extra_columns(n_noise)
    extra = rng.normal(size=(n, len(names)))
    extra[:, 0] += signal * low
    extra[:, 1] += signal * her2
    extra[:, 2] += signal * her2
    feats = pd.concat([feats, pd.DataFrame(extra, columns=names)], axis=1)
    scanner_of_patient = {p: SCANNERS[i % len(SCANNERS)] for i, p in enumerate(sorted(set(labels["patient"])))}
    labels["scanner"] = labels["patient"].map(scanner_of_patient)
    columns = [c for c in feats.columns if c.startswith(("t1ce_", "t2_")) and c != "t2_firstorder_Energy"]
    shift = {s: rng.normal(scale=0.8, size=len(columns)) for s in SCANNERS}
    scale = {s: rng.uniform(0.7, 1.4, size=len(columns)) for s in SCANNERS}
    scanner = feats["case"].map(scanner_of_patient).to_numpy()
    values = feats[columns].to_numpy(dtype=np.float64)
    for s in SCANNERS:
        rows = scanner == s
        values[rows] = values[rows] * scale[s] + shift[s]
    feats[columns] = values
    seg2 = feats.copy()
    for c in columns:
        if "_Unstable" in c:
            seg2[c] = rng.normal(size=n)
        else:
            seg2[c] = feats[c] + rng.normal(scale=0.15 * float(feats[c].std()), size=n)
    features_csv, labels_csv, seg2_csv = out_dir / "features.csv", out_dir / "labels.csv", out_dir / "features_seg2.csv"
    feats.to_csv(features_csv, index=False)
    seg2.to_csv(seg2_csv, index=False)
    labels.to_csv(labels_csv, index=False)
    return ResearchCohort(out_dir, features_csv, labels_csv, seg2_csv)
