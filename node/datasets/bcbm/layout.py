"""The TCIA BCBM-RadioGenomics folder layout (docs/method.md §3.1): scans, their image and their masks.

::

    PATH/
      BCBM-RadioGenomics_Images_Masks_Dec2024/          (any folder named BCBM-RadioGenomics_Images_Masks*)
        BCBM-RadioGenomics-<p>-<s>/                     one folder per MRI scan; <p> patient, <s> scan number
          BCBM-RadioGenomics-<p>-<s>_image_ss_n4.nii.gz  T1 post-contrast, skull-stripped, N4-corrected
          BCBM-RadioGenomics-<p>-<s>_mask_<name>.nii.gz  one binary mask per plan structure
      BCBM-RadioGenomics-Clinical-data.xlsx              sheet "Clinical+Genetics", one row per scan

The patient is the scan id without its last ``-<s>``. Masks are numbered 1, 2, ... within their scan in file
name order (every mask, lesion or not, so the numbers do not depend on the lesion filter). A scan folder
without its image is skipped and listed (``scans_without_image``); no scan with an image at all is an error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGES_DIR_PREFIX = "BCBM-RadioGenomics_Images_Masks"
WORKBOOK_NAME = "BCBM-RadioGenomics-Clinical-data.xlsx"
SCAN_ID = re.compile(r"^(BCBM-RadioGenomics-(\d+))-(\d+)$")
IMAGE_SUFFIX = "_image_ss_n4.nii.gz"
MASK_INFIX = "_mask_"
NIFTI_SUFFIX = ".nii.gz"


class DatasetLayoutError(ConfigError):
    """The folder given is not a BCBM-RadioGenomics download (or a part of it is missing or malformed)."""

    default_message = "the folder does not have the BCBM-RadioGenomics layout"


@dataclass(frozen=True)
class MaskFile:
    """One ``..._mask_<name>.nii.gz`` of a scan."""

    index: int  # 1-based, in file-name order within the scan
    name: str
    path: Path


@dataclass(frozen=True)
class ScanEntry:
    """One scan folder: its ids, its T1CE image and its masks."""

    scan_id: str
    patient: str
    scan_number: int
    image: Path
    masks: tuple[MaskFile, ...]


@dataclass(frozen=True)
class BcbmLayout:
    root: Path
    images_dir: Path
    workbook: Path
    scans: tuple[ScanEntry, ...]
    ignored_files: tuple[Path, ...] = ()
    scans_without_image: tuple[str, ...] = ()

    @property
    def patients(self) -> tuple[str, ...]:
        return tuple(sorted({s.patient for s in self.scans}, key=_natural))


def _natural(text: str) -> list[object]:
    """Sort key putting ``...-2`` before ``...-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _images_dir(root: Path) -> Path:
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(IMAGES_DIR_PREFIX))
    if not candidates:
        raise DatasetLayoutError(
            f"{root} has no {IMAGES_DIR_PREFIX}... folder: is it the BCBM-RadioGenomics download?"
        )
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DatasetLayoutError(f"{root} has more than one image folder ({names}); keep one")
    return candidates[0]


def _scan(folder: Path, ignored: list[Path]) -> ScanEntry | None:
    match = SCAN_ID.match(folder.name)
    assert match is not None
    scan_id, patient, number = match.group(1) + "-" + match.group(3), match.group(1), int(match.group(3))
    image = folder / f"{scan_id}{IMAGE_SUFFIX}"
    if not image.is_file():
        logger.warning("scan folder %s has no image %s: scan skipped", folder, image.name)
        return None
    prefix = f"{scan_id}{MASK_INFIX}"
    mask_paths: list[tuple[str, Path]] = []
    for path in sorted(folder.iterdir()):
        if path == image:
            continue
        if path.is_file() and path.name.startswith(prefix) and path.name.endswith(NIFTI_SUFFIX):
            name = path.name[len(prefix) : -len(NIFTI_SUFFIX)]
            if name:
                mask_paths.append((name, path))
                continue
        ignored.append(path)
    masks = tuple(MaskFile(i, name, path) for i, (name, path) in enumerate(mask_paths, start=1))
    return ScanEntry(scan_id, patient, number, image, masks)


def discover(root: Path, workbook: Path | None = None) -> BcbmLayout:
    """Find every scan, image, mask and the clinical workbook under ``root``; DatasetLayoutError if it is not there.

    ``workbook`` overrides the clinical workbook's location (default ``root / WORKBOOK_NAME``).
    """
    if not root.exists():
        raise DatasetLayoutError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a folder (give the folder that holds the BCBM-RadioGenomics download)")
    images_dir = _images_dir(root)
    if workbook is None:
        workbook = root / WORKBOOK_NAME
        if not workbook.is_file():
            raise DatasetLayoutError(f"the clinical workbook {WORKBOOK_NAME} is missing from {root}")
    elif not workbook.is_file():
        raise DatasetLayoutError(f"clinical workbook {workbook} not found")
    ignored: list[Path] = []
    scans: list[ScanEntry] = []
    without_image: list[str] = []
    for folder in sorted(images_dir.iterdir(), key=lambda p: _natural(p.name)):
        if folder.is_dir() and SCAN_ID.match(folder.name):
            scan = _scan(folder, ignored)
            if scan is None:
                without_image.append(folder.name)
            else:
                scans.append(scan)
        else:
            ignored.append(folder)
    if not scans:
        what = "with its image" if without_image else ""
        raise DatasetLayoutError(f"{images_dir} holds no BCBM-RadioGenomics-<patient>-<scan> folder {what}".strip())
    if ignored:
        logger.warning("ignored %d file(s)/folder(s) that do not follow the layout (first: %s)", len(ignored),
                       ignored[0])
    logger.info("found %d scan(s) of %d patient(s), %d mask(s)", len(scans), len({s.patient for s in scans}),
                sum(len(s.masks) for s in scans))
    return BcbmLayout(root, images_dir, workbook, tuple(scans), tuple(ignored), tuple(without_image))
