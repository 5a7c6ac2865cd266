# mypy: disable-error-code="no-untyped-call"
"""Small deterministic synthetic studies for the imaging tests, written with node.synth.dicom_series."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from node.synth.dicom_series import MRSeriesHeader, SegmentSpec, write_mr_series, write_segmentation

STUDY_UID = str(generate_uid(entropy_srcs=["test-study"]))
FOR_UID = str(generate_uid(entropy_srcs=["test-for"]))
SIZE = (32, 28, 20)
SPACING = (1.5, 1.5, 1.5)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # rows A->P... columns: row cos (0,1,0), col cos (0,0,-1)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0)


def series_uid(name: str) -> str:
    return str(generate_uid(entropy_srcs=["test-series", name]))


def header(name: str, number: int, description: str, **overrides: object) -> MRSeriesHeader:
    base = MRSeriesHeader(
        patient_name="Test^Patient",
        patient_id="TEST-0001",
        patient_birth_date="19700101",
        patient_sex="F",
        study_instance_uid=STUDY_UID,
        study_date="20240315",
        study_time="101500",
        accession_number="ACC1",
        study_id="1",
        study_description="MRT Schaedel",
        referring_physician_name="Ref^Doctor",
        frame_of_reference_uid=FOR_UID,
        series_instance_uid=series_uid(name),
        series_number=number,
        series_description=description,
        manufacturer="SIEMENS",
        manufacturer_model_name="Skyra",
        institution_name="Test Hospital",
        station_name="MR1",
        software_versions="syngo MR E11",
        device_serial_number="1234",
        magnetic_field_strength=3.0,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def oblique_direction(angle_deg: float = 20.0) -> tuple[float, ...]:
    """A rotation about x then z (right-handed, orthonormal)."""
    a = math.radians(angle_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rz = np.array([[math.cos(a / 2), -math.sin(a / 2), 0], [math.sin(a / 2), math.cos(a / 2), 0], [0, 0, 1]])
    return tuple(float(v) for v in (rz @ rx).ravel())


def phantom(
    size: Sequence[int] = SIZE,
    spacing: Sequence[float] = SPACING,
    direction: Sequence[float] = IDENTITY,
    origin: Sequence[float] = (-20.0, -15.0, -10.0),
    seed: int = 0,
    scale: float = 1000.0,
) -> sitk.Image:
    """Float32 image: smooth gradient + noise with a bright sphere in the middle (the 'lesion')."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    x = np.arange(nx, dtype=np.float32)[None, None, :] / nx
    y = np.arange(ny, dtype=np.float32)[None, :, None] / ny
    values = scale * (0.2 + 0.3 * x + 0.1 * y) + 5.0 * rng.standard_normal((nz, ny, nx), dtype=np.float32)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in direction))
    image.SetOrigin(tuple(float(o) for o in origin))
    mask = sphere_mask(image, radius_mm=8.0)
    arr = sitk.GetArrayFromImage(image)
    arr[sitk.GetArrayViewFromImage(mask) > 0] += scale * 0.5
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def sphere_mask(
    image: sitk.Image, radius_mm: float = 8.0, center_index: Sequence[float] | None = None
) -> sitk.Image:
    """uint8 sphere on ``image``'s grid, centred on a (continuous) index (default: the grid centre)."""
    size = image.GetSize()
    centre = center_index if center_index is not None else [(n - 1) / 2 for n in size]
    centre_mm = np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre]))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    offset = np.asarray(image.GetOrigin()) - centre_mm
    axes = [np.arange(n, dtype=np.float32) * float(spacing[a]) for a, n in enumerate(size)]
    squared = np.zeros((size[2], size[1], size[0]), dtype=np.float32)
    for c in range(3):  # physical coordinate c relative to the centre, accumulated axis by axis
        squared += (
            float(offset[c])
            + direction[c, 0] * axes[0][None, None, :]
            + direction[c, 1] * axes[1][None, :, None]
            + direction[c, 2] * axes[2][:, None, None]
        ) ** 2
    inside = squared <= radius_mm**2
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


@dataclass
class Study:
    root: Path
    t1ce_image: sitk.Image
    t1ce_files: list[Path]
    t2_files: list[Path]
    seg_path: Path
    lesion: sitk.Image


def write_study(
    root: Path,
    *,
    t1ce_description: str = "t1_mprage_sag_p2_iso +C",
    t2_description: str = "Ax T2 FSE",
    t1ce_image: sitk.Image | None = None,
    t1ce_overrides: dict[str, object] | None = None,
    segments: Sequence[SegmentSpec] | None = None,
    fractional: bool = False,
) -> Study:
    """A T1CE (with contrast agent), a T2 (2D SE) and a one-lesion SEG on the T1CE, under ``root``."""
    image = t1ce_image if t1ce_image is not None else phantom()
    t1_files = write_mr_series(
        image,
        header("t1ce", 5, t1ce_description, contrast_bolus_agent="GADOBUTROL", **(t1ce_overrides or {})),
        root / "t1ce",
        uid_seed="t1ce",
    )
    t2_image = phantom(size=(30, 26, 12), spacing=(1.6, 1.6, 3.0), seed=1, scale=800.0)
    t2_files = write_mr_series(
        t2_image,
        header(
            "t2", 3, t2_description, scanning_sequence="SE", sequence_variant="SK", mr_acquisition_type="2D",
            repetition_time=4000.0, echo_time=90.0, flip_angle=90.0, echo_train_length=16,
        ),
        root / "t2",
        uid_seed="t2",
    )
    lesion = sphere_mask(image, 8.0)
    specs = segments if segments is not None else [SegmentSpec("Lesion 1", lesion, "lesion")]
    seg_path = write_segmentation(
        t1_files, specs, root / "seg" / "seg.dcm", series_number=100, series_description="Lesion segmentation",
        manufacturer="Test", uid_seed="seg", fractional=fractional,
    )
    return Study(root, image, t1_files, t2_files, seg_path, lesion)


def count_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every ``pydicom.dcmread`` from now on, counted by file path."""
    reads: Counter[str] = Counter()
    real = pydicom.dcmread

    def counting(source: Any, *args: Any, **kwargs: Any) -> Any:
        reads[str(getattr(source, "name", source))] += 1
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    return reads
