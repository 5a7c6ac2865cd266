"""A synthetic study whose lesions sit at chosen MNI coordinates (tests and demos of lesion sites).

The head is the usual synthetic subject (:func:`node.synth.render.synthesize_case`: the bundled MNI152 template
under a random affine, T1CE and a moved thick-slice T2) rendered without random lesions; each
:class:`PlacedLesion` is a sphere around an MNI point (RAS millimetres, as atlases and papers quote them),
mapped into the subject with the case's own subject -> template affine, and made to enhance on the T1CE
(x :data:`ENHANCEMENT`). Because the true MNI position of every lesion is known, the site the node names can
be checked against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from node.synth.cohort import patient_rng, sample_patient
from node.synth.dicom_series import SegmentSpec, write_mr_series, write_segmentation
from node.synth.headers import SERIES_NUMBERS, series_headers
from node.synth.render import Size, SynthCase, synthesize_case
from node.synth.sites import make_sites

ENHANCEMENT = 1.8


@dataclass(frozen=True)
class PlacedLesion:
    """A spherical lesion of ``radius_mm`` centred on ``mni_ras`` (MNI, RAS mm)."""

    mni_ras: tuple[float, float, float]
    radius_mm: float = 6.0


def synthesize_located_case(
    lesions: Sequence[PlacedLesion], *, seed: int = 1, index: int = 0, size: Size = "small"
) -> SynthCase:
    """Render a case with exactly ``lesions`` (in order: segment 1, 2, ...); deterministic in ``seed``."""
    spec = dataclasses.replace(sample_patient(index, seed, 1, patient_rng(seed, index)), n_lesions=0)
    case = synthesize_case(spec, make_sites(1)[0], seed=seed, size=size)
    grid = case.t1ce_grid
    points = grid.physical_points(np.zeros(3, dtype=np.int64), np.array(grid.size, dtype=np.int64))
    in_template = case.subject_to_template.apply(points.reshape(-1, 3)).reshape(points.shape)
    t1 = sitk.GetArrayFromImage(case.t1ce)
    masks: list[sitk.Image] = []
    for lesion in lesions:
        x, y, z = lesion.mni_ras
        centre_lps = np.array([-x, -y, z], dtype=float)  # MNI RAS -> ITK LPS
        inside = np.linalg.norm(in_template - centre_lps, axis=-1) <= lesion.radius_mm
        if not inside.any():
            raise ValueError(f"lesion at MNI {lesion.mni_ras} has no voxel in the field of view")
        t1 = np.where(inside, t1 * np.float32(ENHANCEMENT), t1).astype(np.float32)
        mask = sitk.GetImageFromArray(inside.astype(np.uint8))
        mask.CopyInformation(case.t1ce)
        masks.append(mask)
    image = sitk.GetImageFromArray(t1)
    image.CopyInformation(case.t1ce)
    return dataclasses.replace(case, t1ce=image, lesion_masks=masks, lesions=[])


def write_located_case(case: SynthCase, out: Path, *, seed: int = 1) -> Path:
    """Write T1CE, T2 and a SEG with one segment per placed lesion under ``out/<case_id>``; returns that folder."""
    case_dir = out / case.spec.case_id
    t1h, t2h = series_headers(case, seed)
    t1_files = write_mr_series(case.t1ce, t1h, case_dir / "t1ce", uid_seed=f"{seed}:{case.spec.case_id}:t1ce")
    write_mr_series(case.t2, t2h, case_dir / "t2", uid_seed=f"{seed}:{case.spec.case_id}:t2")
    segments = [
        SegmentSpec(f"Lesion {i}", mask, "lesion", tracking_id=f"Lesion {i}")
        for i, mask in enumerate(case.lesion_masks, start=1)
    ]
    write_segmentation(
        t1_files, segments, case_dir / "seg" / "seg.dcm", series_number=SERIES_NUMBERS["seg"],
        series_description="Metastasis segmentation", manufacturer="Synthetic Segmentation Lab",
        uid_seed=f"{seed}:{case.spec.case_id}:seg", content_creator_name="Synthetic^Annotator",
    )  # fmt: skip
    return case_dir
