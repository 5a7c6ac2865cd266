"""A small fake replica of the TCIA BCBM-RadioGenomics download, for the importer's tests (no patient data).

Each scan is a synthetic skull-stripped "brain" (an ellipsoid of white matter inside a grey-matter rim, with
smooth texture and noise) on an anisotropic grid, with spherical rim-enhancing "metastases" and two masks
that are not lesions: a ``bs`` (brainstem) cylinder and a resection ``cavity``. The clinical workbook copies
the real one's quirks: sheet ``Clinical+Genetics`` after another sheet, the header ``"ID      "``, values
``'+'``/``'-'``/blank, one row per scan, plus a row for a scan that is not on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openpyxl
import SimpleITK as sitk

IMAGES = "BCBM-RadioGenomics_Images_Masks_Dec2024"
WORKBOOK = "BCBM-RadioGenomics-Clinical-data.xlsx"
HEADER = ("ID      ", "Age", "Year", "Pixel Spacing", "Manufacturer", "Magnetic Field Strength ID", "Sex",
          "ER", "PR", "HER2")  # fmt: skip
LESION_NAMES = ("Plan1_TgtA_220Gy80", "met2", "tumor", "Lt_frontal")
SIZE = (56, 64, 36)  # x, y, z voxels
SPACING = (1.0, 1.0, 1.5)
ORIGIN = (-28.0, -32.0, -27.0)


@dataclass(frozen=True)
class FakeScan:
    number: int
    n_lesions: int
    field_strength: float | None = 1.5
    receptors: tuple[str | None, str | None, str | None] | None = None  # overrides the patient's (ER, PR, HER2)


@dataclass(frozen=True)
class FakePatient:
    number: int
    receptors: tuple[str | None, str | None, str | None]
    scans: tuple[FakeScan, ...]


#: 10 patients, 12 scans; ER, PR and HER2 each have >= 4 patients per class; patient 6's scans disagree on HER2.
DEFAULT_PATIENTS: tuple[FakePatient, ...] = (
    FakePatient(0, ("+", "+", "-"), (FakeScan(0, 2), FakeScan(1, 1))),
    FakePatient(1, ("+", "-", "+"), (FakeScan(0, 1, 3.0),)),
    FakePatient(2, ("+", "+", "+"), (FakeScan(0, 1),)),
    FakePatient(3, ("-", "-", "-"), (FakeScan(0, 1), FakeScan(1, 1, None))),
    FakePatient(4, ("-", "-", "+"), (FakeScan(0, 2),)),
    FakePatient(5, ("-", "+", "-"), (FakeScan(0, 1),)),
    FakePatient(6, ("+", None, "+"), (FakeScan(0, 1), FakeScan(2, 1, 1.5, ("+", None, "-")))),
    FakePatient(7, ("+", "+", "-"), (FakeScan(0, 1, 3.0),)),
    FakePatient(8, ("-", "-", "+"), (FakeScan(0, 1),)),
    FakePatient(9, ("-", "+", "-"), (FakeScan(0, 1),)),
)


@dataclass
class Replica:
    root: Path
    images_dir: Path
    workbook: Path
    scan_dirs: list[Path] = field(default_factory=list)
    lesion_masks: int = 0
    other_masks: int = 0


def scan_id(patient: int, scan: int) -> str:
    return f"BCBM-RadioGenomics-{patient}-{scan}"


def _grid_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical x, y, z (mm) of every voxel, as [z, y, x] arrays."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in SIZE[::-1]), indexing="ij")
    return ORIGIN[0] + x * SPACING[0], ORIGIN[1] + y * SPACING[1], ORIGIN[2] + z * SPACING[2]


def _image(array: np.ndarray, dtype: int) -> sitk.Image:
    img: sitk.Image = sitk.Cast(sitk.GetImageFromArray(array), dtype)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    return img


def _brain(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = _grid_points()
    rho = np.sqrt((x / 24.0) ** 2 + (y / 28.0) ** 2 + (z / 22.0) ** 2)
    inside = rho <= 1.0
    texture = sitk.GetArrayFromImage(
        sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(rng.normal(0, 1, rho.shape).astype(np.float32)), 2.0)
    )
    tissue = np.where(rho < 0.8, 100.0, 62.0) * (1.0 + 0.05 * texture)
    image = np.where(inside, tissue + rng.normal(0, 2.0, rho.shape), 0.0)
    return image.astype(np.float32), inside


def _sphere(centre: Sequence[float] | np.ndarray, radius: float) -> np.ndarray:
    x, y, z = _grid_points()
    return np.asarray(((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) <= radius**2)


LESION_CENTRES = ((-12.0, 10.0, 6.0), (11.0, -12.0, -4.0), (10.0, 14.0, 8.0))


def write_scan(folder: Path, sid: str, n_lesions: int, rng: np.random.Generator) -> tuple[int, int]:
    """One scan folder; returns (lesion masks, other masks) written."""
    folder.mkdir(parents=True)
    image, _ = _brain(rng)
    masks: dict[str, np.ndarray] = {}
    offset = int(rng.integers(len(LESION_NAMES)))
    for k in range(n_lesions):
        radius = float(rng.uniform(4.0, 6.5))
        centre = np.array(LESION_CENTRES[k]) + rng.uniform(-2, 2, 3)
        outer, core = _sphere(centre, radius), _sphere(centre, radius * 0.5)
        image[outer] = 150.0 + rng.normal(0, 8.0, int(outer.sum()))
        image[core] = 45.0 + rng.normal(0, 4.0, int(core.sum()))
        masks[LESION_NAMES[(k + offset) % len(LESION_NAMES)]] = outer
    x, y, z = _grid_points()
    masks["bs"] = (x**2 + (y - 8.0) ** 2 <= 25.0) & (z < -10.0) & (z > -20.0)
    cavity = _sphere((-10.0, -14.0, -6.0), 4.0)
    image[cavity] = 20.0
    masks["cavity"] = cavity
    sitk.WriteImage(_image(image, sitk.sitkFloat32), str(folder / f"{sid}_image_ss_n4.nii.gz"))
    for name, mask in masks.items():
        sitk.WriteImage(_image(mask.astype(np.uint8), sitk.sitkUInt8), str(folder / f"{sid}_mask_{name}.nii.gz"))
    return n_lesions, 2


def write_workbook(path: Path, patients: Sequence[FakePatient], extra_rows: Sequence[tuple[object, ...]] = ()) -> None:
    book = openpyxl.Workbook()
    notes = book.active
    assert notes is not None
    notes.title = "Read me"
    notes.append(["not the clinical sheet"])
    sheet = book.create_sheet("Clinical+Genetics")
    sheet.append(list(HEADER))
    for patient in patients:
        for scan in patient.scans:
            er, pr, her2 = scan.receptors or patient.receptors
            sheet.append([scan_id(patient.number, scan.number), 55, 2010, "0.5\\0.5", "SIEMENS",
                          scan.field_strength, "F", er, pr, her2])  # fmt: skip
    for row in extra_rows:
        sheet.append(list(row))
    book.save(path)


def write_replica(root: Path, patients: Sequence[FakePatient] = DEFAULT_PATIENTS, seed: int = 0) -> Replica:
    """The fake download under ``root`` (created)."""
    rng = np.random.default_rng(seed)
    images = root / IMAGES
    replica = Replica(root, images, root / WORKBOOK)
    for patient in patients:
        for scan in patient.scans:
            sid = scan_id(patient.number, scan.number)
            lesions, others = write_scan(images / sid, sid, scan.n_lesions, rng)
            replica.scan_dirs.append(images / sid)
            replica.lesion_masks += lesions
            replica.other_masks += others
    write_workbook(replica.workbook, patients, extra_rows=[(scan_id(99, 0), 60, 2011, None, None, 1.5, "F",
                                                            "+", "-", "+")])  # fmt: skip
    return replica
